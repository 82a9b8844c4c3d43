// postbox/queue_client.hpp: the reliable clients of postbox-queue
// (docs/protocol.md, "16. The queue device").
//
// A producer's send returns once the device has the message on disk under
// its fsync policy; a consumer takes deliveries under a prefetch credit and
// acks or nacks each one. Delivery is at least once: a message whose
// consumer fails, vanishes or stays silent past the visibility timeout is
// delivered again, so handlers must be idempotent (message ids help).
#pragma once

#include <postbox/context.hpp>
#include <postbox/message.hpp>
#include <postbox/options.hpp>
#include <postbox/stats.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace postbox {

/// What became of a produced message.
struct confirm {
  bool ok = false;
  /// Empty when ok; else why not: the device's reason ("spool full: ...",
  /// "bad queue name: ...") or "timed out" when no confirm came in time.
  std::string reason;
  message_id id;
};
using confirm_callback = std::function<void(const confirm&)>;

struct publish_options {
  /// Deliver no earlier than this long after the device accepts it.
  std::chrono::milliseconds delay{0};
  /// Dead-letter (reason "expired") if not delivered within this long; 0: never.
  std::chrono::milliseconds ttl{0};
};

struct producer_options {
  socket_options socket;
  /// Unconfirmed messages at most; send_async waits (confirming) beyond it.
  /// The producer also keeps the buffers of up to min(window, 4,096)
  /// confirmed messages of at most 4 KiB each, for the next ones.
  std::size_t window = 1'000;
  /// An unconfirmed message is sent again, with the same id, after this long.
  std::chrono::milliseconds resend_after{2'000};
  /// A message still unconfirmed after this long fails with "timed out".
  std::chrono::milliseconds give_up_after{30'000};
};

struct producer_stats {
  std::uint64_t sent = 0, confirmed = 0, refused = 0, resent = 0, timed_out = 0;
  std::uint64_t rejected = 0;  ///< frames from the device that were not valid commands
};

/// Sends messages into one named queue of a postbox-queue device (DEALER).
/// One thread at a time; callbacks run inside send_async(), poll() and flush().
class producer {
 public:
  /// `endpoints`: the device's client endpoint (default connect).
  /// Throws config_error for a bad endpoint or queue name.
  producer(context& ctx, std::string_view endpoints, std::string queue, producer_options opts = {});
  ~producer();
  producer(producer&&) noexcept;
  producer& operator=(producer&&) noexcept;

  /// Sends `m` (stamping a new id unless it has one) and waits for the
  /// device's confirm, resending as needed, for at most give_up_after.
  [[nodiscard]] confirm send(const message& m, const publish_options& po = {});
  /// Sends `m`; `done` runs once, when the device confirms or refuses it or
  /// it times out. Waits while `window` messages are unconfirmed. Messages
  /// go out in batches of up to 64 per frame: once 64 wait, or at the next
  /// poll(), flush() or send(), so call one of those to get them moving.
  void send_async(const message& m, confirm_callback done, const publish_options& po = {});
  /// Handles confirms and resends for up to `timeout`; returns the callbacks run.
  std::size_t poll(std::chrono::milliseconds timeout);
  /// Waits until nothing is unconfirmed or `timeout` passes; true when nothing is.
  bool flush(std::chrono::milliseconds timeout);
  [[nodiscard]] std::size_t unconfirmed() const noexcept;
  [[nodiscard]] const producer_stats& stats() const noexcept;
  [[nodiscard]] const std::string& queue() const noexcept;

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

/// One message handed to a consumer. Ack, nack or reject it exactly once
/// (a consumer that neither acks nor nacks gets it redelivered elsewhere
/// after the visibility timeout).
/// The device sends deliveries in batches of at most 64 KiB (a larger
/// delivery travels alone). A payload of 8 KiB or more, or of a quarter of
/// its batch or more, shares the batch's buffer rather than copying it, so
/// holding such a delivery (or a copy of its message) keeps that buffer
/// alive: a held message keeps at most four times its payload or 64 KiB,
/// whichever is more. Smaller payloads are copied out of the batch.
struct delivery {
  message msg;
  std::string queue;
  std::uint64_t tag = 0;      ///< the device's handle for this delivery
  std::uint32_t attempt = 0;  ///< earlier deliveries of this message (0 on the first)
};

/// A handler's answer.
struct verdict {
  enum class kind { ack, nack, reject };
  kind what = kind::ack;
  std::chrono::milliseconds delay{0};  ///< nack: retry no sooner than this (0: the queue's backoff)
  std::string reason;

  [[nodiscard]] static verdict success() { return {}; }
  /// Retry later, with the queue's backoff or at least `delay`.
  [[nodiscard]] static verdict retry(std::string reason = {}, std::chrono::milliseconds delay = {}) {
    return {kind::nack, delay, std::move(reason)};
  }
  /// Give up now: straight to the dead-letter queue.
  [[nodiscard]] static verdict dead_letter(std::string reason) {
    return {kind::reject, {}, std::move(reason)};
  }
};
/// Returns the verdict; an exception it throws counts as retry(what()).
using delivery_handler = std::function<verdict(const delivery&)>;

struct consumer_options {
  socket_options socket;
  /// Deliveries held unacked at most (the device's credit for this consumer).
  /// One consumer's throughput is at most prefetch / round trip (delivery to
  /// ack back at the device, a few ms on a busy machine): 100 allows some
  /// tens of thousands of messages/s; short jobs at high rates want
  /// thousands; long jobs want 1, since a crash strands that many. The
  /// device caps it at its --max-prefetch (10,000 by default).
  std::uint32_t prefetch = 100;
  /// How often the consumer tells the device it is alive; the device gives
  /// its deliveries to others after three intervals of silence.
  std::chrono::milliseconds heartbeat{500};
};

struct consumer_stats {
  std::uint64_t received = 0, acked = 0, nacked = 0, rejected_by_handler = 0;
  std::uint64_t rejected = 0;  ///< frames from the device that were not valid commands
};

/// Takes deliveries from named queues of a postbox-queue device (DEALER).
/// A background thread owns the socket and heartbeats, so a long handler
/// does not make the device think the consumer died. receive(), ack() and
/// the rest are for one thread at a time.
class consumer {
 public:
  consumer(context& ctx, std::string_view endpoints, std::vector<std::string> queues,
           consumer_options opts = {});
  /// Tells the device it is leaving (what it held goes to others at once).
  ~consumer();
  consumer(const consumer&) = delete;
  consumer& operator=(const consumer&) = delete;

  /// The next delivery, waiting up to `timeout`. Throws transport_error
  /// when the consumer's socket failed (its context was closed).
  [[nodiscard]] std::optional<delivery> receive(std::chrono::milliseconds timeout);
  void ack(const delivery& d);
  void nack(const delivery& d, std::string_view reason = {}, std::chrono::milliseconds delay = {});
  void reject(const delivery& d, std::string_view reason);

  /// Receives one delivery (waiting up to `timeout`), runs `handler` and
  /// acks, nacks or rejects by its verdict. False when none came.
  bool process_one(const delivery_handler& handler, std::chrono::milliseconds timeout);
  /// process_one() until `stop` is set; returns the deliveries handled.
  std::size_t run(const delivery_handler& handler, const std::atomic<bool>& stop);

  [[nodiscard]] consumer_stats stats() const;

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace postbox
