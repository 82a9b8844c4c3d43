// Unit tests for the spool's API (lib/include/postbox/spool.hpp): round trip,
// positions across reopen, rolling, group commit, done marks, deletion,
// retention, the directory lock, and write/fsync faults (injected).
#include <postbox/detail/spool_format.hpp>
#include <postbox/detail/spool_state.hpp>
#include <postbox/error.hpp>
#include <postbox/spool.hpp>

#include "support/support.hpp"

#include <catch2/catch.hpp>

#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cerrno>
#include <map>
#include <mutex>
#include <set>
#include <thread>

using postbox::position;
using Catch::Matchers::Contains;

namespace {

std::vector<std::pair<position, std::string>> read_all(const postbox::spool& s,
                                                       position from = {},
                                                       bool only_pending = false) {
  std::vector<std::pair<position, std::string>> out;
  auto c = s.read_from(from, only_pending);
  postbox::spool_record r;
  while (c.next(r) != postbox::read_status::end) out.emplace_back(r.pos, r.data);
  return out;
}

std::string payload(int i) { return "payload " + std::to_string(i) + std::string(i % 50, 'x'); }

bool exists(const postbox::test::temp_dir& d, const char* name) {
  return std::filesystem::exists(d.path() / name);
}

// Restores the real system calls when a fault-injection test ends.
struct io_guard {
  postbox::detail::spool_io saved = postbox::detail::spool_io_calls();
  ~io_guard() { postbox::detail::spool_io_calls() = saved; }
};
std::atomic<int> fail_writes{0};  // errno to fail pwrite with, 0: none
std::atomic<int> fail_syncs{0};
ssize_t faulty_pwrite(int fd, const void* buf, std::size_t n, off_t off) {
  if (const int e = fail_writes.load()) {
    // Write part of it first, as a full disk might, then fail.
    if (n > 4) (void)::pwrite(fd, buf, n / 2, off);
    errno = e;
    return -1;
  }
  return ::pwrite(fd, buf, n, off);
}
int faulty_fdatasync(int fd) {
  if (const int e = fail_syncs.load()) {
    errno = e;
    return -1;
  }
  return ::fdatasync(fd);
}
std::atomic<int> syncs_seen{0};
int counting_fdatasync(int fd) {
  ++syncs_seen;
  return ::fdatasync(fd);
}
// When each fdatasync began, in order (timed_gated_fdatasync).
std::mutex sync_starts_mu;
std::vector<std::chrono::steady_clock::time_point> sync_starts;
std::vector<std::chrono::steady_clock::time_point> sync_starts_now() {
  std::lock_guard lk(sync_starts_mu);
  return sync_starts;
}

using postbox::test::gate_closed;
using postbox::test::gate_opener;
using postbox::test::held_syncs;
using postbox::test::use_gated_syncs;

// The thread each pwrite ran on, in order.
std::mutex write_threads_mu;
std::vector<std::thread::id> write_threads;
ssize_t thread_noting_pwrite(int fd, const void* buf, std::size_t n, off_t off) {
  {
    std::lock_guard lk(write_threads_mu);
    write_threads.push_back(std::this_thread::get_id());
  }
  return ::pwrite(fd, buf, n, off);
}

// With use_gated_syncs() (or use_timed_gated_syncs()): closes the gate and
// appends payload(index), which the writer writes and then holds in its
// sync. What the test appends next is left to write_queued() on the
// test's thread, or to the writer once the gate opens.
void hold_writer_in_sync(postbox::spool& s, postbox::append_callback done, int index = 0) {
  const int held = held_syncs.load();
  gate_closed = true;
  REQUIRE(s.append(payload(index), std::move(done)) == postbox::append_status::queued);
  REQUIRE(postbox::test::wait_until([&] { return held_syncs.load() == held + 1; }));
  std::lock_guard lk(write_threads_mu);
  write_threads.clear();
}

// Append outcomes, counted.
struct outcomes {
  std::atomic<int> done{0}, errors{0};
  postbox::append_callback callback() {
    return [this](const postbox::append_outcome& o) {
      if (o.error) ++errors;
      ++done;
    };
  }
};

// Notes when each fdatasync begins, and holds it while gate_closed is set
// (as use_gated_syncs()).
int timed_gated_fdatasync(int fd) {
  {
    std::lock_guard lk(sync_starts_mu);
    sync_starts.push_back(std::chrono::steady_clock::now());
  }
  if (gate_closed.load()) {
    ++held_syncs;
    while (gate_closed.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return ::fdatasync(fd);
}
void use_timed_gated_syncs() {
  gate_closed = false;
  held_syncs = 0;
  {
    std::lock_guard lk(sync_starts_mu);
    sync_starts.clear();
  }
  postbox::detail::spool_io_calls().fdatasync = &timed_gated_fdatasync;
}

// With use_timed_gated_syncs(): appends payload(from) and holds its sync
// while 100 more are appended, so that the next sync covers all 100 (a
// full group: the sync after it waits the whole sync_spacing).
void sync_full_group(postbox::spool& s, int from) {
  outcomes group;
  hold_writer_in_sync(s, group.callback(), from);
  for (int i = 1; i <= 100; ++i) {
    REQUIRE(s.append(payload(from + i), group.callback()) == postbox::append_status::queued);
  }
  gate_closed = false;
  REQUIRE(postbox::test::wait_until([&] { return group.done.load() == 101; }));
  REQUIRE(group.errors.load() == 0);
}

// Writes all it is given, then, while failing_write_held is set, waits,
// and fails with ENOSPC: the bytes of a batch that will be refused sit in
// the file for as long as the test likes.
std::atomic<bool> failing_write_armed{false}, failing_write_held{false}, failing_write_done{false};
ssize_t held_failing_pwrite(int fd, const void* buf, std::size_t n, off_t off) {
  if (!failing_write_armed.exchange(false)) return ::pwrite(fd, buf, n, off);
  if (::pwrite(fd, buf, n, off) != static_cast<ssize_t>(n)) return -1;
  failing_write_done = true;
  while (failing_write_held.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  errno = ENOSPC;
  return -1;
}

// What the file holds and what a returned fdatasync covers, for one segment:
// a write ends at written_end; a sync that returns covers what was written
// before it started. A slow sync leaves time to write the next batch.
std::atomic<std::uint64_t> written_end{0}, durable_end{0};
std::atomic<bool> syncing{false};
std::atomic<int> writes_during_sync{0};
// Sleeps between taking the fd and syncing it: if the writer closed the fd
// meanwhile (or its number now names another file), the sync would miss
// the records it is meant to cover.
// A new segment's own sync (of its .tmp file) is not slowed: the writer
// makes it while rolling, and slowing it would hide the race.
std::atomic<int> fd_changed{0};
int fd_checking_fdatasync(int fd) {
  std::error_code ec;
  const auto path = std::filesystem::read_symlink("/proc/self/fd/" + std::to_string(fd), ec);
  if (!ec && path.string().ends_with(".tmp")) return ::fdatasync(fd);
  struct stat before {}, after {};
  if (::fstat(fd, &before) != 0) ++fd_changed;
  std::this_thread::sleep_for(std::chrono::milliseconds(30));
  if (::fstat(fd, &after) != 0 || after.st_ino != before.st_ino) ++fd_changed;
  return ::fdatasync(fd);
}
// The thread of the first tracked write of records (past a segment's
// header, which the opening thread writes): the spool's writer.
std::atomic<std::thread::id> writer_thread{};
std::atomic<std::uint64_t> expected_end{0};  // where the test's last record ends
ssize_t tracking_pwrite(int fd, const void* buf, std::size_t n, off_t off) {
  if (off >= static_cast<off_t>(postbox::detail::spool_format::segment_header_size)) {
    std::thread::id none{};
    writer_thread.compare_exchange_strong(none, std::this_thread::get_id());
  }
  if (syncing.load()) ++writes_during_sync;
  const ssize_t w = ::pwrite(fd, buf, n, off);
  if (w > 0) {
    const auto end = static_cast<std::uint64_t>(off) + static_cast<std::uint64_t>(w);
    auto seen = written_end.load();
    while (seen < end && !written_end.compare_exchange_weak(seen, end)) {
    }
  }
  return w;
}
// A sync made off the writer thread (the pipelined one) waits, up to 10 s,
// until the appending threads have queued records not yet written (or have
// finished), and then up to 200 ms for the writer to write some of them
// while this sync runs. So however the machine schedules the appending
// threads, a writer that pipelines gets its chance in every such sync. (It
// may have written the next batch already, between asking for this sync
// and the sync thread getting here: then it waits for this sync before it
// writes again, and the next sync gives the next chance.)
std::atomic<std::uint64_t> queued_end{0};  // where the records queued so far end
int slow_tracking_fdatasync(int fd) {
  const std::uint64_t covered = written_end.load();
  syncing = true;
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  if (const auto writer = writer_thread.load();
      writer != std::thread::id{} && std::this_thread::get_id() != writer) {
    const auto wait = [](auto done, int ms = 10'000) {
      const auto give_up = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
      while (!done() && std::chrono::steady_clock::now() < give_up)
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    };
    wait([] { return queued_end.load() > written_end.load() || queued_end.load() >= expected_end.load(); });
    if (queued_end.load() > written_end.load()) wait([] { return writes_during_sync.load() > 0; }, 200);
  }
  const int rc = ::fdatasync(fd);
  syncing = false;
  if (rc == 0) {
    auto seen = durable_end.load();
    while (seen < covered && !durable_end.compare_exchange_weak(seen, covered)) {
    }
  }
  return rc;
}

}  // namespace

TEST_CASE("spool: records read back in append order at the positions their callbacks gave",
          "[unit][spool]") {
  postbox::test::temp_dir dir;
  postbox::spool s(dir.path());
  std::vector<position> pos;
  for (int i = 0; i < 100; ++i) {
    const auto o = s.append_and_wait(payload(i));
    REQUIRE(!o.error);
    pos.push_back(o.pos);
  }
  CHECK(pos.front() == position{1, 24});
  CHECK(std::is_sorted(pos.begin(), pos.end()));
  const auto all = read_all(s);
  REQUIRE(all.size() == 100);
  for (int i = 0; i < 100; ++i) {
    CHECK(all[static_cast<std::size_t>(i)].first == pos[static_cast<std::size_t>(i)]);
    CHECK(all[static_cast<std::size_t>(i)].second == payload(i));
  }
  // A cursor from any position starts at that record.
  const auto tail = read_all(s, pos[37]);
  REQUIRE(tail.size() == 63);
  CHECK(tail.front().second == payload(37));
  // Between records: the next record at or after it.
  CHECK(read_all(s, {pos[37].segment, pos[37].offset + 1}).front().second == payload(38));
}

TEST_CASE("spool: positions and payloads are the same after reopen, and appends go on after them",
          "[unit][spool]") {
  postbox::test::temp_dir dir;
  std::vector<std::pair<position, std::string>> before;
  {
    postbox::spool s(dir.path(), {.segment_size = 4096});
    for (int i = 0; i < 200; ++i) (void)s.append_and_wait(payload(i));
    before = read_all(s);
  }
  postbox::spool s(dir.path(), {.segment_size = 4096});
  CHECK(s.recovery().records == 200);
  CHECK(s.recovery().pending == 200);
  CHECK(s.recovery().corrupt.empty());
  CHECK(s.recovery().truncated_bytes == 0);
  CHECK(read_all(s) == before);
  const auto o = s.append_and_wait("after reopen");
  CHECK(o.pos > before.back().first);
}

TEST_CASE("spool: a segment rolls when the next record would take it past segment_size",
          "[unit][spool]") {
  postbox::test::temp_dir dir;
  postbox::spool s(dir.path(), {.segment_size = 1024});
  const std::string p(100, 'r');  // 109 bytes framed: 9 records fit after the 24-byte header
  std::vector<position> pos;
  for (int i = 0; i < 30; ++i) pos.push_back(s.append_and_wait(p).pos);
  CHECK(pos[8] == position{1, 24 + 8 * 109});
  CHECK(pos[9] == position{2, 24});
  CHECK(pos[29] == position{4, 24 + 2 * 109});
  CHECK(s.segments() == std::vector<std::uint32_t>{1, 2, 3, 4});
  CHECK(std::filesystem::file_size(dir.path() / "00000001.log") == 24 + 9 * 109);
  CHECK(read_all(s).size() == 30);
  CHECK(s.append(std::string(s.max_payload() + 1, 'x'), {}) == postbox::append_status::too_large);
  CHECK(s.append_and_wait(std::string(s.max_payload(), 'x')).pos.offset == 24);
}

TEST_CASE("spool: appends from many threads are each durable once, sharing fdatasyncs, "
          "and each thread's records keep their order",
          "[unit][spool]") {
  postbox::test::temp_dir dir;
  postbox::spool s(dir.path(), {.segment_size = 64 * 1024});
  constexpr int threads = 6, each = 250;  // more threads than the spool's lanes
  std::mutex mu;
  std::set<position> seen;
  std::atomic<int> errors{0};
  std::atomic<int> outstanding{threads * each};
  std::atomic<int> not_queued{0};  // Catch's assertions belong to the main thread
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t)
    ts.emplace_back([&, t] {
      for (int i = 0; i < each; ++i) {
        const auto st = s.append(payload(t * each + i), [&](const postbox::append_outcome& o) {
          if (o.error) ++errors;
          std::lock_guard lk(mu);
          seen.insert(o.pos);
          --outstanding;
        });
        if (st != postbox::append_status::queued) ++not_queued, --outstanding;
      }
    });
  for (auto& t : ts) t.join();
  REQUIRE(not_queued.load() == 0);
  REQUIRE(postbox::test::wait_until([&] { return outstanding.load() == 0; }));
  CHECK(errors.load() == 0);
  CHECK(seen.size() == threads * each);
  const auto st = s.stats();
  INFO("fsyncs: " << st.fsyncs << " batches: " << st.batches);
  CHECK(st.fsyncs < threads * each);
  std::multiset<std::string> got, want;
  std::map<std::string, int> index;  // payload -> its number
  for (int i = 0; i < threads * each; ++i) want.insert(payload(i)), index[payload(i)] = i;
  std::vector<int> last(threads, -1);  // per thread, the last number read back
  for (auto& r : read_all(s)) {
    got.insert(r.second);
    const auto it = index.find(r.second);
    REQUIRE(it != index.end());
    const int t = it->second / each;
    CHECK(it->second > last[static_cast<std::size_t>(t)]);
    last[static_cast<std::size_t>(t)] = it->second;
  }
  CHECK(got == want);
}

TEST_CASE("spool: under always, a sync that covered 64 appends or more holds the next back by "
          "sync_spacing, and the appends meanwhile share it; after a lone append, by a 64th of "
          "it; a flush does not wait",
          "[unit][spool]") {
  using namespace std::chrono_literals;
  const bool deferred = GENERATE(false, true);
  INFO("visible_before_sync (syncs deferred) " << deferred);
  postbox::test::temp_dir dir;
  io_guard guard;
  use_timed_gated_syncs();
  constexpr auto spacing = 100ms;
  postbox::spool s(dir.path(), {.sync_spacing = spacing, .visible_before_sync = deferred});
  gate_opener opener;

  // One append at a time, each waiting for its sync: not held back.
  REQUIRE(!s.append_and_wait(payload(0)).error);
  REQUIRE(!s.append_and_wait(payload(1)).error);
  const auto lone = sync_starts_now();
  REQUIRE(lone.size() >= 2);
  INFO("us between the lone appends' syncs: "
       << std::chrono::duration_cast<std::chrono::microseconds>(lone.back() - lone[lone.size() - 2]).count());
  CHECK(lone.back() - lone[lone.size() - 2] < spacing / 2);

  // After a sync of 100: ten more wait the whole spacing, and share one sync.
  sync_full_group(s, 100);
  const auto full = sync_starts_now();
  outcomes ten;
  for (int i = 0; i < 10; ++i) REQUIRE(s.append(payload(300 + i), ten.callback()) == postbox::append_status::queued);
  REQUIRE(postbox::test::wait_until([&] { return ten.done.load() == 10; }));
  CHECK(ten.errors.load() == 0);
  const auto after = sync_starts_now();
  REQUIRE(after.size() > full.size());
  INFO("us between the sync starts: "
       << std::chrono::duration_cast<std::chrono::microseconds>(after[full.size()] - full.back()).count());
  CHECK(after[full.size()] - full.back() >= spacing);  // the next sync began no sooner
  CHECK(after.size() - full.size() == 1);               // and covered all ten
  CHECK(read_all(s).size() == 2 + 101 + 10);

  // A flush is not held back: after another sync of 100, the flush's own
  // sync begins well within the spacing.
  sync_full_group(s, 400);
  REQUIRE(s.append(payload(1), [](const postbox::append_outcome&) {}) == postbox::append_status::queued);
  const auto before_flush = sync_starts_now();
  CHECK(!s.flush());
  const auto after_flush = sync_starts_now();
  REQUIRE(after_flush.size() > before_flush.size());
  CHECK(after_flush[before_flush.size()] - before_flush.back() < spacing / 2);
}

TEST_CASE("spool: with visible_before_sync a cursor reads a record while its fdatasync runs, "
          "and its callback still waits for the sync; without, the cursor waits too",
          "[unit][spool]") {
  const bool early = GENERATE(true, false);
  INFO("visible_before_sync " << early);
  postbox::test::temp_dir dir;
  io_guard guard;
  use_gated_syncs();
  std::atomic<int> told{0}, errors{0};
  std::atomic<bool> durable{false};
  postbox::spool s(dir.path(), {.visible_before_sync = early, .after_visible = [&] { ++told; }});
  gate_opener opener;
  REQUIRE(!s.append_and_wait(payload(0)).error);
  const int told_before = told.load();
  CHECK(told_before == (early ? 1 : 0));

  gate_closed = true;
  REQUIRE(s.append(payload(1), [&](const postbox::append_outcome& o) {
    if (o.error) ++errors;
    durable = true;
  }) == postbox::append_status::queued);
  REQUIRE(postbox::test::wait_until([] { return held_syncs.load() == 1; }));  // its sync, held
  CHECK(read_all(s).size() == (early ? 2u : 1u));
  CHECK(s.stats().pending == (early ? 2u : 1u));
  CHECK(told.load() == told_before + (early ? 1 : 0));
  CHECK_FALSE(durable.load());

  gate_closed = false;
  REQUIRE(postbox::test::wait_until([&] { return durable.load(); }));
  CHECK(errors.load() == 0);
  CHECK(read_all(s).size() == 2);
}

TEST_CASE("spool: with visible_before_sync, a batch large enough for the sync thread and "
          "rolling through segments is read whole and in order, and reopens the same",
          "[unit][spool]") {
  postbox::test::temp_dir dir;
  io_guard guard;
  use_gated_syncs();
  constexpr int n = 300;
  std::atomic<int> outstanding{n + 1}, errors{0};
  std::vector<std::string> want;
  {
    postbox::spool s(dir.path(), {.segment_size = 64 * 1024, .visible_before_sync = true});
    gate_opener opener;
    auto done = [&](const postbox::append_outcome& o) {
      if (o.error) ++errors;
      --outstanding;
    };
    // While the first append's sync is held, 300 KiB queue up for one batch.
    gate_closed = true;
    want.push_back(payload(0));
    REQUIRE(s.append(want.back(), done) == postbox::append_status::queued);
    REQUIRE(postbox::test::wait_until([] { return held_syncs.load() == 1; }));
    for (int i = 1; i <= n; ++i) {
      want.push_back(std::to_string(i) + std::string(1000, 'r'));
      REQUIRE(s.append(want.back(), done) == postbox::append_status::queued);
    }
    gate_closed = false;
    REQUIRE(postbox::test::wait_until([&] { return outstanding.load() == 0; }));
    CHECK(errors.load() == 0);
    std::vector<std::string> got;
    position last{};
    for (const auto& [pos, data] : read_all(s)) {
      CHECK(last < pos);
      last = pos;
      got.push_back(data);
    }
    CHECK(got == want);
    CHECK(last.segment > 1);  // it rolled
  }
  postbox::spool again(dir.path());
  std::vector<std::string> reopened;
  for (const auto& rec : read_all(again)) reopened.push_back(rec.second);
  CHECK(reopened == want);
}

TEST_CASE("spool: write_queued writes what was appended on the calling thread, readable when it "
          "returns, while the writer is held in a sync; the callback waits for the next sync",
          "[unit][spool]") {
  // With sync_spacing 0 syncs are not deferred, and write_queued leaves the
  // writing to the writer thread.
  const bool deferred = GENERATE(true, false);
  INFO("syncs deferred " << deferred);
  postbox::test::temp_dir dir;
  io_guard guard;
  use_gated_syncs();
  postbox::detail::spool_io_calls().pwrite = &thread_noting_pwrite;
  std::atomic<int> told{0};
  outcomes out;
  postbox::spool s(dir.path(), {.sync_spacing = deferred ? std::chrono::microseconds(1000)
                                                        : std::chrono::microseconds(0),
                                .visible_before_sync = true,
                                .after_visible = [&] { ++told; }});
  gate_opener opener;
  hold_writer_in_sync(s, out.callback());
  CHECK(told.load() == 1);
  CHECK(read_all(s).size() == 1);

  REQUIRE(s.append(payload(1), out.callback()) == postbox::append_status::queued);
  REQUIRE(s.append(payload(2), out.callback()) == postbox::append_status::queued);
  CHECK(s.write_queued() == deferred);
  const auto seen = read_all(s);
  CHECK(told.load() == 1);  // the caller knows: no after_visible for its own write
  CHECK(out.done.load() == 0);
  {
    std::lock_guard lk(write_threads_mu);
    if (deferred) {
      REQUIRE(seen.size() == 3);  // written, both in one write, on this thread
      CHECK(seen[1].second == payload(1));
      CHECK(seen[2].second == payload(2));
      REQUIRE(write_threads.size() == 1);
      CHECK(write_threads[0] == std::this_thread::get_id());
    } else {
      CHECK(seen.size() == 1);  // still queued for the writer
      CHECK(write_threads.empty());
    }
  }

  gate_closed = false;
  REQUIRE(postbox::test::wait_until([&] { return out.done.load() == 3; }));
  CHECK(out.errors.load() == 0);
  CHECK(s.stats().fsyncs >= 2);  // the first record's, then one covering the two
  const auto all = read_all(s);
  REQUIRE(all.size() == 3);
  CHECK(all[2].second == payload(2));
}

TEST_CASE("spool: write_queued beside the writer thread keeps each thread's records in order "
          "across segment rolls, and reopens the same",
          "[unit][spool]") {
  postbox::test::temp_dir dir;
  constexpr int per_thread = 2000;
  std::vector<std::string> mine, theirs;
  std::atomic<int> outstanding{2 * per_thread}, errors{0};
  {
    postbox::spool s(dir.path(), {.segment_size = 16 * 1024, .visible_before_sync = true});
    auto done = [&](const postbox::append_outcome& o) {
      if (o.error) ++errors;
      --outstanding;
    };
    // Another thread appends and leaves the writing to the writer.
    std::atomic<int> refused{0};  // (no assertions off the test's thread)
    std::thread other([&] {
      for (int i = 0; i < per_thread; ++i)
        if (s.append("theirs " + std::to_string(i), done) != postbox::append_status::queued) ++refused;
    });
    // This one writes its own every few appends, and reads as it goes.
    auto c = s.read_from({}, false);
    postbox::spool_record r;
    int calls = 0, written = 0, last_found = -1;
    for (int i = 0; i < per_thread; ++i) {
      REQUIRE(s.append("mine " + std::to_string(i), done) == postbox::append_status::queued);
      if (i % 7 != 6) continue;
      ++calls;
      const bool wrote = s.write_queued();
      while (c.next(r) == postbox::read_status::ok)
        if (r.data.starts_with("mine ")) last_found = std::stoi(r.data.substr(5));
      // A pause as between a reader's turns: at full speed this thread
      // writes batches faster than syncs come, and many waiting for one
      // are left to the writer.
      std::this_thread::sleep_for(std::chrono::microseconds(50));
      if (!wrote) continue;  // left to the writer (a roll, or many batches waiting)
      ++written;
      CHECK(last_found == i);  // this thread's last append is readable now
    }
    // How many it wrote depends on how fast the disk syncs (many batches
    // waiting for one are left to the writer); that it writes is tested
    // above, deterministically.
    CHECK(written > 0);
    CHECK(calls == per_thread / 7);
    other.join();
    CHECK(refused.load() == 0);
    CHECK(!s.flush());
    CHECK(outstanding.load() == 0);
    CHECK(errors.load() == 0);
    CHECK(s.segments().size() > 3);  // it rolled, several times
    for (const auto& [pos, data] : read_all(s)) (data.starts_with("mine ") ? mine : theirs).push_back(data);
  }
  auto in_order = [](const std::vector<std::string>& got, const std::string& prefix) {
    if (got.size() != per_thread) return false;
    for (int i = 0; i < per_thread; ++i)
      if (got[static_cast<std::size_t>(i)] != prefix + std::to_string(i)) return false;
    return true;
  };
  CHECK(in_order(mine, "mine "));
  CHECK(in_order(theirs, "theirs "));
  postbox::spool again(dir.path());
  CHECK(read_all(again).size() == 2 * per_thread);
}

TEST_CASE("spool: with syncs deferred, an append made while a sync is wanted is written and "
          "synced with it, the one sync sync_spacing after the last",
          "[unit][spool]") {
  using namespace std::chrono_literals;
  postbox::test::temp_dir dir;
  io_guard guard;
  use_timed_gated_syncs();
  constexpr auto spacing = 80ms;  // under fsync_interval, which would sync sooner
  postbox::spool s(dir.path(), {.sync_spacing = spacing, .visible_before_sync = true});
  gate_opener opener;
  sync_full_group(s, 0);  // the next sync waits the whole spacing
  const std::size_t before = sync_starts_now().size();  // the new segment's syncs, and those
  REQUIRE(before > 0);
  std::atomic<int> durable{0}, errors{0};
  auto done = [&](const postbox::append_outcome& o) {
    if (o.error) ++errors;
    ++durable;
  };
  REQUIRE(s.append(payload(1), done) == postbox::append_status::queued);
  if (!s.write_queued()) {
    // The writer, just done with the group's sync, took it first.
    REQUIRE(postbox::test::wait_until([&] { return read_all(s).size() == 102; }));
  }
  std::this_thread::sleep_for(5ms);  // written; a sync is wanted
  // Appended with no write_queued(): the writer is not woken for it, and
  // takes it when it wakes for the wanted sync.
  REQUIRE(s.append(payload(2), done) == postbox::append_status::queued);
  const auto queued = std::chrono::steady_clock::now();
  REQUIRE(postbox::test::wait_until([&] { return durable.load() == 2; }));
  CHECK(errors.load() == 0);
  CHECK(read_all(s).size() == 103);
  std::lock_guard lk(sync_starts_mu);
  REQUIRE(sync_starts.size() > before);
  CHECK(sync_starts[before] - sync_starts[before - 1] >= spacing);
  // Unless the group's sync took most of the spacing (a loaded
  // disk), the third was queued before the next sync began: that one
  // sync covered both.
  if (sync_starts[before] > queued) CHECK(sync_starts.size() == before + 1);
}

TEST_CASE("spool: a write by write_queued that fails is reported by the writer at once, and "
          "appends succeed again",
          "[unit][spool]") {
  postbox::test::temp_dir dir;
  io_guard guard;
  use_gated_syncs();
  postbox::detail::spool_io_calls().pwrite = &faulty_pwrite;
  fail_writes = 0;
  postbox::spool s(dir.path(), {.visible_before_sync = true});
  gate_opener opener;
  // The second record is written (and fails) on this thread.
  std::atomic<bool> first_done{false}, second_done{false};
  std::error_code second_error;
  hold_writer_in_sync(s, [&](const postbox::append_outcome&) { first_done = true; });
  fail_writes = ENOSPC;
  REQUIRE(s.append(payload(1), [&](const postbox::append_outcome& o) {
    second_error = o.error;
    second_done = true;
  }) == postbox::append_status::queued);
  CHECK_FALSE(s.write_queued());  // it failed: not written
  fail_writes = 0;
  gate_closed = false;
  // Nothing else comes to wake the writer: it knows of the failure.
  REQUIRE(postbox::test::wait_until([&] { return first_done.load() && second_done.load(); }));
  CHECK(second_error == std::error_code(ENOSPC, std::generic_category()));
  const auto again = s.append_and_wait(payload(2));
  CHECK(!again.error);
  const auto all = read_all(s);
  REQUIRE(all.size() == 2);
  CHECK(all[1].second == payload(2));
}

TEST_CASE("spool: write_queued leaves a batch that would start a new segment to the writer, "
          "which writes it first",
          "[unit][spool]") {
  postbox::test::temp_dir dir;
  io_guard guard;
  use_gated_syncs();
  postbox::detail::spool_io_calls().pwrite = &thread_noting_pwrite;
  std::atomic<int> told{0};
  outcomes out;
  postbox::spool s(dir.path(), {.segment_size = 4096,
                                .visible_before_sync = true,
                                .after_visible = [&] { ++told; }});
  gate_opener opener;
  hold_writer_in_sync(s, out.callback());
  // More than the rest of the first segment.
  std::vector<std::string> want{payload(0)};
  for (int i = 1; i <= 40; ++i) {
    want.push_back(std::to_string(i) + std::string(100, 'b'));
    REQUIRE(s.append(want.back(), out.callback()) == postbox::append_status::queued);
  }
  CHECK_FALSE(s.write_queued());
  CHECK_FALSE(s.write_queued());  // still the writer's, until it has written it
  {
    std::lock_guard lk(write_threads_mu);
    CHECK(write_threads.empty());  // nothing written on this thread
  }
  CHECK(read_all(s).size() == 1);
  gate_closed = false;
  REQUIRE(postbox::test::wait_until([&] { return out.done.load() == 41; }));
  CHECK(out.errors.load() == 0);
  CHECK(told.load() >= 2);  // the writer told of what it wrote
  std::vector<std::string> got;
  for (const auto& rec : read_all(s)) got.push_back(rec.second);
  CHECK(got == want);
  CHECK(s.segments().size() >= 2);
  std::lock_guard lk(write_threads_mu);
  for (const auto& t : write_threads) CHECK(t != std::this_thread::get_id());
}

TEST_CASE("spool: with syncs deferred, closing syncs and reports the written batches still "
          "waiting, and writes the done marks made meanwhile",
          "[unit][spool]") {
  using namespace std::chrono_literals;
  postbox::test::temp_dir dir;
  io_guard guard;
  use_timed_gated_syncs();
  std::atomic<int> durable{0}, errors{0};
  position first{};
  {
    postbox::spool s(dir.path(), {.sync_spacing = 100ms, .visible_before_sync = true});
    gate_opener opener;
    const auto o = s.append_and_wait(payload(0));
    REQUIRE(!o.error);
    first = o.pos;
    sync_full_group(s, 100);  // the next sync waits the whole 100 ms
    REQUIRE(s.append(payload(1), [&](const postbox::append_outcome& r) {
      if (r.error) ++errors;
      ++durable;
    }) == postbox::append_status::queued);
    (void)s.write_queued();
    REQUIRE(s.mark_done(first) == postbox::done_status::ok);
  }  // closed well within the 100 ms: the second record's sync was not due
  CHECK(durable.load() == 1);
  CHECK(errors.load() == 0);
  postbox::spool again(dir.path());
  CHECK(again.is_done(first));
  const auto all = read_all(again);
  REQUIRE(all.size() == 1 + 101 + 1);
  CHECK(all.back().second == payload(1));
}

TEST_CASE("spool: a record written by write_queued whose fdatasync fails is reported failed",
          "[unit][spool]") {
  postbox::test::temp_dir dir;
  io_guard guard;
  postbox::detail::spool_io_calls().fdatasync = &faulty_fdatasync;
  fail_syncs = 0;
  postbox::spool s(dir.path(), {.visible_before_sync = true});
  REQUIRE(!s.append_and_wait(payload(0)).error);
  fail_syncs = EIO;
  std::atomic<bool> reported{false};
  std::error_code error;
  REQUIRE(s.append(payload(1), [&](const postbox::append_outcome& o) {
    error = o.error;
    reported = true;
  }) == postbox::append_status::queued);
  s.write_queued();
  REQUIRE(postbox::test::wait_until([&] { return reported.load(); }));
  fail_syncs = 0;
  CHECK(error == std::error_code(EIO, std::generic_category()));
  CHECK(s.fault() == std::error_code(EIO, std::generic_category()));
  CHECK(s.append(payload(2), [](const postbox::append_outcome&) {}) == postbox::append_status::failed);
}

TEST_CASE("spool: a cursor does not keep the bytes of a batch being written, which a failed "
          "write takes back and the next batch overwrites",
          "[unit][spool]") {
  const bool early = GENERATE(true, false);
  INFO("visible_before_sync " << early);
  postbox::test::temp_dir dir;
  io_guard guard;
  postbox::detail::spool_io_calls().pwrite = &held_failing_pwrite;
  failing_write_armed = false;
  failing_write_held = true;
  failing_write_done = false;
  postbox::spool s(dir.path(), {.visible_before_sync = early});
  struct release {
    ~release() { failing_write_held = false; }
  } releaser;  // after the spool: its writer is never left waiting
  const auto first = s.append_and_wait("first record");
  REQUIRE(!first.error);

  // The refused batch's bytes reach the file; a cursor reads the record
  // before them, reading ahead as it does.
  failing_write_armed = true;
  std::atomic<bool> refused_done{false};
  std::error_code refused_error;
  REQUIRE(s.append("refused record", [&](const postbox::append_outcome& o) {
    refused_error = o.error;
    refused_done = true;
  }) == postbox::append_status::queued);
  REQUIRE(postbox::test::wait_until([] { return failing_write_done.load(); }));
  auto c = s.read_from({}, false);
  postbox::spool_record r;
  REQUIRE(c.next(r) == postbox::read_status::ok);
  CHECK(r.data == "first record");

  // Refused, the file cut back; the next record takes the same place.
  failing_write_held = false;
  REQUIRE(postbox::test::wait_until([&] { return refused_done.load(); }));
  CHECK(refused_error == std::error_code(ENOSPC, std::generic_category()));
  const auto next = s.append_and_wait("second record");
  REQUIRE(!next.error);
  REQUIRE(c.next(r) == postbox::read_status::ok);
  CHECK(r.pos == next.pos);
  CHECK(r.data == "second record");
  CHECK(c.next(r) == postbox::read_status::end);
}

TEST_CASE("spool: with visible_before_sync, a record made visible before its fdatasync failed is "
          "still reported failed, never durable",
          "[unit][spool]") {
  postbox::test::temp_dir dir;
  io_guard guard;
  postbox::detail::spool_io_calls().fdatasync = &faulty_fdatasync;
  fail_syncs = 0;
  std::atomic<int> visible{0};
  postbox::spool s(dir.path(), {.visible_before_sync = true, .after_visible = [&] { ++visible; }});
  REQUIRE(!s.append_and_wait(payload(0)).error);
  fail_syncs = EIO;
  const auto failed = s.append_and_wait(payload(1));
  fail_syncs = 0;
  CHECK(failed.error == std::error_code(EIO, std::generic_category()));
  CHECK(visible.load() == 2);  // it was visible before its sync failed
  CHECK(s.append_and_wait(payload(2)).error);  // and the spool stays faulted
}

TEST_CASE("spool: under always, an appender held back by a full lane does not wait out "
          "sync_spacing",
          "[unit][spool]") {
  using namespace std::chrono_literals;
  using clock = std::chrono::steady_clock;
  postbox::test::temp_dir dir;
  io_guard guard;
  use_timed_gated_syncs();
  // Lanes of 16 KiB: two large records fill one. The spacing is the longest allowed.
  postbox::spool s(dir.path(), {.sync_spacing = 100ms, .max_queued_bytes = 64 * 1024});
  gate_opener opener;
  sync_full_group(s, 0);  // a sync of 100 has just begun: the next waits 100 ms
  const auto from = clock::now();
  std::atomic<int> outstanding{0};
  const std::string big(12000, 'b');
  for (int i = 0; i < 3; ++i) {  // the third waits for room in the lane
    ++outstanding;
    REQUIRE(s.append(big, [&](const postbox::append_outcome&) { --outstanding; }) ==
            postbox::append_status::queued);
  }
  const auto queued = clock::now() - from;
  INFO("ms to queue three records into a 16 KiB lane: "
       << std::chrono::duration_cast<std::chrono::milliseconds>(queued).count());
  CHECK(queued < 50ms);  // the writer took the full lane instead of waiting the spacing out
  REQUIRE(postbox::test::wait_until([&] { return outstanding.load() == 0; }));
}

TEST_CASE("spool: under interval and never, appends are readable and flush syncs them",
          "[unit][spool]") {
  postbox::test::temp_dir dir;
  const auto policy = GENERATE(postbox::fsync_policy::interval, postbox::fsync_policy::never);
  {
    postbox::spool s(dir.path(), {.fsync = policy, .fsync_interval = std::chrono::milliseconds(5)});
    for (int i = 0; i < 50; ++i) REQUIRE(!s.append_and_wait(payload(i)).error);
    CHECK(!s.flush());
    CHECK(s.stats().fsyncs >= 1);
    CHECK(read_all(s).size() == 50);
  }
  postbox::spool s(dir.path());
  CHECK(s.recovery().records == 50);
}

TEST_CASE("spool: done marks survive reopen, and only_pending cursors skip done records",
          "[unit][spool]") {
  postbox::test::temp_dir dir;
  std::vector<position> pos;
  {
    postbox::spool s(dir.path());
    for (int i = 0; i < 10; ++i) pos.push_back(s.append_and_wait(payload(i)).pos);
    for (int i : {0, 3, 4, 9}) CHECK(s.mark_done(pos[static_cast<std::size_t>(i)]) == postbox::done_status::ok);
    CHECK(s.mark_done(pos[3]) == postbox::done_status::already_done);
    CHECK(s.mark_done({pos[3].segment, pos[3].offset + 1}) == postbox::done_status::unknown_position);
    CHECK(s.mark_done({99, 24}) == postbox::done_status::unknown_position);
    CHECK(s.is_done(pos[4]));
    CHECK(read_all(s, {}, true).size() == 6);
    CHECK(!s.flush());
  }
  postbox::spool s(dir.path());
  CHECK(s.recovery().records == 10);
  CHECK(s.recovery().pending == 6);
  for (int i = 0; i < 10; ++i)
    CHECK(s.is_done(pos[static_cast<std::size_t>(i)]) == (i == 0 || i == 3 || i == 4 || i == 9));
  const auto pending = read_all(s, {}, true);
  REQUIRE(pending.size() == 6);
  CHECK(pending.front().second == payload(1));
  CHECK(read_all(s).size() == 10);  // done records are still readable until deleted
}

TEST_CASE("spool: mark_done of many positions marks each new one once and counts them; "
          "a segment it completes is deleted, and the marks survive reopen",
          "[unit][spool]") {
  postbox::test::temp_dir dir;
  std::vector<position> pos;
  const std::string p(100, 'b');
  {
    postbox::spool s(dir.path(), {.segment_size = 1024});
    for (int i = 0; i < 20; ++i) pos.push_back(s.append_and_wait(p).pos);  // segments 1, 2, 3
    REQUIRE(s.segments() == std::vector<std::uint32_t>{1, 2, 3});
    REQUIRE(s.mark_done(pos[2]) == postbox::done_status::ok);
    // Segment 1 whole (pos[2] already done), one of segment 2, two unknown
    // positions, and a repeat within the batch.
    std::vector<position> batch(pos.begin(), pos.begin() + 9);
    batch.push_back(pos[12]);
    batch.push_back({pos[12].segment, pos[12].offset + 1});
    batch.push_back({99, 24});  // no such segment
    batch.push_back(pos[12]);
    CHECK(s.mark_done(batch) == 9);  // 0..8 but 2, and 12
    CHECK(s.mark_done(std::vector<position>{}) == 0);
    CHECK(s.mark_done(std::vector<position>{pos[0], pos[12]}) == 0);
    // Segment 1's marks are checked after the reopen: the writer may have
    // deleted it already, and is_done() knows nothing of a deleted segment.
    for (int i = 9; i < 20; ++i) CHECK(s.is_done(pos[static_cast<std::size_t>(i)]) == (i == 12));
    // The completed segment goes without a reclaim() call.
    CHECK(postbox::test::wait_until([&] { return !exists(dir, "00000001.log"); }));
    CHECK(!s.flush());
  }
  postbox::spool s(dir.path());
  CHECK(s.recovery().pending == 10);
  CHECK(s.segments() == std::vector<std::uint32_t>{2, 3});
  CHECK(s.is_done(pos[12]));
  CHECK(!s.is_done(pos[11]));
  CHECK(read_all(s, {}, true).front().first == pos[9]);
}

TEST_CASE("spool: under always, a batch of done records alone is written but not synced; "
          "the next append's sync, or the close, covers it",
          "[unit][spool]") {
  postbox::test::temp_dir dir;
  io_guard guard;
  postbox::detail::spool_io_calls().fdatasync = &counting_fdatasync;
  const auto segment = dir.path() / "00000001.log";
  int before_close = 0;
  {
    // A long fsync_interval: only an append or the close syncs the marks here.
    postbox::spool s(dir.path(), {.fsync_interval = std::chrono::minutes(10)});
    const auto first = s.append_and_wait("first");
    REQUIRE(!first.error);
    const auto size = std::filesystem::file_size(segment);
    const int syncs = syncs_seen.load();
    REQUIRE(s.mark_done(first.pos) == postbox::done_status::ok);
    // The done record reaches the file in a batch of its own...
    REQUIRE(postbox::test::wait_until([&] { return std::filesystem::file_size(segment) > size; }));
    // ...and the next append is durable after one more fdatasync, not two.
    const auto second = s.append_and_wait("second");
    REQUIRE(!second.error);
    CHECK(syncs_seen.load() == syncs + 1);
    // A lone done mark, then the close.
    const auto size_marked = std::filesystem::file_size(segment);  // before: the writer is quick
    REQUIRE(s.mark_done(second.pos) == postbox::done_status::ok);
    REQUIRE(postbox::test::wait_until([&] { return std::filesystem::file_size(segment) > size_marked; }));
    before_close = syncs_seen.load();
  }
  CHECK(syncs_seen.load() > before_close);  // the close synced the lone mark
}

TEST_CASE("spool: under always, a lone batch of done records is synced within fsync_interval",
          "[unit][spool]") {
  postbox::test::temp_dir dir;
  io_guard guard;
  postbox::detail::spool_io_calls().fdatasync = &counting_fdatasync;
  postbox::spool s(dir.path(), {.fsync_interval = std::chrono::milliseconds(20)});
  const auto first = s.append_and_wait("first");
  REQUIRE(!first.error);
  const int syncs = syncs_seen.load();
  REQUIRE(s.mark_done(first.pos) == postbox::done_status::ok);
  // No append follows: the writer syncs the mark on its own.
  CHECK(postbox::test::wait_until([&] { return syncs_seen.load() == syncs + 1; }));
  CHECK(s.stats().pending == 0);
}

TEST_CASE("spool: under interval, an append is synced within fsync_interval without a flush",
          "[unit][spool]") {
  postbox::test::temp_dir dir;
  io_guard guard;
  postbox::detail::spool_io_calls().fdatasync = &counting_fdatasync;
  postbox::spool s(dir.path(), {.fsync = postbox::fsync_policy::interval,
                                .fsync_interval = std::chrono::milliseconds(20)});
  const int syncs = syncs_seen.load();
  REQUIRE(!s.append_and_wait("written, not yet synced").error);  // reported after the write
  // stats() counts a sync once it has returned (syncs_seen, as it starts).
  CHECK(postbox::test::wait_until([&] { return s.stats().fsyncs == 1; }));
  CHECK(syncs_seen.load() == syncs + 1);
}

TEST_CASE("spool: a segment whose records are all done is deleted; the active one is kept",
          "[unit][spool]") {
  postbox::test::temp_dir dir;
  postbox::spool s(dir.path(), {.segment_size = 1024});
  const std::string p(100, 'd');
  std::vector<position> pos;
  for (int i = 0; i < 20; ++i) pos.push_back(s.append_and_wait(p).pos);  // segments 1, 2, 3
  REQUIRE(s.segments() == std::vector<std::uint32_t>{1, 2, 3});
  for (int i = 0; i < 8; ++i) (void)s.mark_done(pos[static_cast<std::size_t>(i)]);
  s.reclaim();
  CHECK(exists(dir, "00000001.log"));  // one record of it is pending
  (void)s.mark_done(pos[8]);
  REQUIRE(postbox::test::wait_until([&] { return !exists(dir, "00000001.log"); }));
  CHECK(s.segments() == std::vector<std::uint32_t>{2, 3});
  for (int i = 18; i < 20; ++i) (void)s.mark_done(pos[static_cast<std::size_t>(i)]);
  s.reclaim();
  CHECK(exists(dir, "00000003.log"));  // all done, but active
  CHECK(read_all(s).front().first == pos[9]);
  CHECK(s.stats().deleted_segments == 1);
}

TEST_CASE("spool: deleting a newer fully-done segment keeps the done marks it held for older ones",
          "[unit][spool]") {
  postbox::test::temp_dir dir;
  std::vector<position> pos;
  const std::string p(100, 'm');
  {
    postbox::spool s(dir.path(), {.segment_size = 1024});
    for (int i = 0; i < 9; ++i) pos.push_back(s.append_and_wait(p).pos);  // fills segment 1
    for (int i = 0; i < 9; ++i) pos.push_back(s.append_and_wait(p).pos);  // fills segment 2
    REQUIRE(pos[9].segment == 2);
    // Marks for segment 1 are written into segment 2 (the active one then).
    for (int i = 0; i < 5; ++i) (void)s.mark_done(pos[static_cast<std::size_t>(i)]);
    REQUIRE(!s.flush());
    (void)s.append_and_wait(p);  // rolls to segment 3
    for (int i = 9; i < 18; ++i) (void)s.mark_done(pos[static_cast<std::size_t>(i)]);
    REQUIRE(postbox::test::wait_until([&] { return !exists(dir, "00000002.log"); }));
    CHECK(exists(dir, "00000001.log"));
  }
  postbox::spool s(dir.path(), {.segment_size = 1024});
  for (int i = 0; i < 9; ++i) CHECK(s.is_done(pos[static_cast<std::size_t>(i)]) == (i < 5));
  CHECK(s.recovery().pending == 4 + 1);
}

TEST_CASE("spool: retention_time keeps fully-done segments until they are old enough",
          "[unit][spool]") {
  postbox::test::temp_dir dir;
  postbox::spool s(dir.path(), {.segment_size = 1024, .retention_time = std::chrono::milliseconds(300)});
  const std::string p(100, 't');
  std::vector<position> pos;
  for (int i = 0; i < 10; ++i) pos.push_back(s.append_and_wait(p).pos);
  for (int i = 0; i < 9; ++i) (void)s.mark_done(pos[static_cast<std::size_t>(i)]);
  const auto done_at = std::chrono::steady_clock::now();
  s.reclaim();
  CHECK(exists(dir, "00000001.log"));  // done, but younger than 300 ms
  REQUIRE(postbox::test::wait_until([&] { return !exists(dir, "00000001.log"); },
                                    std::chrono::seconds(5)));
  CHECK(std::chrono::steady_clock::now() - done_at >= std::chrono::milliseconds(250));
}

TEST_CASE("spool: retention_bytes deletes fully-done segments, oldest first, only while over",
          "[unit][spool]") {
  postbox::test::temp_dir dir;
  const std::string p(100, 'b');
  // Segments of 24 + 9 * 109 = 1005 bytes; keep at most ~3 of them.
  postbox::spool s(dir.path(), {.segment_size = 1024, .retention_bytes = 3000});
  std::vector<position> pos;
  for (int i = 0; i < 37; ++i) pos.push_back(s.append_and_wait(p).pos);  // segments 1..5
  REQUIRE(s.segments().size() == 5);
  for (int i = 0; i < 36; ++i) (void)s.mark_done(pos[static_cast<std::size_t>(i)]);
  s.reclaim();
  s.reclaim();
  // 1..4 are done: 4020 bytes, and the active segment holds 133 bytes and
  // the done records, 297 to 612 bytes as the writer batched the 36 marks.
  // Deleting 1 leaves 3445 to 3760 bytes, over 3000; deleting 2 as well
  // leaves 2440 to 2755: delete 1 and 2, then no more.
  CHECK(s.segments() == std::vector<std::uint32_t>{3, 4, 5});
  CHECK(s.stats().bytes <= 3000);
}

TEST_CASE("spool: a second opener of the directory gets a spool_error naming it",
          "[unit][spool]") {
  postbox::test::temp_dir dir;
  postbox::spool first(dir.path());
  CHECK_THROWS_AS(postbox::spool(dir.path()), postbox::spool_error);
  CHECK_THROWS_WITH(postbox::spool(dir.path()),
                    Contains(dir.path().string()) && Contains("in use by another opener"));
  CHECK(!first.append_and_wait("still mine").error);
}

TEST_CASE("spool: bad options and unusable directories are setup errors", "[unit][spool]") {
  postbox::test::temp_dir dir;
  CHECK_THROWS_AS(postbox::spool(dir.path(), {.segment_size = 100}), postbox::config_error);
  CHECK_THROWS_WITH(postbox::spool(dir.path(), {.segment_size = 100}), Contains("segment_size"));
  CHECK_THROWS_AS(postbox::spool(dir.path(), {.fsync = postbox::fsync_policy::interval,
                                              .fsync_interval = std::chrono::milliseconds(0)}),
                  postbox::config_error);
  CHECK_THROWS_WITH(postbox::spool(dir.path(), {.sync_spacing = std::chrono::milliseconds(101)}),
                    Contains("sync_spacing"));
  CHECK_THROWS_AS(postbox::spool(dir.path(), {.sync_spacing = std::chrono::microseconds(-1)}),
                  postbox::config_error);
  const auto file = dir.path() / "a-file";
  { std::FILE* f = std::fopen(file.c_str(), "w"); REQUIRE(f); std::fclose(f); }
  CHECK_THROWS_WITH(postbox::spool(file / "q"), Contains("spool: cannot create directory") &&
                                                    Contains((file / "q").string()));
}

// The device's pattern: callbacks collect outcomes without a lock on the
// writer thread; after_callbacks hands them over once per batch.
struct collector {
  std::vector<postbox::append_outcome> staged;  // writer thread only
  std::thread::id writer;
  bool wrong_thread = false;
  int hooks = 0;
  std::mutex mu;
  std::vector<postbox::append_outcome> handed;

  postbox::append_callback callback() {
    return [this](const postbox::append_outcome& o) {
      if (writer == std::thread::id{}) writer = std::this_thread::get_id();
      wrong_thread |= writer != std::this_thread::get_id();
      staged.push_back(o);
    };
  }
  void hand_over() {
    wrong_thread |= writer != std::this_thread::get_id();
    ++hooks;
    std::lock_guard lk(mu);
    handed.insert(handed.end(), staged.begin(), staged.end());
    staged.clear();
  }
  std::size_t handed_count() {
    std::lock_guard lk(mu);
    return handed.size();
  }
};

TEST_CASE("spool: after_callbacks runs on the writer thread after each batch's callbacks, "
          "so that nothing a callback collected is left behind",
          "[unit][spool]") {
  postbox::test::temp_dir dir;
  collector c;
  postbox::spool_options o;
  o.after_callbacks = [&c] { c.hand_over(); };
  postbox::spool s(dir.path(), o);
  constexpr int threads = 3, each = 400;
  std::atomic<int> not_queued{0};  // Catch's assertions belong to the main thread
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t)
    ts.emplace_back([&, t] {
      for (int i = 0; i < each; ++i)
        if (s.append(payload(t * each + i), c.callback()) != postbox::append_status::queued) ++not_queued;
    });
  for (auto& t : ts) t.join();
  REQUIRE(not_queued.load() == 0);
  REQUIRE(postbox::test::wait_until([&] { return c.handed_count() == threads * each; }));
  CHECK(s.flush() == std::error_code{});
  CHECK_FALSE(c.wrong_thread);
  CHECK(c.writer != std::this_thread::get_id());
  std::set<position> positions;
  {
    std::lock_guard lk(c.mu);
    for (const auto& h : c.handed) {
      CHECK(!h.error);
      positions.insert(h.pos);
    }
  }
  CHECK(positions.size() == threads * each);
  const auto st = s.stats();
  INFO("hooks " << c.hooks << ", batches " << st.batches);
  CHECK(c.hooks >= 1);
  CHECK(static_cast<std::uint64_t>(c.hooks) <= st.batches);
}

TEST_CASE("spool: a failed write fails its appends, leaves no partial record, and appends "
          "succeed again without reopening",
          "[unit][spool]") {
  postbox::test::temp_dir dir;
  io_guard guard;
  postbox::detail::spool_io_calls().pwrite = &faulty_pwrite;
  postbox::spool s(dir.path());
  const auto first = s.append_and_wait("before");
  REQUIRE(!first.error);
  const auto size_before = std::filesystem::file_size(dir.path() / "00000001.log");
  fail_writes = ENOSPC;
  const auto failed = s.append_and_wait("while the disk is full");
  fail_writes = 0;
  CHECK(failed.error == std::errc::no_space_on_device);
  CHECK(std::filesystem::file_size(dir.path() / "00000001.log") == size_before);
  CHECK(!s.fault());
  const auto after = s.append_and_wait("after");
  CHECK(!after.error);
  CHECK(after.pos == position{1, static_cast<std::uint32_t>(size_before)});
  const auto all = read_all(s);
  REQUIRE(all.size() == 2);
  CHECK(all[1].second == "after");
}

TEST_CASE("spool: a failed fdatasync is fatal: nothing it covered is reported durable, and "
          "later appends fail",
          "[unit][spool]") {
  postbox::test::temp_dir dir;
  io_guard guard;
  postbox::detail::spool_io_calls().fdatasync = &faulty_fdatasync;
  // Small records are synced by the writer; a batch over 256 KiB by the
  // sync thread while the writer goes on.
  const std::size_t size = GENERATE(std::size_t{30}, std::size_t{300 * 1024});
  const std::string body(size, 'c');
  {
    postbox::spool s(dir.path());
    REQUIRE(!s.append_and_wait(body).error);
    fail_syncs = EIO;
    const auto o = s.append_and_wait(body);
    fail_syncs = 0;
    CHECK(o.error == std::errc::io_error);
    CHECK(s.fault() == std::errc::io_error);
    CHECK(s.append("later", {}) == postbox::append_status::failed);
    CHECK(s.append_and_wait("later").error == std::errc::io_error);
    CHECK(read_all(s).size() == 1);  // the failed record is never visible
    CHECK(s.flush() == std::errc::io_error);
  }
  postbox::spool s(dir.path());  // reopening recovers what is on disk
  CHECK(!s.append_and_wait("after reopen").error);
}

TEST_CASE("spool: a segment roll waits for the sync thread's fdatasync of the old head",
          "[unit][spool]") {
  postbox::test::temp_dir dir;
  io_guard guard;
  fd_changed = 0;
  postbox::detail::spool_io_calls().fdatasync = &fd_checking_fdatasync;
  // 300 KiB records in 400 KiB segments: each batch is synced on the sync
  // thread, and the next one rolls the segment, closing the old head's fd.
  postbox::spool s(dir.path(), {.segment_size = 400 * 1024});
  const std::string body(300 * 1024, 'r');
  std::atomic<int> ok{0}, failed{0};
  for (int i = 0; i < 6; ++i) {
    REQUIRE(s.append(body, [&](const postbox::append_outcome& o) { ++(o.error ? failed : ok); }) ==
            postbox::append_status::queued);
  }
  REQUIRE(postbox::test::wait_until([&] { return ok.load() + failed.load() == 6; }));
  CHECK(failed.load() == 0);
  CHECK(fd_changed.load() == 0);
  CHECK(!s.fault());
  CHECK(read_all(s).size() == 6);
  CHECK(s.segments().size() == 6);
}

namespace {

std::atomic<bool> held_sync{false}, written_while_held{false};  // holding_fdatasync
std::atomic<std::uint64_t> first_end{0};

// Every tracked counter back to its start, for a test using the hooks above.
void reset_tracking() {
  written_end = 0;
  durable_end = 0;
  writes_during_sync = 0;
  writer_thread = std::thread::id{};
  held_sync = false;
  written_while_held = false;
}

}  // namespace

TEST_CASE("spool: under always, a large batch's fdatasync runs while the next batch is "
          "written, and no record is reported before a sync that covers it has returned",
          "[unit][spool]") {
  postbox::test::temp_dir dir;
  io_guard guard;
  reset_tracking();
  postbox::detail::spool_io_calls().pwrite = &tracking_pwrite;
  postbox::detail::spool_io_calls().fdatasync = &slow_tracking_fdatasync;
  // 12 MB from 4 threads, at most 1 MiB queued: a dozen batches or more,
  // most of them large enough for the sync thread.
  constexpr int threads = 4, each = 3000;
  expected_end = postbox::detail::spool_format::segment_header_size +
                 std::uint64_t{threads} * each * (1000 + postbox::detail::spool_format::record_header_size);
  queued_end = postbox::detail::spool_format::segment_header_size;
  postbox::spool s(dir.path(), {.segment_size = 64u << 20, .max_queued_bytes = 1u << 20});
  std::mutex mu;
  std::vector<std::pair<position, std::string>> reported;
  std::atomic<int> early{0}, failed{0}, outcomes{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t)
    ts.emplace_back([&, t] {
      for (int i = 0; i < each; ++i) {
        std::string body = "t" + std::to_string(t) + " i" + std::to_string(i) + " ";
        body.resize(1000, static_cast<char>('a' + t));
        const std::size_t framed = body.size() + postbox::detail::spool_format::record_header_size;
        const auto st = s.append(body, [&, body, framed](const postbox::append_outcome& o) {
          if (o.error) {
            ++failed;
          } else {
            if (o.pos.offset + framed > durable_end.load()) ++early;
            std::lock_guard lk(mu);
            reported.emplace_back(o.pos, body);
          }
          ++outcomes;
        });
        if (st != postbox::append_status::queued) ++failed, ++outcomes;
        else queued_end += framed;
      }
    });
  for (auto& t : ts) t.join();
  REQUIRE(postbox::test::wait_until([&] { return outcomes.load() == threads * each; }));
  CHECK(failed.load() == 0);
  CHECK(early.load() == 0);
  CHECK(writes_during_sync.load() > 0);
  CHECK(s.stats().fsyncs >= 2);
  // Reported in the order written: batch after batch, record after record.
  const auto by_position = [](const auto& a, const auto& b) { return a.first < b.first; };
  CHECK(std::is_sorted(reported.begin(), reported.end(), by_position));
  // Everything reads back, in position order, with the bytes each was given.
  std::sort(reported.begin(), reported.end(), by_position);
  const auto all = read_all(s);
  REQUIRE(all.size() == reported.size());
  for (std::size_t i = 0; i < all.size(); ++i) {
    CHECK(all[i].first == reported[i].first);
    CHECK(all[i].second == reported[i].second);
  }
}

namespace {

// Holds the sync thread's fdatasync until a record past the first one has
// been written (or 5 s have passed), and says whether one was.
int holding_fdatasync(int fd) {
  if (const auto writer = writer_thread.load();
      writer != std::thread::id{} && std::this_thread::get_id() != writer) {
    held_sync = true;
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (written_end.load() <= first_end.load() && std::chrono::steady_clock::now() < give_up)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    if (written_end.load() > first_end.load()) written_while_held = true;
  }
  return ::fdatasync(fd);
}

}  // namespace

TEST_CASE("spool: under always, an append made while the writer waits on a running sync is "
          "written before that sync returns",
          "[unit][spool]") {
  postbox::test::temp_dir dir;
  io_guard guard;
  reset_tracking();
  const std::string big(300 * 1024, 'b');  // large enough for the sync thread
  first_end = ~std::uint64_t{0};
  postbox::detail::spool_io_calls().pwrite = &tracking_pwrite;
  postbox::detail::spool_io_calls().fdatasync = &holding_fdatasync;
  postbox::spool s(dir.path());
  // A small record first (synced in line), so that the writer's start-up
  // work (a first reclaim, which reports everything before it) is done.
  REQUIRE(!s.append_and_wait("first").error);
  first_end = written_end.load() + big.size() + postbox::detail::spool_format::record_header_size;
  std::atomic<int> outcomes{0}, failed{0};
  auto count = [&](const postbox::append_outcome& o) {
    if (o.error) ++failed;
    ++outcomes;
  };
  REQUIRE(s.append(big, count) == postbox::append_status::queued);
  REQUIRE(postbox::test::wait_until([] { return held_sync.load(); }));
  // Time for the writer, with nothing queued, to settle into its wait.
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  REQUIRE(s.append("small", count) == postbox::append_status::queued);
  REQUIRE(postbox::test::wait_until([&] { return outcomes.load() == 2; }));
  CHECK(failed.load() == 0);
  CHECK(written_while_held.load());
}

TEST_CASE("spool: after_callbacks also hands over the outcomes of a failed fdatasync",
          "[unit][spool]") {
  postbox::test::temp_dir dir;
  io_guard guard;
  postbox::detail::spool_io_calls().fdatasync = &faulty_fdatasync;
  collector c;
  postbox::spool_options o;
  o.after_callbacks = [&c] { c.hand_over(); };
  postbox::spool s(dir.path(), o);
  REQUIRE(s.append("durable", c.callback()) == postbox::append_status::queued);
  REQUIRE(postbox::test::wait_until([&] { return c.handed_count() == 1; }));
  fail_syncs = EIO;
  REQUIRE(s.append("covered by the failed sync", c.callback()) == postbox::append_status::queued);
  REQUIRE(postbox::test::wait_until([&] { return c.handed_count() == 2; }));
  fail_syncs = 0;
  std::lock_guard lk(c.mu);
  CHECK(!c.handed[0].error);
  CHECK(c.handed[1].error == std::errc::io_error);
  CHECK_FALSE(c.wrong_thread);
}
