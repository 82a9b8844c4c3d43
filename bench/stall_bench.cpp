// postbox-bench-stalls: what makes this machine pause, measured without
// postbox at all, so that a latency figure from the other benchmarks can be
// read beside it. Each phase runs a plain load for a few seconds under the
// stall probe (stall_probe.hpp: a real-time thread sleeping 1 ms at a time,
// counting the wake-ups more than 2 ms late):
//   idle                      nothing else runs;
//   fdatasync                 one thread appending 8 KiB and syncing, back to back;
//   hand-offs                 two threads passing a token to and fro through eventfds;
//   hand-offs + fdatasync     both at once;
//   every 100 us + fdatasync  the token passed once per 100 us, beside the syncs;
//   every 1 ms + fdatasync    once per millisecond, beside the syncs.
// On the 2-vCPU virtual machines this project is measured on, neither load
// alone pauses the machine, but together they do: about 10 ms every 100 ms,
// the period of a CPU quota on the host. The paced latency run in
// postbox-bench-queue sends on a 1 ms tick for that reason.
//
// usage: postbox-bench-stalls [--quick] [--dir DIR] [--seconds S]
#include "stall_probe.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <sys/eventfd.h>
#include <unistd.h>

namespace {

namespace fs = std::filesystem;

struct load {
  bool sync = false;          // a thread appending and syncing
  bool hand_offs = false;     // two threads passing a token
  int hand_off_every_us = 0;  // 0: back to back
};

struct phase_result {
  postbox::bench::stall_summary stalls;
  double syncs_per_s = 0, hand_offs_per_s = 0;
  bool ok = true;
};

// A file descriptor closed on scope exit.
struct fd_guard {
  int fd = -1;
  ~fd_guard() {
    if (fd >= 0) ::close(fd);
  }
};

phase_result run_phase(const load& l, const fs::path& dir, double seconds) {
  phase_result r;
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> syncs{0}, passes{0};
  std::vector<std::thread> threads;
  fd_guard file, there, back;
  const fs::path path = dir / "stall-bench.dat";
  if (l.sync) {
    file.fd = ::open(path.c_str(), O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0644);
    if (file.fd < 0) {
      std::fprintf(stderr, "postbox-bench-stalls: cannot create %s\n", path.c_str());
      r.ok = false;
      return r;
    }
    threads.emplace_back([&] {
      std::vector<char> block(8192, 'x');
      off_t at = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        if (::pwrite(file.fd, block.data(), block.size(), at) != static_cast<ssize_t>(block.size()) ||
            ::fdatasync(file.fd) != 0) {
          r.ok = false;
          return;
        }
        at = (at + static_cast<off_t>(block.size())) % (64 << 20);  // a 64 MiB file, rewritten
        syncs.fetch_add(1, std::memory_order_relaxed);
      }
    });
  }
  if (l.hand_offs) {
    there.fd = ::eventfd(0, EFD_CLOEXEC);
    back.fd = ::eventfd(0, EFD_CLOEXEC);
    if (there.fd < 0 || back.fd < 0) {
      r.ok = false;
      stop = true;
      for (auto& t : threads) t.join();
      return r;
    }
    // The token's round: there, then back. Each side blocks in read().
    threads.emplace_back([&] {
      std::uint64_t v = 1;
      while (!stop.load(std::memory_order_relaxed)) {
        if (::write(there.fd, &v, sizeof v) != sizeof v || ::read(back.fd, &v, sizeof v) != sizeof v) return;
        passes.fetch_add(1, std::memory_order_relaxed);
        if (l.hand_off_every_us > 0) std::this_thread::sleep_for(std::chrono::microseconds(l.hand_off_every_us));
      }
      v = 1;
      (void)!::write(there.fd, &v, sizeof v);  // lets the other side see `stop`
    });
    threads.emplace_back([&] {
      std::uint64_t v = 0;
      while (::read(there.fd, &v, sizeof v) == sizeof v && !stop.load(std::memory_order_relaxed)) {
        v = 1;
        if (::write(back.fd, &v, sizeof v) != sizeof v) return;
      }
    });
  }
  const auto start = std::chrono::steady_clock::now();
  {
    postbox::bench::stall_probe probe;
    std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
    r.stalls = probe.stop();
  }
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  stop = true;
  if (back.fd >= 0) {
    const std::uint64_t v = 1;
    (void)!::write(back.fd, &v, sizeof v);  // a side waiting for the token's return
  }
  for (auto& t : threads) t.join();
  std::error_code ec;
  fs::remove(path, ec);
  r.syncs_per_s = static_cast<double>(syncs.load()) / took;
  r.hand_offs_per_s = static_cast<double>(passes.load()) / took;
  return r;
}

int usage() {
  std::fprintf(stderr, "usage: postbox-bench-stalls [--quick] [--dir DIR] [--seconds S]\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  fs::path dir;
  double seconds = 3;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const bool has_value = i + 1 < argc;
    if (a == "--quick") seconds = 1;
    else if (a == "--dir" && has_value) dir = argv[++i];
    else if (a == "--seconds" && has_value) seconds = std::clamp(std::atof(argv[++i]), 0.5, 60.0);
    else return usage();
  }
  if (dir.empty()) dir = fs::current_path();
  if (!fs::is_directory(dir)) {
    std::fprintf(stderr, "postbox-bench-stalls: %s is not a directory\n", dir.c_str());
    return 2;
  }
  std::printf("postbox-bench-stalls: the machine's own pauses under plain loads, %.1f s each, "
              "files in %s\n",
              seconds, dir.c_str());
  std::printf("  a pause: the probe (a real-time thread sleeping 1 ms at a time) woke more than 2 ms late\n\n");
  struct named {
    const char* name;
    load l;
  };
  const named phases[] = {
      {"idle", {}},
      {"fdatasync", {true, false, 0}},
      {"hand-offs", {false, true, 0}},
      {"hand-offs + fdatasync", {true, true, 0}},
      {"every 100 us + fdatasync", {true, true, 100}},
      {"every 1 ms + fdatasync", {true, true, 1000}},
  };
  bool all_ok = true;
  for (const auto& p : phases) {
    const auto r = run_phase(p.l, dir, seconds);
    all_ok = all_ok && r.ok;
    std::printf("  %-26s %4zu pauses, %4.1f%% of the time, longest %5.1f ms, median %4.0f ms apart, "
                "p99 from them %5.2f ms  (%.0f syncs/s, %.0f hand-offs/s)%s\n",
                p.name, r.stalls.stalls, 100 * r.stalls.share, r.stalls.longest_ms, r.stalls.median_period_ms,
                r.stalls.floor_p99_ms, r.syncs_per_s, r.hand_offs_per_s, r.ok ? "" : "  FAILED");
    if (!r.stalls.real_time) std::printf("  %-26s (no real-time priority: pauses include waiting for a CPU)\n", "");
  }
  return all_ok ? 0 : 1;
}
