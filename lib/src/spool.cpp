// The durable spool: opening and recovery, the group-commit writer thread,
// done marks and segment deletion. Implements docs/spool-format.md
// ("Files", "Durability", "Recovery", "Deletion and retention").
#include <postbox/spool.hpp>

#include <postbox/detail/spool_format.hpp>
#include <postbox/detail/spool_state.hpp>
#include <postbox/error.hpp>

#include <array>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <fcntl.h>
#include <future>
#include <limits>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <system_error>
#include <thread>
#include <unistd.h>
#include <utility>

namespace postbox {
namespace detail {

namespace fmt = spool_format;

spool_io& spool_io_calls() noexcept {
  static spool_io io{&::pwrite, &::fdatasync};
  return io;
}

namespace {

using sys_clock = std::chrono::system_clock;
using steady = std::chrono::steady_clock;

std::int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             sys_clock::now().time_since_epoch())
      .count();
}

std::error_code errno_code(int e) { return {e, std::generic_category()}; }

[[noreturn]] void fail(const std::string& what, const std::filesystem::path& p, int err) {
  throw spool_error("spool: " + what + " \"" + p.string() + "\": " + std::strerror(err));
}

// Writes all of [p, p+n) at `off`; 0 or an errno.
int write_all(int fd, const unsigned char* p, std::size_t n, std::uint64_t off) noexcept {
  while (n > 0) {
    const ssize_t w = spool_io_calls().pwrite(fd, p, n, static_cast<off_t>(off));
    if (w < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (w == 0) return EIO;
    p += w;
    n -= static_cast<std::size_t>(w);
    off += static_cast<std::uint64_t>(w);
  }
  return 0;
}

int sync_fd(int fd) noexcept {
  while (spool_io_calls().fdatasync(fd) != 0) {
    if (errno != EINTR) return errno;
  }
  return 0;
}

int sync_dir(const std::filesystem::path& dir) noexcept {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return errno;
  const int rc = ::fsync(fd) == 0 ? 0 : errno;
  ::close(fd);
  return rc;
}

// Creates segment `n` atomically (tmp, header, fsync, rename, fsync dir).
// Returns the open fd, or -errno.
int create_segment(const std::filesystem::path& dir, std::uint32_t n) noexcept {
  const std::string name = fmt::segment_file_name(n);
  const auto final_path = dir / name;
  const auto tmp_path = dir / (name + ".tmp");
  const int fd = ::open(tmp_path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return -errno;
  unsigned char header[fmt::segment_header_size];
  fmt::encode_segment_header(n, header);
  int err = write_all(fd, header, sizeof header, 0);
  if (err == 0) err = sync_fd(fd);
  if (err == 0 && ::rename(tmp_path.c_str(), final_path.c_str()) != 0) err = errno;
  if (err == 0) err = sync_dir(dir);
  if (err != 0) {
    ::close(fd);
    ::unlink(tmp_path.c_str());
    ::unlink(final_path.c_str());  // if the rename happened but the dir sync failed
    return -err;
  }
  return fd;
}

// Builds the in-memory index while a segment is scanned.
class recovery_sink final : public fmt::scan_sink {
 public:
  recovery_sink(spool_state& st, recovery_report& rep, std::uint32_t seg)
      : st_(st), rep_(rep), seg_(seg), index_(st.segments[seg]) {}

  void on_record(std::uint32_t offset, std::uint8_t type, const unsigned char* payload,
                 std::uint32_t length) override {
    if (type == fmt::type_data) {
      index_.add(offset);
      ++rep_.records;
    } else if (type == fmt::type_done) {
      for (std::uint32_t i = 0; i < length; i += fmt::done_entry_size) {
        const position p{fmt::load_u32(payload + i), fmt::load_u32(payload + i + 4)};
        const auto it = st_.segments.find(p.segment);
        if (it == st_.segments.end()) continue;  // deleted segment
        segment_index& s = it->second;
        const std::size_t k = s.find(p.offset);
        if (k < s.offsets.size() && s.offsets[k] == p.offset && !s.is_done(k)) {
          s.set_done(k);
          ++s.done;
        }
      }
    } else {
      ++rep_.ignored_records;
    }
  }
  void on_corrupt(std::uint32_t offset, std::uint32_t size, corruption_reason why) override {
    rep_.corrupt.push_back({{seg_, offset}, size, why});
  }

 private:
  spool_state& st_;
  recovery_report& rep_;
  std::uint32_t seg_;
  segment_index& index_;
};

}  // namespace

class spool_writer {
 public:
  spool_writer(std::filesystem::path dir, spool_options opts);
  ~spool_writer();

  append_status append(std::string_view payload, append_callback cb);
  bool write_queued() noexcept;
  done_status mark_done(position p);
  std::size_t mark_done(std::span<const position> ps);
  std::error_code flush();
  void request_reclaim();
  std::error_code fault() const {
    std::lock_guard lk(qmu_);
    return fault_;
  }
  spool_stats stats() const;
  std::size_t max_payload() const noexcept {
    return opts_.segment_size - fmt::segment_header_size - fmt::record_header_size;
  }

  std::shared_ptr<spool_state> state_ = std::make_shared<spool_state>();
  spool_options opts_;
  recovery_report report_;

 private:
  done_status mark_locked(position p, bool& full);
  void queue_marks(std::span<const position> ps, bool full);
  struct entry {
    std::uint32_t size;  // framed bytes in the batch buffer
    bool data;           // false: a done record the writer made
    append_callback cb;
  };

  // Appenders queue records in lanes, each thread in its own while there are
  // no more threads than lanes, so that they do not contend for one cache
  // line (a shared lock, or even a shared counter, cost more than the rest of
  // an append). The writer takes every lane's records at once and writes
  // them in lane order. Each lane holds at most max_queued_bytes / lane_count.
  static constexpr std::size_t lane_count = 4;
  struct alignas(64) lane {
    std::mutex mu;
    std::vector<unsigned char> staging;
    std::vector<entry> entries;
    // staging.size(), changed under `mu`; read without it by the writer's
    // wake-up check and by a waiting appender.
    std::atomic<std::size_t> bytes{0};
  };
  // One batch as the writer holds it: each lane's bytes and entries (the
  // vectors swapped out of the lanes, keeping their capacity), then the
  // done records it makes.
  struct batch_parts {
    std::array<std::vector<unsigned char>, lane_count + 1> bytes;
    std::array<std::vector<entry>, lane_count + 1> entries;
    [[nodiscard]] bool empty() const noexcept {
      for (const auto& e : entries)
        if (!e.empty()) return false;
      return true;
    }
    void clear() noexcept {
      for (auto& b : bytes) b.clear();
      for (auto& e : entries) e.clear();
    }
  };
  static constexpr std::size_t marks_part = lane_count;
  // An entry of a batch in write order: where its bytes are, and the
  // position they are written at.
  struct flat_entry {
    entry* e;
    const unsigned char* bytes;
    position pos;
  };

  // What each lane's vectors reserve: a full queue of ~100-byte records
  // shared among the lanes, never more than 64 MiB of address space in all
  // (larger queues, or smaller records, grow the vectors as needed).
  std::size_t reserved_bytes() const noexcept {
    return std::min<std::size_t>(opts_.max_queued_bytes, 64u << 20) / lane_count;
  }
  std::size_t reserved_entries() const noexcept { return reserved_bytes() / 128; }
  // A batch from its write to its report: the writer takes a batch into a
  // slot, writes it (write_slot), and reports it (complete) once the
  // fdatasync that covers it has returned.
  struct slot {
    batch_parts parts;
    std::vector<flat_entry> flat;  // the batch's entries in write order
    std::size_t written = 0;       // flat[0, written) are in the file
    bool published = false;        // visible to cursors already (visible_before_sync)
    std::size_t first_mark_entry = 0;
    std::error_code werr;          // why the rest are not
    std::uint32_t first_head = 0, last_head = 0;
    bool rolled = false;
    bool callbacks = false;        // appends among the entries: after_callbacks follows
    std::uint64_t appended_bytes = 0;  // bytes written, when data records are among them (else 0)
  };
  using slot_ptr = std::unique_ptr<slot>;
  // Under `always`, a large batch's fdatasync runs on the sync thread while
  // the writer writes the next batch and reports the one before: one sync
  // in flight at a time, one batch waiting for it. Smaller batches are
  // synced on the writer thread: the hand-off would cost more than it hides.
  static constexpr std::size_t async_sync_bytes = 256 * 1024;
  // With visible_before_sync under `always` (defers_syncs()), batches are
  // written as appends come, so that readers get them at once, and only
  // the syncs are spaced: a batch written within sync_spacing of the last
  // sync's start waits, written and visible, for the next sync with the
  // batches after it. Its appender writes it (write_queued()), or the
  // writer does, woken by the first append into an empty lane unless a
  // sync is already wanted (it then takes the lanes when it wakes for that
  // sync), and taking them no more often than take_spacing, so that a
  // burst of appends is one write. The writer runs the fdatasync itself,
  // without write_mu_ (sync_waiting()); the sync thread is not used.
  static constexpr std::chrono::microseconds take_spacing{100};
  // A sync that covered this many appended records or more holds the next
  // one back by the whole sync_spacing; one that covered fewer, by that
  // share of it. A stream of appends gets the full spacing (and its few,
  // large syncs); a lone appender waiting for each confirm, or a trickle,
  // gets its syncs at once instead of one spacing apart.
  static constexpr std::uint64_t full_group = 64;
  // At most this many written batches wait for one sync (each holds its
  // buffers until reported), and this many spare ones are kept.
  static constexpr std::size_t max_waiting_slots = 64;
  static constexpr std::size_t max_spare_slots = 8;
  [[nodiscard]] bool defers_syncs() const noexcept {
    return opts_.visible_before_sync && opts_.fsync == fsync_policy::always &&
           opts_.sync_spacing.count() > 0;
  }

  static std::size_t my_lane() noexcept;
  void recover();
  void run();
  // Under write_mu_ (as are the rest below, `wl` holding it): writes a
  // batch, and under visible_before_sync publishes it (with after_visible
  // when `wake_readers`); its sync is settle()'s to start.
  void write_slot(slot& s, std::vector<position>& marks, bool wake_readers);
  // Syncs the written batches, or leaves them to the next sync (when the
  // spool defers syncs and the last one is recent), or hands their sync to
  // the sync thread; then reports those whose sync has returned. `force`:
  // a flush or closing, which syncs whatever is written.
  void settle(bool force, std::unique_lock<std::mutex>& wl);
  // When the spool defers syncs: syncs every written batch (without the
  // lock while fdatasync runs) and reports them.
  void sync_waiting(std::unique_lock<std::mutex>& wl);
  bool complete(slot& s);  // false: not every entry was written
  void publish(slot& s);   // the written records become visible to cursors and mark_done
  // complete()s a group's batches in order (without the lock when the spool
  // defers syncs); their slots are spare again.
  void report_all(std::vector<slot_ptr>& group, std::unique_lock<std::mutex>& wl);
  void finish_in_flight(std::unique_lock<std::mutex>& wl);  // waits for the in-flight sync, reports
  void take_lanes(slot& s);  // also under a caller's qmu_ when on the writer thread
  [[nodiscard]] slot_ptr take_spare();
  // When the written batches' sync is due (they wait for it); max() when
  // none waits.
  [[nodiscard]] std::chrono::steady_clock::time_point waiting_due() const noexcept;
  // Bytes appended in the batches written since the last sync started.
  [[nodiscard]] std::uint64_t waiting_bytes() const noexcept {
    std::uint64_t n = 0;
    for (const auto& w : waiting_) n += w->appended_bytes;
    return n;
  }
  // As many batches, or bytes, wait for a sync as the spool lets wait: the
  // sync starts now, and write_queued() leaves the next to the writer.
  [[nodiscard]] bool waiting_full() const noexcept {
    return waiting_.size() >= max_waiting_slots || waiting_bytes() >= lane_limit();
  }
  std::error_code roll();
  int sync_head();  // fdatasync of the head segment; a failure is the spool's fault
  // Notes a sync starting now (under write_mu_): the next waits
  // spacing_now_ after it.
  void begin_sync();
  void start_sync();  // the head segment's fdatasync, on the sync thread
  int wait_sync();    // 0, or the errno of the last started sync (also the spool's fault)
  void sync_loop();
  void stop_sync_thread();
  // Starts the sync thread on first use: most spools (a queue's attempts
  // and dead letters) never write a batch large enough to need it.
  bool have_sync_thread() noexcept;
  void set_fault(int err);
  void reclaim_now();

  int lock_fd_ = -1;
  int head_fd_ = -1;
  std::uint32_t head_ = 0;       // writer thread only
  std::uint64_t head_end_ = 0;   // writer thread only
  bool dirty_ = false;           // written since the last fdatasync (writer thread only)
  // While dirty_: when fsync_interval has passed since the first unsynced
  // write (interval: any; always: done records written alone).
  std::chrono::steady_clock::time_point sync_due_{};
  // When the last sync began, and the wait after it before the next:
  // sync_spacing in proportion to the appends that sync covered, up to
  // full_group (begin_sync). Writer thread only (written under write_mu_).
  std::chrono::steady_clock::time_point last_sync_start_{};
  std::chrono::nanoseconds spacing_now_{};
  std::uint64_t appended_since_sync_ = 0;  // records written since the last sync began (under write_mu_)
  std::vector<position> carry_marks_;  // marks whose done record failed to write

  // Batches move from spare_ to waiting_ (written, no sync started since),
  // to in_flight_ (their sync running on the sync thread), and back to
  // spare_ once reported, in write order throughout. spare_ and waiting_
  // are under write_mu_; in_flight_ and reporting_ are the writer thread's.
  std::vector<slot_ptr> spare_, waiting_;
  std::vector<slot_ptr> in_flight_, reporting_;
  std::vector<position> no_marks_;   // write_queued()'s (carried marks may join it)
  std::chrono::steady_clock::time_point last_take_{};
  // Held while the file is written or its head changes (the fields marked
  // "writer thread only" above and below are under it too, when the spool
  // defers syncs and write_queued() writes from the appending thread).
  // Taken before qmu_.
  std::mutex write_mu_;
  // Set when a written batch with appends waits for a sync; cleared when
  // one covers it. Wakes the writer (write_queued()).
  std::atomic<bool> sync_wanted_{false};
  // Set by write_queued() (under write_mu_) when it leaves work to the
  // writer: a batch handed over, one whose write failed, or lanes to take;
  // cleared by the writer when it takes the work on.
  std::atomic<bool> writer_wanted_{false};
  slot_ptr handed_over_;  // under write_mu_: taken, to be written before the next take

  [[nodiscard]] bool lanes_empty() const noexcept {
    for (const auto& l : lanes_)
      if (l.bytes.load(std::memory_order_acquire) != 0) return false;
    return true;
  }
  [[nodiscard]] bool a_lane_full() const noexcept {
    for (const auto& l : lanes_)
      if (l.bytes.load(std::memory_order_acquire) >= lane_limit()) return true;
    return false;
  }
  [[nodiscard]] std::size_t lane_limit() const noexcept {
    return std::max<std::size_t>(1, opts_.max_queued_bytes / lane_count);
  }

  std::array<lane, lane_count> lanes_;
  mutable std::mutex qmu_;  // the rest of the shared state; taken before a lane's lock
  std::condition_variable writer_cv_, space_cv_, flush_cv_;
  std::vector<position> marks_;
  bool stop_ = false;
  bool reclaim_req_ = true;
  std::uint64_t flush_req_ = 0, flush_done_ = 0;
  std::error_code fault_;
  std::atomic<bool> faulted_{false};
  std::atomic<std::uint64_t> batches_{0}, fsyncs_{0}, deleted_{0};
  std::thread thread_;
  std::thread::id writer_id_;

  std::mutex sync_mu_;
  std::condition_variable sync_cv_;
  // Written under sync_mu_. sync_started_ is written by the writer thread
  // only, which may read it without the lock; sync_finished_ is atomic for
  // the writer's wait under qmu_ (run()).
  std::uint64_t sync_started_ = 0;
  std::atomic<std::uint64_t> sync_finished_{0};
  int sync_fd_ = -1, sync_result_ = 0;                  // under sync_mu_
  bool sync_stop_ = false;
  std::thread sync_thread_;
};

spool_writer::spool_writer(std::filesystem::path dir, spool_options opts) : opts_(opts) {
  if (opts_.segment_size < 1024 || opts_.segment_size > (1u << 30))
    throw config_error("spool: segment_size " + std::to_string(opts_.segment_size) +
                       " is outside 1024 .. 1073741824 bytes");
  if (opts_.fsync == fsync_policy::interval && opts_.fsync_interval.count() <= 0)
    throw config_error("spool: fsync_interval must be > 0 ms for fsync_policy::interval");
  if (opts_.sync_spacing.count() < 0 || opts_.sync_spacing > std::chrono::milliseconds(100))
    throw config_error("spool: sync_spacing must be 0 .. 100 ms, got " +
                       std::to_string(opts_.sync_spacing.count()) + " us");
  if (opts_.retention_time.count() < 0)
    throw config_error("spool: retention_time must not be negative");
  state_->dir = std::move(dir);
  const auto& d = state_->dir;
  std::error_code ec;
  std::filesystem::create_directories(d, ec);
  if (ec) fail("cannot create directory", d, ec.value());

  const auto lock_path = d / "LOCK";
  lock_fd_ = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (lock_fd_ < 0) fail("cannot open", lock_path, errno);
  if (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    const int e = errno;
    ::close(lock_fd_);
    if (e == EWOULDBLOCK)
      throw spool_error("spool: directory \"" + d.string() +
                        "\" is in use by another opener (its LOCK is held)");
    fail("cannot lock", lock_path, e);
  }
  try {
    recover();
  } catch (...) {
    if (head_fd_ >= 0) ::close(head_fd_);
    ::close(lock_fd_);
    throw;
  }
  // Appenders fill the lanes' vectors, and the writer swaps them with its
  // own, so all keep their capacity. Reserving it up front spares appenders
  // the reallocation copies (and their page faults) while batches grow; only
  // the pages touched take memory.
  for (auto& l : lanes_) {
    l.staging.reserve(reserved_bytes());
    l.entries.reserve(reserved_entries());
  }
  {
    // One spare slot, reserved likewise; more grow as they are used
    // (reserving them all would multiply the address space an idle spool
    // holds). Made before the writer starts: write_queued() takes it too.
    auto first = std::make_unique<slot>();
    for (std::size_t i = 0; i < lane_count; ++i) {
      first->parts.bytes[i].reserve(reserved_bytes());
      first->parts.entries[i].reserve(reserved_entries());
    }
    spare_.push_back(std::move(first));
  }
  try {
    thread_ = std::thread([this] { run(); });
  } catch (...) {
    ::close(head_fd_);
    ::close(lock_fd_);  // releases the directory's lock
    throw;
  }
  writer_id_ = thread_.get_id();
}

void spool_writer::recover() {
  const auto& d = state_->dir;
  std::vector<std::uint32_t> numbers;
  std::error_code ec;
  std::filesystem::directory_iterator it(d, ec);
  if (ec) fail("cannot read directory", d, ec.value());
  for (; it != std::filesystem::directory_iterator(); it.increment(ec)) {
    const std::string name = it->path().filename().string();
    std::uint32_t n = 0;
    if (name.size() > 4 && name.ends_with(".log.tmp") &&
        fmt::parse_segment_file_name(name.substr(0, name.size() - 4), n)) {
      std::filesystem::remove(it->path(), ec);
    } else if (fmt::parse_segment_file_name(name, n)) {
      numbers.push_back(n);
    }
  }
  if (ec) fail("cannot read directory", d, ec.value());
  std::sort(numbers.begin(), numbers.end());

  for (std::size_t i = 0; i < numbers.size(); ++i) {
    const std::uint32_t n = numbers[i];
    const bool last = i + 1 == numbers.size();
    const auto path = d / fmt::segment_file_name(n);
    const int fd = ::open(path.c_str(), (last ? O_RDWR : O_RDONLY) | O_CLOEXEC);
    if (fd < 0) fail("cannot open", path, errno);
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      const int e = errno;
      ::close(fd);
      fail("cannot stat", path, e);
    }
    const auto size = static_cast<std::uint64_t>(st.st_size);
    void* map = nullptr;
    if (size > 0) {
      map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
      if (map == MAP_FAILED) {
        const int e = errno;
        ::close(fd);
        fail("cannot map", path, e);
      }
    }
    fmt::scan_result r;
    try {
      recovery_sink sink(*state_, report_, n);
      r = fmt::scan_segment(static_cast<const unsigned char*>(map), size, n, sink);
    } catch (...) {
      if (map) ::munmap(map, size);
      ::close(fd);
      throw;
    }
    if (map) ::munmap(map, size);
    if (r.header != fmt::header_problem::none) {
      ::close(fd);
      throw spool_error("spool: corrupt segment header in \"" + path.string() +
                        "\": " + fmt::describe(r.header));
    }
    segment_index& idx = state_->segments[n];
    idx.bytes = size;
    idx.last_write_ms = std::int64_t{st.st_mtim.tv_sec} * 1000 + st.st_mtim.tv_nsec / 1000000;
    if (size > std::numeric_limits<std::uint32_t>::max()) {
      report_.corrupt.push_back({{n, 0xffffffffu}, size - 0xffffffffu,
                                 corruption_reason::bad_length});
    }
    if (r.tail_size > 0) {
      if (last) {
        if (::ftruncate(fd, static_cast<off_t>(r.valid_end)) != 0 || sync_fd(fd) != 0) {
          const int e = errno;
          ::close(fd);
          fail("cannot truncate the torn tail of", path, e);
        }
        report_.truncated_bytes += r.tail_size;
        idx.bytes = r.valid_end;
      } else {
        report_.corrupt.push_back(
            {{n, static_cast<std::uint32_t>(r.valid_end)}, r.tail_size, r.tail_reason});
      }
    }
    ++report_.segments;
    if (last) {
      head_fd_ = fd;
      head_ = n;
      head_end_ = idx.bytes;
    } else {
      ::close(fd);
      idx.offsets.shrink_to_fit();
      idx.done_bits.shrink_to_fit();
    }
  }
  if (head_fd_ < 0) {
    const int fd = create_segment(d, 1);
    if (fd < 0) fail("cannot create", d / fmt::segment_file_name(1), -fd);
    head_fd_ = fd;
    head_ = 1;
    head_end_ = fmt::segment_header_size;
    auto& idx = state_->segments[1];
    idx.bytes = head_end_;
    idx.last_write_ms = now_ms();
  }
  state_->head = head_;
  for (const auto& [n, s] : state_->segments) report_.pending += s.offsets.size() - s.done;
}

spool_writer::~spool_writer() {
  {
    std::lock_guard lk(qmu_);
    stop_ = true;
  }
  writer_cv_.notify_one();
  space_cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  stop_sync_thread();
  if (head_fd_ >= 0) ::close(head_fd_);
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

std::size_t spool_writer::my_lane() noexcept {
  static std::atomic<std::size_t> next{0};
  thread_local const std::size_t mine = next.fetch_add(1, std::memory_order_relaxed) % lane_count;
  return mine;
}

append_status spool_writer::append(std::string_view payload, append_callback cb) {
  if (payload.size() > max_payload()) return append_status::too_large;
  const auto len = static_cast<std::uint32_t>(payload.size());
  unsigned char header[fmt::record_header_size];
  fmt::encode_record_header(fmt::type_data, payload.data(), len, header);
  lane& l = lanes_[my_lane()];
  if (l.bytes.load(std::memory_order_relaxed) >= lane_limit() &&
      std::this_thread::get_id() != writer_id_) {
    std::unique_lock lk(qmu_);
    writer_cv_.notify_one();  // a writer waiting out sync_spacing takes the lanes now
    space_cv_.wait(lk, [&] {
      return l.bytes.load(std::memory_order_acquire) < lane_limit() || faulted_.load() || stop_;
    });
  }
  if (faulted_.load()) return append_status::failed;
  const std::size_t framed = sizeof header + len;
  bool wake = false;
  {
    std::lock_guard lk(l.mu);
    l.staging.insert(l.staging.end(), header, header + sizeof header);
    const auto* p = reinterpret_cast<const unsigned char*>(payload.data());
    l.staging.insert(l.staging.end(), p, p + len);
    try {
      l.entries.push_back({static_cast<std::uint32_t>(framed), true, std::move(cb)});
    } catch (...) {
      l.staging.resize(l.staging.size() - framed);
      throw;
    }
    wake = l.staging.size() == framed;
    l.bytes.store(l.staging.size(), std::memory_order_release);  // a fence here costs the append
  }
  if (wake && defers_syncs()) {
    // While written batches wait for a sync, the writer wakes for it within
    // sync_spacing and takes the lanes then (if write_queued() has not):
    // no wake-up now. The fences pair with the writer's after it clears
    // sync_wanted_: it sees this append in the lanes, or this sees the flag
    // cleared.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (sync_wanted_.load(std::memory_order_relaxed)) wake = false;
  }
  if (wake) {
    // Under qmu_, so that the writer is either before its check of the
    // lanes or already waiting.
    { std::lock_guard lk(qmu_); }
    writer_cv_.notify_one();
  }
  return append_status::queued;
}

// Under state_->mu: marks `p` done in the index. `full` becomes true when
// that completes a segment other than the head (it can be deleted).
done_status spool_writer::mark_locked(position p, bool& full) {
  const auto it = state_->segments.find(p.segment);
  if (it == state_->segments.end()) return done_status::unknown_position;
  segment_index& s = it->second;
  const std::size_t k = s.find(p.offset);
  if (k == s.offsets.size() || s.offsets[k] != p.offset) return done_status::unknown_position;
  if (s.is_done(k)) return done_status::already_done;
  s.set_done(k);
  ++s.done;
  if (s.fully_done() && p.segment != state_->head) full = true;
  return done_status::ok;
}

done_status spool_writer::mark_done(position p) {
  bool full = false;
  {
    std::lock_guard lk(state_->mu);
    if (const auto st = mark_locked(p, full); st != done_status::ok) return st;
  }
  queue_marks(std::span<const position>(&p, 1), full);
  return done_status::ok;
}

std::size_t spool_writer::mark_done(std::span<const position> ps) {
  if (ps.empty()) return 0;
  // The newly marked ones; kept per thread, so that a caller marking a
  // frame of acks at a time allocates only when its frames grow.
  thread_local std::vector<position> marked;
  marked.clear();
  marked.reserve(ps.size());
  bool full = false;
  {
    std::lock_guard lk(state_->mu);
    for (const position p : ps)
      if (mark_locked(p, full) == done_status::ok) marked.push_back(p);
  }
  if (!marked.empty()) queue_marks(marked, full);
  return marked.size();
}

// Hands newly marked positions to the writer, which writes their done
// records with its next batch.
void spool_writer::queue_marks(std::span<const position> ps, bool full) {
  {
    std::lock_guard lk(qmu_);
    marks_.insert(marks_.end(), ps.begin(), ps.end());
    if (full) reclaim_req_ = true;
  }
  if (defers_syncs()) {
    // As for an append: the writer wakes for the sync that written batches
    // wait for, and writes the marks then.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (sync_wanted_.load(std::memory_order_relaxed)) return;
  }
  writer_cv_.notify_one();
}

std::error_code spool_writer::flush() {
  std::unique_lock lk(qmu_);
  const std::uint64_t ticket = ++flush_req_;
  writer_cv_.notify_one();
  flush_cv_.wait(lk, [&] { return flush_done_ >= ticket; });
  return fault_;
}

void spool_writer::request_reclaim() {
  std::unique_lock lk(qmu_);
  reclaim_req_ = true;
  const std::uint64_t ticket = ++flush_req_;
  writer_cv_.notify_one();
  flush_cv_.wait(lk, [&] { return flush_done_ >= ticket; });
}

spool_stats spool_writer::stats() const {
  spool_stats s;
  {
    std::lock_guard lk(state_->mu);
    s.segments = state_->segments.size();
    for (const auto& [n, seg] : state_->segments) {
      s.bytes += seg.bytes;
      s.records += seg.offsets.size();
      s.pending += seg.offsets.size() - seg.done;
    }
  }
  s.batches = batches_.load();
  s.fsyncs = fsyncs_.load();
  s.deleted_segments = deleted_.load();
  return s;
}

void spool_writer::set_fault(int err) {
  std::lock_guard lk(qmu_);
  if (!fault_) fault_ = errno_code(err);
  faulted_.store(true);
  space_cv_.notify_all();
}

void spool_writer::run() {
  std::vector<position> marks;
  const auto tick = opts_.retention_time.count() > 0
                        ? std::min<std::chrono::milliseconds>(opts_.retention_time,
                                                              std::chrono::seconds(1))
                        : std::chrono::milliseconds(0);
  auto next_tick = steady::now() + tick;
  std::unique_lock wl(write_mu_, std::defer_lock);
  std::unique_lock lk(qmu_, std::defer_lock);
  while (true) {
    // When a sync is due, and how long appends wait to share it, from the
    // file's state (write_mu_, taken before qmu_).
    wl.lock();
    auto deadline = waiting_due();
    // (A faulted spool syncs no more: without the check, an unsynced write
    // would keep the deadline in the past and the writer spinning.)
    if (dirty_ && opts_.fsync != fsync_policy::never && !faulted_.load())
      deadline = std::min(deadline, sync_due_);
    // Under always, appends that come while the last sync is recent wait
    // to share the next one (sync_spacing): when the spool defers syncs,
    // written (a burst at a time, take_spacing); otherwise, in the lanes.
    auto not_before = steady::time_point::min();
    if (opts_.fsync == fsync_policy::always && opts_.sync_spacing.count() > 0) {
      if (defers_syncs())
        not_before = last_take_ + take_spacing;
      else if (in_flight_.empty())
        not_before = last_sync_start_ + spacing_now_;
    }
    const bool wanted = sync_wanted_.load();
    wl.unlock();
    // Pairs with append()'s: after sync_wanted_ was cleared (sync_waiting),
    // an append that did not wake this thread is in the lanes by now.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (tick.count() > 0) deadline = std::min(deadline, next_tick);

    lk.lock();
    const auto ready = [&] {
      return stop_ || !lanes_empty() || !marks_.empty() || flush_req_ != flush_done_ ||
             reclaim_req_ || writer_wanted_.load();
    };
    if (!ready()) {
      // Wait for work; for the running sync to return (then report its
      // batches); for batches written by write_queued() that want a sync;
      // or for a sync that is due.
      const std::uint64_t started = sync_started_;  // written by this thread only
      const auto synced = [&] { return !in_flight_.empty() && sync_finished_.load() == started; };
      const auto woken = [&] { return ready() || synced() || sync_wanted_.load() != wanted; };
      if (deadline == steady::time_point::max())
        writer_cv_.wait(lk, woken);
      else
        writer_cv_.wait_until(lk, deadline, woken);
      if (!ready() && (synced() || sync_wanted_.load() != wanted)) {
        lk.unlock();
        if (synced()) {
          wl.lock();
          finish_in_flight(wl);
          wl.unlock();
        }
        continue;  // with the deadline worked out again
      }
    }
    if (!lanes_empty() && steady::now() < not_before) {
      // Not a flush, nor closing, nor an appender held back by a full lane.
      writer_cv_.wait_until(lk, not_before, [&] {
        return stop_ || flush_req_ != flush_done_ || a_lane_full();
      });
    }
    // The lanes are taken under write_mu_, so that batches are written in
    // the order taken, by this thread or by write_queued().
    lk.unlock();
    wl.lock();
    lk.lock();
    const bool stopping = stop_;
    slot_ptr cur = take_spare();
    take_lanes(*cur);
    marks.swap(marks_);
    const std::uint64_t flush_target = flush_req_;
    // Closing syncs whatever is written, done records included.
    const bool force_sync = flush_target != flush_done_ || stopping;
    bool want_reclaim = reclaim_req_;
    reclaim_req_ = false;
    space_cv_.notify_all();
    lk.unlock();

    writer_wanted_.store(false);
    if (handed_over_) {
      // Taken by write_queued() before these lanes: written first.
      write_slot(*handed_over_, no_marks_, true);
      no_marks_.clear();
      waiting_.push_back(std::move(handed_over_));
    }
    cur->callbacks = !cur->parts.empty();
    if (cur->callbacks) last_take_ = steady::now();
    if (cur->callbacks || !marks.empty() || force_sync) {
      // A flush reports everything; a fault reports in order.
      if (force_sync || faulted_.load()) finish_in_flight(wl);
      write_slot(*cur, marks, true);
      waiting_.push_back(std::move(cur));
    } else {
      spare_.push_back(std::move(cur));
    }
    settle(force_sync, wl);
    marks.clear();
    const auto now = steady::now();
    if (dirty_ && opts_.fsync != fsync_policy::never && now >= sync_due_ && !faulted_.load()) {
      if (defers_syncs())
        sync_waiting(wl);
      else
        (void)sync_head();
    }
    if (tick.count() > 0 && now >= next_tick) {
      want_reclaim = true;
      next_tick = now + tick;
    }
    if (want_reclaim && !faulted_.load()) {
      finish_in_flight(wl);
      reclaim_now();
    }
    const bool idle = waiting_.empty() && in_flight_.empty() && !handed_over_;
    wl.unlock();

    lk.lock();
    flush_done_ = flush_target;
    flush_cv_.notify_all();
    const bool done = stopping && lanes_empty() && marks_.empty() && idle;
    lk.unlock();
    if (done) break;
  }
}

void spool_writer::take_lanes(slot& s) {
  for (std::size_t i = 0; i < lane_count; ++i) {
    lane& l = lanes_[i];
    std::lock_guard ll(l.mu);
    s.parts.bytes[i].swap(l.staging);
    s.parts.entries[i].swap(l.entries);
    l.bytes.store(0, std::memory_order_release);
  }
}

bool spool_writer::write_queued() noexcept {
  if (!defers_syncs() || faulted_.load()) return false;
  bool written = false, wake = false, had_full = false, was_wanted = false;
  {
    // The writer holds the lock while it writes what it took from the
    // lanes (and while it starts a segment): then it is left to finish,
    // and it takes the lanes again before it next waits.
    std::unique_lock wl(write_mu_, std::try_to_lock);
    if (!wl.owns_lock()) return false;
    if (handed_over_) {
      wake = true;  // the writer has yet to write the batch handed to it
    } else if (lanes_empty()) {
      return true;  // taken by the writer, and written
    } else {
      // Read under the lock, which the writer holds when it clears it.
      was_wanted = sync_wanted_.load();
      if (waiting_full()) {
        wake = true;  // the writer syncs what waits, then takes the lanes
      } else {
        slot_ptr cur = take_spare();
        take_lanes(*cur);
        std::uint64_t bytes = 0;
        for (std::size_t i = 0; i < lane_count; ++i) {
          bytes += cur->parts.bytes[i].size();
          had_full |= cur->parts.bytes[i].size() >= lane_limit();  // an appender may wait
        }
        cur->callbacks = true;
        last_take_ = steady::now();
        if (bytes == 0) {
          spare_.push_back(std::move(cur));
          written = true;
        } else if (head_end_ + bytes > opts_.segment_size || !carry_marks_.empty()) {
          // It starts a new segment (syncs of their own), or takes done
          // records a failed write left: written by the writer, first.
          handed_over_ = std::move(cur);
          wake = true;
        } else {
          write_slot(*cur, no_marks_, false);
          no_marks_.clear();
          written = cur->written == cur->flat.size();
          // A failed write is reported by the writer, which learns of it
          // here (it may have nothing else to wake it).
          wake = !written;
          waiting_.push_back(std::move(cur));
        }
      }
    }
    if (wake) writer_wanted_.store(true);
  }
  // The writer learns of the first batch that wants a sync (it then waits
  // for the sync's due time), of work left to it, and of a lane it held
  // back; not of every batch.
  if (!wake && !had_full && (was_wanted || !sync_wanted_.load())) return written;
  {
    std::lock_guard lk(qmu_);
    if (had_full) space_cv_.notify_all();
  }
  writer_cv_.notify_one();
  return written;
}

spool_writer::slot_ptr spool_writer::take_spare() {
  if (spare_.empty()) return std::make_unique<slot>();
  slot_ptr s = std::move(spare_.back());
  spare_.pop_back();
  return s;
}

steady::time_point spool_writer::waiting_due() const noexcept {
  for (const auto& s : waiting_)
    if (s->appended_bytes > 0) return last_sync_start_ + spacing_now_;
  return steady::time_point::max();
}

void spool_writer::settle(bool force, std::unique_lock<std::mutex>& wl) {
  if (waiting_.empty()) return;
  if (faulted_.load()) {
    // Nothing to sync: every batch is reported failed, in order.
    finish_in_flight(wl);
    sync_wanted_.store(false);
    report_all(waiting_, wl);
    return;
  }
  const std::uint64_t appended = waiting_bytes();
  if (opts_.fsync == fsync_policy::always && appended > 0) {
    if (defers_syncs()) {
      if (!force && !waiting_full() && steady::now() < waiting_due()) {
        return;  // written and visible; synced with what follows
      }
      sync_waiting(wl);
      return;
    }
    if (!force && appended >= async_sync_bytes && have_sync_thread()) {
      // The batches before are reported while these ones' sync runs.
      std::vector<slot_ptr> before;
      before.swap(in_flight_);
      in_flight_.swap(waiting_);
      (void)wait_sync();
      start_sync();
      report_all(before, wl);
      return;
    }
    finish_in_flight(wl);  // the batches before are reported now, not after this sync
    (void)sync_head();
  } else if (force && dirty_) {
    finish_in_flight(wl);
    if (defers_syncs()) {
      sync_waiting(wl);
      return;
    }
    (void)sync_head();
  } else {
    finish_in_flight(wl);
  }
  report_all(waiting_, wl);
}

void spool_writer::sync_waiting(std::unique_lock<std::mutex>& wl) {
  // The fdatasync runs without the write lock, so that write_queued() goes
  // on writing (the batches it writes meanwhile wait for the next sync).
  // The head's descriptor stays open: only this thread starts a segment.
  std::vector<slot_ptr> group;
  group.swap(waiting_);
  sync_wanted_.store(false);
  const int fd = head_fd_;
  dirty_ = false;  // everything written so far is covered
  begin_sync();
  wl.unlock();
  const int e = sync_fd(fd);
  ++fsyncs_;
  if (e != 0) set_fault(e);
  wl.lock();
  report_all(group, wl);
}

void spool_writer::finish_in_flight(std::unique_lock<std::mutex>& wl) {
  if (in_flight_.empty()) return;
  (void)wait_sync();
  report_all(in_flight_, wl);
}

void spool_writer::report_all(std::vector<slot_ptr>& group, std::unique_lock<std::mutex>& wl) {
  if (group.empty()) return;
  // Callbacks run without the write lock when write_queued() may take it
  // (they may append). Reports stay in write order: only this thread makes
  // them, a group at a time.
  reporting_.swap(group);
  const bool unlock = defers_syncs();
  if (unlock) wl.unlock();
  for (auto& s : reporting_) {
    (void)complete(*s);
    s->parts.clear();
  }
  if (unlock) wl.lock();
  for (auto& s : reporting_) {
    // Keep no more spare slots (and their buffers) than a busy spool uses.
    if (spare_.size() < max_spare_slots) spare_.push_back(std::move(s));
  }
  reporting_.clear();
}

bool spool_writer::have_sync_thread() noexcept {
  if (sync_thread_.joinable()) return true;
  try {
    sync_thread_ = std::thread([this] { sync_loop(); });
  } catch (...) {
    return false;  // no thread to spare: this batch is synced in line
  }
  return true;
}

void spool_writer::stop_sync_thread() {
  {
    std::lock_guard lk(sync_mu_);
    sync_stop_ = true;
  }
  sync_cv_.notify_all();
  if (sync_thread_.joinable()) sync_thread_.join();
}

void spool_writer::begin_sync() {
  last_sync_start_ = steady::now();
  const std::uint64_t n = std::min<std::uint64_t>(appended_since_sync_, full_group);
  spacing_now_ = std::chrono::nanoseconds(opts_.sync_spacing) * static_cast<std::int64_t>(n) /
                 static_cast<std::int64_t>(full_group);
  appended_since_sync_ = 0;
}

void spool_writer::start_sync() {
  begin_sync();
  {
    std::lock_guard lk(sync_mu_);
    sync_fd_ = head_fd_;
    ++sync_started_;
  }
  sync_cv_.notify_one();
  dirty_ = false;  // everything written so far is covered
}

int spool_writer::wait_sync() {
  int e = 0;
  {
    std::unique_lock lk(sync_mu_);
    sync_cv_.wait(lk, [&] { return sync_finished_ == sync_started_; });
    e = sync_result_;
  }
  if (e != 0) set_fault(e);
  return e;
}

void spool_writer::sync_loop() {
  std::unique_lock lk(sync_mu_);
  while (true) {
    sync_cv_.wait(lk, [&] { return sync_started_ != sync_finished_ || sync_stop_; });
    if (sync_started_ == sync_finished_) return;  // stopping, nothing to sync
    const std::uint64_t ticket = sync_started_;
    const int fd = sync_fd_;
    lk.unlock();
    const int e = sync_fd(fd);
    ++fsyncs_;
    lk.lock();
    sync_result_ = e;
    sync_finished_ = ticket;
    sync_cv_.notify_all();
    // The writer may be waiting for this, or for appends (run()).
    lk.unlock();
    { std::lock_guard g(qmu_); }
    writer_cv_.notify_one();
    lk.lock();
  }
}

int spool_writer::sync_head() {
  begin_sync();
  const int e = sync_fd(head_fd_);
  if (e != 0) set_fault(e);
  ++fsyncs_;
  dirty_ = false;
  return e;
}

std::error_code spool_writer::roll() {
  if (head_ == std::numeric_limits<std::uint32_t>::max()) return errno_code(EOVERFLOW);
  // The sync thread may be about to sync the old head: its fd stays open
  // (and its number unused) until that sync has returned. Records already
  // written to the old head must be durable before it is left.
  if (const int e = wait_sync(); e != 0) return errno_code(e);
  if (dirty_ && opts_.fsync != fsync_policy::never) {
    if (const int e = sync_head(); e != 0) return errno_code(e);
  }
  const int fd = create_segment(state_->dir, head_ + 1);
  if (fd < 0) return errno_code(-fd);
  ::close(head_fd_);
  head_fd_ = fd;
  ++head_;
  head_end_ = fmt::segment_header_size;
  dirty_ = false;
  return {};
}

void spool_writer::write_slot(slot& s, std::vector<position>& marks, bool wake_readers) {
  batch_parts& parts = s.parts;
  std::vector<flat_entry>& batch = s.flat;
  batch.clear();
  s.written = 0;
  s.published = false;
  s.werr = {};
  s.rolled = false;
  s.first_head = s.last_head = head_;
  s.appended_bytes = 0;
  if (faulted_.load()) {
    // Reported by complete(): nothing is written.
    for (auto& part : parts.entries)
      for (auto& en : part) batch.push_back({&en, nullptr, {}});
    s.first_mark_entry = batch.size();
    return;
  }
  // Done marks become done records at the end of the batch.
  if (!carry_marks_.empty()) {
    marks.insert(marks.begin(), carry_marks_.begin(), carry_marks_.end());
    carry_marks_.clear();
  }
  std::vector<unsigned char>& mbuf = parts.bytes[marks_part];
  std::vector<entry>& mentries = parts.entries[marks_part];
  const std::size_t per_record = max_payload() / fmt::done_entry_size;
  for (std::size_t i = 0; i < marks.size(); i += per_record) {
    const std::size_t n = std::min(per_record, marks.size() - i);
    const auto len = static_cast<std::uint32_t>(n * fmt::done_entry_size);
    const std::size_t at = mbuf.size();
    mbuf.resize(at + fmt::record_header_size + len);
    unsigned char* payload = mbuf.data() + at + fmt::record_header_size;
    for (std::size_t k = 0; k < n; ++k) {
      fmt::store_u32(payload + 8 * k, marks[i + k].segment);
      fmt::store_u32(payload + 8 * k + 4, marks[i + k].offset);
    }
    fmt::encode_record_header(fmt::type_done, payload, len, mbuf.data() + at);
    mentries.push_back({static_cast<std::uint32_t>(fmt::record_header_size + len), false, {}});
  }

  // The batch in write order: lane after lane, then the done records.
  for (std::size_t part = 0; part <= lane_count; ++part) {
    const unsigned char* b = parts.bytes[part].data();
    for (auto& en : parts.entries[part]) {
      batch.push_back({&en, b, {}});
      b += en.size;
    }
  }
  const std::size_t first_mark_entry = batch.size() - mentries.size();
  s.first_mark_entry = first_mark_entry;

  std::size_t written = 0;  // entries [0, written) are in the file
  std::uint64_t appended_bytes = 0;
  std::error_code werr;
  while (written < batch.size()) {
    const std::uint64_t start = head_end_;
    std::uint64_t end = start;
    std::size_t j = written;
    while (j < batch.size() &&
           (end + batch[j].e->size <= opts_.segment_size || end == fmt::segment_header_size)) {
      batch[j].pos = {head_, static_cast<std::uint32_t>(end)};
      end += batch[j].e->size;
      ++j;
    }
    if (j == written) {
      werr = roll();
      if (werr) break;
      s.rolled = true;
      continue;
    }
    // One write per run of entries whose bytes are adjacent (one per lane).
    int e = 0;
    std::uint64_t off = start;
    for (std::size_t k = written; k < j && e == 0;) {
      const unsigned char* from = batch[k].bytes;
      std::size_t n = 0;
      do {
        n += batch[k].e->size;
        ++k;
      } while (k < j && batch[k].bytes == from + n);
      e = write_all(head_fd_, from, n, off);
      off += n;
    }
    if (e != 0) {
      // No partial record stays behind; the next batch starts here again.
      if (::ftruncate(head_fd_, static_cast<off_t>(start)) != 0) set_fault(errno);
      werr = errno_code(e);
      break;
    }
    head_end_ = end;
    if (!dirty_) sync_due_ = steady::now() + opts_.fsync_interval;
    dirty_ = true;
    appended_bytes += end - start;
    if (opts_.fsync == fsync_policy::always && end - start >= async_sync_bytes) {
      // Start the writeback of a large write at once, so that the disk is
      // busy with it before the fdatasync that covers it. This makes
      // nothing durable and, with SYNC_FILE_RANGE_WRITE alone (no wait),
      // does not consume a writeback error: that fdatasync still reports it.
      (void)::sync_file_range(head_fd_, static_cast<off_t>(start),
                              static_cast<off_t>(end - start), SYNC_FILE_RANGE_WRITE);
    }
    written = j;
  }
  s.written = written;
  s.werr = werr;
  s.last_head = head_;
  ++batches_;
  if (written < batch.size() && first_mark_entry < batch.size()) {
    // Done records that did not reach the file are tried again next batch.
    const std::size_t first_failed_mark = std::max(written, first_mark_entry);
    std::size_t skip = 0;
    for (std::size_t k = first_mark_entry; k < first_failed_mark; ++k)
      skip += (batch[k].e->size - fmt::record_header_size) / fmt::done_entry_size;
    carry_marks_.assign(marks.begin() + static_cast<std::ptrdiff_t>(skip), marks.end());
  }
  // Under `always` a batch of done records alone is not synced: a done mark
  // is a hint (docs/spool-format.md), and the next append's sync covers it,
  // or run() syncs it once fsync_interval has passed (an idle spool's acks).
  const std::size_t appended_records = std::min(written, first_mark_entry);
  s.appended_bytes = appended_records > 0 ? std::max<std::uint64_t>(appended_bytes, 1) : 0;
  appended_since_sync_ += appended_records;
  if (opts_.visible_before_sync && opts_.fsync == fsync_policy::always && s.appended_bytes > 0 &&
      !faulted_.load()) {
    // In write order: every batch before this one with records in it was
    // published when written. One of done records alone is published when
    // reported, which may come after this (publish() keeps what is later).
    publish(s);
    if (wake_readers && opts_.after_visible) opts_.after_visible();
  }
  if (s.appended_bytes > 0 && defers_syncs()) sync_wanted_.store(true);
}

bool spool_writer::complete(slot& s) {
  std::vector<flat_entry>& batch = s.flat;
  const std::size_t written = s.written;
  if (faulted_.load()) {
    // Nothing covered by a failed fdatasync is ever reported durable.
    const std::error_code e = fault();
    for (auto& en : batch)
      if (en.e->cb) en.e->cb({{}, e});
    if (s.callbacks && opts_.after_callbacks) opts_.after_callbacks();
    return false;
  }
  if (!s.published) publish(s);
  if (s.rolled) {
    std::lock_guard lk(qmu_);
    reclaim_req_ = true;
  }
  for (std::size_t k = 0; k < batch.size(); ++k) {
    if (!batch[k].e->cb) continue;
    if (k < written)
      batch[k].e->cb({batch[k].pos, {}});
    else
      batch[k].e->cb({{}, s.werr});
  }
  if (s.callbacks && opts_.after_callbacks) opts_.after_callbacks();
  return written == batch.size();
}

void spool_writer::publish(slot& s) {
  const std::vector<flat_entry>& batch = s.flat;
  const std::size_t written = s.written;
  s.published = true;
  {
    std::lock_guard lk(state_->mu);
    const std::int64_t now = now_ms();
    segment_index* seg = nullptr;  // one map lookup per segment the batch touched
    for (std::size_t k = 0; k < written; ++k) {
      const position p = batch[k].pos;
      if (k == 0 || p.segment != batch[k - 1].pos.segment) {
        seg = &state_->segments[p.segment];
        seg->bytes = std::max<std::uint64_t>(seg->bytes, fmt::segment_header_size);
        seg->last_write_ms = now;
      }
      if (batch[k].e->data) seg->add(p.offset);
      seg->bytes = std::max<std::uint64_t>(seg->bytes, p.offset + std::uint64_t{batch[k].e->size});
    }
    if (s.last_head != s.first_head) {
      for (auto it = state_->segments.find(s.first_head); it != state_->segments.end(); ++it) {
        if (it->first == s.last_head) break;
        it->second.offsets.shrink_to_fit();
      }
      auto& h = state_->segments[s.last_head];
      h.bytes = std::max<std::uint64_t>(h.bytes, fmt::segment_header_size);
      if (h.last_write_ms == 0) h.last_write_ms = now;
    }
    // A batch of done records alone may be reported after later batches
    // (written by write_queued()) were published.
    state_->head = std::max(state_->head, s.last_head);
  }
}

void spool_writer::reclaim_now() {
  std::vector<std::uint32_t> doomed;
  std::vector<position> restate;
  {
    std::lock_guard lk(state_->mu);
    const std::int64_t now = now_ms();
    const auto rt = opts_.retention_time.count();
    const auto rb = opts_.retention_bytes;
    std::uint64_t total = 0;
    for (const auto& [n, s] : state_->segments) total += s.bytes;
    for (const auto& [n, s] : state_->segments) {
      if (n == state_->head || !s.fully_done()) continue;
      const bool allowed = (rt == 0 && rb == 0) || (rt > 0 && now - s.last_write_ms >= rt) ||
                           (rb > 0 && total > rb);
      if (!allowed) continue;
      doomed.push_back(n);
      total -= s.bytes;
    }
    if (doomed.empty()) return;
    // Marks for surviving older segments may live in a doomed one: restate them.
    for (const auto& [n, s] : state_->segments) {
      if (n >= doomed.back()) break;
      if (s.done == 0 || std::binary_search(doomed.begin(), doomed.end(), n)) continue;
      for (std::size_t k = 0; k < s.offsets.size(); ++k)
        if (s.is_done(k)) restate.push_back({n, s.offsets[k]});
    }
  }
  if (!restate.empty()) {
    slot none;
    write_slot(none, restate, false);
    if (dirty_) (void)sync_head();  // whatever the policy: before the segments go
    if (!complete(none)) return;
  }
  {
    std::lock_guard lk(state_->mu);
    for (const auto n : doomed) state_->segments.erase(n);
  }
  for (const auto n : doomed) ::unlink((state_->dir / fmt::segment_file_name(n)).c_str());
  sync_dir(state_->dir);
  deleted_ += doomed.size();
}

}  // namespace detail

// ---- spool: the public face ----

spool::spool(std::filesystem::path dir, spool_options options)
    : impl_(std::make_unique<detail::spool_writer>(std::move(dir), options)) {}
spool::~spool() = default;
spool::spool(spool&&) noexcept = default;
spool& spool::operator=(spool&&) noexcept = default;

append_status spool::append(std::string_view payload, append_callback done) {
  return impl_->append(payload, std::move(done));
}

append_outcome spool::append_and_wait(std::string_view payload) {
  std::promise<append_outcome> promise;
  auto result = promise.get_future();
  switch (impl_->append(payload, [&promise](const append_outcome& o) { promise.set_value(o); })) {
    case append_status::queued: return result.get();
    case append_status::too_large:
      return {{}, std::make_error_code(std::errc::value_too_large)};
    case append_status::failed: return {{}, impl_->fault()};
  }
  return {{}, std::make_error_code(std::errc::io_error)};
}

bool spool::write_queued() noexcept { return impl_->write_queued(); }

done_status spool::mark_done(position p) { return impl_->mark_done(p); }

std::size_t spool::mark_done(std::span<const position> ps) { return impl_->mark_done(ps); }

bool spool::is_done(position p) const {
  const auto& st = *impl_->state_;
  std::lock_guard lk(st.mu);
  const auto it = st.segments.find(p.segment);
  if (it == st.segments.end()) return false;
  const std::size_t k = it->second.find(p.offset);
  return k < it->second.offsets.size() && it->second.offsets[k] == p.offset &&
         it->second.is_done(k);
}

cursor spool::read_from(position from, bool only_pending) const {
  return cursor(impl_->state_, from, only_pending);
}

std::error_code spool::flush() { return impl_->flush(); }
void spool::reclaim() { impl_->request_reclaim(); }
std::error_code spool::fault() const { return impl_->fault(); }
const recovery_report& spool::recovery() const noexcept { return impl_->report_; }
spool_stats spool::stats() const { return impl_->stats(); }

std::vector<std::uint32_t> spool::segments() const {
  std::vector<std::uint32_t> out;
  std::lock_guard lk(impl_->state_->mu);
  for (const auto& [n, s] : impl_->state_->segments) out.push_back(n);
  return out;
}

const std::filesystem::path& spool::directory() const noexcept { return impl_->state_->dir; }
std::size_t spool::max_payload() const noexcept { return impl_->max_payload(); }

}  // namespace postbox
