// The queue device in-process: a device thread, reliable clients over tcp
// and ipc on 127.0.0.1, real spools on disk.
#include <postbox/detail/spool_state.hpp>
#include <postbox/devices/queue.hpp>
#include <postbox/queue_client.hpp>

#include "queue/queue_support.hpp"
#include "support/support.hpp"

#include <catch2/catch.hpp>

#include <map>
#include <optional>
#include <thread>

using namespace postbox;
using namespace std::chrono_literals;

namespace {

using test::running_device;

// Puts back the spools' real system calls when a test that replaced them ends.
struct restore_io {
  detail::spool_io saved = detail::spool_io_calls();
  ~restore_io() { detail::spool_io_calls() = saved; }
};

devices::queue_config test_config(const test::temp_dir& dir, test::transport_kind t) {
  devices::queue_config c;
  c.clients = "@" + test::bind_address(t, dir);
  c.data_dir = dir.path() / "data";
  c.log = devices::log_level::warn;
  c.retry_initial = 20ms;
  c.retry_max = 200ms;
  return c;
}

}  // namespace

TEST_CASE("queue: a confirmed message is delivered and acked", "[queue]") {
  const auto t = GENERATE(test::transport_kind::tcp, test::transport_kind::ipc);
  test::temp_dir dir;
  context ctx;
  running_device dev(ctx, test_config(dir, t));
  producer p(ctx, dev.clients(), "jobs");
  consumer c(ctx, dev.clients(), {"jobs"});

  std::vector<message_id> sent;
  for (int i = 0; i < 100; ++i) {
    const auto r = p.send(message("video", "job-" + std::to_string(i)));
    REQUIRE(r.ok);
    REQUIRE(r.reason.empty());
    sent.push_back(r.id);
  }
  std::vector<message_id> got;
  for (int i = 0; i < 100; ++i) {
    auto d = c.receive(5s);
    REQUIRE(d);
    CHECK(d->queue == "jobs");
    CHECK(d->attempt == 0);
    CHECK(d->msg.payload() == "job-" + std::to_string(i));
    got.push_back(d->msg.id());
    c.ack(*d);
  }
  CHECK(got == sent);
  CHECK_FALSE(c.receive(200ms));
}

TEST_CASE("queue: --sync-spacing takes milliseconds, fractions too, down to 0", "[queue]") {
  auto spacing = [](std::vector<const char*> args) {
    args.insert(args.begin(), "postbox-queue");
    return devices::load_queue_config(static_cast<int>(args.size()), args.data()).config.sync_spacing;
  };
  CHECK(spacing({}) == 2000us);
  CHECK(spacing({"--sync-spacing", "0.25"}) == 250us);
  CHECK(spacing({"--sync-spacing", "0"}) == 0us);
  CHECK(spacing({"--sync-spacing", "100"}) == 100'000us);
  CHECK(spacing({"--sync-spacing", "0.0001"}) == 1us);  // positive: never off by rounding
  CHECK_THROWS_AS(spacing({"--sync-spacing", "100.5"}), config_error);
  CHECK_THROWS_AS(spacing({"--sync-spacing", "-0.5"}), config_error);
  CHECK_THROWS_AS(spacing({"--sync-spacing", "inf"}), config_error);
}

TEST_CASE("queue: with --sync-spacing, a lone producer's sends are not held back by it, and a "
          "stream's syncs are",
          "[queue]") {
  test::temp_dir dir;
  context ctx;
  restore_io restore;
  using test::gate_closed;
  using test::held_syncs;
  test::use_gated_syncs();  // before any spool opens
  auto cfg = test_config(dir, test::transport_kind::ipc);
  cfg.sync_spacing = 100ms;
  running_device dev(ctx, cfg);
  test::gate_opener opener;
  producer p(ctx, dev.clients(), "jobs");
  consumer c(ctx, dev.clients(), {"jobs"});

  // Each send() waits for its sync, which covers that one message: the
  // next sync is held back by a 64th of the spacing, not all of it.
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < 3; ++i) REQUIRE(p.send(message("video", "job-" + std::to_string(i))).ok);
  CHECK(std::chrono::steady_clock::now() - start < 150ms);  // 200 ms or more if held back

  // A stream: 100 messages written (a consumer has them) while a sync is
  // held share the next sync, which then holds the one after it back by
  // the whole spacing.
  gate_closed = true;
  std::size_t confirmed = 0;
  p.send_async(message("video", "held"), [&](const confirm& r) { confirmed += r.ok ? 1 : 0; });
  (void)p.poll(0ms);
  REQUIRE(test::wait_until([&] { return held_syncs.load() == 1; }));
  for (int i = 0; i < 100; ++i) {
    p.send_async(message("video", "stream-" + std::to_string(i)),
                 [&](const confirm& r) { confirmed += r.ok ? 1 : 0; });
  }
  (void)p.poll(0ms);
  std::size_t got = 0;  // acked as they come: the consumer's credit is 100
  REQUIRE(test::wait_until([&] {
    while (auto d = c.receive(10ms)) {
      c.ack(*d);
      ++got;
    }
    return got == 104;  // the three sent first, the held one, the 100
  }));
  gate_closed = false;
  REQUIRE(test::wait_until([&] {
    (void)p.poll(10ms);
    return confirmed == 101;
  }));
  const auto next = std::chrono::steady_clock::now();
  REQUIRE(p.send(message("video", "after the stream")).ok);
  CHECK(std::chrono::steady_clock::now() - next >= 50ms);

  cfg.sync_spacing = 101ms;
  CHECK_THROWS_AS(devices::queue_device(ctx, cfg), config_error);
  dev.stop();
}

