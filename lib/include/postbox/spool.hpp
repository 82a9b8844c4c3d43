// postbox/spool.hpp: the durable spool, an append-only, checksummed,
// crash-safe segmented log in one directory, with group commit, cursors and
// done marks. No sockets; usable on its own. Implements docs/spool-format.md.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace postbox {

/// When an append counts as durable (docs/spool-format.md, "Durability").
enum class fsync_policy {
  always,    ///< after the fdatasync covering it (group commit); the default
  interval,  ///< after the write; fdatasync within fsync_interval (loses that much on power loss)
  never,     ///< after the write; no fdatasync (a power loss can lose any record)
};

struct spool_options {
  /// A segment rolls when the next record would take it past this many bytes
  /// (1 KiB .. 1 GiB). Records larger than segment_size - 33 are refused.
  std::uint32_t segment_size = 64u * 1024 * 1024;
  fsync_policy fsync = fsync_policy::always;
  /// The longest a write waits for its fdatasync: under interval, any write
  /// (> 0); under always, a batch of done records alone (no append to sync
  /// it with).
  std::chrono::milliseconds fsync_interval{100};
  /// Under always, while appends keep coming, the least time from the start
  /// of one fdatasync to the start of the next (0 .. 100 ms; 0: a batch is
  /// written and synced as soon as the writer is free). Appends that arrive
  /// sooner wait to share the next sync: fewer, larger syncs for up to this
  /// much more latency. On small virtual machines syncs back to back, beside
  /// threads waking often, make the host pause the guest for milliseconds
  /// (docs/performance.md); spacing them avoids most of it. The whole spacing
  /// follows a sync that covered 64 appends or more; a sync that covered
  /// fewer holds the next back by that share of it (a 64th for one), so
  /// that an appender waiting for each append's sync is not slowed by it.
  /// A flush does not wait.
  std::chrono::microseconds sync_spacing{1000};
  /// Fully-done segments are kept this long after their last append (0: no time retention).
  std::chrono::milliseconds retention_time{0};
  /// Fully-done segments are deleted, oldest first, while the spool is larger (0: none).
  std::uint64_t retention_bytes = 0;
  /// append() blocks while this many bytes wait for the writer (back-pressure):
  /// a quarter of it in each of the four lanes appending threads share.
  /// More than a few MiB does not help: the batch buffers fall out of the
  /// CPU's caches (postbox-bench-spool). The writer holds up to two batches
  /// besides (the one it writes, and under `always` the one being synced;
  /// with visible_before_sync and a sync_spacing, the batches written since
  /// the last sync, about a quarter of this, and those being synced), so
  /// appends in the spool's hands take at most about 3-3.5x this memory.
  std::size_t max_queued_bytes = 8u * 1024 * 1024;
  /// Called on the writer thread after the append callbacks of a batch have
  /// all run, before the writer looks for more work. A caller whose callbacks
  /// only collect outcomes (no lock, no wake-up per record) hands them on
  /// here, once per batch. Must not call back into this spool. Optional.
  std::function<void()> after_callbacks = nullptr;
  /// Under always: a batch's records become visible to cursors (and to
  /// mark_done) once written, before the fdatasync that makes them durable;
  /// their callbacks still wait for it. A reader gets a record about one
  /// sync sooner, but if that sync fails, a record whose append failed
  /// stays visible until the spool is reopened. Off: a record is visible
  /// once durable. With sync_spacing > 0 it also changes what waits out the
  /// spacing: appends are written as they come (by the writer, or by the
  /// appender in write_queued()), and only the fdatasync waits.
  bool visible_before_sync = false;
  /// With visible_before_sync: called on the writer thread when a batch's
  /// records have become visible, before its sync, so that a reader can be
  /// woken; not for batches write_queued() writes. Must not call back into
  /// this spool. Optional.
  std::function<void()> after_visible = nullptr;
};

/// Where a record lives: segment number and byte offset of its header.
/// Stable across restarts. `segment == 0` is "the beginning".
struct position {
  std::uint32_t segment = 0;
  std::uint32_t offset = 0;

