// The machine's own stalls while a benchmark runs, seen by a thread that
// sleeps 1 ms at a time and notes how late it wakes. It asks for real-time
// priority (SCHED_FIFO, granted to root), so that the benchmark's own
// threads cannot delay it: what it sees then is the machine pausing. On a
// shared virtual machine the host can pause the guest for milliseconds
// (here: 10-15 ms every 100 ms under CPU and disk load, with no steal time
// shown inside), which no code in the guest can avoid; the benchmarks print
// it beside their figures so that a reader can tell the two apart.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>
#include <vector>

#include <pthread.h>
#include <sched.h>

namespace postbox::bench {

struct stall_summary {
  std::size_t stalls = 0;     ///< wake-ups more than 2 ms late
  double share = 0;           ///< of the probed time spent in them
  double longest_ms = 0;
  /// The p99 wait of an event arriving at a random moment, from the stalls
  /// alone: one arriving during a stall waits for it to end.
  double floor_p99_ms = 0;
  /// The median time from one stall's start to the next one's (0: fewer
  /// than two stalls). A steady period (here: 100 ms) is the mark of a
  /// CPU quota on the host, not of random noise.
  double median_period_ms = 0;
  /// False when real-time priority was refused: the stalls then include
  /// waiting for a CPU behind the benchmark's own threads.
  bool real_time = false;
};

class stall_probe {
 public:
  stall_probe() : start_(clock::now()), thread_([this] { run(); }) {}
  stall_probe(const stall_probe&) = delete;
  stall_probe& operator=(const stall_probe&) = delete;
  ~stall_probe() { (void)stop(); }

  /// Stops the probe (once) and summarises what it saw.
  stall_summary stop() {
    if (thread_.joinable()) {
      stop_ = true;
      thread_.join();
      probed_ms_ = ms(clock::now() - start_);
    }
    stall_summary s;
    s.real_time = real_time_;
    double total = 0;
    for (const double l : late_ms_) total += l, s.longest_ms = std::max(s.longest_ms, l);
    s.stalls = late_ms_.size();
    if (started_ms_.size() >= 2) {
      std::vector<double> gaps;
      for (std::size_t i = 1; i < started_ms_.size(); ++i) gaps.push_back(started_ms_[i] - started_ms_[i - 1]);
      std::nth_element(gaps.begin(), gaps.begin() + static_cast<std::ptrdiff_t>(gaps.size() / 2), gaps.end());
      s.median_period_ms = gaps[gaps.size() / 2];
    }
    if (probed_ms_ <= 0) return s;
    s.share = total / probed_ms_;
    // The wait left in a stall of length L at a random moment in it is
    // uniform on [0, L], so P(wait > w) = sum(max(0, L - w)) / probed time:
    // find the w where that is 1%.
    auto beyond = [&](double w) {
      double t = 0;
      for (const double l : late_ms_) t += std::max(0.0, l - w);
      return t / probed_ms_;
    };
    double lo = 0, hi = s.longest_ms;
    for (int i = 0; i < 40; ++i) {
      const double mid = (lo + hi) / 2;
      (beyond(mid) > 0.01 ? lo : hi) = mid;
    }
    s.floor_p99_ms = hi;
    return s;
  }

 private:
  using clock = std::chrono::steady_clock;
  static double ms(clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

  void run() {
    ::pthread_setname_np(::pthread_self(), "stall-probe");
    sched_param p{};
    p.sched_priority = 1;
    real_time_ = ::pthread_setschedparam(::pthread_self(), SCHED_FIFO, &p) == 0;
    while (!stop_.load(std::memory_order_relaxed)) {
      const auto t0 = clock::now();
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      const double late = ms(clock::now() - t0) - 1.0;
      if (late > 2.0) {
        late_ms_.push_back(late);
        started_ms_.push_back(ms(t0 - start_) + 1.0);  // when it should have woken
      }
    }
  }

  clock::time_point start_;
  std::atomic<bool> stop_{false};
  std::vector<double> late_ms_;     // probe thread until stop() joins it
  std::vector<double> started_ms_;  // each stall's start, ms into the probe; likewise
  double probed_ms_ = 0;
  bool real_time_ = false;  // written by the probe thread before stop() joins it
  std::thread thread_;  // last: starts after everything above exists
};

}  // namespace postbox::bench
