// postbox-bench-stalls: what makes this machine pause, measured without
// postbox at all, so that a latency figure from the other benchmarks can be
// read beside it. Each phase runs a plain load for a few seconds under the
// stall probe (stall_probe.hpp: a real-time thread sleeping 1 ms at a time,
// counting the wake-ups more than 2 ms late):
//   idle                         nothing else runs;
//   fdatasync                    one thread writing 8 KiB and syncing, back to back;
//   hand-offs                    two threads passing a token to and fro through eventfds;
//   hand-offs + fdatasync        both at once;
//   hand-off, 100 us + fdatasync the token's round trip, then a 100 us sleep, beside the syncs;
//   hand-off, 1 ms + fdatasync   the same with a 1 ms sleep.
// On the 2-vCPU virtual machines this project is measured on, neither load
// alone pauses the machine much, but together they often do, for several
// ms every 100 ms: the period of a CPU quota on the host. How much varies
// from run to run. The paced latency run in postbox-bench-queue sends on a
// 1 ms tick for that reason. Run as root: the probe needs real-time
// priority, or it also counts its waits for a CPU behind the loads.
//
// usage: postbox-bench-stalls [--quick] [--dir DIR] [--seconds S]
#include "number_option.hpp"
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

#include <cerrno>
#include <optional>
#include <system_error>

#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/vfs.h>
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
  bool ok = true;  // every write, sync and hand-off succeeded
};

// A file descriptor closed on scope exit.
struct fd_guard {
  int fd = -1;
  ~fd_guard() {
    if (fd >= 0) ::close(fd);
  }
};

// The sync load's file: a name of this process's own, created afresh (never
// an existing file), and removed when the phase ends.
struct scratch_file {
  fs::path path;
  int fd = -1;
  explicit scratch_file(const fs::path& dir)
      : path(dir / ("postbox-bench-stalls." + std::to_string(::getpid()) + ".dat")),
        fd(::open(path.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0644)) {}
  ~scratch_file() {
    if (fd < 0) return;
    ::close(fd);
    ::unlink(path.c_str());
  }
};

