// The control endpoint every daemon has: a ROUTER taking one-frame text
// requests from DEALER ([id][request]) or REQ ([id][""][request]) clients,
// and answering each with one frame. Private to devices/.
#pragma once

#include <postbox/detail/socket.hpp>

#include <chrono>
#include <string>
#include <string_view>

namespace postbox::devices::control_endpoint {

enum class received { none, request, malformed };

/// One request in hand, with what answering it needs.
struct request {
  zmq::message_t parts[3];
  bool with_delimiter = false;
  std::string text;
};

/// Takes one request without waiting. `malformed`: the wrong frame count, a
/// non-empty delimiter, or a request longer than `max_size` (not answered).
inline received receive(postbox::detail::channel_socket& s, std::size_t max_size, request& r) {
  const auto got = s.receive(r.parts, 3, std::chrono::milliseconds(0));
  if (!got.got) return received::none;
  r.with_delimiter = got.count == 3;
  if ((got.count != 2 && got.count != 3) || (r.with_delimiter && r.parts[1].size() != 0) ||
      r.parts[got.count - 1].size() > max_size) {
    return received::malformed;
  }
  r.text.assign(static_cast<const char*>(r.parts[got.count - 1].data()), r.parts[got.count - 1].size());
  return received::request;
}

/// Answers `r` without waiting (a client that left is not waited for).
inline void answer(postbox::detail::channel_socket& s, request& r, std::string_view text) {
  void* h = s.socket.handle();
  (void)zmq_msg_send(r.parts[0].handle(), h, ZMQ_SNDMORE | ZMQ_DONTWAIT);
  if (r.with_delimiter) (void)zmq_send(h, "", 0, ZMQ_SNDMORE | ZMQ_DONTWAIT);
  (void)zmq_send(h, text.data(), text.size(), ZMQ_DONTWAIT);
}

}  // namespace postbox::devices::control_endpoint
