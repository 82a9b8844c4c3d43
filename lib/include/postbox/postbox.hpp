// postbox/postbox.hpp: the umbrella header; includes every public header.
#pragma once

#include <postbox/codec.hpp>
#include <postbox/context.hpp>
#include <postbox/crc32c.hpp>
#include <postbox/endpoint.hpp>
#include <postbox/error.hpp>
#include <postbox/message.hpp>
#include <postbox/message_id.hpp>
#include <postbox/options.hpp>
#include <postbox/point_to_point.hpp>
#include <postbox/pub_sub.hpp>
#include <postbox/request_reply.hpp>
#include <postbox/spool.hpp>
#include <postbox/stats.hpp>
#include <postbox/topic.hpp>
