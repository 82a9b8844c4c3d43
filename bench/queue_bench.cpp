// postbox-bench-queue: the queue device (docs/queue-device.md) end to end,
// beside the two ceilings under it, all measured in the same run:
//   a) raw libzmq: DEALER -> ROUTER, one-way 100-byte messages over tcp loopback;
//   b) the spool: appends of 100-byte records under fsync_policy::always
//      (group commit), several appenders, as postbox-bench-spool measures it;
//   c) the device in-process on its own thread, data on a real disk, fsync
//      always: producers (send_async, a window of unconfirmed messages) and
//      1, then 4, acking consumers on their own threads, all over tcp
//      127.0.0.1; messages/s from the first send to the last ack, every
//      message checked delivered at least once (duplicates counted). The
//      consumers share a prefetch of 4,000 (1,000 each when there are 4):
//      one consumer's rate is at most its prefetch over the delivery->ack
//      round trip (2-3 ms with both cores busy), so a lone consumer with
//      1,000 is held back by its credit, not by the device; more credit
//      than the rate needs only makes the device's working set larger;
//   d) latency at half the target rate of 400,000 msg/s (half of (c)'s best
//      rate when that is lower): a paced producer stamps each payload with
//      its send time; delivery latency is send_async -> the consumer's
//      receive (it includes the fdatasync before a message can be
//      delivered), confirm latency is send_async -> the confirm callback.
//      The producer sends each millisecond's messages together (a 1 ms tick,
//      --pace-tick-us) and the first half second (--latency-warm-up) runs
//      at the same rate but is not counted: the percentiles are the steady
//      state's, and the whole run's p99 is printed beside them.
//      Beside them, the machine's own stalls in the same run (a thread
//      sleeping 1 ms at a time): on a shared virtual machine the host can
//      pause it for milliseconds, and no latency here is below that floor.
//      (d) runs three times (--latency-runs; --quick: once), each on a
//      fresh device; the run with the median p99 is the one summarised.
//
// usage: postbox-bench-queue [--quick] [--dir DIR] [--messages N] [--producers N]
//                            [--window N] [--prefetch N] [--latency-seconds S] [--latency-rate R]
//                            [--latency-consumers N] [--latency-warm-up S] [--pace-tick-us US]
//                            [--latency-runs N] [--timeline] [--sync-spacing MS]
//                            [--e2e-only CONSUMERS] [--latency-only --latency-rate R]
// --e2e-only runs only (c) with that many consumers; --latency-only only (d).
// --sync-spacing runs the device with that sync spacing instead of its default.
#include <postbox/devices/queue.hpp>
#include <postbox/postbox.hpp>
#include <postbox/queue_client.hpp>

#include "number_option.hpp"
#include "stall_probe.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <optional>
#include <pthread.h>
#include <string>
#include <string_view>
#include <sys/resource.h>
#include <sys/vfs.h>
#include <thread>
#include <unistd.h>
#include <vector>

#include <zmq.hpp>

