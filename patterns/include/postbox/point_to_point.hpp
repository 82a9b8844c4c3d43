// postbox/point_to_point.hpp: point-to-point channels, sender (PUSH) and
// receiver (PULL). Each message reaches exactly one of the connected
// receivers, round-robin; either side may bind or connect.
//
// What it does not give: a message queued to a receiver that then crashes is
// lost with it (ZeroMQ is at-most-once); put a postbox-queue in between where
// that matters.
#pragma once

#include <postbox/codec.hpp>
#include <postbox/context.hpp>
#include <postbox/detail/socket.hpp>
#include <postbox/message.hpp>
#include <postbox/options.hpp>
#include <postbox/stats.hpp>

#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include <msgpack.hpp>

namespace postbox {

/// Sends messages to receivers. One thread at a time; the context must
/// outlive it. Endpoints default to connect ("@" to bind).
class sender {
 public:
  /// Throws config_error for a bad endpoint or option, transport_error when
  /// a bind fails (e.g. address in use).
  sender(context& ctx, std::string_view endpoints, const socket_options& opts = {});

  /// Sends, waiting as long as the high-water mark or a missing peer holds it.
  /// Throws transport_error only when the context is terminated.
  void send(std::string_view topic, std::string_view payload);
  void send(const message& m);
  /// Sends `value` packed with msgpack, reusing one buffer (no allocation
  /// once it has grown to the largest value).
  template <class T>
  void send_packed(std::string_view topic, const T& value) {
    pack_buffer_.bytes.clear();
    msgpack::pack(pack_buffer_, value);
    send(topic, pack_buffer_.view());
  }

  /// Sends unless it would wait longer than `timeout`: ok or timed_out.
  [[nodiscard]] send_result send_for(std::string_view topic, std::string_view payload,
                                     std::chrono::milliseconds timeout);
  [[nodiscard]] send_result send_for(const message& m, std::chrono::milliseconds timeout);
  /// Sends only if it can without waiting: ok or would_block.
  [[nodiscard]] send_result try_send(std::string_view topic, std::string_view payload);
  [[nodiscard]] send_result try_send(const message& m);

  /// The endpoints in use; a bound "tcp://127.0.0.1:*" shows its real port.
  [[nodiscard]] const std::vector<std::string>& endpoints() const noexcept {
    return core_.endpoints;
  }
  [[nodiscard]] const channel_stats& stats() const noexcept { return core_.stats; }
  [[nodiscard]] zmq::socket_t& native() noexcept { return core_.socket; }

 private:
  send_result send_view(std::string_view topic, std::string_view payload,
                        std::chrono::milliseconds timeout);
  send_result send_message(const message& m, std::chrono::milliseconds timeout);

  detail::channel_socket core_;
  encoded scratch_;
  detail::pack_buffer pack_buffer_;
};

/// Receives messages from senders. One thread at a time; the context must
/// outlive it. Endpoints default to bind (">" to connect).
class receiver {
 public:
  receiver(context& ctx, std::string_view endpoints, const socket_options& opts = {});

  /// The next valid message, or nothing when `timeout` passes (or a signal
  /// interrupts the wait). Invalid messages are counted in stats().rejected
  /// and skipped; they never end the wait.
  [[nodiscard]] std::optional<message> receive(std::chrono::milliseconds timeout = forever);
  /// As above into `into`, reusing its storage; false on timeout.
  [[nodiscard]] bool receive(message& into, std::chrono::milliseconds timeout = forever);

  [[nodiscard]] const std::vector<std::string>& endpoints() const noexcept {
    return core_.endpoints;
  }
  [[nodiscard]] const channel_stats& stats() const noexcept { return core_.stats; }
  [[nodiscard]] zmq::socket_t& native() noexcept { return core_.socket; }

 private:
  detail::channel_socket core_;
  zmq::message_t frames_[2];
};

static_assert(std::is_nothrow_move_constructible_v<sender>);
static_assert(std::is_nothrow_move_constructible_v<receiver>);

namespace detail {
/// Receives and decodes one message on a PULL or SUB socket; counts
/// rejections. False on timeout.
[[nodiscard]] bool receive_decoded(channel_socket& core, zmq::message_t (&frames)[2],
                                   message& into, std::chrono::milliseconds timeout);
}  // namespace detail

}  // namespace postbox