  [[nodiscard]] constexpr std::uint64_t to_u64() const noexcept {
    return std::uint64_t{segment} << 32 | offset;
  }
  [[nodiscard]] static constexpr position from_u64(std::uint64_t v) noexcept {
    return {static_cast<std::uint32_t>(v >> 32), static_cast<std::uint32_t>(v)};
  }
  /// "segment:offset", e.g. "1:24".
  [[nodiscard]] std::string to_string() const;
  friend constexpr auto operator<=>(const position&, const position&) = default;
};

/// Why recovery skipped bytes (docs/spool-format.md, "Recovery").
enum class corruption_reason { truncated_header, bad_length, bad_checksum, unknown_type, bad_done };
[[nodiscard]] const char* name(corruption_reason r) noexcept;

struct corrupt_range {
  position where;           ///< first skipped byte
  std::uint64_t size = 0;   ///< bytes skipped
  corruption_reason reason = corruption_reason::bad_checksum;
};

/// What open found. Corrupt ranges are also kept out of every cursor.
struct recovery_report {
  std::uint64_t segments = 0;         ///< segment files read
  std::uint64_t records = 0;          ///< data records recovered
  std::uint64_t pending = 0;          ///< of which not done
  std::uint64_t ignored_records = 0;  ///< "safe to ignore" records skipped
  std::vector<corrupt_range> corrupt;
  std::uint64_t truncated_bytes = 0;  ///< torn tail cut from the last segment
};

/// The outcome of one append, given to its callback from the writer thread.
/// `error` empty: durable under the policy at `pos`. Otherwise the record is
/// not in the spool (`pos` is meaningless): no_space_on_device and other write
/// errors are retryable; an fdatasync error also appears in spool::fault().
struct append_outcome {
  position pos;
  std::error_code error;
};
using append_callback = std::function<void(const append_outcome&)>;

enum class append_status {
  queued,     ///< the callback will be called exactly once
  too_large,  ///< payload larger than segment_size - 33; callback not called
  failed,     ///< the spool stopped after an fsync error (see fault()); callback not called
};

enum class done_status { ok, already_done, unknown_position };
enum class read_status { ok, end, corrupt };

struct spool_record {
  position pos;
  std::string data;  ///< the payload; capacity reused across next() calls
};

struct spool_stats {
  std::uint64_t segments = 0, bytes = 0, records = 0, pending = 0;
  std::uint64_t batches = 0, fsyncs = 0, deleted_segments = 0;
};

namespace detail {
struct spool_state;
class spool_writer;
}  // namespace detail

/// Reads records in position order from the segment files (not from memory).
/// Sees only records already reported durable (with visible_before_sync:
/// already written, their sync under way). Holds the spool's shared
/// state, so it stays valid after the spool is closed (then it reads what was
/// on disk). One thread at a time per cursor; many cursors may run at once.
class cursor {
 public:
  cursor(cursor&&) noexcept;
  cursor& operator=(cursor&&) noexcept;
  ~cursor();

  /// Reads the next record at or after where() into `out`, advancing past it.
  /// `end`: nothing more yet (call again after more appends), or the next
  /// segment cannot be opened right now (out of file descriptors: call again
  /// later; nothing is skipped). `corrupt`: the
  /// record at out.pos changed on disk since it was written (bad checksum or
  /// unreadable); it is skipped. Never throws.
  [[nodiscard]] read_status next(spool_record& out) noexcept;
  /// The position next() starts from.
  [[nodiscard]] position where() const noexcept { return pos_; }

 private:
  friend class spool;
  cursor(std::shared_ptr<detail::spool_state> state, position from, bool only_pending);
  bool fill(std::uint32_t offset, std::size_t n, std::uint64_t published) noexcept;

  std::shared_ptr<detail::spool_state> state_;
  position pos_;
  bool only_pending_ = false;
  int fd_ = -1;
  std::uint32_t fd_segment_ = 0;
  std::string buf_;
  std::uint64_t buf_offset_ = 0;
  std::size_t buf_len_ = 0;
};