namespace {

using clock_type = std::chrono::steady_clock;
using std::chrono::milliseconds;
namespace fs = std::filesystem;

constexpr std::size_t message_size = 100;
constexpr const char* queue_name = "bench";
constexpr std::uint64_t warm_up = ~std::uint64_t{0};  // the index of a producer's warm-up message

double seconds_between(clock_type::time_point a, clock_type::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(clock_type::now().time_since_epoch())
      .count();
}

struct config {
  fs::path dir;
  std::uint64_t messages = 500'000;
  std::uint64_t raw_messages = 2'000'000;
  std::uint64_t spool_records = 500'000;
  int spool_appenders = 4;
  int producers = 2;
  std::size_t window = 4'000;
  std::uint32_t prefetch = 0;  // per consumer; 0: 4,000 shared by the consumers of a run
  double latency_seconds = 3.0;
  int consumers_only = 1;  // --e2e-only: consumers of the single run
  double latency_rate = 0;  // --latency-rate: pace (d) here instead of at half the target
  double latency_warm_up = 0.5;  // --latency-warm-up: (d)'s first seconds, at the rate, not counted
  int pace_tick_us = 1'000;      // --pace-tick-us: (d)'s producer sends what is due this often
  bool timeline = false;    // --timeline: (d)'s delivery latency per quarter second
  int latency_consumers = 0;  // --latency-consumers: for (d), instead of (c)'s best count
  // --latency-runs: (d) this many times; the run with the median p99 is the
  // one reported. The machine's speed varies from minute to minute, and
  // one run's p99 with it.
  int latency_runs = 3;
  // --sync-spacing: the device's (queue_config::sync_spacing); unset: its default.
  std::optional<std::chrono::microseconds> sync_spacing;
};

// ---------------------------------------------------------------- payloads

// [0, 8): the message's index; [8, 16): steady-clock send time in ns; then filler.
std::string make_payload(std::uint64_t index, std::int64_t sent_ns) {
  std::string p(message_size, 'x');
  std::memcpy(p.data(), &index, sizeof index);
  std::memcpy(p.data() + 8, &sent_ns, sizeof sent_ns);
  return p;
}

bool read_payload(std::string_view p, std::uint64_t& index, std::int64_t& sent_ns) {
  if (p.size() < 16) return false;
  std::memcpy(&index, p.data(), sizeof index);
  std::memcpy(&sent_ns, p.data() + 8, sizeof sent_ns);
  return true;
}

struct percentiles {
  double p50_ms = 0, p99_ms = 0, max_ms = 0;
  std::size_t samples = 0;
};

// CPU time of the whole process (every thread: device, clients, libzmq), s.
double process_cpu_seconds() {
  rusage ru{};
  ::getrusage(RUSAGE_SELF, &ru);
  auto s = [](const timeval& tv) { return static_cast<double>(tv.tv_sec) + static_cast<double>(tv.tv_usec) / 1e6; };
  return s(ru.ru_utime) + s(ru.ru_stime);
}

percentiles summarise(std::vector<std::int64_t> ns) {
  percentiles r;
  r.samples = ns.size();
  if (ns.empty()) return r;
  std::sort(ns.begin(), ns.end());
  auto at = [&ns](double q) {
    const auto i = std::min(ns.size() - 1, static_cast<std::size_t>(q * static_cast<double>(ns.size())));
    return static_cast<double>(ns[i]) / 1e6;
  };
  r.p50_ms = at(0.50);
  r.p99_ms = at(0.99);
  r.max_ms = static_cast<double>(ns.back()) / 1e6;
  return r;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

// ---------------------------------------------------------------- a) libzmq

// One-way DEALER -> ROUTER over tcp loopback, 100-byte frames, messages/s
// from the first send to the last receive.
double raw_zmq(std::uint64_t n) {
  zmq::context_t sctx(1), rctx(1);
  zmq::socket_t router(rctx, zmq::socket_type::router), dealer(sctx, zmq::socket_type::dealer);
  for (auto* s : {&router, &dealer}) {
    s->set(zmq::sockopt::sndhwm, 0);
    s->set(zmq::sockopt::rcvhwm, 0);
    s->set(zmq::sockopt::linger, 0);
  }
  router.bind("tcp://127.0.0.1:*");
  dealer.connect(router.get(zmq::sockopt::last_endpoint));
  const std::string frame(message_size, 'z');
  zmq::message_t id, body;
  dealer.send(zmq::str_buffer("hello"), zmq::send_flags::none);  // the connection is up: start
  (void)router.recv(id);
  (void)router.recv(body);
  clock_type::time_point end;
  std::thread receiver([&] {
    zmq::message_t rid, rbody;
    for (std::uint64_t i = 0; i < n; ++i) {
      (void)router.recv(rid);
      (void)router.recv(rbody);
    }
    end = clock_type::now();
  });
  const auto start = clock_type::now();
  for (std::uint64_t i = 0; i < n; ++i) dealer.send(zmq::buffer(frame), zmq::send_flags::none);
  receiver.join();
  return static_cast<double>(n) / seconds_between(start, end);
}

// ---------------------------------------------------------------- b) spool

struct spool_result {
  double records_per_s = 0;
  double records_per_fsync = 0;
};

// bench/spool_bench.cpp's append measure: `appenders` threads append
// 100-byte records under fsync_policy::always; messages/s until the last
// callback (each callback runs after the fdatasync covering its record).
spool_result spool_ceiling(const fs::path& dir, std::uint64_t records, int appenders) {
  postbox::spool s(dir, {.segment_size = postbox::devices::queue_config{}.segment_size,
                         .fsync = postbox::fsync_policy::always});
  const std::string payload(message_size, 'p');
  std::atomic<std::uint64_t> done{0}, failed{0};
  const std::uint64_t per_thread = records / static_cast<std::uint64_t>(appenders);
  const std::uint64_t total = per_thread * static_cast<std::uint64_t>(appenders);
  const auto before = s.stats();
  const auto t0 = clock_type::now();
  std::vector<std::thread> ts;
  for (int t = 0; t < appenders; ++t)
    ts.emplace_back([&] {
      for (std::uint64_t i = 0; i < per_thread; ++i)
        if (s.append(payload, [&](const postbox::append_outcome& o) {
              if (o.error) ++failed;
              if (done.fetch_add(1, std::memory_order_acq_rel) + 1 == total) done.notify_all();
            }) != postbox::append_status::queued) {
          ++failed;
          if (done.fetch_add(1, std::memory_order_acq_rel) + 1 == total) done.notify_all();
        }
    });
  for (auto& t : ts) t.join();
  for (auto d = done.load(); d != total; d = done.load()) done.wait(d);
  const double secs = seconds_between(t0, clock_type::now());
  const auto after = s.stats();
  if (failed.load() != 0)
    std::printf("  WARNING: %llu spool appends failed\n", static_cast<unsigned long long>(failed.load()));
  spool_result r;
  r.records_per_s = static_cast<double>(total) / secs;
  r.records_per_fsync = static_cast<double>(total) /
                        static_cast<double>(std::max<std::uint64_t>(1, after.fsyncs - before.fsyncs));
  return r;
}

// ---------------------------------------------------------------- the device

// The number after "field": in a stats answer, of queue `queue` when given,
// else of the device (the fields after the queues array).
std::optional<std::uint64_t> json_field(const std::string& json, std::string_view field,
                                        std::string_view queue = {}) {
  std::size_t from = 0, to = json.size();
  if (!queue.empty()) {
    from = json.find("{\"name\":\"" + std::string(queue) + "\"");
    if (from == std::string::npos) return std::nullopt;
    to = json.find('}', from);
  } else {
    from = json.rfind("],\"consumers\"");
    if (from == std::string::npos) return std::nullopt;
    ++from;
  }
  const std::string needle = "\"" + std::string(field) + "\":";
  const auto at = json.find(needle, from);
  if (at == std::string::npos || at > to) return std::nullopt;
  std::size_t p = at + needle.size();
  if (p >= json.size() || json[p] < '0' || json[p] > '9') return std::nullopt;
  std::uint64_t v = 0;
  for (; p < json.size() && json[p] >= '0' && json[p] <= '9'; ++p)
    v = v * 10 + static_cast<std::uint64_t>(json[p] - '0');
  return v;
}

// The device on its own thread, with a control endpoint the bench asks for stats.
class running_device {
 public:
  running_device(const fs::path& data, std::optional<std::chrono::microseconds> sync_spacing)
      : device_(ctx_, make_config(data, sync_spacing)) {
    thread_ = std::thread([this] {
      ::pthread_setname_np(::pthread_self(), "qb-device");  // its spools' writers inherit it
      device_.run(stop_);
    });
    req_ctx_ = std::make_unique<zmq::context_t>(1);
  }
  ~running_device() {
    req_.reset();
    req_ctx_.reset();
    stop_ = true;
    thread_.join();
  }
  running_device(const running_device&) = delete;
  running_device& operator=(const running_device&) = delete;

  [[nodiscard]] std::string clients() const { return ">" + device_.client_endpoints().front(); }

  // CPU time of the device's loop thread so far, s (its spools' writers not included).
  [[nodiscard]] double loop_cpu_seconds() {
    clockid_t id{};
    timespec ts{};
    if (::pthread_getcpuclockid(thread_.native_handle(), &id) != 0 || ::clock_gettime(id, &ts) != 0) return 0;
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
  }

  // The "stats" answer, or empty when none came within a second.
  std::string stats() {
    if (!req_) {
      req_.emplace(*req_ctx_, zmq::socket_type::req);
      req_->set(zmq::sockopt::linger, 0);
      req_->set(zmq::sockopt::rcvtimeo, 1000);
      req_->connect(device_.control_endpoints().front());
    }
    zmq::message_t reply;
    if (!req_->send(zmq::str_buffer("stats"), zmq::send_flags::none) || !req_->recv(reply)) {
      req_.reset();
      return {};
    }
    return reply.to_string();
  }

 private:
  static postbox::devices::queue_config make_config(const fs::path& data,
                                                    std::optional<std::chrono::microseconds> sync_spacing) {
    postbox::devices::queue_config c;
    c.clients = "@tcp://127.0.0.1:*";
    c.control = "@tcp://127.0.0.1:*";
    c.data_dir = data;
    c.fsync = postbox::fsync_policy::always;
    c.log = postbox::devices::log_level::warn;
    c.stats_interval = std::chrono::seconds(0);
    if (sync_spacing) c.sync_spacing = *sync_spacing;
    return c;
  }

  postbox::context ctx_;
  postbox::devices::queue_device device_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  std::unique_ptr<zmq::context_t> req_ctx_;
  std::optional<zmq::socket_t> req_;
};

struct e2e_result {
  bool complete = false;
  double rate = 0;          // first send -> the ack of the last message not yet seen
  double confirm_rate = 0;  // first send -> the last confirm
  double offered_rate = 0;  // first send -> the last send_async returned
  std::uint64_t sent = 0, confirmed = 0, refused = 0, timed_out = 0, resent = 0;
  std::uint64_t received = 0, unique = 0, duplicates = 0, redelivered = 0, bad = 0;
  std::uint64_t device_enqueued = 0, device_acked = 0, device_depth = 0, device_dup = 0;
  std::uint64_t fsync_p50_us = 0, fsync_max_us = 0;
  std::uint64_t warm_ups = 0;     // one per producer, not counted elsewhere
  std::uint64_t late_sends = 0;  // paced only: sends more than a tick and 1 ms behind schedule
  double cpu_cores = 0;          // the process's CPU time over the run's wall time
  double loop_ns_per_msg = 0;    // the device loop thread's CPU time per message
  double frames_per_kmsg = 0;    // frames the device read per 1,000 messages (0: unknown)
  percentiles delivery, confirmation;  // paced only: after the warm-up
  percentiles whole_delivery;          // paced only: the warm-up too
  percentiles from_due;                // paced only: from the schedule's due time, after the warm-up
  postbox::bench::stall_summary stalls;  // paced only: the machine's own, in the same run
  std::vector<percentiles> timeline;  // --timeline: the first consumer's, per 1/4 s
};

// Room for `n` samples, its pages touched now rather than while measuring:
// a first touch of fresh memory is slow on a virtual machine.
void reserve_touched(std::vector<std::int64_t>& v, std::size_t n) {
  v.resize(n);
  v.clear();
}

// `rate` > 0: one paced producer at `rate` messages/s (the latency run),
// messages sent in the first `warm_s` seconds not counted in
// the steady-state percentiles; otherwise cfg.producers producers as fast
// as their windows allow.
e2e_result run_e2e(const fs::path& data, const config& cfg, std::uint64_t n, int consumers,
                   double rate, double warm_s = 0) {
  e2e_result r;
  const bool paced = rate > 0;
  const int producers = paced ? 1 : cfg.producers;
  std::atomic<bool> go{false};
  std::atomic<std::int64_t> go_ns{0};  // when the clock starts
  // Send times from here on count (set when the clock starts).
  std::atomic<std::int64_t> counted_from_ns{std::numeric_limits<std::int64_t>::max()};
  running_device dev(data, cfg.sync_spacing);
  const std::string ep = dev.clients();

  std::vector<std::atomic<std::uint8_t>> seen(n);
  std::atomic<std::uint64_t> unique{0}, received{0}, duplicates{0}, redelivered{0}, bad{0};
  std::atomic<std::int64_t> last_ack_ns{0};
  std::atomic<bool> stop_consumers{false};
  std::atomic<int> consumers_up{0};
  std::vector<std::vector<std::int64_t>> delivery_lat(static_cast<std::size_t>(consumers));
  std::vector<std::vector<std::int64_t>> warm_lat(static_cast<std::size_t>(consumers));
  std::vector<std::vector<std::int64_t>> due_lat(static_cast<std::size_t>(consumers));
  std::atomic<std::uint64_t> warm_ups{0}, warm_up_failed{0};

  std::vector<std::thread> cts;
  for (int ci = 0; ci < consumers; ++ci) {
    cts.emplace_back([&, ci] {
      ::pthread_setname_np(::pthread_self(), "qb-consumer");  // its I/O thread inherits it
      postbox::context ctx;
      postbox::consumer_options co;
      co.prefetch = cfg.prefetch != 0 ? cfg.prefetch : 4'000 / static_cast<std::uint32_t>(consumers);
      postbox::consumer c(ctx, ep, {queue_name}, co);
      auto& lat = delivery_lat[static_cast<std::size_t>(ci)];
      auto& warm_up_lat = warm_lat[static_cast<std::size_t>(ci)];
      auto& lat_from_due = due_lat[static_cast<std::size_t>(ci)];
      if (paced) {
        reserve_touched(lat, n / static_cast<std::uint64_t>(consumers) + 1024);
        reserve_touched(lat_from_due, n / static_cast<std::uint64_t>(consumers) + 1024);
        reserve_touched(warm_up_lat, static_cast<std::size_t>(rate * warm_s) / static_cast<std::size_t>(consumers) + 1024);
      }
      ++consumers_up;
      while (!stop_consumers.load(std::memory_order_relaxed)) {
        auto d = c.receive(milliseconds(50));
        if (!d) continue;
        const std::int64_t got = now_ns();
        received.fetch_add(1, std::memory_order_relaxed);
        std::uint64_t index = 0;
        std::int64_t sent_ns = 0;
        if (read_payload(d->msg.payload(), index, sent_ns) && index == warm_up) {
          ++warm_ups;
        } else if (!read_payload(d->msg.payload(), index, sent_ns) || index >= n) {
          bad.fetch_add(1, std::memory_order_relaxed);
        } else {
          if (d->attempt > 0) redelivered.fetch_add(1, std::memory_order_relaxed);
          if (paced && sent_ns >= counted_from_ns.load(std::memory_order_relaxed)) {
            lat.push_back(got - sent_ns);
            // The one paced producer sends message i at start + i / rate.
            const auto due = go_ns.load(std::memory_order_relaxed) +
                             static_cast<std::int64_t>(static_cast<double>(index) * 1e9 / rate);
            lat_from_due.push_back(got - due);
          } else if (paced) {
            warm_up_lat.push_back(got - sent_ns);
          }
          if (seen[index].fetch_add(1, std::memory_order_relaxed) == 0) {
            c.ack(*d);
            if (unique.fetch_add(1, std::memory_order_acq_rel) + 1 == n) last_ack_ns = now_ns();
            continue;
          }
          duplicates.fetch_add(1, std::memory_order_relaxed);
        }
        c.ack(*d);
      }
    });  // the consumer's destructor says bye after flushing its acks
  }

  // Start once the device knows every consumer, so the first deliveries are
  // shared out as in steady state.
  {
    const auto give_up = clock_type::now() + std::chrono::seconds(10);
    while (clock_type::now() < give_up) {
      const auto js = dev.stats();
      if (consumers_up.load() == consumers && json_field(js, "consumers").value_or(0) >= static_cast<std::uint64_t>(consumers)) break;
      std::this_thread::sleep_for(milliseconds(5));
    }
  }

  std::atomic<std::uint64_t> confirmed{0}, refused{0}, timed_out{0}, resent{0}, late{0};
  std::atomic<std::int64_t> last_confirm_ns{0}, last_send_ns{0};
  std::atomic<int> producers_done{0}, producers_up{0};
  std::vector<std::int64_t> confirm_lat;
  if (paced) reserve_touched(confirm_lat, n);
  std::vector<std::thread> pts;
  for (int pi = 0; pi < producers; ++pi) {
    pts.emplace_back([&, pi] {
      ::pthread_setname_np(::pthread_self(), "qb-producer");
      postbox::context ctx;
      postbox::producer_options po;
      po.window = cfg.window;
      postbox::producer p(ctx, ep, queue_name, po);
      // One confirmed warm-up message (index warm_up) so that the connection
      // is up before the clock starts; the consumers ack it and do not count it.
      if (!p.send(postbox::message(queue_name, make_payload(warm_up, 0))).ok) ++warm_up_failed;
      const std::uint64_t resent_before = p.stats().resent;
      ++producers_up;
      go.wait(false);
      const std::int64_t start_ns = go_ns.load();
      const std::uint64_t first = n * static_cast<std::uint64_t>(pi) / static_cast<std::uint64_t>(producers);
      const std::uint64_t last = n * static_cast<std::uint64_t>(pi + 1) / static_cast<std::uint64_t>(producers);
      auto on_confirm = [&](const postbox::confirm& c, std::int64_t sent_ns) {
        const std::int64_t t = now_ns();
        if (c.ok) {
          // The paced run's one producer thread only.
          if (paced && sent_ns >= counted_from_ns.load(std::memory_order_relaxed)) confirm_lat.push_back(t - sent_ns);
        } else if (c.reason == "timed out") {
          ++timed_out;
        } else {
          ++refused;
        }
        if (confirmed.fetch_add(1, std::memory_order_acq_rel) + 1 == n) last_confirm_ns = t;
      };
      std::uint64_t i = first;
      while (i < last) {
        std::uint64_t until = last;
        if (paced) {
          // Send what the schedule says is due by now, then service confirms.
          const double elapsed = static_cast<double>(now_ns() - start_ns) / 1e9;
          until = std::min<std::uint64_t>(last, static_cast<std::uint64_t>(elapsed * rate) + 1);
          // Due more than a tick and 1 ms ago, and not sent yet.
          const auto grace = static_cast<std::uint64_t>(rate * (1e-3 + 1e-6 * cfg.pace_tick_us));
          if (i + grace < until) late += until - grace - i;
        }
        for (; i < until; ++i) {
          const std::int64_t t = now_ns();
          p.send_async(postbox::message(queue_name, make_payload(i, t)),
                       [&on_confirm, t](const postbox::confirm& c) { on_confirm(c, t); });
          if (paced && (i & 63) == 0) (void)p.poll(milliseconds(0));
        }
        if (paced && i < last) {
          // Until the next message is due: waiting on confirms when that is
          // at least a millisecond and a tick away (a slow rate), else
          // sleeping a tick. A thread waking every 100 us while the disk
          // flushes can make this kind of virtual machine pause for several
          // ms every 100 ms (docs/performance.md); a 1 ms tick far less often.
          (void)p.poll(milliseconds(0));
          const auto due_ns = start_ns + static_cast<std::int64_t>(static_cast<double>(i) * 1e9 / rate);
          const std::int64_t wait_ns = due_ns - now_ns();
          if (wait_ns >= 1'000'000 && wait_ns >= std::int64_t{cfg.pace_tick_us} * 1'000)
            (void)p.poll(milliseconds(wait_ns / 1'000'000));
          else
            std::this_thread::sleep_for(std::chrono::microseconds(cfg.pace_tick_us));
        }
      }
      std::int64_t t = now_ns();
      for (std::int64_t prev = last_send_ns.load(); prev < t && !last_send_ns.compare_exchange_weak(prev, t);) {
      }
      (void)p.flush(std::chrono::seconds(60));
      resent += p.stats().resent - resent_before;
      ++producers_done;
      // Keep the producer (and its socket) until nothing is unconfirmed.
    });
  }

  {
    const auto give_up = clock_type::now() + std::chrono::seconds(10);
    while (producers_up.load() < producers && clock_type::now() < give_up)
      std::this_thread::sleep_for(milliseconds(1));
  }
  // Asked before the clock starts: the control round trip is not timed.
  const auto frames_start = json_field(dev.stats(), "frames_in");
  const std::int64_t start_ns = now_ns();
  const double cpu_start = process_cpu_seconds();
  const double loop_start = dev.loop_cpu_seconds();
  go_ns = start_ns;
  counted_from_ns = start_ns + static_cast<std::int64_t>(warm_s * 1e9);
  go = true;
  go.notify_all();
  std::optional<postbox::bench::stall_probe> probe;
  if (paced) probe.emplace();

  // Wait for every message acked and confirmed; give up after 20 s without progress.
  std::uint64_t last_progress = 0;
  auto progress_at = clock_type::now();
  while (true) {
    const std::uint64_t u = unique.load(), c = confirmed.load();
    if (u == n && producers_done.load() == producers) break;
    if (u + c != last_progress) {
      last_progress = u + c;
      progress_at = clock_type::now();
    } else if (clock_type::now() - progress_at > std::chrono::seconds(20)) {
      std::printf("  STALLED: %llu of %llu messages acked, %llu confirmed, 20 s without progress\n",
                  static_cast<unsigned long long>(u), static_cast<unsigned long long>(n),
                  static_cast<unsigned long long>(c));
      std::printf("  device stats: %s\n", dev.stats().c_str());
      break;
    }
    std::this_thread::sleep_for(milliseconds(2));
  }
  for (auto& t : pts) t.join();
  if (probe) r.stalls = probe->stop();
  r.complete = unique.load() == n;
  r.cpu_cores = (process_cpu_seconds() - cpu_start) / (static_cast<double>(now_ns() - start_ns) / 1e9);
  r.loop_ns_per_msg = (dev.loop_cpu_seconds() - loop_start) * 1e9 / static_cast<double>(n);

  // The device's own account, once the last acks have reached it.
  std::string js;
  {
    const auto give_up = clock_type::now() + std::chrono::seconds(10);
    do {
      js = dev.stats();
      if (json_field(js, "acked", queue_name).value_or(0) >= n + static_cast<std::uint64_t>(producers)) break;
      std::this_thread::sleep_for(milliseconds(5));
    } while (clock_type::now() < give_up);
  }
  stop_consumers = true;
  for (auto& t : cts) t.join();

  auto rate_to = [&](std::int64_t end_ns) {
    return end_ns > start_ns ? static_cast<double>(n) / (static_cast<double>(end_ns - start_ns) / 1e9) : 0.0;
  };
  r.rate = r.complete ? rate_to(last_ack_ns.load()) : 0;
  r.confirm_rate = confirmed.load() == n ? rate_to(last_confirm_ns.load()) : 0;
  r.offered_rate = rate_to(last_send_ns.load());
  r.sent = n;
  r.confirmed = confirmed.load() - refused.load() - timed_out.load();
  r.refused = refused.load();
  r.timed_out = timed_out.load();
  r.resent = resent.load();
  r.received = received.load();
  r.unique = unique.load();
  r.duplicates = duplicates.load();
  r.redelivered = redelivered.load();
  r.bad = bad.load() + warm_up_failed.load();
  r.warm_ups = warm_ups.load();
  r.late_sends = late.load();
  if (const auto frames_end = json_field(js, "frames_in"); frames_start && frames_end)
    r.frames_per_kmsg = static_cast<double>(*frames_end - *frames_start) * 1000.0 / static_cast<double>(n);
  r.device_enqueued = json_field(js, "enqueued", queue_name).value_or(0);
  r.device_acked = json_field(js, "acked", queue_name).value_or(0);
  r.device_depth = json_field(js, "depth", queue_name).value_or(0);
  r.device_dup = json_field(js, "duplicates", queue_name).value_or(0);
  r.fsync_p50_us = json_field(js, "fsync_p50_us", queue_name).value_or(0);
  r.fsync_max_us = json_field(js, "fsync_max_us", queue_name).value_or(0);
  if (paced) {
    // The first consumer's deliveries, in the order it got them, a quarter
    // of a second of the schedule at a time: where the tail comes from.
    if (cfg.timeline) {
      std::vector<std::int64_t> v = warm_lat[0];  // in the order the first consumer got them
      v.insert(v.end(), delivery_lat[0].begin(), delivery_lat[0].end());
      const auto per = std::max<std::size_t>(100, static_cast<std::size_t>(rate / 4 / consumers));
      for (std::size_t at = 0; at + per <= v.size(); at += per) {
        auto w = summarise(std::vector<std::int64_t>(v.begin() + static_cast<std::ptrdiff_t>(at),
                                                     v.begin() + static_cast<std::ptrdiff_t>(at + per)));
        r.timeline.push_back(w);
      }
    }
    std::vector<std::int64_t> all;
    for (auto& v : delivery_lat) all.insert(all.end(), v.begin(), v.end());
    r.delivery = summarise(all);
    std::vector<std::int64_t> from_due;
    for (auto& v : due_lat) from_due.insert(from_due.end(), v.begin(), v.end());
    r.from_due = summarise(std::move(from_due));
    for (auto& v : warm_lat) all.insert(all.end(), v.begin(), v.end());
    r.whole_delivery = summarise(std::move(all));
    r.confirmation = summarise(std::move(confirm_lat));
  }
  return r;
}

void print_e2e(const char* what, const e2e_result& r) {
  std::printf("  %-22s %10.0f msg/s end to end  (confirms %.0f msg/s, sends %.0f msg/s)\n", what,
              r.rate, r.confirm_rate, r.offered_rate);
  std::printf("  %-22s confirmed %llu/%llu refused %llu timed-out %llu resent %llu | received %llu "
              "unique %llu dup %llu redelivered %llu bad %llu%s\n",
              "", static_cast<unsigned long long>(r.confirmed), static_cast<unsigned long long>(r.sent),
              static_cast<unsigned long long>(r.refused), static_cast<unsigned long long>(r.timed_out),
              static_cast<unsigned long long>(r.resent), static_cast<unsigned long long>(r.received),
              static_cast<unsigned long long>(r.unique), static_cast<unsigned long long>(r.duplicates),
              static_cast<unsigned long long>(r.redelivered), static_cast<unsigned long long>(r.bad),
              r.complete ? "" : "  INCOMPLETE");
  std::printf("  %-22s device (incl. %llu warm-up): enqueued %llu acked %llu depth %llu dedup-hits %llu, "
              "append->durable p50 %llu us max %llu us; CPU %.2f cores, device loop %.0f ns/msg, "
              "%.1f frames in per 1,000 msg\n",
              "", static_cast<unsigned long long>(r.warm_ups), static_cast<unsigned long long>(r.device_enqueued),
              static_cast<unsigned long long>(r.device_acked), static_cast<unsigned long long>(r.device_depth),
              static_cast<unsigned long long>(r.device_dup), static_cast<unsigned long long>(r.fsync_p50_us),
              static_cast<unsigned long long>(r.fsync_max_us), r.cpu_cores, r.loop_ns_per_msg,
              r.frames_per_kmsg);
  for (std::size_t i = 0; i < r.timeline.size(); ++i) {
    const auto& w = r.timeline[i];
    std::printf("  %-22s %5.2f s  p50 %7.3f ms  p99 %7.3f ms  max %7.3f ms  (first consumer)\n",
                i == 0 ? "timeline" : "", static_cast<double>(i) / 4, w.p50_ms, w.p99_ms, w.max_ms);
  }
}

int usage() {
  std::fprintf(stderr,
               "usage: postbox-bench-queue [--quick] [--dir DIR] [--messages N] [--producers N]\n"
               "                           [--window N] [--prefetch N] [--latency-seconds S] [--latency-rate R]\n"
               "                           [--latency-consumers N] [--latency-warm-up S] [--pace-tick-us US]\n"
               "                           [--latency-runs N] [--timeline] [--sync-spacing MS]\n"
               "                           [--e2e-only CONSUMERS] [--latency-only --latency-rate R]\n");
  return 2;
}

// (d): one paced producer at `rate`, printed with its percentiles.
e2e_result run_latency(const config& cfg, double rate, int consumers, const char* why, int run) {
  const auto n = std::max<std::uint64_t>(
      1000, static_cast<std::uint64_t>(rate * (cfg.latency_warm_up + cfg.latency_seconds)));
  std::printf("d) latency at %s, run %d of %d: %.0f msg/s paced, 1 producer sending what is due, then sleeping %d us;\n"
              "   %d consumer(s), %llu messages, those sent in the first %.2f s a warm-up not counted\n",
              why, run, cfg.latency_runs, rate, cfg.pace_tick_us, consumers,
              static_cast<unsigned long long>(n), cfg.latency_warm_up);
  auto d = run_e2e(cfg.dir / "latency", cfg, n, consumers, rate, cfg.latency_warm_up);
  fs::remove_all(cfg.dir / "latency");
  print_e2e("paced", d);
  std::printf("  %-22s p50 %7.3f ms  p99 %7.3f ms  max %7.3f ms  (%zu samples)\n",
              "send -> receive", d.delivery.p50_ms, d.delivery.p99_ms, d.delivery.max_ms, d.delivery.samples);
  std::printf("  %-22s p50 %7.3f ms  p99 %7.3f ms  max %7.3f ms  (%zu samples)\n",
              "send -> confirm", d.confirmation.p50_ms, d.confirmation.p99_ms, d.confirmation.max_ms,
              d.confirmation.samples);
  std::printf("  %-22s p50 %7.3f ms  p99 %7.3f ms  max %7.3f ms  (%zu samples, the warm-up too)\n",
              "send -> receive, all", d.whole_delivery.p50_ms, d.whole_delivery.p99_ms,
              d.whole_delivery.max_ms, d.whole_delivery.samples);
  std::printf("  %-22s p50 %7.3f ms  p99 %7.3f ms  max %7.3f ms  (from when the schedule said to send:\n"
              "  %-22s the wait for the producer's tick and any lag behind the schedule included)\n",
              "due -> receive", d.from_due.p50_ms, d.from_due.p99_ms, d.from_due.max_ms, "");
  std::printf("  %-22s %llu of %llu sends were more than a tick and 1 ms behind the schedule\n", "pacing",
              static_cast<unsigned long long>(d.late_sends), static_cast<unsigned long long>(n));
  std::printf("  %-22s %zu over 2 ms, %.1f%% of the run (warm-up included), longest %.1f ms, median %.0f ms apart:\n"
              "  %-22s from them alone a p99 of %.2f ms\n"
              "  %-22s (a %s thread sleeping 1 ms at a time, woken that late: %s)\n\n",
              "machine stalls", d.stalls.stalls, 100 * d.stalls.share, d.stalls.longest_ms,
              d.stalls.median_period_ms, "", d.stalls.floor_p99_ms, "",
              d.stalls.real_time ? "real-time" : "normal-priority",
              d.stalls.real_time ? "the machine's own pauses"
                                 : "pauses, and waits for a CPU; run as root for pauses alone");
  return d;
}

// (d) cfg.latency_runs times, each on a fresh device; the run whose p99
// (send -> receive) is the median of them (of an even count, the higher
// of the two middle ones), after a line listing them all.
e2e_result run_latencies(const config& cfg, double rate, int consumers, const char* why) {
  std::vector<e2e_result> runs;
  for (int i = 1; i <= cfg.latency_runs; ++i) runs.push_back(run_latency(cfg, rate, consumers, why, i));
  std::string p99s, p50s;
  for (const auto& r : runs) {
    char b[32];
    std::snprintf(b, sizeof b, "%s%.2f", p99s.empty() ? "" : ", ", r.delivery.p99_ms);
    p99s += b;
    std::snprintf(b, sizeof b, "%s%.2f", p50s.empty() ? "" : ", ", r.delivery.p50_ms);
    p50s += b;
  }
  const bool complete =
      std::all_of(runs.begin(), runs.end(), [](const e2e_result& r) { return r.complete; });
  // A run with no samples (incomplete) sorts last, not as the fastest.
  auto key = [](const e2e_result& r) {
    return r.delivery.samples > 0 ? r.delivery.p99_ms : std::numeric_limits<double>::infinity();
  };
  std::sort(runs.begin(), runs.end(), [&](const e2e_result& a, const e2e_result& b) { return key(a) < key(b); });
  e2e_result mid = runs[runs.size() / 2];
  mid.complete = complete;
  std::printf("  %-22s p99 %s ms (median %.2f); p50 %s ms\n\n", "send -> receive, runs", p99s.c_str(),
              mid.delivery.p99_ms, p50s.c_str());
  return mid;
}

}  // namespace

int main(int argc, char** argv) {
  config cfg;
  bool quick = false, messages_set = false, e2e_only = false, latency_only = false,
       latency_seconds_set = false, latency_runs_set = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const bool has_value = i + 1 < argc;
    // The option's value as a number in [lo, hi]; nullopt (usage) otherwise.
    auto value = [&](double lo, double hi, bool whole = true) {
      return has_value ? postbox::bench::number_in(argv[++i], lo, hi, whole) : std::nullopt;
    };
    std::optional<double> v;
    if (a == "--quick") quick = true;
    else if (a == "--timeline") cfg.timeline = true;
    else if (a == "--latency-only") latency_only = true;
    else if (a == "--dir" && has_value) cfg.dir = argv[++i];
    else if (a == "--latency-rate" && (v = value(1, 1e8, false))) cfg.latency_rate = *v;
    else if (a == "--latency-consumers" && (v = value(1, 64))) cfg.latency_consumers = static_cast<int>(*v);
    else if (a == "--e2e-only" && (v = value(1, 64))) e2e_only = true, cfg.consumers_only = static_cast<int>(*v);
    else if (a == "--messages" && (v = value(1, 1e9))) cfg.messages = static_cast<std::uint64_t>(*v), messages_set = true;
    else if (a == "--producers" && (v = value(1, 64))) cfg.producers = static_cast<int>(*v);
    else if (a == "--window" && (v = value(1, 1e6))) cfg.window = static_cast<std::size_t>(*v);
    else if (a == "--prefetch" && (v = value(1, 1e6))) cfg.prefetch = static_cast<std::uint32_t>(*v);
    else if (a == "--latency-warm-up" && (v = value(0, 60, false))) cfg.latency_warm_up = *v;
    else if (a == "--pace-tick-us" && (v = value(1, 100'000))) cfg.pace_tick_us = static_cast<int>(*v);
    else if (a == "--latency-seconds" && (v = value(0.1, 600, false))) cfg.latency_seconds = *v, latency_seconds_set = true;
    else if (a == "--latency-runs" && (v = value(1, 99))) cfg.latency_runs = static_cast<int>(*v), latency_runs_set = true;
    else if (a == "--sync-spacing" && (v = value(0, 100, false)))
      // To the microsecond; a positive value never rounds to 0 (which turns the spacing off).
      cfg.sync_spacing = std::chrono::microseconds(std::max(std::llround(*v * 1000), *v > 0 ? 1LL : 0LL));
    else return usage();
  }
  if (quick) {
    if (!messages_set) cfg.messages = 50'000;
    cfg.raw_messages = 200'000;
    cfg.spool_records = 100'000;
    if (!latency_seconds_set) cfg.latency_seconds = 0.5;
    if (!latency_runs_set) cfg.latency_runs = 1;
  }
  if (cfg.messages == 0 || (latency_only && cfg.latency_rate <= 0)) return usage();
#ifndef NDEBUG
  std::printf("WARNING: built without optimisation (NDEBUG unset); figures are not representative\n");
#endif
  if (cfg.dir.empty()) cfg.dir = fs::current_path() / ("postbox-bench-queue." + std::to_string(::getpid()));
  fs::create_directories(cfg.dir);
  struct statfs sfs {};
  if (::statfs(cfg.dir.c_str(), &sfs) == 0 && sfs.f_type == 0x01021994 /* TMPFS_MAGIC */)
    std::printf("WARNING: %s is tmpfs, which ignores fsync; use --dir on a real disk\n", cfg.dir.c_str());
  const auto spacing = cfg.sync_spacing.value_or(postbox::devices::queue_config{}.sync_spacing);
  std::printf("postbox-bench-queue: %zu-byte messages, fsync always (group commit, sync spacing %.3g ms), "
              "directory %s\n",
              message_size, static_cast<double>(spacing.count()) / 1000, cfg.dir.c_str());
  const std::string prefetch = cfg.prefetch != 0 ? std::to_string(cfg.prefetch) + " each"
                                                 : std::string("4000 shared by the consumers");
  std::printf("  %llu messages per end-to-end run, %d producer(s) window %zu, consumer prefetch %s, "
              "%u hardware threads\n\n",
              static_cast<unsigned long long>(cfg.messages), cfg.producers, cfg.window, prefetch.c_str(),
              std::thread::hardware_concurrency());

  if (latency_only) {
    const auto d = run_latencies(cfg, cfg.latency_rate, std::max(1, cfg.latency_consumers), "--latency-rate");
    fs::remove_all(cfg.dir);
    return d.complete ? 0 : 1;
  }
  if (e2e_only) {
    const auto only = run_e2e(cfg.dir / "e2e", cfg, cfg.messages, cfg.consumers_only, 0);
    fs::remove_all(cfg.dir);
    print_e2e(cfg.consumers_only == 1 ? "1 consumer" : "consumers", only);
    return only.complete ? 0 : 1;
  }

  std::printf("a) raw libzmq, DEALER -> ROUTER one-way, tcp 127.0.0.1\n");
  std::vector<double> zr;
  for (int round = 0; round < 3; ++round) zr.push_back(raw_zmq(cfg.raw_messages));
  const double zmq_rate = median(zr);
  std::printf("  %-22s %10.0f msg/s  (median of 3 x %llu)\n\n", "libzmq", zmq_rate,
              static_cast<unsigned long long>(cfg.raw_messages));

  std::printf("b) spool ceiling, append under fsync always\n");
  const auto sp4 = spool_ceiling(cfg.dir / "spool4", cfg.spool_records, cfg.spool_appenders);
  fs::remove_all(cfg.dir / "spool4");
  const auto sp1 = spool_ceiling(cfg.dir / "spool1", cfg.spool_records, 1);
  fs::remove_all(cfg.dir / "spool1");
  const double spool_rate = std::max(sp4.records_per_s, sp1.records_per_s);
  std::printf("  %-22s %10.0f msg/s  %.0f records per fdatasync\n",
              (std::to_string(cfg.spool_appenders) + " appenders").c_str(), sp4.records_per_s,
              sp4.records_per_fsync);
  std::printf("  %-22s %10.0f msg/s  %.0f records per fdatasync (the device appends from one thread)\n\n",
              "1 appender", sp1.records_per_s, sp1.records_per_fsync);

  std::printf("c) queue device end to end: %d producer(s) confirmed, consumers acking, tcp\n",
              cfg.producers);
  const auto c1 = run_e2e(cfg.dir / "e2e-1", cfg, cfg.messages, 1, 0);
  fs::remove_all(cfg.dir / "e2e-1");
  print_e2e("1 consumer", c1);
  const auto c4 = run_e2e(cfg.dir / "e2e-4", cfg, cfg.messages, 4, 0);
  fs::remove_all(cfg.dir / "e2e-4");
  print_e2e("4 consumers", c4);
  const double best = std::max(c1.rate, c4.rate);
  const int best_consumers =
      cfg.latency_consumers > 0 ? cfg.latency_consumers : (c4.rate > c1.rate ? 4 : 1);
  std::printf("  %-22s 1 consumer %.3f of libzmq, %.3f of the spool; 4 consumers %.3f of libzmq, %.3f of the spool\n\n",
              "ratios", c1.rate / zmq_rate, c1.rate / spool_rate, c4.rate / zmq_rate, c4.rate / spool_rate);

  // The bar: p99 under 5 ms at half the target rate. Half of what
  // this machine reached instead, when it fell short of the target.
  constexpr double target_rate = 400'000;
  const double lat_rate = cfg.latency_rate > 0 ? cfg.latency_rate : std::min(best, target_rate) / 2;
  e2e_result d;
  if (best > 0) {
    d = run_latencies(cfg, lat_rate, best_consumers,
                    cfg.latency_rate > 0   ? "--latency-rate"
                    : best >= target_rate ? "half the target rate"
                                          : "half the best rate");
  } else {
    std::printf("d) latency: skipped, no end-to-end run completed\n\n");
  }
  const percentiles& del = d.delivery;
  const percentiles& conf = d.confirmation;
  fs::remove_all(cfg.dir);

  const bool all_ok = c1.complete && c4.complete && (best <= 0 || d.complete);
  std::printf("summary: e2e %.0f msg/s (1 consumer) %.0f msg/s (4 consumers) = %.3f of libzmq %.0f, "
              "%.3f of spool %.0f; at %.0f msg/s p50 %.2f ms p99 %.2f ms (the run of median p99 of %d; confirm p99 %.2f ms; "
              "delivery p99 with the warm-up %.2f ms, from the due time %.2f ms; the machine's stalls "
              "alone %.2f ms); target 400000 msg/s %s, p99 < 5 ms %s%s\n",
              c1.rate, c4.rate, best / zmq_rate, zmq_rate, best / spool_rate, spool_rate, lat_rate,
              del.p50_ms, del.p99_ms, cfg.latency_runs, conf.p99_ms, d.whole_delivery.p99_ms, d.from_due.p99_ms,
              d.stalls.floor_p99_ms,
              best >= target_rate ? "met" : "NOT met",
              del.samples > 0 && del.p99_ms < 5.0 ? "met" : "NOT met",
              all_ok ? "" : "; SOME RUNS INCOMPLETE");
  return all_ok ? 0 : 1;
}
