// The queue device (postbox/devices/queue.hpp). One thread runs the loop:
// it reads commands, appends to the spools, and turns the spools' durable
// callbacks (which arrive on their writer threads, through `completions`)
// into confirms and deliveries. docs/queue-device.md explains the design.
#include <postbox/devices/queue.hpp>

#include <postbox/codec.hpp>
#include <postbox/detail/queue_wire.hpp>
#include <postbox/detail/ring.hpp>
#include <postbox/detail/socket.hpp>
#include <postbox/error.hpp>

#include "control.hpp"
#include "dedup_table.hpp"
#include "resolve.hpp"

#include <algorithm>
#include <charconv>
#include <cstring>
#include <deque>
#include <map>
#include <optional>
#include <mutex>
#include <random>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

namespace postbox::devices {

namespace wire = detail::queue_wire;
namespace fs = std::filesystem;
using steady = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

constexpr std::string_view dlq_suffix = ".dlq";
constexpr std::size_t max_reason = 1024;
constexpr std::size_t max_control_request = 256;
constexpr int batch_per_wakeup = 1'000;  // frames read from one socket before looking elsewhere
constexpr milliseconds tick{100};
constexpr milliseconds pause_threshold{1'000};

// A count written in digits alone (no sign, no spaces, no overflow).
std::optional<std::uint64_t> count_in(std::string_view text) noexcept {
  std::uint64_t n = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return n;
}
// Deliveries to one consumer per frame: a batch is sent before a delivery
// would take it past this size, so it holds at most this many bytes, or one
// larger delivery alone. A consumer shares the batch's buffer only with a
// payload that is large or a good part of it, so a held delivery keeps at
// most this much beside its own payload.
constexpr std::size_t max_batch_bytes = 64 * 1024;
// A "dlv" beside its envelope and queue name: array and string headers, the
// command, the tag and the attempt count (an upper bound).
constexpr std::size_t dlv_overhead = 32;
// Ready messages one consumer takes in a row when several have credit (dispatch).
constexpr std::size_t max_run = 64;
constexpr std::uint64_t max_delay_ms = 365ull * 24 * 3600 * 1000;
constexpr std::size_t max_redrive_per_request = 10'000;  // one request holds the loop this long at most

std::uint64_t now_us() noexcept {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(
                                        std::chrono::system_clock::now().time_since_epoch())
                                        .count());
}

// ---- the queue record: what the device keeps in a spool (docs/queue-device.md) ----

constexpr std::uint8_t record_message = 1;
constexpr std::size_t record_fixed = 43;  // kind, 3 times, id, key length
constexpr std::uint16_t no_key = 0xFFFF;

void put_u64(std::string& s, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) s.push_back(static_cast<char>(v >> (8 * i)));
}
void put_u32(std::string& s, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) s.push_back(static_cast<char>(v >> (8 * i)));
}
std::uint64_t get_u64(const char* p) noexcept {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}
std::uint32_t get_u32(const char* p) noexcept {
  std::uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

struct record_fields {
  std::uint64_t enqueued_us = 0, not_before_us = 0, expires_us = 0;
  message_id id;
  std::optional<std::string_view> key;
  std::string_view envelope;
};

void build_record(std::string& out, const record_fields& f) {
  out.clear();
  out.push_back(static_cast<char>(record_message));
  put_u64(out, f.enqueued_us);
  put_u64(out, f.not_before_us);
  put_u64(out, f.expires_us);
  out.append(reinterpret_cast<const char*>(f.id.bytes.data()), 16);
  const std::uint16_t klen = f.key ? static_cast<std::uint16_t>(f.key->size()) : no_key;
  out.push_back(static_cast<char>(klen & 0xFF));
  out.push_back(static_cast<char>(klen >> 8));
  if (f.key) out.append(*f.key);
  out.append(f.envelope);
}

bool parse_record(std::string_view r, record_fields& f) noexcept {
  if (r.size() < record_fixed || static_cast<std::uint8_t>(r[0]) != record_message) return false;
  f.enqueued_us = get_u64(r.data() + 1);
  f.not_before_us = get_u64(r.data() + 9);
  f.expires_us = get_u64(r.data() + 17);
  std::memcpy(f.id.bytes.data(), r.data() + 25, 16);
  const std::uint16_t klen = static_cast<std::uint16_t>(
      static_cast<unsigned char>(r[41]) | static_cast<unsigned char>(r[42]) << 8);
  std::size_t at = record_fixed;
  if (klen == no_key) {
    f.key.reset();
  } else {
    if (r.size() - at < klen) return false;
    f.key = r.substr(at, klen);
    at += klen;
  }
  f.envelope = r.substr(at);
  return true;
}

// The attempt record (attempts spool): message position, failed deliveries
// so far, when it may be delivered again, and the last error.
void build_attempt(std::string& out, position msg, std::uint32_t attempts,
                   std::uint64_t not_before_us, std::string_view last_error) {
  out.clear();
  put_u64(out, msg.to_u64());
  put_u32(out, attempts);
  put_u64(out, not_before_us);
  out.append(last_error.substr(0, max_reason));
}

std::string json_escape(std::string_view s) {
  std::string out;
  for (const char c : s) {
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(c);
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(c));
      out += buf;
    } else {
      out.push_back(c);
    }
  }
  return out;
}

// A file descriptor closed with its owner, even when a constructor throws.
struct unique_fd {
  int fd = -1;
  unique_fd() = default;
  unique_fd(const unique_fd&) = delete;
  unique_fd& operator=(const unique_fd&) = delete;
  ~unique_fd() {
    if (fd >= 0) ::close(fd);
  }
};

std::string join(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : ",") + s;
  return out.empty() ? "-" : out;
}

}  // namespace

queue_config default_queue_config() {
  queue_config c;
  c.clients = "@tcp://127.0.0.1:5590";
  c.plain_in = "@tcp://127.0.0.1:5591";
  c.plain_out = "@tcp://127.0.0.1:5592";
  c.control = "@tcp://127.0.0.1:5593";
  return c;
}

struct queue_device::impl {
  // ---- in-memory state of one message (docs/queue-device.md, "Memory") ----
  struct entry {
    position pos;
    std::string record;  // the spool record; empty while waiting on a timer
    std::uint32_t attempts = 0;
    std::uint64_t not_before_us = 0, expires_us = 0;
    std::optional<std::string> key;
    std::string last_error;
    std::string dead_reason;  // set while a dead-lettering waits to be tried again
  };

  struct key_state {
    std::optional<std::uint64_t> holder;  // position owning the key (in flight or on a timer)
    std::deque<entry> waiting;
  };

  struct attempt_info {
    position record;  // latest attempt record
    std::uint32_t attempts = 0;
    std::uint64_t not_before_us = 0;
    std::string last_error;
  };

  struct queue;
  struct consumer_state {
    std::string id;  // routing id
    std::vector<queue*> queues;
    std::uint32_t prefetch = 1;
    std::uint32_t in_flight = 0;
    std::size_t in_flight_bytes = 0;  // the records of those deliveries
    milliseconds heartbeat{500};
    steady::time_point last_seen;
    steady::time_point last_beat_sent;
    std::string batch;                    // "dlv" commands not sent yet
    std::vector<std::uint64_t> batch_tags;
  };

  struct completion {
    std::uint64_t ticket;
    append_outcome outcome;
  };
  // The outcomes of one spool's appends, collected by its writer thread
  // without a lock and handed to the loop once per batch (hand_over).
  struct completion_stage {
    std::vector<completion> staged;  // the writer thread's alone
  };

  struct queue {
    std::string name;
    bool is_dlq = false;
    queue* dlq = nullptr;     // for a source queue
    queue* source = nullptr;  // for a dead-letter queue
    // Mixed into producer ids in the de-duplication window (dedup_key).
    message_id dedup_salt;
    // Declared before the spools: their writer threads use them to the end.
    completion_stage messages_done, attempts_done;
    std::optional<spool> messages;
    std::optional<spool> attempts;
    std::optional<cursor> tail;
    detail::ring<entry> ready;
    std::multimap<std::uint64_t, entry> timers;  // by not_before_us; records dropped
    std::unordered_map<std::string, key_state> keys;
    std::unordered_map<std::uint64_t, attempt_info> attempt_log;  // by message position
    // Positions a redrive or a dead-lettering must not touch: a dead-letter
    // queue's deliveries in flight, and records being moved.
    std::unordered_set<std::uint64_t> busy;
    // Messages acked by the frame being read, marked done together at its end.
    std::vector<position> acked;
    // Read-ahead records and the memory they hold (their capacity, which
    // for a recycled buffer can exceed the record).
    std::size_t buffered = 0, buffered_bytes = 0;
    // Round-robin. Elements of the device's `consumers` map, which stay put
    // until erased; lose_consumer() takes one out of here first.
    std::vector<consumer_state*> consumers;
    std::size_t next_consumer = 0;
    queue_stats st;
    std::vector<std::uint32_t> fsync_samples;  // ring of append-to-durable times, us
    std::size_t fsync_next = 0;
    // Counters at the last rate sample (about once a second).
    std::uint64_t rate_enqueued = 0, rate_acked = 0;
  };

  struct flight {
    queue* q;
    entry e;
    std::string consumer;  // empty: the plain PUSH endpoint (already acked)
    steady::time_point deadline;
  };

  enum class ticket_kind : std::uint8_t { publish, plain, attempt, dead_letter, redrive };
  struct ticket {
    ticket_kind kind;
    queue* q;
    std::string peer;  // publish: the producer's routing id
    std::uint64_t seq = 0;
    message_id id;  // publish/plain: its key in the de-duplication window (dedup_key)
    position source;  // attempt: its message; dead_letter/redrive: the record moved
    std::optional<std::string> key;
    std::uint32_t attempts = 0;
    steady::time_point appended;
    bool live = true;  // false once its outcome was handled (or the append refused)
    // dead_letter: what a retry needs if the move fails
    std::string reason = {}, last_error = {};
    std::uint64_t expires_us = 0;
  };
  impl(context& ctx, queue_config c) : config(std::move(c)), log("postbox-queue", config.log) {
    validate();
    lock_data_dir();
    tag_base = std::random_device{}() | std::uint64_t{std::random_device{}()} << 31;
    next_tag = tag_base;
    // Room for every spare now: keeping one must never fail (the flight or
    // record it came from is already out of its container).
    spare_flights.reserve(max_spares);
    spare_records.reserve(max_spares);
    wake_fd.fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    wake = wake_fd.fd;
    if (wake < 0) throw transport_error("postbox-queue: eventfd failed");
    open_existing_queues();
    socket_options o;
    o.send_hwm = config.hwm;
    o.receive_hwm = config.hwm;
    o.max_message_size = config.max_message_size;
    clients.emplace(ctx, zmq::socket_type::router, config.clients, endpoint_mode::bind, o, false);
    clients->socket.set(zmq::sockopt::router_mandatory, 1);
    if (!config.plain_in.empty()) {
      plain_in.emplace(ctx, zmq::socket_type::pull, config.plain_in, endpoint_mode::bind, o, false);
    }
    if (!config.plain_out.empty()) {
      plain_out.emplace(ctx, zmq::socket_type::push, config.plain_out, endpoint_mode::bind, o, true);
      plain_queue = open_queue(config.plain_queue);
    }
    if (!config.control.empty()) {
      socket_options co = o;
      co.max_message_size = 1024;
      control.emplace(ctx, zmq::socket_type::router, config.control, endpoint_mode::bind, co, false);
    }
    made_dir.dir.clear();  // started: the data directory stays
  }

