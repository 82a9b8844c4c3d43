// postbox/devices/queue.hpp: the queue device. A durable work queue with
// acknowledgements, retries with backoff, a dead-letter queue, per-key
// ordering, de-duplication, delayed delivery and time-to-live, on the spool
// (docs/spool-format.md), speaking docs/protocol.md section 16 to producers
// and consumers. postbox-queue's main() is a thin shell over this class, and
// tests run it in-process too. Design: docs/queue-device.md.
#pragma once

#include <postbox/context.hpp>
#include <postbox/devices/daemon.hpp>
#include <postbox/spool.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace postbox::devices {

struct queue_config {
  /// Where producers and consumers (DEALER) connect; default bind.
  std::string clients;
  /// PULL: plain point-to-point senders push here; a message's topic names
  /// its queue. Empty: none.
  std::string plain_in;
  /// PUSH: plain receivers pull the queue `plain_queue` here; handing a
  /// message to libzmq counts as its ack. Empty: none.
  std::string plain_out;
  std::string plain_queue = "default";
  /// Control endpoint (JSON): "ping", "stats", "list QUEUE [N]",
  /// "redrive QUEUE [N]". Empty: none.
  std::string control;
  /// One subdirectory (one spool) per queue, and one per dead-letter queue.
  std::filesystem::path data_dir = "postbox-queue-data";

  fsync_policy fsync = fsync_policy::always;
  std::chrono::milliseconds fsync_interval{100};
  /// Under fsync always, while appends keep coming, a spool starts a sync
  /// no sooner than this after the last one began, and the appends that
  /// arrive meanwhile share it (spool_options::sync_spacing: after a sync
  /// of fewer than 64 messages, that share of it). 0 .. 100 ms;
  /// 0: a batch is synced as soon as the writer is free. Messages reach
  /// consumers without waiting for it; confirms wait up to this much more.
  /// 2 ms: at 1 ms the host of a small virtual machine paused the guest
  /// many times a second under load (docs/performance.md).
  std::chrono::microseconds sync_spacing{2000};
  std::uint32_t segment_size = 64u * 1024 * 1024;

  /// Deliveries of one message before it is dead-lettered.
  std::uint32_t max_attempts = 20;
  /// A delivery not acked within this long is given to another consumer.
  std::chrono::milliseconds visibility_timeout{30'000};
  /// Backoff after the n-th failure: initial * 2^(n-1), at most max, +-20% jitter.
  std::chrono::milliseconds retry_initial{1'000};
  std::chrono::milliseconds retry_max{300'000};
  /// A consumer silent this many of its heartbeat intervals is gone.
  std::uint32_t heartbeat_liveness = 3;
  /// Producer message ids remembered this long (and at most dedup_max_ids);
  /// a resend within it is confirmed and not enqueued again. 0: off.
  std::chrono::milliseconds dedup_window{120'000};
  std::size_t dedup_max_ids = 1'000'000;
  /// Messages (and their bytes) read ahead of delivery per queue; the rest
  /// of the backlog stays on disk. Bounds the device's memory.
  std::size_t buffer_messages = 10'000;
  std::size_t buffer_bytes = 16u * 1024 * 1024;
  /// A consumer asking for more prefetch gets this many: it bounds what one
  /// consumer holds in flight (and the device's memory for it).
  std::uint32_t max_prefetch = 10'000;
  /// ... and at most this many bytes of deliveries (records; it always gets
  /// one, however large): with max_prefetch, bounds the device's memory for
  /// a consumer, whatever the message size.
  std::size_t max_prefetch_bytes = 16u * 1024 * 1024;
  /// Queues the device opens at most. Each is four spools (its messages and
  /// attempts, and its dead-letter queue's), each with a writer thread.
  std::size_t max_queues = 100;
  std::int64_t max_message_size = 16 * 1024 * 1024;
  int hwm = 100'000;
  /// A one-line rate log every this long; 0: none.
  std::chrono::seconds stats_interval{30};
  log_level log = log_level::info;
};

/// The documented defaults: clients @tcp://127.0.0.1:5590, plain in :5591,
/// plain out :5592, control :5593, data in ./postbox-queue-data.
[[nodiscard]] queue_config default_queue_config();

struct queue_command {
  queue_config config;
  std::optional<std::string> print_and_exit;  ///< --help, --version
};

/// Parses argv (Boost.Program_options; --config FILE takes the same keys).
/// Throws config_error with a one-line reason for anything wrong.
[[nodiscard]] queue_command load_queue_config(int argc, const char* const* argv);

/// Counters of one queue.
struct queue_stats {
  std::string name;
  std::uint64_t depth = 0;        ///< not yet acked or dead-lettered (on disk)
  std::uint64_t in_flight = 0;    ///< delivered, awaiting ack
  std::uint64_t delayed = 0;      ///< waiting for a delay or a retry backoff
  std::uint64_t dead_letter_depth = 0;
  std::uint64_t enqueued = 0, duplicates = 0, delivered = 0, acked = 0, nacked = 0;
  std::uint64_t redeliveries = 0, timeouts = 0, consumer_losses = 0;
  std::uint64_t dead_lettered = 0, expired = 0, refused = 0;
  std::uint64_t fsync_p50_us = 0, fsync_max_us = 0;  ///< append to durable, recent
  double enqueue_rate = 0, ack_rate = 0;  ///< messages/s over the last second or so
};

struct queue_device_stats {
  std::uint64_t frames_in = 0, stale_acks = 0, unknown_acks = 0;
  std::uint64_t rejected = 0;  ///< frames refused, all reasons
  std::uint64_t consumers = 0, producers_refused = 0;
  std::uint64_t control_requests = 0, control_rejected = 0;
  std::uint64_t pauses = 0;  ///< times the device found itself stalled (SIGSTOP, swap)
};

class queue_device {
 public:
  /// Opens the data directory (recovering every queue found in it) and binds
  /// every endpoint. Throws config_error for a bad value, spool_error when the
  /// data cannot be opened (locked by another device, corrupt header),
  /// transport_error when an endpoint cannot be bound.
  queue_device(context& ctx, queue_config config);
  ~queue_device();
  queue_device(const queue_device&) = delete;
  queue_device& operator=(const queue_device&) = delete;

  /// Serves until `stop` is set (checked at least every 100 ms); then syncs
  /// everything accepted, confirms it, and returns.
  void run(const std::atomic<bool>& stop);

  [[nodiscard]] const std::vector<std::string>& client_endpoints() const noexcept;
  [[nodiscard]] const std::vector<std::string>& control_endpoints() const noexcept;
  [[nodiscard]] const std::vector<std::string>& plain_in_endpoints() const noexcept;
  [[nodiscard]] const std::vector<std::string>& plain_out_endpoints() const noexcept;

  /// Snapshots; call from the thread that runs the loop, or after it.
  [[nodiscard]] std::vector<queue_stats> stats() const;
  [[nodiscard]] const queue_device_stats& device_stats() const noexcept;
  /// Everything as one JSON object (what "stats" on the control endpoint answers).
  [[nodiscard]] std::string stats_json() const;

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace postbox::devices