/// A spool opened on a directory. Appends from any thread; callbacks run on
/// the spool's writer thread and must not block (they may call append and
/// mark_done). Movable, not copyable.
class spool {
 public:
  /// Opens (creating if needed) the spool in `dir`, locks it, and recovers it
  /// (docs/spool-format.md, "Recovery"). Throws config_error for bad options,
  /// spool_error naming the path when the directory cannot be created or
  /// read, is locked by another opener, or holds a corrupt segment header.
  explicit spool(std::filesystem::path dir, spool_options options = {});
  /// Writes and syncs everything queued (callbacks run), then closes.
  ~spool();
  spool(spool&&) noexcept;
  spool& operator=(spool&&) noexcept;
  spool(const spool&) = delete;
  spool& operator=(const spool&) = delete;

  /// Queues `payload` (copied before return) and returns `queued`; `done` is
  /// called exactly once, from the writer thread, when the record is durable
  /// or has failed. Records appended by one thread take positions in the
  /// order appended. Blocks only while max_queued_bytes wait (never on the
  /// writer thread). Never throws (except std::bad_alloc).
  [[nodiscard]] append_status append(std::string_view payload, append_callback done);
  /// Writes what appends have queued on the calling thread, now, instead of
  /// leaving it to the writer thread: for a reader that appends, then reads
  /// (one thread handing records on, as the queue device does), no wait for
  /// the writer to wake. True: nothing appended before the call waits to be
  /// written any more: it is visible to cursors (or its write failed, which
  /// its callback will say). False: left to the writer thread,
  /// which then calls after_visible as usual; that is so when the batch
  /// would start a new segment (syncs of its own), when many batches
  /// already wait for a sync, when the writer is writing at that moment
  /// (this call never waits for it), when a write fails (the writer
  /// reports it), when the spool has failed, and always unless
  /// visible_before_sync under `always` with sync_spacing > 0. The sync and
  /// the callbacks stay with the writer thread. after_visible is not called
  /// for what this call wrote, other threads' appends included: a reader
  /// other than the caller is not woken for them. Never from a callback.
  /// Out of memory here ends the process, as it does on the writer thread.
  bool write_queued() noexcept;
  /// append() and wait for its outcome. `error` is value_too_large when the
  /// payload is too large, and the fault when the spool has failed.
  [[nodiscard]] append_outcome append_and_wait(std::string_view payload);

  /// Marks the data record at `p` done. In memory at once; written in the
  /// next batch and synced with the next append, flush or close, or after
  /// fsync_interval (a crash or power loss before that makes it pending again). Segments whose
  /// records are all done are deleted as retention allows. Never throws
  /// (except std::bad_alloc, after which the mark may be in memory only:
  /// pending again after a reopen).
  [[nodiscard]] done_status mark_done(position p);
  /// mark_done() for many records at once, under one lock and with one
  /// wake-up of the writer; returns how many were marked (the rest were
  /// already done, unknown, or repeats within `ps`). For acks that come in
  /// batches. std::bad_alloc as for one record; when it comes before any
  /// marking, nothing is marked.
  [[nodiscard]] std::size_t mark_done(std::span<const position> ps);
  /// Whether the data record at `p` is done (false for unknown positions).
  [[nodiscard]] bool is_done(position p) const;

  /// A cursor at the first record at or after `from` (default: the oldest);
  /// with `only_pending` it skips done records.
  [[nodiscard]] cursor read_from(position from = {}, bool only_pending = false) const;

  /// Waits until everything queued before the call is written, and fdatasyncs
  /// it whatever the policy. Returns the fault if the spool has failed.
  std::error_code flush();
  /// Deletes what retention allows now (the writer also does it by itself).
  void reclaim();

  /// The fdatasync error that stopped the spool; empty while healthy.
  [[nodiscard]] std::error_code fault() const;
  [[nodiscard]] const recovery_report& recovery() const noexcept;
  [[nodiscard]] spool_stats stats() const;
  /// Live segment numbers, ascending.
  [[nodiscard]] std::vector<std::uint32_t> segments() const;
  [[nodiscard]] const std::filesystem::path& directory() const noexcept;
  /// The largest payload append() accepts.
  [[nodiscard]] std::size_t max_payload() const noexcept;

 private:
  std::unique_ptr<detail::spool_writer> impl_;
};

}  // namespace postbox