phase_result run_phase(const load& l, const fs::path& dir, double seconds) {
  phase_result r;
  std::atomic<bool> stop{false}, failed{false};
  std::atomic<std::uint64_t> syncs{0}, passes{0};
  std::vector<std::thread> threads;
  std::optional<scratch_file> file;
  fd_guard there, back;
  if (l.sync) {
    file.emplace(dir);
    if (file->fd < 0) {
      std::fprintf(stderr, "postbox-bench-stalls: cannot create %s: %s\n", file->path.c_str(),
                   std::generic_category().message(errno).c_str());
      r.ok = false;
      return r;
    }
    threads.emplace_back([&] {
      std::vector<char> block(8192, 'x');
      off_t at = 0;
      while (!stop.load(std::memory_order_relaxed)) {
        if (::pwrite(file->fd, block.data(), block.size(), at) != static_cast<ssize_t>(block.size()) ||
            ::fdatasync(file->fd) != 0) {
          std::fprintf(stderr, "postbox-bench-stalls: writing %s: %s\n", file->path.c_str(),
                       std::generic_category().message(errno).c_str());
          failed = true;
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
      std::fprintf(stderr, "postbox-bench-stalls: eventfd: %s\n", std::generic_category().message(errno).c_str());
      stop = true;
      for (auto& t : threads) t.join();
      r.ok = false;
      return r;
    }
    // The token's round: there, then back. Each side blocks in read(). On
    // the way out each side posts to the other, so that neither waits for
    // ever; an eventfd only adds them up.
    threads.emplace_back([&] {
      std::uint64_t v = 1;
      while (!stop.load(std::memory_order_relaxed)) {
        if (::write(there.fd, &v, sizeof v) != sizeof v || ::read(back.fd, &v, sizeof v) != sizeof v) {
          std::fprintf(stderr, "postbox-bench-stalls: hand-off: %s\n", std::generic_category().message(errno).c_str());
          failed = true;
          break;
        }
        passes.fetch_add(1, std::memory_order_relaxed);
        if (l.hand_off_every_us > 0) std::this_thread::sleep_for(std::chrono::microseconds(l.hand_off_every_us));
      }
      stop = true;
      v = 1;
      (void)!::write(there.fd, &v, sizeof v);
    });
    threads.emplace_back([&] {
      std::uint64_t v = 0;
      while (::read(there.fd, &v, sizeof v) == sizeof v && !stop.load(std::memory_order_relaxed)) {
        v = 1;
        if (::write(back.fd, &v, sizeof v) != sizeof v) {
          std::fprintf(stderr, "postbox-bench-stalls: hand-off: %s\n", std::generic_category().message(errno).c_str());
          failed = true;
          break;
        }
      }
      stop = true;
      v = 1;
      (void)!::write(back.fd, &v, sizeof v);
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
  r.ok = !failed.load();
  r.syncs_per_s = static_cast<double>(syncs.load()) / took;
  r.hand_offs_per_s = static_cast<double>(passes.load()) / took;
  return r;
}

int usage() {
  std::fprintf(stderr, "usage: postbox-bench-stalls [--quick] [--dir DIR] [--seconds S]\n"
                       "  --seconds S: each load this long, 0.5 .. 60 (default 3; --quick: 1)\n");
  return 2;
}

// "-" for a figure that needs more pauses than there were.
std::string figure(double v, std::size_t pauses, std::size_t needed, const char* unit) {
  if (pauses < needed) return "-";
  char b[32];
  std::snprintf(b, sizeof b, "%.1f %s", v, unit);
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  fs::path dir;
  std::optional<double> seconds;
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const bool has_value = i + 1 < argc;
    if (a == "--quick") quick = true;
    else if (a == "--dir" && has_value) dir = argv[++i];
    else if (a == "--seconds" && has_value && (seconds = postbox::bench::number_in(argv[++i], 0.5, 60, false))) continue;
    else return usage();
  }
  if (!seconds) seconds = quick ? 1.0 : 3.0;
  std::error_code ec;
  if (dir.empty()) dir = fs::current_path(ec);
  if (ec || !fs::is_directory(dir, ec)) {
    std::fprintf(stderr, "postbox-bench-stalls: %s is not a directory\n", dir.c_str());
    return 2;
  }
  {
    const scratch_file can_write(dir);  // one line now, rather than a failure per load
    if (can_write.fd < 0) {
      std::fprintf(stderr, "postbox-bench-stalls: cannot create %s: %s\n", can_write.path.c_str(),
                   std::generic_category().message(errno).c_str());
      return 2;
    }
  }
  struct statfs sfs {};
  if (::statfs(dir.c_str(), &sfs) == 0 && sfs.f_type == 0x01021994 /* TMPFS_MAGIC */)
    std::printf("WARNING: %s is tmpfs, which ignores fdatasync; use --dir on a real disk\n", dir.c_str());
  std::printf("postbox-bench-stalls: the machine's own pauses under plain loads, %.1f s each, "
              "files in %s\n",
              *seconds, dir.c_str());
  std::printf("  a pause: the probe (a real-time thread sleeping 1 ms at a time) woke more than 2 ms late;\n"
              "  p99: the 99th percentile of the wait of an event arriving at a random moment, from the pauses alone\n\n");
  struct named {
    const char* name;
    load l;
  };
  const named phases[] = {
      {"idle", {}},
      {"fdatasync", {true, false, 0}},
      {"hand-offs", {false, true, 0}},
      {"hand-offs + fdatasync", {true, true, 0}},
      {"hand-off, 100 us + fdatasync", {true, true, 100}},
      {"hand-off, 1 ms + fdatasync", {true, true, 1000}},
  };
  bool all_ok = true, real_time = true;
  for (const auto& p : phases) {
    const auto r = run_phase(p.l, dir, *seconds);
    all_ok = all_ok && r.ok;
    real_time = real_time && r.stalls.real_time;
    std::printf("  %-29s %4zu pauses, %4.1f%% of the time, longest %8s, median %8s apart, p99 %5.2f ms"
                "  (%.0f syncs/s, %.0f hand-offs/s)%s\n",
                p.name, r.stalls.stalls, 100 * r.stalls.share,
                figure(r.stalls.longest_ms, r.stalls.stalls, 1, "ms").c_str(),
                figure(r.stalls.median_period_ms, r.stalls.stalls, 2, "ms").c_str(), r.stalls.floor_p99_ms,
                r.syncs_per_s, r.hand_offs_per_s, r.ok ? "" : "  FAILED");
  }
  if (!real_time)
    std::printf("\n  WARNING: no real-time priority for the probe (run as root): its pauses include\n"
                "  waiting for a CPU behind the loads, so they overstate the machine's own\n");
  return all_ok ? 0 : 1;
}
