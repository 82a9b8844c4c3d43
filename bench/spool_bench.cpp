// postbox-bench-spool: the durable spool (docs/spool-format.md) beside the
// disk's own ceiling measured in the same run: append throughput of 100-byte
// records under fsync_policy::always with concurrent appenders, against a raw
// write+fdatasync loop writing the same bytes in the same batch sizes (taking
// turns for a few rounds; the medians are compared, and each round says how
// much of its time the machine itself was stalled: bench/stall_probe.hpp; the
// spool is warmed by half as many records first); then
// read-back throughput, recovery time per GiB and memory per pending record.
//
// usage: postbox-bench-spool [--dir DIR] [--quick] [--full] [--threads N] [--rounds N]
#include <postbox/spool.hpp>

#include "stall_probe.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <malloc.h>
#include <string>
#include <sys/vfs.h>
#include <thread>
#include <unistd.h>
#include <vector>

namespace {

using clock_type = std::chrono::steady_clock;
namespace fs = std::filesystem;

double seconds_since(clock_type::time_point t) {
  return std::chrono::duration<double>(clock_type::now() - t).count();
}

long rss_kib() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::atol(line.c_str() + 6);
  return 0;
}

struct config {
  fs::path dir;
  std::uint64_t records = 2'000'000;
  std::uint64_t recovery_bytes = 256ull << 20;
  std::uint64_t pending = 1'000'000;
  int threads = 4;
  int rounds = 5;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

struct append_result {
  double records_per_s = 0;
  double records_per_batch = 0;
};

// Appends `per_thread` records from each of cfg.threads threads and waits
// until every one is reported; returns how many failed.
std::uint64_t append_all(postbox::spool& s, int threads, std::uint64_t per_thread,
                         const std::string& payload) {
  // The callback holds one pointer, as a service's would (a ticket, an
  // object): std::function keeps up to 16 trivially copyable bytes without
  // allocating, and an allocation freed on the writer thread costs more
  // than the append.
  struct outcomes {
    std::atomic<std::uint64_t> done{0}, failed{0};
    std::uint64_t total = 0;
  } out;
  out.total = per_thread * static_cast<std::uint64_t>(threads);
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t)
    ts.emplace_back([&] {
      outcomes* o = &out;
      for (std::uint64_t i = 0; i < per_thread; ++i)
        (void)s.append(payload, [o](const postbox::append_outcome& r) {
          if (r.error) o->failed.fetch_add(1, std::memory_order_relaxed);
          if (o->done.fetch_add(1, std::memory_order_release) + 1 == o->total) o->done.notify_all();
        });
    });
  for (auto& t : ts) t.join();
  for (auto d = out.done.load(); d != out.total; d = out.done.load()) out.done.wait(d);
  return out.failed.load();
}

append_result bench_append(const fs::path& dir, const config& cfg, const std::string& payload) {
  postbox::spool s(dir, {.segment_size = 256u << 20});
  const std::uint64_t per_thread = cfg.records / static_cast<std::uint64_t>(cfg.threads);
  // A spool lives long: the first records of a new one also pay for the
  // first touch of its queue memory (tens of MiB on 4 lanes) and warm the
  // page cache's allocator. Those are appended before the clock starts, as
  // the raw loop builds its buffer before its clock starts.
  std::uint64_t failed = append_all(s, cfg.threads, per_thread / 2, payload);
  const auto before = s.stats();
  const auto t0 = clock_type::now();
  failed += append_all(s, cfg.threads, per_thread, payload);
  const double secs = seconds_since(t0);
  const auto after = s.stats();
  if (failed != 0) std::fprintf(stderr, "warning: %llu appends failed\n",
                                static_cast<unsigned long long>(failed));
  const auto total = static_cast<double>(per_thread * static_cast<std::uint64_t>(cfg.threads));
  append_result r;
  r.records_per_s = total / secs;
  r.records_per_batch =
      total / static_cast<double>(std::max<std::uint64_t>(1, after.fsyncs - before.fsyncs));
  return r;
}

