// postbox/request_reply.hpp: RPC channels, requester (DEALER) and replier
// (ROUTER), speaking the REQ/REP envelope (an empty delimiter frame before the
// message) so raw REQ clients can call a postbox replier too.
//
// A requester never gets stuck in REQ's lock-step: each attempt waits up to a
// timeout, and a retry resends the same request (same id) over a fresh socket
// (the "lazy pirate" pattern: it also works over inproc, which does not
// reconnect), so it survives a replier restart. Requests are therefore
// at-least-once: a replier may see a retried request twice.
#pragma once

#include <postbox/codec.hpp>
#include <postbox/context.hpp>
#include <postbox/detail/socket.hpp>
#include <postbox/message.hpp>
#include <postbox/options.hpp>
#include <postbox/stats.hpp>

#include <chrono>
#include <functional>
#include <optional>
#include <string_view>
#include <type_traits>

namespace postbox {

struct request_options {
  std::chrono::milliseconds timeout{1'000};  ///< per attempt
  int retries = 3;                           ///< attempts after the first
};

/// Sends requests and waits for their replies. One thread at a time; the
/// context must outlive it. Endpoints default to connect.
class requester {
 public:
  requester(context& ctx, std::string_view endpoints, const request_options& ropts = {},
            const socket_options& opts = {});

  /// The reply, or nothing when every attempt timed out (stats().timeouts
  /// counts it). Replies that come late for an earlier request are dropped.
  [[nodiscard]] std::optional<message> request(std::string_view topic, std::string_view payload);
  [[nodiscard]] std::optional<message> request(const message& m);

  [[nodiscard]] const std::vector<std::string>& endpoints() const noexcept {
    return core_.endpoints;
  }
  [[nodiscard]] const channel_stats& stats() const noexcept { return core_.stats; }
  [[nodiscard]] zmq::socket_t& native() noexcept { return core_.socket; }

 private:
  std::optional<message> exchange(const message& m);
  void reopen();

  context* ctx_;
  std::string spec_;
  socket_options opts_;
  bool reopenable_;
  detail::channel_socket core_;
  request_options ropts_;
  encoded scratch_;
  zmq::message_t frames_[3];
};

/// A request as the replier got it: the message and the return address.
struct request {
  message msg;
  zmq::message_t routing_id;
};

/// Answers requests. One thread at a time; the context must outlive it.
/// Endpoints default to bind.
class replier {
 public:
  replier(context& ctx, std::string_view endpoints, const socket_options& opts = {});

  /// The next valid request, or nothing on timeout. Malformed ones are
  /// counted in stats().rejected and skipped.
  [[nodiscard]] std::optional<request> receive(std::chrono::milliseconds timeout = forever);
  /// Sends `payload` back as the reply to `req` (same topic, correlation =
  /// the request's id). unreachable when the requester has gone.
  [[nodiscard]] send_result reply(const request& req, std::string_view payload);
  [[nodiscard]] send_result reply(const request& req, const message& m);

  /// Receives one request within `timeout`, answers it with `handler`'s
  /// return value; false when none came.
  bool serve_one(const std::function<std::string(const message&)>& handler,
                 std::chrono::milliseconds timeout = forever);

  [[nodiscard]] const std::vector<std::string>& endpoints() const noexcept {
    return core_.endpoints;
  }
  [[nodiscard]] const channel_stats& stats() const noexcept { return core_.stats; }
  [[nodiscard]] zmq::socket_t& native() noexcept { return core_.socket; }

 private:
  detail::channel_socket core_;
  encoded scratch_;
  zmq::message_t frames_[4];
};

static_assert(std::is_nothrow_move_constructible_v<requester>);
static_assert(std::is_nothrow_move_constructible_v<replier>);

}  // namespace postbox