  ~impl() {
    // The spools sync what is queued as they close, and their callbacks
    // still reach `completions` and `wake`: close them first.
    queues.clear();
  }

  // One device per data directory: DATA/LOCK held with flock while it runs
  // (each spool has its own lock too, but a device with no queue yet has none).
  void lock_data_dir() {
    // The parents first, then the directory itself with mkdir: whether that
    // mkdir made it is the one reliable sign that it is new (a path through
    // "..", or a start racing this one, cannot fool it).
    fs::path dir = config.data_dir;
    while (!dir.empty() && !dir.has_filename()) dir = dir.parent_path();  // "a/b/" is "a/b"
    std::error_code ec;
    if (dir.has_parent_path()) fs::create_directories(dir.parent_path(), ec);
    bool made = false;
    if (!ec && !dir.empty()) {
      if (::mkdir(dir.c_str(), 0755) == 0) {
        made = true;
      } else if (errno != EEXIST) {
        ec = {errno, std::generic_category()};
      }
    }
    if (ec) throw spool_error("cannot create " + config.data_dir.string() + ": " + ec.message());
    const fs::path lock = config.data_dir / "LOCK";
    lock_fd.fd = ::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (lock_fd.fd < 0) {
      throw spool_error("cannot open " + lock.string() + ": " + std::strerror(errno));
    }
    if (::flock(lock_fd.fd, LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      throw spool_error(err == EWOULDBLOCK
                            ? "data directory " + config.data_dir.string() +
                                  " is in use by another postbox-queue"
                            : "cannot lock " + lock.string() + ": " + std::strerror(err));
    }
    // Ours alone now: if this start fails, the directory it made goes again.
    if (made) made_dir.dir = dir;
  }

  void validate() const {
    auto bad = [](const std::string& s) { throw config_error(s); };
    if (config.clients.empty()) bad("the clients endpoint cannot be empty");
    if (auto why = wire::invalid_queue_name(config.plain_queue)) {
      bad("plain queue \"" + config.plain_queue + "\": " + *why);
    }
    if (config.sync_spacing.count() < 0 || config.sync_spacing > milliseconds(100)) {
      bad("sync spacing must be 0 .. 100 ms");
    }
    if (config.max_attempts == 0) bad("max attempts must be at least 1");
    if (config.visibility_timeout.count() <= 0) bad("the visibility timeout must be positive");
    if (config.retry_initial.count() <= 0 || config.retry_max < config.retry_initial) {
      bad("retry backoff: initial must be positive and at most max");
    }
    if (config.heartbeat_liveness == 0) bad("heartbeat liveness must be at least 1");
    if (config.dedup_window.count() < 0) bad("the de-duplication window cannot be negative");
    if (config.dedup_max_ids == 0) bad("dedup_max_ids must be positive (a zero window turns it off)");
    if (config.buffer_messages == 0 || config.buffer_bytes == 0) bad("buffers must be positive");
    if (config.max_queues == 0) bad("max queues must be at least 1");
    if (config.max_prefetch == 0) bad("max prefetch must be at least 1");
    if (config.max_prefetch_bytes == 0) bad("max prefetch bytes must be at least 1");
    if (config.max_message_size < 64) bad("max message size must be at least 64 bytes");
  }

  // ------------------------------------------------------------ opening queues

  spool_options spool_opts(bool for_messages, completion_stage& done) {
    spool_options so;
    so.after_callbacks = [this, &done] { hand_over(done); };
    so.segment_size = config.segment_size;
    so.fsync = config.fsync;
    so.fsync_interval = config.fsync_interval;
    so.sync_spacing = config.sync_spacing;
    if (for_messages) {
      // A message can go out to a consumer while its sync runs; its
      // producer's confirm still waits for the sync (docs/queue-device.md).
      so.visible_before_sync = true;
      so.after_visible = [this] { wake_for_visible(); };
    }
    // Done segments stay for the de-duplication window, so that a restart
    // can rebuild the window from them (docs/queue-device.md, "De-duplication").
    if (for_messages) so.retention_time = config.dedup_window;
    // The writer's staging holds this much; attempt records are few and small.
    so.max_queued_bytes = for_messages ? 16u << 20 : 1u << 20;
    return so;
  }

  void open_existing_queues() {
    std::error_code ec;
    std::vector<std::string> names;
    for (const auto& d : fs::directory_iterator(config.data_dir, ec)) {
      const std::string name = d.path().filename().string();
      if (d.is_directory() && !wire::invalid_queue_name(name)) names.push_back(name);
    }
    if (ec) throw spool_error("cannot read " + config.data_dir.string() + ": " + ec.message());
    std::sort(names.begin(), names.end());
    for (const auto& n : names) open_queue(n, true);
  }

  // The queue named `name` (and its dead-letter queue), opened and recovered
  // on first use. Null when the device holds max_queues already.
  // The queue named `name` (a NAME.dlq name gives NAME's dead-letter queue),
  // opened with its dead-letter queue on first use. Null when opening it
  // would pass max_queues (`existing`: it is on disk already, and is opened
  // whatever the limit). Throws spool_error when a spool cannot be opened;
  // then neither half is registered.
  queue* open_queue(const std::string& name, bool existing = false) {
    if (auto it = queues.find(name); it != queues.end()) return it->second.get();
    const bool is_dlq = name.size() > dlq_suffix.size() && name.ends_with(dlq_suffix);
    const std::string source_name = is_dlq ? name.substr(0, name.size() - dlq_suffix.size()) : name;
    if (is_dlq) {
      queue* src = open_queue(source_name, existing);
      return src != nullptr ? src->dlq : nullptr;
    }
    if (!existing && queues.size() + 2 > config.max_queues * 2) return nullptr;
    auto src = recover(source_name, false);
    auto dead = recover(source_name + std::string(dlq_suffix), true);
    src->dlq = dead.get();
    dead->source = src.get();
    queue* raw = src.get();
    queues.emplace(dead->name, std::move(dead));
    queues.emplace(source_name, std::move(src));
    return raw;
  }

  std::unique_ptr<queue> recover(const std::string& name, bool is_dlq) {
    auto q = std::make_unique<queue>();
    q->name = name;
    q->is_dlq = is_dlq;
    q->st.name = name;
    q->dedup_salt = salt_of(name);
    const fs::path dir = config.data_dir / name;
    q->messages.emplace(dir / "messages", spool_opts(true, q->messages_done));
    q->attempts.emplace(dir / "attempts", spool_opts(false, q->attempts_done));
    report_recovery(*q, q->messages->recovery(), "messages");
    report_recovery(*q, q->attempts->recovery(), "attempts");
    load_attempts(*q);
    if (!is_dlq && config.dedup_window.count() > 0) load_dedup(*q);
    q->tail.emplace(q->messages->read_from({}, true));
    const auto pending = q->messages->stats().pending;
    if (pending > 0) {
      log.info("queue " + name + ": recovered " + std::to_string(pending) + " pending message(s)");
    }
    return q;
  }

  void report_recovery(queue& q, const recovery_report& r, const char* what) {
    for (const auto& c : r.corrupt) {
      log.warn("queue " + q.name + " " + what + ": corrupt record at " + c.where.to_string() +
               " (" + std::to_string(c.size) + " bytes, " + name(c.reason) + ") skipped");
    }
    if (r.truncated_bytes > 0) {
      log.info("queue " + q.name + " " + what + ": cut a torn tail of " +
               std::to_string(r.truncated_bytes) + " bytes (never confirmed)");
    }
  }

  // Rebuilds attempt counts: the latest attempt record per pending message.
  void load_attempts(queue& q) {
    cursor c = q.attempts->read_from({}, true);
    spool_record r;
    bool marked = false;
    while (true) {
      const auto s = c.next(r);
      if (s == read_status::end) break;
      if (s == read_status::corrupt || r.data.size() < 20) continue;
      const position msg = position::from_u64(get_u64(r.data.data()));
      if (q.messages->is_done(msg) || !msg_pending(q, msg)) {
        marked |= q.attempts->mark_done(r.pos) == done_status::ok;
        continue;
      }
      attempt_info info{r.pos, get_u32(r.data.data() + 8), get_u64(r.data.data() + 12),
                        r.data.substr(20)};
      auto [it, fresh] = q.attempt_log.try_emplace(msg.to_u64(), info);
      if (!fresh) {
        marked |= q.attempts->mark_done(it->second.record) == done_status::ok;
        it->second = std::move(info);
      }
    }
    // An attempt record of a message that is done (or was never durable:
    // a power loss can keep the one and lose the other) is marked done
    // here, durably before the queue takes new messages. Left to the
    // spool's next sync, a new message taking the lost one's position
    // could inherit its attempt count from a crash within that time.
    if (marked) {
      if (const auto ec = q.attempts->flush()) {
        throw spool_error("queue " + q.name + ": cannot sync its attempts spool: " + ec.message());
      }
    }
  }

  // Whether `p` is a record of the messages spool that is not done.
  static bool msg_pending(queue& q, position p) {
    cursor c = q.messages->read_from(p, true);
    spool_record r;
    return c.next(r) == read_status::ok && r.pos == p;
  }

  // Rebuilds the de-duplication window from records still on disk.
  void load_dedup(queue& q) {
    const std::uint64_t horizon = now_us() - static_cast<std::uint64_t>(config.dedup_window.count()) * 1000;
    cursor c = q.messages->read_from({}, false);
    spool_record r;
    record_fields f;
    while (true) {
      const auto s = c.next(r);
      if (s == read_status::end) break;
      if (s != read_status::ok || !parse_record(r.data, f) || f.enqueued_us < horizon) continue;
      (void)remember(dedup_key(q, f.id), f.enqueued_us / 1000, true);
    }
  }

  // ------------------------------------------------------------ de-duplication

  using dedup_entry = dedup_table::entry;

  // The window is per queue: one id sent to two queues is two messages. A
  // queue's ids enter the window with a 128-bit salt derived from its name
  // (the same after a restart) added to each big-endian half, which keeps
  // them apart within the queue. Adding, unlike XOR, keeps ids that count up
  // by one counting up by one, which the table's buckets rely on.
  static message_id salt_of(std::string_view name) noexcept {
    message_id salt;
    std::uint64_t h[2] = {0xcbf29ce484222325ull, 0x84222325cbf29ce4ull};  // FNV-1a, two bases
    for (auto& v : h) {
      for (const char c : name) v = (v ^ static_cast<std::uint8_t>(c)) * 0x100000001b3ull;
    }
    std::memcpy(salt.bytes.data(), h, sizeof h);
    return salt;
  }
  static message_id dedup_key(const queue& q, const message_id& id) noexcept {
    return message_id::from_halves(id.high() + q.dedup_salt.high(), id.low() + q.dedup_salt.low());
  }

  // Adds `id` to the window; returns its entry when it was already there
  // (never for the nil id, which the table refuses). An id remembered as
  // not durable yet is also in `writing` until its append completes (then
  // its entry learns it is durable when a resend looks) or fails (forget).
  // Every id remembered has one place in dedup_order, by when it leaves.
  dedup_entry remember(const message_id& id, std::uint64_t at_ms, bool durable) {
    if (config.dedup_window.count() == 0) return {};
    const std::uint64_t expires = at_ms + static_cast<std::uint64_t>(config.dedup_window.count());
    auto [held, fresh] = dedup.insert(id, durable);
    if (!fresh) {
      if (held && !held.durable() && !writing.find(id)) held.set_durable();
      return held;
    }
    if (!durable) (void)writing.insert(id, false);
    dedup_order.emplace_back(expires, id);
    while (dedup.size() > config.dedup_max_ids && !dedup_order.empty()) {
      const message_id old = dedup_order.front().second;
      dedup_order.pop_front();
      if (leave_window(old)) ++dedup_evicted;
    }
    return {};
  }

  // The id at the front of dedup_order leaves the window, unless that place
  // was a forgotten one's (see forget). True when it left.
  bool leave_window(const message_id& id) {
    if (auto f = forgotten.find(id); f != forgotten.end()) {
      if (--f->second == 0) forgotten.erase(f);
      return false;
    }
    return dedup.erase(id);
  }

  // An append of `id` failed: a resend must be taken. Its place in
  // dedup_order stays behind, and must not take out the id if it is
  // remembered again: it is counted here, and skipped when it comes up.
  void forget(const message_id& id) {
    auto [f, added] = forgotten.try_emplace(id, 0);  // may throw: nothing changed yet
    if (dedup.erase(id)) {
      ++f->second;
    } else if (added) {
      forgotten.erase(f);
    }
    writing.erase(id);
  }

  void expire_dedup(std::uint64_t now_ms) {
    bool expired = false;
    while (!dedup_order.empty() && dedup_order.front().first <= now_ms) {
      const message_id id = dedup_order.front().second;
      dedup_order.pop_front();
      expired = leave_window(id) || expired;
    }
    if (expired) {
      dedup.shrink_to_fit();
      writing.shrink_to_fit();
    }
  }

  // ------------------------------------------------------------ spool completions

  // Tickets are numbered in order and kept in a ring: a spool's callback
  // names its ticket by number; finished ones leave from the front.
  std::uint64_t new_ticket(ticket t) {
    tickets.push_back(std::move(t));
    return ticket_base + tickets.size() - 1;
  }

  ticket* find_ticket(std::uint64_t n) {
    if (n < ticket_base || n - ticket_base >= tickets.size()) return nullptr;
    ticket& t = tickets[static_cast<std::size_t>(n - ticket_base)];
    return t.live ? &t : nullptr;
  }

  void retire_ticket(ticket& t) {
    t.live = false;
    t.peer.clear();
    t.key.reset();
    while (!tickets.empty() && !tickets.front().live) {
      tickets.pop_front();
      ++ticket_base;
    }
  }

  // Runs on the spool's writer thread, once per record: no lock, no wake-up.
  static append_callback callback_for(std::uint64_t ticket_no, completion_stage& done) {
    return [&done, ticket_no](const append_outcome& o) { done.staged.push_back({ticket_no, o}); };
  }

  // Runs on a spool's writer thread after its batch's callbacks: the batch's
  // outcomes join the loop's under one lock, with one wake-up at most.
  void hand_over(completion_stage& done) {
    if (done.staged.empty()) return;
    bool was_empty = false;
    {
      std::lock_guard lk(completions_mu);
      was_empty = completions.empty();
      if (was_empty) {
        completions.swap(done.staged);
      } else {
        completions.insert(completions.end(), done.staged.begin(), done.staged.end());
      }
    }
    done.staged.clear();
    if (was_empty) {
      const std::uint64_t one = 1;
      (void)!::write(wake, &one, sizeof one);
    }
  }

  // Appends `rec` to `sp` (whose outcomes `done` collects) for `t`; false
  // (ticket dropped) when the spool refused it at once.
  bool append(spool& sp, completion_stage& done, std::string_view rec, ticket t, std::string* why) {
    t.appended = turn_now;
    const std::uint64_t n = new_ticket(std::move(t));
    const auto status = sp.append(rec, callback_for(n, done));
    if (status == append_status::queued) return true;
    retire_ticket(*find_ticket(n));
    if (why != nullptr) {
      *why = status == append_status::too_large
                 ? "message too large for the spool"
                 : "spool failed: " + sp.fault().message();
    }
    return false;
  }

  // Runs on a spool's writer thread: records became visible to the loop's
  // cursors before their sync. One wake-up until the loop's next turn.
  void wake_for_visible() {
    if (visible_pending.exchange(true)) return;
    const std::uint64_t one = 1;
    (void)!::write(wake, &one, sizeof one);
  }

  // `signalled`: the eventfd woke the loop. It is cleared before the swap,
  // so a callback that comes after the swap always wakes the loop again.
  void drain_completions(bool signalled) {
    if (signalled) {
      std::uint64_t ignored = 0;
      (void)!::read(wake, &ignored, sizeof ignored);
    }
    {
      std::lock_guard lk(completions_mu);
      completions_batch.swap(completions);
    }
    if (completions_batch.empty()) return;
    completed_at = steady::now();
    for (const auto& c : completions_batch) {
      ticket* t = find_ticket(c.ticket);
      if (t == nullptr) continue;
      complete(*t, c.outcome);
      retire_ticket(*t);
    }
    completions_batch.clear();
    send_confirms();
  }

  void sample_fsync(queue& q, steady::time_point appended) {
    const auto us = std::chrono::duration_cast<std::chrono::microseconds>(completed_at - appended);
    constexpr std::size_t ring = 4096;
    const auto v = static_cast<std::uint32_t>(std::min<long long>(us.count(), 0xFFFF'FFFF));
    if (q.fsync_samples.size() < ring) {
      q.fsync_samples.push_back(v);
    } else {
      q.fsync_samples[q.fsync_next++ % ring] = v;
    }
  }

  void complete(ticket& t, const append_outcome& o) {
    queue& q = *t.q;
    switch (t.kind) {
      case ticket_kind::publish:
      case ticket_kind::plain:
        if (!o.error) {
          ++q.st.enqueued;
          sample_fsync(q, t.appended);
          writing.erase(t.id);  // durable now (see remember)
          if (t.kind == ticket_kind::publish) confirms[t.peer].push_back(t.seq);
        } else {
          forget(t.id);
          ++q.st.refused;
          log.fault("append", "queue " + q.name + ": append failed: " + o.error.message());
          if (t.kind == ticket_kind::publish) {
            refuse(t.peer, t.seq, "spool: " + o.error.message());
          }
        }
        break;
      case ticket_kind::attempt: {
        if (o.error) break;  // the count in memory stands; a restart may count one less
        const std::uint64_t msg = t.source.to_u64();
        if (q.messages->is_done(t.source)) {
          (void)q.attempts->mark_done(o.pos);
          break;
        }
        auto& info = q.attempt_log[msg];
        if (info.attempts > t.attempts) {  // an older write finishing late
          (void)q.attempts->mark_done(o.pos);
          break;
        }
        if (info.record.segment != 0) (void)q.attempts->mark_done(info.record);
        info.record = o.pos;
        info.attempts = t.attempts;
        break;
      }
      case ticket_kind::dead_letter:
        q.busy.erase(t.source.to_u64());
        if (o.error) {
          log.fault("dead-letter", "queue " + q.name + ": moving to " + q.dlq->name +
                                       " failed (" + o.error.message() + "); will try again");
          entry e;
          e.pos = t.source;
          e.key = t.key;
          e.attempts = t.attempts;
          e.last_error = std::move(t.last_error);
          e.expires_us = t.expires_us;
          if (t.reason == "expired") --q.st.expired;  // counted again when it moves
          dead_letter_later(q, std::move(e), t.reason);
          break;
        }
        ++q.st.dead_lettered;
        finish_message(q, t.source, t.key);
        break;
      case ticket_kind::redrive:
        q.busy.erase(t.source.to_u64());  // q is the dead-letter queue
        if (!o.error) finish_message(q, t.source, t.key);
        break;
    }
  }

  // ------------------------------------------------------------ producers

  void refuse(const std::string& peer, std::uint64_t seq, std::string_view reason) {
    out.start(wire::cmd_refuse, 2).uint(seq).str(reason.substr(0, max_reason));
    send_to(peer, out.view());
  }

  void send_confirms() {
    for (auto it = confirms.begin(); it != confirms.end();) {
      auto& seqs = it->second;
      if (seqs.empty()) {
        it = confirms.erase(it);  // a producer gone quiet leaves no trace
        continue;
      }
      out.start(wire::cmd_confirm, 1).array(static_cast<std::uint32_t>(seqs.size()));
      for (const auto s : seqs) out.uint(s);
      send_to(it->first, out.view());
      seqs.clear();
      ++it;
    }
  }

  // Sends [peer][bytes] on the clients socket without waiting; false when the
  // peer is gone or its queue is full (the caller decides what that means).
  bool send_to(const std::string& peer, std::string_view bytes) {
    void* s = clients->socket.handle();
    if (zmq_send(s, peer.data(), peer.size(), ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) return false;
    return zmq_send(s, bytes.data(), bytes.size(), ZMQ_DONTWAIT) >= 0;
  }

  void reject(std::string_view why) {
    ++dstats.rejected;
    log.fault(std::string("reject ") + std::string(why), "refused a frame: " + std::string(why));
  }

  // ["pub", seq, queue, delay_ms, ttl_ms, envelope]; `last`: nothing may
  // follow it in the frame. False when malformed (counted; a batch stops).
  bool on_publish(const std::string& peer, wire::reader& in, bool last) {
    std::uint64_t seq = 0, delay = 0, ttl = 0;
    std::string_view qname, envelope;
    if (!in.uint(seq) || !in.bytes(qname, 128) || !in.uint(delay) || !in.uint(ttl) ||
        !in.bytes(envelope, static_cast<std::size_t>(config.max_message_size)) ||
        (last && !in.at_end())) {
      reject("malformed pub");
      return false;
    }
    if (auto why = wire::invalid_queue_name(qname)) {
      ++dstats.producers_refused;
      refuse(peer, seq, "bad queue name: " + *why);
    } else if (delay > max_delay_ms || ttl > max_delay_ms) {
      ++dstats.producers_refused;
      refuse(peer, seq, "delay and ttl are at most 365 days");
    } else if (qname.ends_with(dlq_suffix)) {
      ++dstats.producers_refused;
      refuse(peer, seq, "queues ending in .dlq are dead-letter queues; publish to the source");
    } else {
      enqueue(peer, seq, std::string(qname), delay, ttl, envelope, ticket_kind::publish);
    }
    return true;
  }

  // ["batch", [["pub", ...], ["pub", ...], ...]]: many messages in one frame.
  void on_batch(const std::string& peer, wire::reader& in) {
    std::uint32_t count = 0;
    if (!in.array(count) || count == 0) return reject("malformed batch");
    for (std::uint32_t i = 0; i < count; ++i) {
      std::uint32_t n = 0;
      std::string_view cmd;
      if (!in.array(n) || n != 6 || !in.bytes(cmd, 16) || cmd != wire::cmd_publish) {
        return reject("malformed batch");
      }
      if (!on_publish(peer, in, i + 1 == count)) return;
    }
  }

  void enqueue(const std::string& peer, std::uint64_t seq, const std::string& qname,
               std::uint64_t delay_ms, std::uint64_t ttl_ms, std::string_view envelope,
               ticket_kind kind) {
    // The frame borrows the envelope's bytes (no copy): `scratch` must let go
    // of them before this returns.
    zmq::message_t frame(const_cast<char*>(envelope.data()), envelope.size(), nullptr, nullptr);
    struct release {
      message& m;
      ~release() { m.set_payload(std::string()); }
    } release_scratch{scratch};
    if (const auto r = decode(&frame, 1, scratch)) {
      ++dstats.rejected;
      log.fault("bad envelope", "refused a message: " + std::string(to_string(*r)));
      if (kind == ticket_kind::publish) refuse(peer, seq, "bad envelope: " + std::string(to_string(*r)));
      return;
    }
    if (scratch.id().is_nil()) {
      ++dstats.rejected;
      if (kind == ticket_kind::publish) refuse(peer, seq, "the message has no id");
      return;
    }
    std::string why_not;
    queue* q = open_or_refuse(qname, &why_not);
    if (q == nullptr) {
      ++dstats.producers_refused;
      if (kind == ticket_kind::publish) refuse(peer, seq, why_not);
      return;
    }
    const std::uint64_t now = turn_wall_us;
    const message_id key = dedup_key(*q, scratch.id());
    if (const dedup_entry d = remember(key, now / 1000, false)) {
      ++q->st.duplicates;
      // Durable: confirm again. Not yet: the first copy's confirm will come.
      if (d.durable() && kind == ticket_kind::publish) confirms[peer].push_back(seq);
      return;
    }
    record_fields f;
    f.enqueued_us = now;
    f.not_before_us = delay_ms > 0 ? now + delay_ms * 1000 : 0;
    f.expires_us = ttl_ms > 0 ? now + ttl_ms * 1000 : 0;
    f.id = scratch.id();
    f.key = scratch.key();
    f.envelope = envelope;
    build_record(record_buf, f);
    std::string why;
    ticket t{kind, q, peer, seq, key, {}, {}, 0, {}};  // its id: the window's key
    if (!append(*q->messages, q->messages_done, record_buf, std::move(t), &why)) {
      forget(key);  // not enqueued
      ++q->st.refused;
      if (kind == ticket_kind::publish) refuse(peer, seq, why);
      log.fault("append", "queue " + q->name + ": " + why);
      return;
    }
  }

  // open_queue(), or null with the reason in `why` (and in the log).
  queue* open_or_refuse(const std::string& name, std::string* why = nullptr) {
    std::string reason;
    try {
      if (queue* q = open_queue(name)) return q;
      reason = "too many queues on this device (max_queues)";
    } catch (const std::exception& e) {
      reason = std::string("cannot open the queue: ") + e.what();
    }
    log.fault("open " + name, "queue " + name + ": " + reason);
    if (why != nullptr) *why = std::move(reason);
    return nullptr;
  }

  // ------------------------------------------------------------ consumers

  // ["take", [queue...], prefetch, heartbeat_ms]
  void on_take(const std::string& peer, wire::reader& in) {
    std::uint32_t n = 0;
    if (!in.array(n) || n == 0 || n > 64) return reject("malformed take");
    std::vector<std::string_view> names(n);
    for (auto& name : names) {
      if (!in.bytes(name, 128)) return reject("malformed take");
    }
    std::uint64_t prefetch = 0, hb = 0;
    if (!in.uint(prefetch) || !in.uint(hb) || !in.at_end() || prefetch == 0 ||
        prefetch > 1'000'000 || hb < 10 || hb > 600'000) {
      return reject("malformed take");
    }
    auto [it, fresh] = consumers.try_emplace(peer);
    consumer_state& c = it->second;
    c.last_seen = steady::now();
    // The device bounds what one consumer may hold (and so its memory).
    c.prefetch = static_cast<std::uint32_t>(std::min<std::uint64_t>(prefetch, config.max_prefetch));
    c.heartbeat = milliseconds(hb);
    if (!fresh) return;  // a heartbeat
    c.id = peer;
    c.last_beat_sent = c.last_seen;
    for (const auto name : names) {
      if (wire::invalid_queue_name(name)) continue;
      queue* q = open_or_refuse(std::string(name));
      if (q == nullptr) continue;
      if (std::find(c.queues.begin(), c.queues.end(), q) != c.queues.end()) continue;
      c.queues.push_back(q);
      q->consumers.push_back(&c);
    }
    if (c.queues.empty()) {
      consumers.erase(it);
      return reject("take names no usable queue");
    }
    ++dstats.consumers;
    log.debug("consumer joined (" + std::to_string(c.queues.size()) + " queue(s), prefetch " +
              std::to_string(prefetch) + ")");
  }

  flight* find_flight(const std::string& peer, std::uint64_t tag) {
    auto it = in_flight.find(tag);
    if (it == in_flight.end() || it->second.consumer != peer) {
      if (tag >= tag_base && tag < next_tag) {
        ++dstats.stale_acks;  // redelivered elsewhere since, or acked twice
      } else {
        ++dstats.unknown_acks;
        log.fault("unknown tag", "refused an ack or nack for a delivery never made");
      }
      return nullptr;
    }
    return &it->second;
  }

  flight take_flight(std::uint64_t tag) {
    auto node = in_flight.extract(tag);
    flight f = std::move(node.mapped());
    if (spare_flights.size() < max_spares) spare_flights.push_back(std::move(node));
    if (f.q->is_dlq) f.q->busy.erase(f.e.pos.to_u64());
    if (!f.consumer.empty()) {
      if (auto c = consumers.find(f.consumer); c != consumers.end() && c->second.in_flight > 0) {
        --c->second.in_flight;
        c->second.in_flight_bytes -= std::min(c->second.in_flight_bytes, f.e.record.size());
      }
    }
    return f;
  }

  // ["ack", [tag...]]
  void on_ack(const std::string& peer, wire::reader& in) {
    std::uint32_t n = 0;
    if (!in.array(n)) return reject("malformed ack");
    for (std::uint32_t i = 0; i < n; ++i) {
      std::uint64_t tag = 0;
      if (!in.uint(tag)) {
        mark_acked();  // the acks before it stand
        return reject("malformed ack");
      }
      if (find_flight(peer, tag) == nullptr) continue;
      flight f = take_flight(tag);
      ++f.q->st.acked;
      finish_message(*f.q, f.e.pos, f.e.key, true);
      if (spare_records.size() < max_spares && f.e.record.capacity() <= max_spare_record) {
        spare_records.push_back(std::move(f.e.record));
      }
    }
    mark_acked();
    touch(peer);
  }

  // Marks what on_ack collected: one call per queue, one lock and one
  // wake-up of its spool's writer for the whole frame.
  void mark_acked() {
    for (queue* q : acked_queues) {
      (void)q->messages->mark_done(q->acked);
      q->acked.clear();
    }
    acked_queues.clear();
  }

  // ["nack", tag, delay_ms, reason] / ["rej", tag, reason]
  void on_nack(const std::string& peer, wire::reader& in, bool dead) {
    std::uint64_t tag = 0, delay = 0;
    std::string_view reason;
    if (!in.uint(tag) || (!dead && !in.uint(delay)) || !in.bytes(reason, max_reason) ||
        !in.at_end()) {
      return reject(dead ? "malformed rej" : "malformed nack");
    }
    touch(peer);
    if (find_flight(peer, tag) == nullptr) return;
    flight f = take_flight(tag);
    ++f.q->st.nacked;
    f.e.last_error.assign(reason);
    if (dead) {
      dead_letter(*f.q, std::move(f.e), "rejected");
    } else {
      failed(*f.q, std::move(f.e), milliseconds(std::min<std::uint64_t>(delay, 86'400'000)), true);
    }
  }

  void touch(const std::string& peer) {
    if (auto c = consumers.find(peer); c != consumers.end()) c->second.last_seen = steady::now();
  }

  // A consumer left (bye) or went silent: its deliveries go to others now.
  void lose_consumer(const std::string& peer, bool counted) {
    auto it = consumers.find(peer);
    if (it == consumers.end()) return;
    for (queue* q : it->second.queues) {
      auto& v = q->consumers;
      v.erase(std::remove(v.begin(), v.end(), &it->second), v.end());
    }
    consumers.erase(it);
    std::vector<std::uint64_t> tags;
    for (const auto& [tag, f] : in_flight)
      if (f.consumer == peer) tags.push_back(tag);
    std::sort(tags.begin(), tags.end());
    for (const auto tag : tags) {
      flight f = take_flight(tag);
      if (counted) {
        ++f.q->st.consumer_losses;
        f.e.last_error = "consumer lost";
        failed(*f.q, std::move(f.e), milliseconds(0), false);
      } else {
        requeue_front(*f.q, std::move(f.e));
      }
    }
    if (counted) log.info("a consumer stopped heartbeating; " + std::to_string(tags.size()) +
                          " delivery(ies) given to others");
  }

  // ------------------------------------------------------------ message lifecycle

  std::uint64_t backoff_us(std::uint32_t failures) {
    double ms = static_cast<double>(config.retry_initial.count());
    for (std::uint32_t i = 1; i < failures && ms < static_cast<double>(config.retry_max.count()); ++i) {
      ms *= 2;
    }
    ms = std::min(ms, static_cast<double>(config.retry_max.count()));
    std::uniform_real_distribution<double> jitter(0.8, 1.2);
    return static_cast<std::uint64_t>(ms * jitter(rng) * 1000);
  }

  // A delivery failed (nack, timeout, lost consumer): count it, log it on
  // disk, and retry after the backoff (or at once), or dead-letter it.
  void failed(queue& q, entry e, milliseconds at_least, bool backoff) {
    ++e.attempts;
    if (!q.is_dlq && e.attempts >= config.max_attempts) {
      return dead_letter(q, std::move(e), "max_attempts");
    }
    ++q.st.redeliveries;
    const std::uint64_t now = now_us();
    std::uint64_t wait = backoff ? backoff_us(e.attempts) : 0;
    wait = std::max<std::uint64_t>(wait, static_cast<std::uint64_t>(at_least.count()) * 1000);
    e.not_before_us = wait > 0 ? now + wait : 0;
    build_attempt(attempt_buf, e.pos, e.attempts, e.not_before_us, e.last_error);
    ticket t{ticket_kind::attempt, &q, {}, 0, {}, e.pos, {}, e.attempts, {}};
    (void)append(*q.attempts, q.attempts_done, attempt_buf, std::move(t), nullptr);
    if (e.not_before_us == 0) return requeue_front(q, std::move(e));
    e.record.clear();
    e.record.shrink_to_fit();
    q.timers.emplace(e.not_before_us, std::move(e));
  }

  // The read-ahead counts (queue::buffered, buffered_bytes): an entry is
  // counted once it is in `ready` or a key's waiting list, with the memory
  // its record holds, and uncounted as it leaves.
  static void count_buffered(queue& q, std::size_t record_capacity) noexcept {
    ++q.buffered;
    q.buffered_bytes += record_capacity;
  }
  static void uncount_buffered(queue& q, const entry& e) noexcept {
    --q.buffered;
    q.buffered_bytes -= e.record.capacity();
  }

  void requeue_front(queue& q, entry e) {
    const std::size_t bytes = e.record.capacity();
    q.ready.push_front(std::move(e));
    count_buffered(q, bytes);
  }

  // Tries again later to move `e` to the dead-letter queue.
  void dead_letter_later(queue& q, entry e, std::string_view reason) {
    e.record.clear();
    e.dead_reason.assign(reason);
    e.not_before_us = now_us() + 1'000'000;
    q.timers.emplace(e.not_before_us, std::move(e));
  }

  // The dead letter's envelope: the message with the x- headers of
  // docs/protocol.md 16.3 (replacing any it had from an earlier dead-letter).
  // Empty when they do not fit the header limits.
  static std::string dead_envelope(const message& m, const queue& q, const entry& e,
                                   std::string_view reason) {
    static constexpr std::string_view ours[] = {"x-dead-letter-reason", "x-attempts",
                                                "x-last-error", "x-source-queue"};
    message d(std::string(m.topic()), m.payload());
    d.set_id(m.id()).set_timestamp_us(m.timestamp_us()).set_correlation(m.correlation());
    if (m.key()) d.set_key(std::string(*m.key()));
    for (const auto& h : m.headers()) {
      if (std::find(std::begin(ours), std::end(ours), h.name) == std::end(ours)) {
        d.add_header(h.name, h.value);
      }
    }
    d.add_header("x-dead-letter-reason", std::string(reason));
    d.add_header("x-attempts", std::to_string(e.attempts));
    if (!e.last_error.empty()) d.add_header("x-last-error", e.last_error);
    d.add_header("x-source-queue", q.name);
    std::string envelope;
    try {
      wire::encode_envelope(d, {}, envelope);
    } catch (const config_error&) {  // more than max_user_headers, or too large a header
      envelope.clear();
    }
    return envelope;
  }

  void dead_letter(queue& q, entry e, std::string_view reason) {
    if (q.is_dlq) {  // nowhere further to go: keep retrying with backoff
      e.not_before_us = now_us() + backoff_us(std::max<std::uint32_t>(e.attempts, 1));
      e.record.clear();
      q.timers.emplace(e.not_before_us, std::move(e));
      return;
    }
    if (e.record.empty()) {
      const auto r = reread(q, e);
      if (r == reread_result::gone) return finish_message(q, e.pos, e.key);
      if (r == reread_result::later) return dead_letter_later(q, std::move(e), reason);
    }
    record_fields f;
    zmq::message_t frame;
    message m;
    if (!parse_record(e.record, f) ||
        (frame.rebuild(f.envelope.data(), f.envelope.size()), decode(&frame, 1, m))) {
      log.error("queue " + q.name + ": record " + e.pos.to_string() +
                " holds no valid message; it cannot be dead-lettered and is dropped");
      return finish_message(q, e.pos, e.key);
    }
    std::string envelope = dead_envelope(m, q, e, reason);
    if (envelope.empty()) {
      log.warn("queue " + q.name + ": dead letter " + m.id().to_hex() +
               " kept without x- headers: the message has too many headers for them");
      envelope.assign(f.envelope);
    }
    record_fields d;
    d.enqueued_us = now_us();
    d.id = f.id;
    d.key = f.key;
    d.envelope = envelope;
    build_record(dead_buf, d);
    q.busy.insert(e.pos.to_u64());
    ticket t{ticket_kind::dead_letter, &q, {}, 0, f.id, e.pos, e.key, e.attempts, {}};
    t.reason.assign(reason);
    t.last_error = e.last_error;
    t.expires_us = e.expires_us;
    std::string why;
    if (!append(*q.dlq->messages, q.dlq->messages_done, dead_buf, std::move(t), &why)) {
      q.busy.erase(e.pos.to_u64());
      log.fault("dead-letter", "queue " + q.name + ": cannot dead-letter now: " + why);
      return dead_letter_later(q, std::move(e), reason);
    }
    if (reason == "expired") ++q.st.expired;
  }

  // The message at `pos` is done (acked, dead-lettered, redriven): mark it
  // (or, `batched`, leave it to mark_acked), drop its attempt log, and let
  // its key move on.
  void finish_message(queue& q, position pos, const std::optional<std::string>& key,
                      bool batched = false) {
    if (!batched) {
      (void)q.messages->mark_done(pos);
    } else {
      if (q.acked.empty()) acked_queues.push_back(&q);
      q.acked.push_back(pos);
    }
    if (auto a = q.attempt_log.find(pos.to_u64()); a != q.attempt_log.end()) {
      (void)q.attempts->mark_done(a->second.record);
      q.attempt_log.erase(a);
    }
    if (!key) return;
    auto k = q.keys.find(*key);
    if (k == q.keys.end() || k->second.holder != pos.to_u64()) return;
    k->second.holder.reset();
    promote(q, k);
  }

  // Gives a free key to the first message waiting for it.
  void promote(queue& q, std::unordered_map<std::string, key_state>::iterator k) {
    if (k->second.waiting.empty()) {
      q.keys.erase(k);
      return;
    }
    entry e = std::move(k->second.waiting.front());
    k->second.waiting.pop_front();
    uncount_buffered(q, e);
    k->second.holder = e.pos.to_u64();
    route(q, std::move(e));
  }

  // A message whose key (if any) it holds: ready now, or on a timer.
  void route(queue& q, entry e) {
    if (e.not_before_us > turn_wall_us) {
      e.record.clear();
      e.record.shrink_to_fit();
      q.timers.emplace(e.not_before_us, std::move(e));
      return;
    }
    const std::size_t bytes = e.record.capacity();
    q.ready.push_back(std::move(e));
    count_buffered(q, bytes);
  }

  // A message read from the spool's tail.
  void admit(queue& q, entry e) {
    if (e.key) {
      auto [k, fresh] = q.keys.try_emplace(*e.key);
      (void)fresh;
      if (k->second.holder || !k->second.waiting.empty()) {
        const std::size_t bytes = e.record.capacity();
        k->second.waiting.push_back(std::move(e));
        count_buffered(q, bytes);
        return;
      }
      k->second.holder = e.pos.to_u64();
    }
    route(q, std::move(e));
  }

  // Reads the backlog from disk while the buffer has room.
  void refill(queue& q) {
    record_fields f;
    while (q.buffered < config.buffer_messages && q.buffered_bytes < config.buffer_bytes) {
      if (read_buf.data.capacity() <= 15 && !spare_records.empty()) {  // 15: a short string's own room
        read_buf.data = std::move(spare_records.back());
        spare_records.pop_back();
      }
      const auto s = q.tail->next(read_buf);
      if (s == read_status::end) return;
      if (s == read_status::corrupt || !parse_record(read_buf.data, f)) {
        log.fault("corrupt " + q.name, "queue " + q.name + ": unreadable record at " +
                                           read_buf.pos.to_string() + " skipped");
        continue;
      }
      entry e;
      e.pos = read_buf.pos;
      e.not_before_us = f.not_before_us;
      e.expires_us = f.expires_us;
      if (f.key) e.key.emplace(*f.key);
      if (auto a = q.attempt_log.find(e.pos.to_u64()); a != q.attempt_log.end()) {
        e.attempts = a->second.attempts;
        e.not_before_us = std::max(e.not_before_us, a->second.not_before_us);
        e.last_error = a->second.last_error;
      }
      e.record = std::move(read_buf.data);
      admit(q, std::move(e));
    }
  }

  // Reads a timer's record back from disk. False: it is gone or done.
  enum class reread_result { ok, gone, later };

  // Reads a timer's record back from disk. `gone`: done since, or its bytes
  // fail their checksum (reported). `later`: it cannot be read right now
  // (out of file descriptors, an I/O error): it stays, and is tried again.
  reread_result reread(queue& q, entry& e) {
    if (q.messages->is_done(e.pos)) return reread_result::gone;
    cursor c = q.messages->read_from(e.pos, true);
    spool_record r;
    const auto s = c.next(r);
    if (s == read_status::ok && r.pos == e.pos) {
      e.record = std::move(r.data);
      return reread_result::ok;
    }
    if (s == read_status::corrupt && r.pos == e.pos) {
      log.error("queue " + q.name + ": record " + e.pos.to_string() +
                " changed on disk (checksum); it cannot be delivered");
      return reread_result::gone;
    }
    log.fault("reread " + q.name, "queue " + q.name + ": cannot read record " +
                                      e.pos.to_string() + " now; trying again in a second");
    return reread_result::later;
  }

  void fire_timers(queue& q, std::uint64_t now) {
    while (!q.timers.empty() && q.timers.begin()->first <= now) {
      entry e = std::move(q.timers.begin()->second);
      q.timers.erase(q.timers.begin());
      const auto r = reread(q, e);
      if (r == reread_result::gone) {
        finish_message(q, e.pos, e.key);
        continue;
      }
      if (r == reread_result::later) {
        q.timers.emplace(now + 1'000'000, std::move(e));
        continue;
      }
      // A dead-lettering that could not be written is tried again, not delivered.
      if (!e.dead_reason.empty()) {
        std::string reason = std::move(e.dead_reason);
        e.dead_reason.clear();
        dead_letter(q, std::move(e), reason);
        continue;
      }
      e.not_before_us = 0;
      requeue_front(q, std::move(e));
    }
  }

  // Hands ready messages to consumers with credit, round-robin in runs:
  // with many ready, each consumer in turn takes a fair share of them (at
  // most max_run) in a row. Its delivery batch, its acks and the spool's
  // done marks then cover neighbouring records rather than every n-th one,
  // which costs the loop markedly less per message. A run never continues
  // into the next call: each call starts with the next consumer in the round.
  void dispatch(queue& q) {
    const std::size_t share =
        q.consumers.empty() ? 1
                            : std::clamp<std::size_t>(q.ready.size() / q.consumers.size(), 1, max_run);
    std::size_t run = share;  // picks in a row of the consumer picked last
    while (!q.ready.empty()) {
      entry& head = q.ready.front();
      // A dead letter can be redriven away while it waits here (a source
      // queue's waiting messages are finished only by the loop, after they
      // leave `ready`): only a dead-letter queue asks its spool.
      if (q.is_dlq && q.messages->is_done(head.pos)) {
        entry e = pop_ready(q);
        finish_message(q, e.pos, e.key);
        continue;
      }
      if (head.expires_us != 0 && turn_wall_us > head.expires_us) {
        entry e = pop_ready(q);
        dead_letter(q, std::move(e), "expired");
        continue;
      }
      consumer_state* c = next_consumer(q, share, run);
      if (c == nullptr) {
        if (&q == plain_queue && plain_out && deliver_plain(q)) continue;
        return;
      }
      // Records wait in the read-ahead buffer long enough to leave the CPU's
      // caches, and each has its own allocation: start loading the start of
      // the one a few places back, so that it is not a miss when its turn comes.
      if (constexpr std::size_t ahead = 4; q.ready.size() > ahead) {
        const std::string& r = q.ready[ahead].record;
        for (std::size_t at = 0; at < std::min<std::size_t>(r.size(), 256); at += 64)
          __builtin_prefetch(r.data() + at);
      }
      if (!deliver(q, *c)) return;
    }
  }

  entry pop_ready(queue& q) {
    entry e = std::move(q.ready.front());
    q.ready.pop_front();
    uncount_buffered(q, e);
    return e;
  }

  // Credit in messages, and in bytes (but one delivery always goes).
  bool has_credit(const consumer_state& c) const noexcept {
    return c.in_flight < c.prefetch &&
           (c.in_flight == 0 || c.in_flight_bytes < config.max_prefetch_bytes);
  }

  // The consumer for the message at the head of `ready`: the one picked
  // last while `run` (its picks in a row) is under `share` and it has
  // credit, else the next one in the round with credit; null when none has
  // any. A pick whose delivery does not happen (deliver() sent a full batch
  // first, or dropped an unreadable record) still counts toward the run.
  consumer_state* next_consumer(queue& q, std::size_t share, std::size_t& run) {
    const std::size_t n = q.consumers.size();
    if (n == 0) return nullptr;
    if (run < share) {
      if (consumer_state* last = q.consumers[(q.next_consumer + n - 1) % n]; has_credit(*last)) {
        ++run;
        return last;
      }
    }
    for (std::size_t i = 0; i < n; ++i) {
      consumer_state* c = q.consumers[(q.next_consumer + i) % n];
      if (has_credit(*c)) {
        q.next_consumer = (q.next_consumer + i + 1) % n;
        run = 1;
        return c;
      }
    }
    return nullptr;
  }

  bool deliver(queue& q, consumer_state& c) {
    entry& head = q.ready.front();
    record_fields f;
    if (!parse_record(head.record, f)) {
      entry e = pop_ready(q);
      log.warn("queue " + q.name + ": record " + e.pos.to_string() + " unreadable; dropped");
      finish_message(q, e.pos, e.key);
      return true;
    }
    // Deliveries to one consumer collect in its batch, sent as one frame at
    // the end of the loop's turn (send_batches), or before this one would
    // take it past max_batch_bytes. Then the dispatch loop comes back to
    // this message, which is still at the head (the consumer may be gone).
    if (!c.batch_tags.empty() &&
        c.batch.size() + f.envelope.size() + q.name.size() + dlv_overhead > max_batch_bytes) {
      send_batch(c);
      return true;
    }
    const std::uint64_t tag = next_tag++;
    out.start(wire::cmd_deliver, 4).uint(tag).str(q.name).uint(head.attempts).bin(f.envelope);
    if (c.batch_tags.empty()) batching.push_back(c.id);
    c.batch.append(out.view());
    c.batch_tags.push_back(tag);
    entry e = pop_ready(q);
    ++q.st.delivered;
    ++c.in_flight;
    c.in_flight_bytes += e.record.size();
    if (q.is_dlq) q.busy.insert(e.pos.to_u64());
    flight fl{&q, std::move(e), c.id, turn_now + config.visibility_timeout};
    if (spare_flights.empty()) {
      in_flight.emplace(tag, std::move(fl));
    } else {
      auto node = std::move(spare_flights.back());
      spare_flights.pop_back();
      node.key() = tag;
      node.mapped() = std::move(fl);
      in_flight.insert(std::move(node));
    }
    if (c.batch.size() >= max_batch_bytes) send_batch(c);
    return true;
  }

  // Sends a consumer's collected deliveries: one "dlv" as it is, more as
  // ["batch", [dlv, ...]]. Gone: it is lost. Full: they go back, uncounted.
  void send_batch(consumer_state& c) {
    if (c.batch_tags.empty()) return;
    bool sent = false;
    if (c.batch_tags.size() == 1) {
      sent = send_to(c.id, c.batch);
    } else {
      out.start(wire::cmd_batch, 1).array(static_cast<std::uint32_t>(c.batch_tags.size()));
      batch_frame.assign(out.view());
      batch_frame.append(c.batch);
      sent = send_to(c.id, batch_frame);
    }
    const int err = errno;
    c.batch.clear();
    if (sent) {
      c.batch_tags.clear();  // keeps its capacity for the next batch
      c.last_beat_sent = turn_now;
      return;
    }
    std::vector<std::uint64_t> tags;
    tags.swap(c.batch_tags);
    if (err == EHOSTUNREACH) return lose_consumer(std::string(c.id), true);
    for (auto it = tags.rbegin(); it != tags.rend(); ++it) {
      if (in_flight.count(*it) == 0) continue;
      flight f = take_flight(*it);
      --f.q->st.delivered;
      requeue_front(*f.q, std::move(f.e));
    }
  }

  void send_batches() {
    for (const auto& id : batching) {
      if (auto it = consumers.find(id); it != consumers.end()) send_batch(it->second);
    }
    batching.clear();
  }

  // The plain PUSH endpoint: handing the message to libzmq is its ack.
  bool deliver_plain(queue& q) {
    record_fields f;
    entry& head = q.ready.front();
    if (!parse_record(head.record, f)) {
      entry e = pop_ready(q);
      finish_message(q, e.pos, e.key);
      return true;
    }
    if (zmq_send(plain_out->socket.handle(), f.envelope.data(), f.envelope.size(), ZMQ_DONTWAIT) < 0) {
      return false;
    }
    entry e = pop_ready(q);
    ++q.st.delivered;
    ++q.st.acked;
    finish_message(q, e.pos, e.key);
    return true;
  }

  // ------------------------------------------------------------ time

  void on_tick() {
    const auto now = steady::now();
    const std::uint64_t wall = now_us();
    // A device stopped (SIGSTOP, swapped out) must not blame its consumers
    // for its own silence: every clock that ran meanwhile starts again.
    const auto gap = now - last_tick;
    last_tick = now;
    if (gap > pause_threshold) {
      ++dstats.pauses;
      log.warn("the device was stalled for " +
               std::to_string(std::chrono::duration_cast<milliseconds>(gap).count()) +
               " ms; consumer and visibility clocks restarted");
      for (auto& [id, c] : consumers) c.last_seen = now;
      for (auto& [tag, f] : in_flight) f.deadline += gap;
    }
    if (now < next_scan) return;
    next_scan = now + tick;
    expire_dedup(wall / 1000);
    std::vector<std::string> lost;
    for (auto& [id, c] : consumers) {
      // Behind on its own input, the device cannot tell a silent consumer
      // from one whose heartbeat waits in the socket behind producers' frames.
      // For one liveness period at most: a consumer silent through a flood
      // longer than that is declared gone all the same.
      if (clients_backlogged && now - backlogged_since < c.heartbeat * config.heartbeat_liveness) {
        c.last_seen = std::max(c.last_seen, now - c.heartbeat);
      }
      if (now - c.last_seen > c.heartbeat * config.heartbeat_liveness) {
        lost.push_back(id);
      } else if (now - c.last_beat_sent >= c.heartbeat) {
        out.start(wire::cmd_heartbeat, 0);
        if (!send_to(id, out.view()) && errno == EHOSTUNREACH) lost.push_back(id);
        c.last_beat_sent = now;
      }
    }
    for (const auto& id : lost) lose_consumer(id, true);
    std::vector<std::uint64_t> expired;
    for (const auto& [tag, f] : in_flight)
      if (f.deadline <= now) expired.push_back(tag);
    std::sort(expired.begin(), expired.end());
    for (const auto tag : expired) {
      flight f = take_flight(tag);
      ++f.q->st.timeouts;
      f.e.last_error = "visibility timeout";
      failed(*f.q, std::move(f.e), milliseconds(0), true);
    }
    if (now >= next_rate_sample) sample_rates(now);
    if (config.stats_interval.count() > 0 && now >= next_stats_log) {
      next_stats_log = now + config.stats_interval;
      log_rates();
    }
  }

  void sample_rates(steady::time_point now) {
    const double secs = std::chrono::duration<double>(now - last_rate_sample).count();
    for (auto& [name, q] : queues) {
      if (secs > 0) {
        q->st.enqueue_rate = static_cast<double>(q->st.enqueued - q->rate_enqueued) / secs;
        q->st.ack_rate = static_cast<double>(q->st.acked - q->rate_acked) / secs;
      }
      q->rate_enqueued = q->st.enqueued;
      q->rate_acked = q->st.acked;
      q->ready.shrink();  // once a second: the rings fill and drain much more often
    }
    tickets.shrink();
    last_rate_sample = now;
    next_rate_sample = now + std::chrono::seconds(1);
  }

  // ------------------------------------------------------------ control

  void serve_control() {
    control_endpoint::request r;
    const auto got = control_endpoint::receive(*control, max_control_request, r);
    if (got == control_endpoint::received::none) return;
    ++dstats.control_requests;
    if (got == control_endpoint::received::malformed) {
      ++dstats.control_rejected;
      log.fault("control", "refused a malformed control request");
      return;
    }
    control_endpoint::answer(*control, r, control_answer(r.text));
  }

  std::string control_answer(const std::string& request) {
    std::vector<std::string> words;
    for (std::size_t at = 0; at < request.size();) {
      const auto space = request.find(' ', at);
      const auto end = space == std::string::npos ? request.size() : space;
      if (end > at) words.push_back(request.substr(at, end - at));
      at = end + 1;
    }
    auto error = [this](const std::string& text) {
      ++dstats.control_rejected;
      return "{\"error\":\"" + json_escape(text) + "\"}";
    };
    if (words.empty()) return error("empty request (use ping, stats, list or redrive)");
    if (words[0] == "ping" && words.size() == 1) return "pong";
    if (words[0] == "stats" && words.size() == 1) return json();
    if ((words[0] == "list" || words[0] == "redrive") && (words.size() == 2 || words.size() == 3)) {
      std::size_t limit = words[0] == "list" ? 10 : max_redrive_per_request;
      if (words.size() == 3) {
        const auto n = count_in(words[2]);
        if (!n || *n == 0) return error("count must be a positive number");
        limit = static_cast<std::size_t>(*n);
      }
      limit = std::min<std::size_t>(limit, words[0] == "list" ? 1000 : max_redrive_per_request);
      std::string name = words[1];
      if (name.ends_with(dlq_suffix)) name.resize(name.size() - dlq_suffix.size());
      if (wire::invalid_queue_name(name) || queues.find(name) == queues.end()) {
        return error("no queue \"" + words[1] + "\"");
      }
      queue& q = *queues.at(name);
      return words[0] == "list" ? list_dead(q, limit) : redrive(q, limit);
    }
    return error("unknown request \"" + request.substr(0, 64) +
                 "\" (use ping, stats, list QUEUE [N], redrive QUEUE [N])");
  }

  std::string list_dead(queue& q, std::size_t limit) {
    queue& d = *q.dlq;
    cursor c = d.messages->read_from({}, true);
    spool_record r;
    record_fields f;
    std::string outj = "{\"queue\":\"" + d.name + "\",\"depth\":" +
                       std::to_string(d.messages->stats().pending) + ",\"messages\":[";
    std::size_t n = 0;
    while (n < limit) {
      const auto s = c.next(r);
      if (s == read_status::end) break;
      if (s != read_status::ok || !parse_record(r.data, f)) continue;
      zmq::message_t frame(f.envelope.data(), f.envelope.size());
      message m;
      if (decode(&frame, 1, m)) continue;
      auto h = [&m](const char* name) { return json_escape(m.header_value(name).value_or("")); };
      // A count, as in stats; null if the header is not one (it always is
      // when the device wrote it, but a message too large for the headers
      // keeps the producer's).
      const auto attempts = count_in(m.header_value("x-attempts").value_or(""));
      outj += std::string(n++ ? "," : "") + "{\"position\":\"" + r.pos.to_string() +
              "\",\"id\":\"" + m.id().to_hex() + "\",\"topic\":\"" + json_escape(m.topic()) +
              "\",\"key\":" + (m.key() ? "\"" + json_escape(*m.key()) + "\"" : std::string("null")) +
              ",\"reason\":\"" + h("x-dead-letter-reason") + "\",\"attempts\":" +
              (attempts ? std::to_string(*attempts) : std::string("null")) + ",\"last_error\":\"" + h("x-last-error") +
              "\",\"payload_bytes\":" + std::to_string(m.payload().size()) + "}";
    }
    return outj + "]}";
  }

  // Moves dead letters (not in flight) back to their source queue, attempts reset.
  std::string redrive(queue& q, std::size_t limit) {
    queue& d = *q.dlq;
    cursor c = d.messages->read_from({}, true);
    spool_record r;
    record_fields f;
    std::size_t moved = 0;
    while (moved < limit) {
      const auto s = c.next(r);
      if (s == read_status::end) break;
      if (s != read_status::ok || !parse_record(r.data, f) || d.busy.count(r.pos.to_u64()) > 0) {
        continue;
      }
      f.enqueued_us = now_us();
      f.not_before_us = 0;
      f.expires_us = 0;
      build_record(dead_buf, f);
      std::optional<std::string> key;
      if (f.key) key.emplace(*f.key);
      ticket t{ticket_kind::redrive, &d, {}, 0, f.id, r.pos, key, 0, {}};
      d.busy.insert(r.pos.to_u64());
      if (!append(*q.messages, q.messages_done, dead_buf, std::move(t), nullptr)) {
        d.busy.erase(r.pos.to_u64());
        break;
      }
      ++moved;
    }
    return "{\"queue\":\"" + q.name + "\",\"redriven\":" + std::to_string(moved) + "}";
  }

  // ------------------------------------------------------------ stats

  queue_stats snapshot(const queue& q) const {
    queue_stats s = q.st;
    s.depth = q.messages->stats().pending;
    s.in_flight = 0;
    for (const auto& [tag, f] : in_flight) s.in_flight += f.q == &q;
    s.delayed = q.timers.size();
    s.dead_letter_depth = q.dlq ? q.dlq->messages->stats().pending : 0;
    if (!q.fsync_samples.empty()) {
      auto v = q.fsync_samples;
      std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(v.size() / 2), v.end());
      s.fsync_p50_us = v[v.size() / 2];
      s.fsync_max_us = *std::max_element(v.begin(), v.end());
    }
    return s;
  }

  std::string json() const {
    std::string j = "{\"queues\":[";
    bool first = true;
    for (const auto& [name, q] : queues) {
      const queue_stats s = snapshot(*q);
      auto f = [&j](const char* k, std::uint64_t v) {
        j += ",\"" + std::string(k) + "\":" + std::to_string(v);
      };
      j += std::string(first ? "" : ",") + "{\"name\":\"" + name + "\"";
      first = false;
      f("depth", s.depth);
      f("in_flight", s.in_flight);
      f("delayed", s.delayed);
      f("dead_letter_depth", s.dead_letter_depth);
      f("enqueued", s.enqueued);
      f("duplicates", s.duplicates);
      f("delivered", s.delivered);
      f("acked", s.acked);
      f("nacked", s.nacked);
      f("redeliveries", s.redeliveries);
      f("timeouts", s.timeouts);
      f("consumer_losses", s.consumer_losses);
      f("dead_lettered", s.dead_lettered);
      f("expired", s.expired);
      f("refused", s.refused);
      f("fsync_p50_us", s.fsync_p50_us);
      f("fsync_max_us", s.fsync_max_us);
      f("enqueue_rate", static_cast<std::uint64_t>(s.enqueue_rate));
      f("ack_rate", static_cast<std::uint64_t>(s.ack_rate));
      j += "}";
    }
    j += "],\"consumers\":" + std::to_string(consumers.size());
    auto f = [&j](const char* k, std::uint64_t v) {
      j += ",\"" + std::string(k) + "\":" + std::to_string(v);
    };
    f("frames_in", dstats.frames_in);
    f("rejected", dstats.rejected);
    f("stale_acks", dstats.stale_acks);
    f("unknown_acks", dstats.unknown_acks);
    f("producers_refused", dstats.producers_refused);
    f("control_requests", dstats.control_requests);
    f("control_rejected", dstats.control_rejected);
    f("pauses", dstats.pauses);
    f("dedup_ids", dedup.size());
    f("dedup_evicted", dedup_evicted);
    return j + "}";
  }

  void log_rates() {
    const auto now = steady::now();
    const double secs = std::chrono::duration<double>(now - last_log_time).count();
    std::uint64_t enq = 0, acked = 0, depth = 0, flight_n = in_flight.size(), dead = 0, redel = 0;
    for (const auto& [name, q] : queues) {
      enq += q->st.enqueued;
      acked += q->st.acked;
      redel += q->st.redeliveries;
      if (!q->is_dlq) depth += q->messages->stats().pending;
      else dead += q->messages->stats().pending;
    }
    char line[320];
    std::snprintf(line, sizeof line,
                  "rate: in %.0f msg/s, acked %.0f msg/s; depth %llu, in flight %llu, "
                  "dead letters %llu, redeliveries %llu, consumers %zu, rejected %llu",
                  secs > 0 ? static_cast<double>(enq - logged_enqueued) / secs : 0.0,
                  secs > 0 ? static_cast<double>(acked - logged_acked) / secs : 0.0,
                  static_cast<unsigned long long>(depth), static_cast<unsigned long long>(flight_n),
                  static_cast<unsigned long long>(dead), static_cast<unsigned long long>(redel),
                  consumers.size(), static_cast<unsigned long long>(dstats.rejected));
    log.info(line);
    logged_enqueued = enq;
    logged_acked = acked;
    last_log_time = now;
  }

  // ------------------------------------------------------------ the loop

  void read_clients() {
    zmq::message_t id, body, extra;
    void* s = clients->socket.handle();
    if (!clients_backlogged) backlogged_since = steady::now();
    clients_backlogged = true;  // unless the loop below finds the socket empty
    for (int i = 0; i < batch_per_wakeup; ++i) {
      if (zmq_msg_recv(id.handle(), s, ZMQ_DONTWAIT) < 0) {
        clients_backlogged = false;
        return;
      }
      if (!id.more()) continue;  // cannot happen on a ROUTER; ignore
      // The rest of a message is already here (libzmq delivers whole messages).
      if (recv_part(body, s) < 0) return;
      ++dstats.frames_in;
      if (body.more()) {  // every command is one frame: drain and count the rest
        while (body.more() && recv_part(body, s) >= 0) {
        }
        reject("frame count");
        continue;
      }
      sender.assign(static_cast<const char*>(id.data()), id.size());
      handle_command(body);
    }
  }

  static int recv_part(zmq::message_t& m, void* s) {
    int rc = 0;
    while ((rc = zmq_msg_recv(m.handle(), s, 0)) < 0 && zmq_errno() == EINTR) {
    }
    return rc;
  }

  void handle_command(const zmq::message_t& body) {
    wire::reader in(body.data(), body.size());
    std::uint32_t n = 0;
    std::string_view cmd;
    if (!in.array(n) || n == 0 || !in.bytes(cmd, 16)) return reject("not a command");
    if (cmd == wire::cmd_publish && n == 6) {
      (void)on_publish(sender, in, true);
      return;
    }
    if (cmd == wire::cmd_batch && n == 2) return on_batch(sender, in);
    if (cmd == wire::cmd_ack && n == 2) return on_ack(sender, in);
    if (cmd == wire::cmd_take && n == 4) return on_take(sender, in);
    if (cmd == wire::cmd_nack && n == 4) return on_nack(sender, in, false);
    if (cmd == wire::cmd_reject && n == 3) return on_nack(sender, in, true);
    if (cmd == wire::cmd_bye && n == 1) return lose_consumer(sender, false);
    reject("unknown command");
  }

  void read_plain() {
    zmq::message_t parts[2];
    for (int i = 0; i < batch_per_wakeup; ++i) {
      const auto got = plain_in->receive(parts, 2, milliseconds(0));
      if (!got.got) return;
      ++dstats.frames_in;
      if (got.count > 2) {
        reject("frame count");
        continue;
      }
      std::string_view env;
      std::string joined;
      if (got.count == 2) {
        joined.assign(static_cast<const char*>(parts[0].data()), parts[0].size());
        joined.append(static_cast<const char*>(parts[1].data()), parts[1].size());
        env = joined;
      } else {
        env = {static_cast<const char*>(parts[0].data()), parts[0].size()};
      }
      const auto nul = env.find('\0');
      const std::string qname(env.substr(0, nul == std::string_view::npos ? 0 : nul));
      if (nul == std::string_view::npos || wire::invalid_queue_name(qname) ||
          qname.ends_with(dlq_suffix)) {
        reject("plain message whose topic is not a queue name");
        continue;
      }
      enqueue({}, 0, qname, 0, 0, env, ticket_kind::plain);
    }
  }

  void run(const std::atomic<bool>& stop) {
    const std::pair<const char*, const std::optional<detail::channel_socket>*> sockets[] = {
        {"clients", &clients}, {"plain-in", &plain_in}, {"plain-out", &plain_out}, {"control", &control}};
    for (const auto& [name, s] : sockets) {
      if (!s->has_value()) continue;
      for (const auto& why : unresolved_hosts((*s)->endpoints)) {
        log.warn(std::string(name) + " " + why + "; libzmq keeps trying");
      }
    }
    log.info("ready clients=" + join(clients->endpoints) +
             " plain_in=" + join(plain_in ? plain_in->endpoints : std::vector<std::string>{}) +
             " plain_out=" + join(plain_out ? plain_out->endpoints : std::vector<std::string>{}) +
             " control=" + join(control ? control->endpoints : std::vector<std::string>{}) +
             " data=" + config.data_dir.string() + " queues=" + std::to_string(queues.size() / 2));
    last_tick = steady::now();
    last_log_time = last_tick;
    last_rate_sample = last_tick;
    next_stats_log = last_tick + config.stats_interval;
    while (!stop.load(std::memory_order_relaxed)) {
      zmq::pollitem_t items[5];
      int n = 0;
      items[n++] = {clients->socket.handle(), 0, ZMQ_POLLIN, 0};
      items[n++] = {nullptr, wake, ZMQ_POLLIN, 0};
      const int plain_at = plain_in ? n : -1;
      if (plain_in) items[n++] = {plain_in->socket.handle(), 0, ZMQ_POLLIN, 0};
      const int control_at = control ? n : -1;
      if (control) items[n++] = {control->socket.handle(), 0, ZMQ_POLLIN, 0};
      const int out_at = plain_out && plain_queue && !plain_queue->ready.empty() ? n : -1;
      if (out_at >= 0) items[n++] = {plain_out->socket.handle(), 0, ZMQ_POLLOUT, 0};
      if (zmq_poll(items, n, static_cast<long>(poll_timeout().count())) < 0) {
        // A signal (SIGTERM: the stop flag is set) interrupts the wait; anything else is fatal.
        if (zmq_errno() == EINTR) continue;
        throw transport_error(std::string("poll: ") + zmq_strerror(zmq_errno()));
      }
      stamp_turn();
      on_tick();
      for (auto& [name, q] : queues) fire_timers(*q, turn_wall_us);
      if (items[0].revents & ZMQ_POLLIN) read_clients();
      if (plain_at >= 0 && (items[plain_at].revents & ZMQ_POLLIN)) read_plain();
      if (control_at >= 0 && (items[control_at].revents & ZMQ_POLLIN)) {
        for (int i = 0; i < 16; ++i) {
          const auto before = dstats.control_requests;
          serve_control();
          if (dstats.control_requests == before) break;
        }
      }
      drain_completions((items[1].revents & ZMQ_POLLIN) != 0);
      send_confirms();
      stamp_turn();
      // After the eventfd was read (drain_completions), before the spools
      // are: records made visible from here on wake the loop again.
      visible_pending.store(false);
      for (auto& [name, q] : queues) {
        // What this turn appended is written here, not by the writer
        // thread, and delivered in this same turn.
        (void)q->messages->write_queued();
        refill(*q);
        dispatch(*q);
      }
      send_batches();
    }
    shutdown();
  }

  milliseconds poll_timeout() const {
    // Timers due sooner than a tick wake the loop in time.
    std::uint64_t soonest = UINT64_MAX;
    for (const auto& [name, q] : queues)
      if (!q->timers.empty()) soonest = std::min(soonest, q->timers.begin()->first);
    if (soonest == UINT64_MAX) return tick;
    const std::uint64_t now = now_us();
    if (soonest <= now) return milliseconds(0);
    return std::min(tick, milliseconds((soonest - now + 999) / 1000));
  }

  // Syncs everything accepted, confirms it, and logs the totals.
  void shutdown() {
    for (auto& [name, q] : queues) {
      if (auto ec = q->messages->flush()) log.error("queue " + name + ": final sync failed: " + ec.message());
      (void)q->attempts->flush();
    }
    drain_completions(true);
    send_confirms();
    log_rates();
    log.info("stopped; everything accepted is on disk");
  }

  queue_config config;
  logger log;
  // Declared before the queues: a spool's callbacks reach these until it is destroyed.
  unique_fd lock_fd, wake_fd;
  // The data directory while the start can still fail, when this start made
  // it (its own mkdir succeeded): a failed start (a busy address, say)
  // removes it again rather than leave it behind. Declared after the lock,
  // which is held until the removal is done, and before the queues, which
  // are closed first.
  struct new_data_dir {
    new_data_dir() = default;
    new_data_dir(const new_data_dir&) = delete;
    new_data_dir& operator=(const new_data_dir&) = delete;
    fs::path dir;  // empty: nothing to remove
    ~new_data_dir() {
      std::error_code ec;
      if (!dir.empty()) fs::remove_all(dir, ec);
    }
  } made_dir;
  int wake = -1;  // wake_fd.fd
  // Set by wake_for_visible; cleared by the loop after it has read the
  // eventfd and before it reads the spools, so that records made visible
  // after that write the eventfd again.
  std::atomic<bool> visible_pending{false};
  std::mutex completions_mu;
  std::vector<completion> completions;  // guarded by completions_mu
  std::map<std::string, std::unique_ptr<queue>> queues;
  queue* plain_queue = nullptr;
  std::optional<detail::channel_socket> clients, plain_in, plain_out, control;
  std::unordered_map<std::string, consumer_state> consumers;
  std::unordered_map<std::uint64_t, flight> in_flight;
  // Left by acked deliveries for the next ones, so that steady delivery
  // allocates nothing: in_flight's nodes, and record buffers for refill().
  // An ack command can free thousands at once (a consumer's prefetch).
  static constexpr std::size_t max_spares = 4096;
  static constexpr std::size_t max_spare_record = 2048;
  std::vector<std::unordered_map<std::uint64_t, flight>::node_type> spare_flights;
  std::vector<std::string> spare_records;
  std::vector<queue*> acked_queues;  // those with positions in `acked` (on_ack)
  std::uint64_t tag_base = 0, next_tag = 0;
  dedup_table dedup;
  // Ids in `dedup` whose first copy is still being appended (the appends
  // in flight). A completion only takes its id out of here.
  dedup_table writing;
  // The window's ids in the order they leave it: when, and which.
  std::deque<std::pair<std::uint64_t, message_id>> dedup_order;
  // Forgotten ids whose place in dedup_order has not come up yet (forget).
  std::map<message_id, std::uint32_t> forgotten;
  std::uint64_t dedup_evicted = 0;
  detail::ring<ticket> tickets;   // numbers ticket_base, ticket_base + 1, ...
  std::uint64_t ticket_base = 1;
  steady::time_point completed_at;  // when the completions in hand were taken
  std::vector<completion> completions_batch;
  std::unordered_map<std::string, std::vector<std::uint64_t>> confirms;
  queue_device_stats dstats;
  bool clients_backlogged = false;  // the last read of the clients socket left frames in it
  steady::time_point backlogged_since;
  std::vector<std::string> batching;  // consumers with deliveries collected
  std::string batch_frame;
  // The clocks, read once per turn of the loop rather than per message.
  steady::time_point turn_now;
  std::uint64_t turn_wall_us = 0;

  void stamp_turn() {
    turn_now = steady::now();
    turn_wall_us = now_us();
  }

  std::mt19937_64 rng{std::random_device{}()};
  wire::writer out;
  message scratch;
  std::string sender, record_buf, attempt_buf, dead_buf;  // sender: routing id of the frame in hand
  spool_record read_buf;
  steady::time_point last_tick, next_scan, next_stats_log, last_log_time;
  steady::time_point last_rate_sample, next_rate_sample;
  std::uint64_t logged_enqueued = 0, logged_acked = 0;
};

queue_device::queue_device(context& ctx, queue_config config)
    : impl_(std::make_unique<impl>(ctx, std::move(config))) {}
queue_device::~queue_device() = default;

void queue_device::run(const std::atomic<bool>& stop) { impl_->run(stop); }

const std::vector<std::string>& queue_device::client_endpoints() const noexcept {
  return impl_->clients->endpoints;
}
const std::vector<std::string>& queue_device::control_endpoints() const noexcept {
  static const std::vector<std::string> none;
  return impl_->control ? impl_->control->endpoints : none;
}
const std::vector<std::string>& queue_device::plain_in_endpoints() const noexcept {
  static const std::vector<std::string> none;
  return impl_->plain_in ? impl_->plain_in->endpoints : none;
}
const std::vector<std::string>& queue_device::plain_out_endpoints() const noexcept {
  static const std::vector<std::string> none;
  return impl_->plain_out ? impl_->plain_out->endpoints : none;
}

std::vector<queue_stats> queue_device::stats() const {
  std::vector<queue_stats> v;
  for (const auto& [name, q] : impl_->queues) v.push_back(impl_->snapshot(*q));
  return v;
}
const queue_device_stats& queue_device::device_stats() const noexcept { return impl_->dstats; }
std::string queue_device::stats_json() const { return impl_->json(); }

}  // namespace postbox::devices
