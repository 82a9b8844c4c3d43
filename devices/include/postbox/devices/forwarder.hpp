// postbox/devices/forwarder.hpp: the forwarder device. Many publishers and
// many subscribers meet at one well-known address (pubsub mode: XSUB
// frontend, XPUB backend, subscriptions flowing upstream), or producers and a
// pool of workers meet through a streamer (pipeline mode: PULL frontend, PUSH
// backend). postbox-forwarder's main() is a thin shell over this class, and
// tests run it in-process.
//
// Frames pass through as opaque bytes (raw ZeroMQ peers can use it too);
// with `strict`, anything that is not a valid postbox envelope
// (docs/protocol.md) is counted and dropped. See README "postbox-forwarder".
#pragma once

#include <postbox/codec.hpp>
#include <postbox/context.hpp>
#include <postbox/devices/daemon.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace postbox::devices {

enum class forwarder_mode { pubsub, pipeline };

struct forwarder_config {
  forwarder_mode mode = forwarder_mode::pubsub;
  /// Where publishers (pubsub) or producers (pipeline) connect; default bind.
  std::string frontend;
  /// Where subscribers (pubsub) or workers (pipeline) connect; default bind.
  std::string backend;
  /// Control endpoint answering "ping" and "stats" (JSON); empty: none.
  std::string control;
  /// A PUB endpoint mirroring every message that passes; empty: none.
  std::string tap;
  bool strict = false;
  /// Keep the latest message per topic and send it to each new subscriber
  /// of a matching topic (pubsub mode; postbox envelopes only).
  bool last_value_cache = false;
  /// At most this many topics are cached; messages on further topics pass
  /// but are not cached (counted as lvc_uncached).
  std::size_t lvc_max_topics = 10'000;
  /// Messages queued per peer and direction (0: no limit). In pubsub mode a
  /// subscriber whose queue is full misses messages (its gap accounting
  /// reports them); in pipeline mode producers wait.
  int hwm = 10'000;
  /// Larger frames make libzmq drop the sending connection (ZMQ_MAXMSGSIZE).
  std::int64_t max_message_size = 16 * 1024 * 1024;
  /// A one-line rate log every this many seconds; 0: none.
  std::chrono::seconds stats_interval{0};
  log_level log = log_level::info;
};

/// The documented default endpoints for `mode` (all on 127.0.0.1).
[[nodiscard]] forwarder_config default_forwarder_config(forwarder_mode mode);

/// What the command line asks for: run with `config`, or print `text` and
/// exit 0 (--help, --version).
struct forwarder_command {
  forwarder_config config;
  std::optional<std::string> print_and_exit;
};

/// Parses argv (Boost.Program_options; --config FILE takes the same keys).
/// Throws config_error with a one-line reason for anything wrong.
[[nodiscard]] forwarder_command load_forwarder_config(int argc, const char* const* argv);

/// The counters of a running forwarder.
struct forwarder_stats {
  std::uint64_t messages_in = 0, bytes_in = 0;
  std::uint64_t messages_out = 0, bytes_out = 0;
  std::uint64_t subscriptions = 0;   ///< live subscription filters (pubsub)
  std::uint64_t tapped = 0;          ///< messages mirrored to the tap
  std::uint64_t lvc_topics = 0, lvc_sent = 0, lvc_uncached = 0;
  std::uint64_t control_requests = 0, control_rejected = 0;
  reject_counts rejected;            ///< strict mode: frontend messages refused
};

class forwarder {
 public:
  /// Opens and binds or connects every socket. Throws config_error for a bad
  /// value, transport_error when an endpoint cannot be bound (in use).
  forwarder(context& ctx, forwarder_config config);
  ~forwarder();
  forwarder(const forwarder&) = delete;
  forwarder& operator=(const forwarder&) = delete;

  /// Forwards until `stop` is set (checked at least every 100 ms), then
  /// logs a final stats line. Throws transport_error if a socket fails.
  void run(const std::atomic<bool>& stop);

  /// The resolved endpoints (a bound port 0/"*" shows its real port).
  [[nodiscard]] const std::vector<std::string>& frontend_endpoints() const noexcept;
  [[nodiscard]] const std::vector<std::string>& backend_endpoints() const noexcept;
  [[nodiscard]] const std::vector<std::string>& control_endpoints() const noexcept;
  [[nodiscard]] const std::vector<std::string>& tap_endpoints() const noexcept;

  /// A snapshot; call from the thread that runs the loop, or after it.
  [[nodiscard]] const forwarder_stats& stats() const noexcept;
  /// The stats as one JSON object (what the control endpoint answers).
  [[nodiscard]] std::string stats_json() const;

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace postbox::devices
