// postbox/detail/socket.hpp: what every channel does with its socket: open it
// with the options, bind or connect its endpoints, send and receive with a
// timeout, and keep the counters. Not part of the public API.
#pragma once

#include <postbox/codec.hpp>
#include <postbox/context.hpp>
#include <postbox/endpoint.hpp>
#include <postbox/message_id.hpp>
#include <postbox/options.hpp>
#include <postbox/stats.hpp>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <zmq.hpp>

namespace postbox::detail {

/// Result of receiving one multipart message.
struct received_frames {
  std::size_t count = 0;   ///< frames the message had (may exceed what was kept)
  bool got = false;        ///< false: timed out or interrupted
};

/// A socket plus what each channel keeps beside it. Movable, one thread.
class channel_socket {
 public:
  channel_socket(context& ctx, zmq::socket_type type, std::string_view endpoints,
                 endpoint_mode default_mode, const socket_options& opts, bool sending);
  ~channel_socket();
  channel_socket(channel_socket&&) noexcept = default;
  channel_socket& operator=(channel_socket&&) noexcept = default;

  /// Sends the encoded frames after `prefix` frames (routing), waiting up to
  /// `timeout` (forever: block; 0: do not wait). Counts sent / would_block.
  [[nodiscard]] send_result send(encoded& frames, std::chrono::milliseconds timeout,
                                 zmq::message_t* prefix = nullptr, std::size_t prefix_count = 0);

  /// Receives one multipart message, keeping at most `max` frames in `out`
  /// and discarding the rest. Waits up to `timeout`; an interrupting signal
  /// ends the wait as a timeout does.
  [[nodiscard]] received_frames receive(zmq::message_t* out, std::size_t max,
                                        std::chrono::milliseconds timeout);

  /// A new id and timestamp for an outgoing message.
  [[nodiscard]] stamp next_stamp() noexcept;

  zmq::socket_t socket;
  std::vector<std::string> endpoints;  ///< as bound (resolved port) or connected
  channel_stats stats;
  id_generator ids;

 private:
  std::vector<std::string> bound_;  ///< resolved addresses to unbind on close
};

/// A msgpack output stream over a string: reused across sends, so packing
/// allocates only while it grows; unlike msgpack::sbuffer it moves noexcept.
struct pack_buffer {
  std::string bytes;
  void write(const char* data, std::size_t size) { bytes.append(data, size); }
  [[nodiscard]] std::string_view view() const noexcept { return bytes; }
};

/// Milliseconds left until `deadline`, at least 0; -1 when there is none.
[[nodiscard]] int remaining_ms(std::chrono::steady_clock::time_point deadline, bool forever) noexcept;

/// What is left of a timeout. The clock is read only from the first call to
/// left() on, so a call that never has to wait never reads it.
class time_budget {
 public:
  explicit time_budget(std::chrono::milliseconds timeout) noexcept : timeout_(timeout) {}
  /// Milliseconds left: -1 for a negative timeout (no limit), 0 when none.
  [[nodiscard]] int left() noexcept {
    if (timeout_.count() <= 0) return timeout_.count() < 0 ? -1 : 0;
    if (!deadline_) deadline_ = std::chrono::steady_clock::now() + timeout_;
    return remaining_ms(*deadline_, false);
  }
  /// True when a positive timeout has run out. A zero timeout never does:
  /// it means "take what is there, without waiting".
  [[nodiscard]] bool ran_out() noexcept { return timeout_.count() > 0 && left() == 0; }

 private:
  std::chrono::milliseconds timeout_;
  std::optional<std::chrono::steady_clock::time_point> deadline_;
};

/// A random 64-bit number, never 0.
[[nodiscard]] std::uint64_t random_nonzero();

}  // namespace postbox::detail