// The ceiling: the same framed bytes, written with write + fdatasync per batch.
double bench_raw(const fs::path& file, std::uint64_t records, std::size_t framed, std::size_t batch) {
  const int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    std::perror("open");
    std::exit(1);
  }
  const std::string buf(framed * batch, 'r');
  const auto t0 = clock_type::now();
  // The last batch is a whole one too, so count what was written, not `records`.
  std::uint64_t done = 0;
  for (; done < records; done += batch) {
    if (::write(fd, buf.data(), buf.size()) != static_cast<ssize_t>(buf.size()) || ::fdatasync(fd) != 0) {
      std::perror("write/fdatasync");
      std::exit(1);
    }
  }
  const double secs = seconds_since(t0);
  ::close(fd);
  fs::remove(file);
  return static_cast<double>(done) / secs;
}

}  // namespace

int main(int argc, char** argv) {
  config cfg;
  bool quick = false, full = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--dir" && i + 1 < argc) cfg.dir = argv[++i];
    else if (a == "--quick") quick = true;
    else if (a == "--full") full = true;
    else if (a == "--threads" && i + 1 < argc) cfg.threads = std::max(1, std::atoi(argv[++i]));
    else if (a == "--rounds" && i + 1 < argc) cfg.rounds = std::max(1, std::atoi(argv[++i]));
    else {
      std::fprintf(stderr, "usage: postbox-bench-spool [--dir DIR] [--quick] [--full] [--threads N] [--rounds N]\n");
      return 2;
    }
  }
  if (quick) cfg.records = 200'000, cfg.recovery_bytes = 64ull << 20, cfg.pending = 200'000;
  if (full) cfg.records = 4'000'000, cfg.recovery_bytes = 1ull << 30, cfg.pending = 10'000'000;
#ifndef __OPTIMIZE__
  std::printf("WARNING: built without optimisation; figures are not representative\n");
