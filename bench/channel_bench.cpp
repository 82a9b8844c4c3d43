// postbox-bench-channels: throughput of the postbox channels beside raw libzmq
// measured in the same run (same transport, same payload size, single-frame
// raw messages), and request/reply round-trip latency beside raw REQ/REP.
//
// usage: postbox-bench-channels [--quick] [--no-pin] [--only SHAPE TRANSPORT BYTES]
//
// Each side of a pair has its own context (one I/O thread), as two processes
// would. Each round runs raw and postbox back to back (which goes first
// alternates between rounds) and yields one ratio postbox/raw; the ratio to
// quote is the median of those per-round ratios, with their range beside it,
// so that a machine whose speed drifts during the run compares like with
// like. Throughput columns are medians over rounds. The last column is the
// process's CPU time per message (all threads), which is steadier than
// throughput on a shared machine.
//
// The sending side (its thread and its context's I/O thread) runs on one CPU
// and the receiving side on another, as two processes would be placed by
// hand; left to the scheduler, four busy threads on two cores settle into
// placements that change a single run's throughput by 2x either way.
// `--no-pin` leaves placement to the scheduler.
#include <postbox/postbox.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include <sched.h>
#include <sys/resource.h>
#include <unistd.h>
#include <zmq.hpp>

// ---- heap allocations made by the calling thread (operator new only) ----
namespace {
thread_local std::uint64_t allocations = 0;
}
void* operator new(std::size_t n) {
  ++allocations;
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace {

using clock_type = std::chrono::steady_clock;

struct config {
  int rounds = 7;
  double scale = 1.0;
  std::string shape, transport;  // empty: all
  std::size_t size = 0;          // 0: all
  bool rpc = true;
  bool pin = true;
};

struct result {
  double msgs_per_s = 0;
  double allocs_per_msg = 0;
  double cpu_ns_per_msg = 0;  // user+system time of the whole process per message
};

// Process CPU time (all threads, libzmq's included), in nanoseconds.
double cpu_ns() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  auto ns = [](const timeval& tv) {
    return static_cast<double>(tv.tv_sec) * 1e9 + static_cast<double>(tv.tv_usec) * 1e3;
  };
  return ns(ru.ru_utime) + ns(ru.ru_stime);
}

// The CPUs the two sides run on (-1: anywhere). A thread inherits the CPU
// mask of the thread that starts it, so a context's I/O thread, started with
// the context's first socket, runs where that socket's creator was pinned.
struct placement {
  int send_cpu = -1, receive_cpu = -1;
  cpu_set_t all{};
};
placement where;

void run_on(int cpu) {
  if (where.send_cpu < 0) return;
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(cpu, &one);
  if (sched_setaffinity(0, sizeof one, &one) != 0) {
    std::fprintf(stderr, "cannot pin a thread to CPU %d; run with --no-pin\n", cpu);
    std::exit(1);
  }
}

// The core a CPU belongs to (its hardware threads share one), or -1 when
// the system does not say.
int core_of(int cpu) {
  std::FILE* f = std::fopen(
      ("/sys/devices/system/cpu/cpu" + std::to_string(cpu) + "/topology/core_id").c_str(), "r");
  if (f == nullptr) return -1;
  int core = -1;
  if (std::fscanf(f, "%d", &core) != 1) core = -1;
  std::fclose(f);
  return core;
}

void run_anywhere() {
  if (where.send_cpu >= 0) (void)sched_setaffinity(0, sizeof where.all, &where.all);
}

void choose_placement(bool pin) {
  if (sched_getaffinity(0, sizeof where.all, &where.all) != 0 || !pin) return;
  std::vector<int> cpus;
  for (int c = 0; c < CPU_SETSIZE; ++c) {
    if (CPU_ISSET(c, &where.all)) cpus.push_back(c);
  }
  if (cpus.size() < 2) return;
  // Two CPUs on different cores where there are: hardware threads of one
  // core would share its execution units.
  const int first_core = core_of(cpus[0]);
  const auto other = std::find_if(cpus.begin() + 1, cpus.end(),
                                  [&](int c) { return first_core < 0 || core_of(c) != first_core; });
  where.send_cpu = cpus[0];
  where.receive_cpu = other != cpus.end() ? *other : cpus[1];
}

std::string endpoint_for(const std::string& transport) {
  static int n = 0;
  if (transport == "tcp") return "tcp://127.0.0.1:*";
  return "ipc://" + (std::filesystem::temp_directory_path() /
                     ("postbox-bench-" + std::to_string(::getpid()) + "-" + std::to_string(++n)))
                        .string();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// ---- raw libzmq: PUSH/PULL and XPUB/SUB, one frame per message ----

result raw_run(const std::string& transport, bool pubsub, std::size_t size, int count) {
  zmq::context_t rctx(1), sctx(1);
  run_on(where.receive_cpu);
  zmq::socket_t rx(rctx, pubsub ? zmq::socket_type::sub : zmq::socket_type::pull);
  run_on(where.send_cpu);
  zmq::socket_t tx(sctx, pubsub ? zmq::socket_type::xpub : zmq::socket_type::push);
  for (auto* s : {&rx, &tx}) {
    s->set(zmq::sockopt::sndhwm, pubsub ? 0 : 10'000);
    s->set(zmq::sockopt::rcvhwm, pubsub ? 0 : 10'000);
    s->set(zmq::sockopt::linger, 1000);
  }
  if (pubsub) rx.set(zmq::sockopt::subscribe, "");
  tx.bind(endpoint_for(transport));
  rx.connect(tx.get(zmq::sockopt::last_endpoint));
  if (pubsub) {
    zmq::message_t sub;
    (void)tx.recv(sub);  // the subscription has arrived: nothing is published into the void
  }
  double seconds = 0;
  const double cpu0 = cpu_ns();
  std::thread receiver([&] {
    run_on(where.receive_cpu);
    zmq::message_t m;
    (void)rx.recv(m);
    const auto start = clock_type::now();
    for (int i = 1; i < count; ++i) (void)rx.recv(m);
    seconds = std::chrono::duration<double>(clock_type::now() - start).count();
  });
  std::string payload(size, 'x');
  for (int i = 0; i < count; ++i) tx.send(zmq::buffer(payload));
  receiver.join();
  run_anywhere();
  return {(count - 1) / seconds, 0, (cpu_ns() - cpu0) / count};
}

// ---- postbox channels ----

result postbox_run(const std::string& transport, bool pubsub, std::size_t size, int count) {
  postbox::context rctx, sctx;
  postbox::socket_options opts;
  if (pubsub) opts.send_hwm = opts.receive_hwm = 0;
  double seconds = 0;
  std::string payload(size, 'x');
  std::uint64_t allocs = 0;
  const std::string topic = "bench.topic";
  double cpu0 = 0;
  if (pubsub) {
    run_on(where.send_cpu);
    postbox::publisher pub(sctx, "@" + endpoint_for(transport), opts);
    run_on(where.receive_cpu);
    postbox::subscriber sub(rctx, ">" + pub.endpoints().front(), opts);
    run_on(where.send_cpu);
    sub.subscribe("bench.");
    if (!pub.wait_for_subscribers(1, std::chrono::seconds(10))) std::abort();
    cpu0 = cpu_ns();
    std::thread receiver([&] {
      run_on(where.receive_cpu);
      postbox::message m;
      (void)sub.receive(m);
      const auto start = clock_type::now();
      for (int i = 1; i < count; ++i) (void)sub.receive(m);
      seconds = std::chrono::duration<double>(clock_type::now() - start).count();
    });
    pub.publish(topic, payload);  // first publish creates the topic's counter
    const auto before = allocations;
    for (int i = 1; i < count; ++i) pub.publish(topic, payload);
    allocs = allocations - before;
    receiver.join();
    if (sub.stats().missed != 0) std::fprintf(stderr, "warning: subscriber missed messages\n");
  } else {
    run_on(where.send_cpu);
    postbox::sender tx(sctx, "@" + endpoint_for(transport), opts);
    run_on(where.receive_cpu);
    postbox::receiver rx(rctx, ">" + tx.endpoints().front(), opts);
    run_on(where.send_cpu);
    cpu0 = cpu_ns();
    std::thread receiver([&] {
      run_on(where.receive_cpu);
      postbox::message m;
      (void)rx.receive(m);
      const auto start = clock_type::now();
      for (int i = 1; i < count; ++i) (void)rx.receive(m);
      seconds = std::chrono::duration<double>(clock_type::now() - start).count();
    });
    tx.send(topic, payload);
    const auto before = allocations;
    for (int i = 1; i < count; ++i) tx.send(topic, payload);
    allocs = allocations - before;
    receiver.join();
  }
  run_anywhere();
  return {(count - 1) / seconds, static_cast<double>(allocs) / (count - 1),
          (cpu_ns() - cpu0) / count};
}

// ---- request/reply latency ----

struct latency {
  double p50_us = 0, p99_us = 0;
};

latency percentiles(std::vector<double>& v) {
  std::sort(v.begin(), v.end());
  return {v[v.size() / 2], v[v.size() * 99 / 100]};
}

latency raw_rpc(int count) {
  zmq::context_t cctx(1), sctx(1);
  zmq::socket_t rep(sctx, zmq::socket_type::rep), req(cctx, zmq::socket_type::req);
  rep.bind("tcp://127.0.0.1:*");
  req.connect(rep.get(zmq::sockopt::last_endpoint));
  std::thread server([&] {
    zmq::message_t m;
    for (int i = 0; i < count; ++i) {
      (void)rep.recv(m);
      rep.send(m, zmq::send_flags::none);
    }
  });
  std::vector<double> us;
  std::string payload(100, 'x');
  zmq::message_t reply;
  for (int i = 0; i < count; ++i) {
    const auto t0 = clock_type::now();
    req.send(zmq::buffer(payload));
    (void)req.recv(reply);
    us.push_back(std::chrono::duration<double, std::micro>(clock_type::now() - t0).count());
  }
  server.join();
  return percentiles(us);
}

latency postbox_rpc(int count) {
  postbox::context cctx, sctx;
  postbox::replier rep(sctx, "@tcp://127.0.0.1:*");
  postbox::requester req(cctx, ">" + rep.endpoints().front());
  std::thread server([&] {
    for (int i = 0; i < count; ++i) {
      auto r = rep.receive(std::chrono::seconds(10));
      if (!r) return;
      (void)rep.reply(*r, r->msg.payload());
    }
  });
  std::vector<double> us;
  std::string payload(100, 'x');
  for (int i = 0; i < count; ++i) {
    const auto t0 = clock_type::now();
    auto reply = req.request("bench.rpc", payload);
    if (!reply) std::abort();
    us.push_back(std::chrono::duration<double, std::micro>(clock_type::now() - t0).count());
  }
  server.join();
  return percentiles(us);
}

}  // namespace

int main(int argc, char** argv) {
  config cfg;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) {
      cfg.rounds = 3;
      cfg.scale = 0.2;
    } else if (std::strcmp(argv[i], "--only") == 0 && i + 3 < argc) {
      cfg.shape = argv[++i];
      cfg.transport = argv[++i];
      cfg.size = std::strtoul(argv[++i], nullptr, 10);
      cfg.rpc = false;
    } else if (std::strcmp(argv[i], "--no-pin") == 0) {
      cfg.pin = false;
    } else {
      std::fprintf(stderr,
                   "usage: postbox-bench-channels [--quick] [--no-pin] [--only push/pull|pub/sub tcp|ipc BYTES]\n");
      return 2;
    }
  }
  choose_placement(cfg.pin);
#ifndef NDEBUG
  std::printf("WARNING: built without optimisation (NDEBUG unset); figures are not comparable\n");
#endif
  std::printf("postbox channel throughput beside raw libzmq (%d rounds; ratio = median of the\n"
              "per-round ratios postbox/raw, range = their lowest and highest)\n",
              cfg.rounds);
  if (where.send_cpu >= 0) {
    std::printf("sending side on CPU %d, receiving side on CPU %d (--no-pin: anywhere)\n",
                where.send_cpu, where.receive_cpu);
  } else {
    std::printf("threads placed by the scheduler\n");
  }
  std::printf("%-10s %-5s %6s %14s %10s %14s %10s %7s  %-9s %12s %16s\n", "shape", "tx", "bytes",
              "raw msg/s", "raw MB/s", "postbox msg/s", "pb MB/s", "ratio", "range",
              "allocs/msg", "cpu ns/msg raw:pb");
  bool target_met = true;
  for (const char* shape : {"push/pull", "pub/sub"}) {
    const bool pubsub = std::strcmp(shape, "pub/sub") == 0;
    if (!cfg.shape.empty() && cfg.shape != shape) continue;
    for (const std::string transport : {"tcp", "ipc"}) {
      if (!cfg.transport.empty() && cfg.transport != transport) continue;
      const std::vector<std::size_t> sizes =
          cfg.size != 0 ? std::vector<std::size_t>{cfg.size} : std::vector<std::size_t>{16, 100, 1024};
      for (const std::size_t size : sizes) {
        const int count = static_cast<int>((size >= 1024 ? 400'000 : 1'000'000) * cfg.scale);
        std::vector<double> raw, pb, raw_cpu, pb_cpu, ratios;
        double allocs = 0;
        for (int r = 0; r < cfg.rounds; ++r) {
          result q, p;
          if (r % 2 == 0) {
            q = raw_run(transport, pubsub, size, count);
            p = postbox_run(transport, pubsub, size, count);
          } else {
            p = postbox_run(transport, pubsub, size, count);
            q = raw_run(transport, pubsub, size, count);
          }
          raw.push_back(q.msgs_per_s);
          raw_cpu.push_back(q.cpu_ns_per_msg);
          pb.push_back(p.msgs_per_s);
          pb_cpu.push_back(p.cpu_ns_per_msg);
          ratios.push_back(p.msgs_per_s / q.msgs_per_s);
          allocs = std::max(allocs, p.allocs_per_msg);
        }
        const double raw_m = median(raw), pb_m = median(pb), ratio = median(ratios);
        const auto [lo, hi] = std::minmax_element(ratios.begin(), ratios.end());
        std::printf("%-10s %-5s %6zu %14.0f %10.1f %14.0f %10.1f %7.2f  %4.2f-%-4.2f %12.3f %8.0f:%-7.0f\n",
                    shape, transport.c_str(), size, raw_m,
                    raw_m * static_cast<double>(size) / 1e6, pb_m,
                    pb_m * static_cast<double>(size) / 1e6, ratio, *lo, *hi, allocs,
                    median(raw_cpu), median(pb_cpu));
        std::fflush(stdout);
        if (transport == "tcp" && size == 100 && ratio < 0.8) target_met = false;
      }
    }
  }
  if (!cfg.rpc) return 0;
  const int rpc_count = static_cast<int>(20'000 * cfg.scale);
  const auto raw_l = raw_rpc(rpc_count);
  const auto pb_l = postbox_rpc(rpc_count);
  std::printf("\nrequest/reply round trip, 100-byte payload, tcp, %d calls (threads not pinned)\n",
              rpc_count);
  std::printf("  raw REQ/REP          p50 %8.1f us   p99 %8.1f us\n", raw_l.p50_us, raw_l.p99_us);
  std::printf("  postbox requester    p50 %8.1f us   p99 %8.1f us   (p50 ratio %.2f)\n",
              pb_l.p50_us, pb_l.p99_us, pb_l.p50_us / raw_l.p50_us);
  std::printf("\ntarget (tcp, 100 bytes, postbox/raw >= 0.80 for push/pull and pub/sub): %s\n",
              target_met ? "met" : "NOT met");
  return 0;
}