TEST_CASE("queue: a message goes to a consumer while its sync runs, and its producer's confirm "
          "waits for the sync",
          "[queue]") {
  test::temp_dir dir;
  context ctx;
  restore_io restore;
  using test::gate_closed;
  using test::held_syncs;
  test::use_gated_syncs();  // before any spool opens
  running_device dev(ctx, test_config(dir, test::transport_kind::ipc));
  test::gate_opener opener;  // after the device: opened before its shutdown waits on its spools
  std::optional<confirm> confirmed;  // before the producer, whose callback sets it
  producer p(ctx, dev.clients(), "jobs");
  consumer c(ctx, dev.clients(), {"jobs"});
  // The queue's spools exist before the syncs are held (opening one syncs).
  REQUIRE(p.send(message("video", "first")).ok);
  auto first = c.receive(5s);
  REQUIRE(first);  // not acked yet: a done mark would want a sync of its own

  gate_closed = true;
  p.send_async(message("video", "second"), [&](const confirm& r) { confirmed = r; });
  (void)p.poll(0ms);  // hands it to libzmq
  auto second = c.receive(10s);
  REQUIRE(second);
  CHECK(second->msg.payload() == "second");
  (void)p.poll(50ms);
  CHECK(held_syncs.load() >= 1);
  CHECK_FALSE(confirmed);  // its sync has not returned

  gate_closed = false;
  REQUIRE(test::wait_until([&] {
    (void)p.poll(10ms);
    return confirmed.has_value();
  }));
  CHECK(confirmed->ok);
  c.ack(*first);
  c.ack(*second);
  dev.stop();
}

TEST_CASE("queue: a nacked message comes back with its attempt count", "[queue]") {
  test::temp_dir dir;
  context ctx;
  running_device dev(ctx, test_config(dir, test::transport_kind::tcp));
  producer p(ctx, dev.clients(), "jobs");
  consumer c(ctx, dev.clients(), {"jobs"});
  REQUIRE(p.send(message("video", "flaky")).ok);
  for (std::uint32_t attempt = 0; attempt < 3; ++attempt) {
    auto d = c.receive(5s);
    REQUIRE(d);
    CHECK(d->attempt == attempt);
    CHECK(d->msg.attempt() == attempt);
    c.nack(*d, "transcoder busy");
  }
  auto d = c.receive(5s);
  REQUIRE(d);
  CHECK(d->attempt == 3);
  c.ack(*d);
  CHECK_FALSE(c.receive(300ms));
}