#endif
  if (cfg.dir.empty()) cfg.dir = fs::current_path() / ("postbox-bench-spool." + std::to_string(::getpid()));
  fs::create_directories(cfg.dir);
  struct statfs sfs {};
  if (::statfs(cfg.dir.c_str(), &sfs) == 0 && sfs.f_type == 0x01021994 /* TMPFS_MAGIC */)
    std::printf("WARNING: %s is tmpfs, which ignores fsync; use --dir on a real disk\n",
                cfg.dir.c_str());
  std::printf("directory %s, %d appenders, %llu records of 100 bytes timed, after %llu that "
              "warm the spool\n",
              cfg.dir.c_str(), cfg.threads, static_cast<unsigned long long>(cfg.records),
              static_cast<unsigned long long>(cfg.records / 2));

  const std::string payload(100, 'p');
  const std::size_t framed = payload.size() + 9;

  // 1. Append under always, and the raw ceiling at the same batch size.
  // This disk's speed wanders from one second to the next, so the two take
  // turns, a few rounds of each, and the medians are compared.
  std::vector<double> spool_rates, raw_rates, batches;
  for (int round = 0; round < cfg.rounds; ++round) {
    fs::remove_all(cfg.dir / "append");
    postbox::bench::stall_probe spool_probe;
    const auto app = bench_append(cfg.dir / "append", cfg, payload);
    const auto spool_stalls = spool_probe.stop();
    const auto batch = static_cast<std::size_t>(std::max(1.0, app.records_per_batch));
    spool_rates.push_back(app.records_per_s);
    batches.push_back(app.records_per_batch);
    postbox::bench::stall_probe raw_probe;
    raw_rates.push_back(bench_raw(cfg.dir / "raw.bin", cfg.records, framed, batch));
    const auto raw_stalls = raw_probe.stop();
    std::printf("  round %d: spool %10.0f  raw %10.0f records/s  ratio %.2f  (%.0f records per fdatasync;"
                " machine stalled %.0f%% / %.0f%% of the time%s)\n",
                round + 1, spool_rates.back(), raw_rates.back(), spool_rates.back() / raw_rates.back(),
                app.records_per_batch, 100 * spool_stalls.share, 100 * raw_stalls.share,
                spool_stalls.real_time ? "" : ", counting waits for a CPU: not root");
  }
  const double spool_rate = median(spool_rates), raw = median(raw_rates);
  const double raw64k = bench_raw(cfg.dir / "raw.bin", cfg.records, framed, 65536 / framed);
  std::printf("append (always)      %12.0f records/s  %7.1f MB/s  %.0f records per fdatasync (median of %d)\n",
              spool_rate, spool_rate * static_cast<double>(framed) / 1e6, median(batches), cfg.rounds);
  std::printf("raw write+fdatasync  %12.0f records/s  (same batch size; median)\n", raw);
  std::printf("ratio spool/raw      %12.2f  (target >= 0.80%s)\n", spool_rate / raw,
              quick ? "; --quick writes a few batches only, mostly filling the pipeline: quote a run without it"
                    : "");
  std::printf("raw at 64 KiB/fsync  %12.0f records/s  (the disk's ceiling at the issue's batch size)\n", raw64k);

  // 2. Read-back.
  {
    postbox::spool s(cfg.dir / "append");
    auto c = s.read_from();
    postbox::spool_record r;
    std::uint64_t n = 0, bytes = 0;
    const auto t0 = clock_type::now();
    while (c.next(r) == postbox::read_status::ok) ++n, bytes += r.data.size();
    const double secs = seconds_since(t0);
    std::printf("read-back            %12.0f records/s  %7.1f MB/s of payload (warm page cache)\n",
                static_cast<double>(n) / secs, static_cast<double>(bytes) / secs / 1e6);
  }
  fs::remove_all(cfg.dir / "append");

  // 3. Recovery time per GiB (warm cache: the files were just written).
  {
    const auto dir = cfg.dir / "recovery";
    const std::string big(1000, 'g');
    {
      postbox::spool s(dir, {.fsync = postbox::fsync_policy::never});
      for (std::uint64_t b = 0; b < cfg.recovery_bytes; b += big.size() + 9) (void)s.append(big, {});
      (void)s.flush();
    }
    const auto t0 = clock_type::now();
    postbox::spool s(dir);
    const double secs = seconds_since(t0);
    const double gib = static_cast<double>(s.stats().bytes) / double(1ull << 30);
    std::printf("recovery             %12.2f s per GiB  (%.2f GiB of 1000-byte records, warm cache)\n",
                secs / gib, gib);
  }
  fs::remove_all(cfg.dir / "recovery");

  // 4. Memory per pending record: RSS growth of opening a spool holding them.
  {
    const auto dir = cfg.dir / "pending";
    {
      postbox::spool s(dir, {.segment_size = 1u << 30, .fsync = postbox::fsync_policy::never});
      for (std::uint64_t i = 0; i < cfg.pending; ++i) (void)s.append(payload, {});
      (void)s.flush();
    }
    // Heap in use (mallinfo2) is exact; RSS also shows it when the heap grows.
    const long rss_before = rss_kib();
    const auto m0 = ::mallinfo2();
    const auto heap_before = m0.uordblks + m0.hblkhd;  // hblkhd: large blocks from mmap
    postbox::spool s(dir);
    const auto m1 = ::mallinfo2();
    const auto heap_after = m1.uordblks + m1.hblkhd;
    const long rss_after = rss_kib();
    const auto n = static_cast<double>(cfg.pending);
    std::printf("memory per pending   %12.2f bytes/record heap  %.2f bytes/record RSS  (%llu pending records%s)\n",
                static_cast<double>(heap_after - heap_before) / n,
                static_cast<double>(rss_after - rss_before) * 1024.0 / n,
                static_cast<unsigned long long>(cfg.pending), full ? "" : "; --full for 10 million");
  }
  fs::remove_all(cfg.dir);
  return 0;
}
