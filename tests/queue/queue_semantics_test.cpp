// The queue device's semantics in-process (BRIEF.md, "The queue device
// contract" and "Bad input"): retries with backoff and dead letters, per-key
// ordering, delay and time-to-live, de-duplication, visibility timeouts,
// consumers leaving, hostile peers on every socket, the plain channels and
// refusals. A device thread, real sockets on 127.0.0.1, real spools in temp
// directories; waits are on events with generous deadlines, and timing is
// only ever checked from below.
#include <postbox/codec.hpp>
#include <postbox/detail/queue_wire.hpp>
#include <postbox/devices/queue.hpp>
#include <postbox/point_to_point.hpp>
#include <postbox/queue_client.hpp>

#include "queue/queue_support.hpp"
#include "support/support.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <thread>
#include <tuple>

#include <msgpack.hpp>

using namespace postbox;
using namespace std::chrono_literals;
using Catch::Matchers::Contains;
using Catch::Matchers::StartsWith;
using steady = std::chrono::steady_clock;
using test::running_device;

namespace {

constexpr auto deadline = 10s;  // for anything that should happen "soon"

devices::queue_config base_config(const test::temp_dir& dir,
                                  test::transport_kind t = test::transport_kind::tcp) {
  devices::queue_config c;
  c.clients = "@" + test::bind_address(t, dir);
  c.control = "@tcp://127.0.0.1:*";
  c.data_dir = dir.path() / "data";
  c.log = devices::log_level::error;
  c.retry_initial = 20ms;
  c.retry_max = 200ms;
  c.stats_interval = 0s;
  return c;
}

// The poison-message configuration of the brief.
devices::queue_config poison_config(const test::temp_dir& dir,
                                    test::transport_kind t = test::transport_kind::tcp) {
  auto c = base_config(dir, t);
  c.max_attempts = 5;
  c.retry_initial = 50ms;
  c.retry_max = 1s;
  return c;
}

std::uint64_t now_ms() {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                        std::chrono::system_clock::now().time_since_epoch())
                                        .count());
}

// The control endpoint of a running device, with the waits the tests need.
class control {
 public:
  control(context& ctx, running_device& dev)
      : client_(ctx, dev.device().control_endpoints().front()) {}

  std::string ask(std::string_view request) {
    auto a = client_.ask(request);
    REQUIRE(a);
    return *a;
  }
  // A stats field of the device (queue empty) or of one queue.
  std::uint64_t field(std::string_view name, std::string_view queue = {}) {
    const std::string j = ask("stats");
    INFO(j);
    const auto v = test::json_field(j, name, queue);
    REQUIRE(v);
    return *v;
  }
  // Waits until the field equals `expected`; false (and the last answer
  // reported) when it does not within the deadline.
  bool wait_field(std::string_view name, std::string_view queue, std::uint64_t expected,
                  std::chrono::milliseconds timeout = deadline) {
    std::string last;
    const bool ok = test::wait_until(
        [&] {
          auto a = client_.ask("stats");
          if (!a) return false;
          last = *a;
          const auto v = test::json_field(last, name, queue);
          return v && *v == expected;
        },
        timeout);
    if (!ok) {
      UNSCOPED_INFO("waited for " << (queue.empty() ? "device" : std::string(queue)) << "."
                                  << name << " == " << expected << "; last stats: " << last);
    }
    return ok;
  }

 private:
  test::control_client client_;
};

const devices::queue_stats& stats_of(const std::vector<devices::queue_stats>& all,
                                     std::string_view name) {
  const auto it = std::find_if(all.begin(), all.end(), [&](const auto& s) { return s.name == name; });
  REQUIRE(it != all.end());
  return *it;
}

double ms_between(steady::time_point a, steady::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

// A raw msgpack frame, packed by the test (trusted side).
template <class... T>
std::string pack(const T&... v) {
  msgpack::sbuffer b;
  msgpack::pack(b, std::make_tuple(v...));
  return std::string(b.data(), b.size());
}

std::vector<char> as_bin(std::string_view s) { return {s.begin(), s.end()}; }

// A valid single-frame envelope, as a producer would put in a "pub".
std::string valid_envelope(std::string topic, std::string payload, bool with_id = true) {
  static thread_local id_generator gen;
  message m(std::move(topic), std::move(payload));
  stamp s;
  if (with_id) s.id = gen.next(now_ms());
  s.timestamp_us = now_ms() * 1000;
  std::string out;
  detail::queue_wire::encode_envelope(m, s, out);
  return out;
}

zmq::socket_t raw_socket(context& ctx, zmq::socket_type type, const std::string& endpoint) {
  zmq::socket_t s(ctx.native(), type);
  s.set(zmq::sockopt::linger, 0);
  s.set(zmq::sockopt::rcvtimeo, 10'000);
  s.set(zmq::sockopt::sndtimeo, 10'000);
  s.connect(endpoint);
  return s;
}

void send_frames(zmq::socket_t& s, const std::vector<std::string>& frames) {
  for (std::size_t i = 0; i < frames.size(); ++i) {
    const auto flags = i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none;
    REQUIRE(s.send(zmq::buffer(frames[i]), flags));
  }
}

}  // namespace

// ------------------------------------------------------------ 1. poison messages

TEST_CASE("queue: a message always nacked is delivered max_attempts times with growing backoff, "
          "then dead-lettered, listed and redriven",
          "[queue]") {
  test::temp_dir dir;
  context ctx;
  const auto cfg = poison_config(dir);
  running_device dev(ctx, cfg);
  control ctl(ctx, dev);
  producer p(ctx, dev.clients(), "jobs");
  consumer c(ctx, dev.clients(), {"jobs"});

  const auto sent = p.send(message("invoice", "poison"));
  REQUIRE(sent.ok);
  std::vector<steady::time_point> at;
  for (std::uint32_t attempt = 0; attempt < 5; ++attempt) {
    auto d = c.receive(deadline);
    REQUIRE(d);
    at.push_back(steady::now());
    CHECK(d->attempt == attempt);
    CHECK(d->msg.attempt() == attempt);
    CHECK(d->msg.id() == sent.id);
    CHECK(d->msg.payload() == "poison");
    c.nack(*d, "cannot parse invoice");
  }
  // Backoff after the n-th failure: initial * 2^(n-1), +-20% jitter. Lower bounds only.
  for (std::size_t n = 1; n < at.size(); ++n) {
    const double at_least = 0.8 * static_cast<double>(cfg.retry_initial.count()) *
                            static_cast<double>(1u << (n - 1));
    INFO("gap before delivery " << n);
    CHECK(ms_between(at[n - 1], at[n]) >= at_least);
  }

  REQUIRE(ctl.wait_field("dead_letter_depth", "jobs", 1));
  // The two depths come from two spools: during the move the message can
  // show in both for a moment (docs/protocol.md, control "stats").
  CHECK(ctl.wait_field("depth", "jobs", 0));
  CHECK(ctl.field("delayed", "jobs") == 0);
  CHECK(ctl.field("depth", "jobs.dlq") == 1);
  CHECK_FALSE(c.receive(300ms));  // no sixth delivery

  const std::string listed = ctl.ask("list jobs");
  CHECK_THAT(listed, StartsWith("{\"queue\":\"jobs.dlq\",\"depth\":1,"));
  CHECK_THAT(listed, Contains("\"id\":\"" + sent.id.to_hex() + "\""));
  CHECK_THAT(listed, Contains("\"reason\":\"max_attempts\""));
  CHECK_THAT(listed, Contains("\"attempts\":5,"));
  CHECK_THAT(listed, Contains("\"last_error\":\"cannot parse invoice\""));

  CHECK(ctl.ask("redrive jobs") == "{\"queue\":\"jobs\",\"redriven\":1}");
  auto d = c.receive(deadline);
  REQUIRE(d);
  CHECK(d->queue == "jobs");
  CHECK(d->attempt == 0);
  CHECK(d->msg.id() == sent.id);
  CHECK(d->msg.payload() == "poison");
  c.ack(*d);
  CHECK(ctl.wait_field("depth", "jobs", 0));
  CHECK(ctl.wait_field("dead_letter_depth", "jobs", 0));
  CHECK_FALSE(c.receive(300ms));

  dev.stop();
  const auto all = dev.device().stats();
  const auto& jobs = stats_of(all, "jobs");
  CHECK(jobs.delivered == 6);
  CHECK(jobs.nacked == 5);
  CHECK(jobs.dead_lettered == 1);
  CHECK(jobs.acked == 1);
}

TEST_CASE("queue: dead letters are consumed from QUEUE.dlq with reason, attempts, last error "
          "and source queue headers",
          "[queue]") {
  test::temp_dir dir;
  context ctx;
  running_device dev(ctx, poison_config(dir));
  control ctl(ctx, dev);
  producer p(ctx, dev.clients(), "jobs");
  consumer c(ctx, dev.clients(), {"jobs"});
  const auto sent = p.send(message("invoice", "poison").set_key("customer-7"));
  REQUIRE(sent.ok);
  for (std::uint32_t attempt = 0; attempt < 5; ++attempt) {
    auto d = c.receive(deadline);
    REQUIRE(d);
    REQUIRE(d->attempt == attempt);
    c.nack(*d, "cannot parse invoice");
  }
  REQUIRE(ctl.wait_field("dead_letter_depth", "jobs", 1));

  consumer dead(ctx, dev.clients(), {"jobs.dlq"});
  auto d = dead.receive(deadline);
  REQUIRE(d);
  CHECK(d->queue == "jobs.dlq");
  CHECK(d->msg.id() == sent.id);
  CHECK(d->msg.payload() == "poison");
  CHECK(d->msg.topic() == "invoice");
  CHECK(d->msg.key() == std::optional<std::string_view>("customer-7"));
  CHECK(d->msg.header_value("x-dead-letter-reason") == std::optional<std::string_view>("max_attempts"));
  CHECK(d->msg.header_value("x-attempts") == std::optional<std::string_view>("5"));
  CHECK(d->msg.header_value("x-last-error") == std::optional<std::string_view>("cannot parse invoice"));
  CHECK(d->msg.header_value("x-source-queue") == std::optional<std::string_view>("jobs"));
  dead.ack(*d);
  CHECK(ctl.wait_field("dead_letter_depth", "jobs", 0));
  CHECK_FALSE(dead.receive(300ms));
  CHECK_FALSE(c.receive(300ms));  // acked in the dead-letter queue: gone for good
}

TEST_CASE("queue: the attempt count of a message holds across a device restart", "[queue]") {
  const auto t = GENERATE(test::transport_kind::tcp, test::transport_kind::ipc);
  test::temp_dir dir;
  context ctx;
  const auto cfg = poison_config(dir, t);
  std::optional<running_device> dev;
  dev.emplace(ctx, cfg);
  message_id id;
  {
    control ctl(ctx, *dev);
    producer p(ctx, dev->clients(), "jobs");
    const auto sent = p.send(message("invoice", "poison"));
    REQUIRE(sent.ok);
    id = sent.id;
    consumer c(ctx, dev->clients(), {"jobs"});
    for (std::uint32_t attempt = 0; attempt < 2; ++attempt) {
      auto d = c.receive(deadline);
      REQUIRE(d);
      REQUIRE(d->attempt == attempt);
      c.nack(*d, "failure " + std::to_string(attempt));
    }
    REQUIRE(ctl.wait_field("nacked", "jobs", 2));
  }
  dev.reset();
  dev.emplace(ctx, cfg);  // the same data directory
  control ctl(ctx, *dev);
  consumer c(ctx, dev->clients(), {"jobs"});
  for (std::uint32_t attempt = 2; attempt < 5; ++attempt) {
    auto d = c.receive(deadline);
    REQUIRE(d);
    CHECK(d->attempt == attempt);
    CHECK(d->msg.id() == id);
    c.nack(*d, "failure " + std::to_string(attempt));
  }
  REQUIRE(ctl.wait_field("dead_letter_depth", "jobs", 1));
  CHECK(ctl.wait_field("depth", "jobs", 0));  // see the test above
  CHECK_FALSE(c.receive(300ms));
  const std::string listed = ctl.ask("list jobs");
  CHECK_THAT(listed, Contains("\"reason\":\"max_attempts\""));
  CHECK_THAT(listed, Contains("\"attempts\":5,"));
  CHECK_THAT(listed, Contains("\"last_error\":\"failure 4\""));
}

// ------------------------------------------------------------ 2. per-key ordering

TEST_CASE("queue: per key, messages are processed in the order sent, with 4 consumers failing "
          "at random; messages without a key proceed too",
          "[queue]") {
  constexpr int keys = 20, per_key = 50, unkeyed = 100;
  constexpr int total = keys * per_key + unkeyed;
  test::temp_dir dir;
  context ctx;
  auto cfg = base_config(dir);
  cfg.fsync = fsync_policy::never;  // durability is not the point here; the machine is shared
  cfg.retry_initial = 5ms;
  cfg.retry_max = 20ms;
  cfg.max_attempts = 1'000;
  running_device dev(ctx, cfg);
  control ctl(ctx, dev);

  std::mutex mu;
  std::map<std::string, std::vector<int>> done_per_key;  // successful processing, in order
  std::vector<int> done_unkeyed;
  std::atomic<int> successes{0}, failures{0};
  std::atomic<bool> stop{false};

  std::vector<std::unique_ptr<consumer>> consumers;
  for (int i = 0; i < 4; ++i) consumers.push_back(std::make_unique<consumer>(ctx, dev.clients(), std::vector<std::string>{"jobs"}));
  std::vector<std::thread> workers;
  for (int i = 0; i < 4; ++i) {
    workers.emplace_back([&, i] {
      consumer& c = *consumers[static_cast<std::size_t>(i)];
      std::mt19937 rng(static_cast<std::uint32_t>(1234 + i));
      std::bernoulli_distribution fail(0.2);
      while (!stop) {
        auto d = c.receive(100ms);
        if (!d) continue;
        if (fail(rng)) {
          ++failures;
          c.nack(*d, "random failure");
          continue;
        }
        {
          std::lock_guard lk(mu);  // recorded before the ack: the device sees acks in this order
          const int seq = std::stoi(std::string(d->msg.payload()));
          if (d->msg.key()) {
            done_per_key[std::string(*d->msg.key())].push_back(seq);
          } else {
            done_unkeyed.push_back(seq);
          }
        }
        ++successes;
        c.ack(*d);
      }
    });
  }

  producer p(ctx, dev.clients(), "jobs");
  std::atomic<int> confirmed{0};
  int next_unkeyed = 0;
  for (int seq = 0; seq < per_key; ++seq) {
    for (int k = 0; k < keys; ++k) {
      p.send_async(message("work", std::to_string(seq)).set_key("key-" + std::to_string(k)),
                   [&](const confirm& c) { confirmed += c.ok; });
    }
    for (int u = 0; u < unkeyed / per_key; ++u) {
      p.send_async(message("work", std::to_string(next_unkeyed++)),
                   [&](const confirm& c) { confirmed += c.ok; });
    }
  }
  CHECK(p.flush(20s));
  CHECK(confirmed == total);
  const bool all_done = test::wait_until([&] { return successes >= total; }, 20s);
  CHECK(all_done);
  CHECK(ctl.wait_field("depth", "jobs", 0));
  stop = true;
  for (auto& w : workers) w.join();

  INFO("successes " << successes << ", failures " << failures);
  CHECK(failures > 0);  // the failures did happen
  std::vector<int> expected(per_key);
  std::iota(expected.begin(), expected.end(), 0);
  CHECK(done_per_key.size() == static_cast<std::size_t>(keys));
  for (const auto& [key, order] : done_per_key) {
    INFO("key " << key);
    CHECK(order == expected);
  }
  std::sort(done_unkeyed.begin(), done_unkeyed.end());
  std::vector<int> expected_unkeyed(unkeyed);
  std::iota(expected_unkeyed.begin(), expected_unkeyed.end(), 0);
  CHECK(done_unkeyed == expected_unkeyed);
}

TEST_CASE("queue: a key in flight holds back only that key; other keys and unkeyed messages "
          "proceed",
          "[queue]") {
  test::temp_dir dir;
  context ctx;
  running_device dev(ctx, base_config(dir));
  control ctl(ctx, dev);
  producer p(ctx, dev.clients(), "jobs");
  consumer a(ctx, dev.clients(), {"jobs"});
  REQUIRE(p.send(message("work", "k-0").set_key("k")).ok);
  auto held = a.receive(deadline);
  REQUIRE(held);
  CHECK(held->msg.payload() == "k-0");

  consumer b(ctx, dev.clients(), {"jobs"});
  REQUIRE(ctl.wait_field("consumers", {}, 2));
  REQUIRE(p.send(message("work", "k-1").set_key("k")).ok);
  REQUIRE(p.send(message("work", "other-0").set_key("other")).ok);
  REQUIRE(p.send(message("work", "unkeyed-0")).ok);

  // Both free messages arrive, at either consumer; k-1 at neither.
  std::vector<std::string> got;
  test::wait_until(
      [&] {
        for (consumer* c : {&a, &b}) {
          if (auto d = c->receive(20ms)) {
            got.emplace_back(d->msg.payload());
            c->ack(*d);
          }
        }
        return got.size() >= 2;
      },
      deadline);
  std::sort(got.begin(), got.end());
  CHECK(got == std::vector<std::string>{"other-0", "unkeyed-0"});
  CHECK_FALSE(a.receive(300ms));
  CHECK_FALSE(b.receive(300ms));

  a.ack(*held);
  std::optional<delivery> next;
  test::wait_until(
      [&] {
        for (consumer* c : {&a, &b}) {
          if (!next) {
            next = c->receive(20ms);
            if (next) c->ack(*next);
          }
        }
        return next.has_value();
      },
      deadline);
  REQUIRE(next);
  CHECK(next->msg.payload() == "k-1");
  CHECK(next->attempt == 0);
  CHECK(ctl.wait_field("depth", "jobs", 0));
}

TEST_CASE("queue: one key's messages from one producer are delivered in the order sent, also "
          "when sent while the producer's connection comes up",
          "[queue]") {
  const auto t = GENERATE(test::transport_kind::tcp, test::transport_kind::ipc);
  test::temp_dir dir;
  context ctx;
  auto cfg = base_config(dir, t);
  cfg.fsync = fsync_policy::never;  // durability is not the point here; the machine is shared
  running_device dev(ctx, cfg);
  consumer c(ctx, dev.clients(), {"jobs"});
  producer p(ctx, dev.clients(), "jobs");
  int confirmed = 0, n = 0;
  auto send_next = [&] {
    p.send_async(message("work", std::to_string(n++)).set_key("one-key"),
                 [&](const confirm& r) { confirmed += r.ok; });
  };
  // One at a time from before the connection is up until the first confirm,
  // then a burst: the order sent is the order of send_async calls.
  while (confirmed == 0 && n < 20'000) {
    send_next();
    (void)p.poll(1ms);
  }
  for (int i = 0; i < 200; ++i) send_next();
  REQUIRE(p.flush(20s));
  CHECK(confirmed == n);
  std::vector<int> got;
  while (got.size() < static_cast<std::size_t>(n)) {
    auto d = c.receive(deadline);
    if (!d) break;
    got.push_back(std::stoi(std::string(d->msg.payload())));
    c.ack(*d);
  }
  std::vector<int> expected(n);
  std::iota(expected.begin(), expected.end(), 0);
  INFO("producer resent " << p.stats().resent);
  CHECK(got == expected);
}

// ------------------------------------------------------------ 3. delay and TTL

TEST_CASE("queue: a delayed message is not delivered before its delay, and is delivered after it",
          "[queue]") {
  test::temp_dir dir;
  context ctx;
  running_device dev(ctx, base_config(dir));
  producer p(ctx, dev.clients(), "jobs");
  consumer c(ctx, dev.clients(), {"jobs"});

  constexpr auto delay = 1s;
  // The device times delays on the system clock; so does this test.
  const auto before = std::chrono::system_clock::now();
  REQUIRE(p.send(message("report", "later"), publish_options{.delay = delay, .ttl = {}}).ok);
  REQUIRE(p.send(message("report", "now")).ok);

  auto first = c.receive(deadline);
  REQUIRE(first);
  CHECK(first->msg.payload() == "now");  // a delayed message holds nothing else back
  c.ack(*first);

  auto d = c.receive(deadline);
  const auto after = std::chrono::system_clock::now();
  REQUIRE(d);
  CHECK(d->msg.payload() == "later");
  CHECK(d->attempt == 0);
  CHECK(after - before >= delay);
  c.ack(*d);
  CHECK_FALSE(c.receive(300ms));
}

TEST_CASE("queue: a message not delivered within its TTL is dead-lettered as expired", "[queue]") {
  test::temp_dir dir;
  context ctx;
  running_device dev(ctx, base_config(dir));
  control ctl(ctx, dev);
  producer p(ctx, dev.clients(), "jobs");

  constexpr auto ttl = 300ms;
  const auto before = std::chrono::system_clock::now();
  const auto sent = p.send(message("otp", "123456"), publish_options{.delay = {}, .ttl = ttl});
  REQUIRE(sent.ok);
  // A message with a TTL that is consumed in time is delivered as usual.
  const auto fresh = p.send(message("otp", "654321"), publish_options{.delay = {}, .ttl = 60s});
  REQUIRE(fresh.ok);

  REQUIRE(ctl.wait_field("dead_letter_depth", "jobs", 1));
  CHECK(std::chrono::system_clock::now() - before >= ttl);  // not before it expired
  CHECK(ctl.field("expired", "jobs") == 1);
  const std::string listed = ctl.ask("list jobs");
  CHECK_THAT(listed, Contains("\"id\":\"" + sent.id.to_hex() + "\""));
  CHECK_THAT(listed, Contains("\"reason\":\"expired\""));

  consumer c(ctx, dev.clients(), {"jobs"});
  auto d = c.receive(deadline);
  REQUIRE(d);
  CHECK(d->msg.id() == fresh.id);
  c.ack(*d);
  CHECK_FALSE(c.receive(500ms));  // the expired one is not delivered
  CHECK(ctl.wait_field("depth", "jobs", 0));
}

// ------------------------------------------------------------ 4. de-duplication

TEST_CASE("queue: a message sent twice with the same id is confirmed twice and delivered once, "
          "also across a restart within the window",
          "[queue]") {
  const auto t = GENERATE(test::transport_kind::tcp, test::transport_kind::ipc);
  test::temp_dir dir;
  context ctx;
  const auto cfg = base_config(dir, t);
  id_generator ids;
  message acked("order", "placed");
  acked.set_id(ids.next(now_ms()));
  message pending("order", "shipped");
  pending.set_id(ids.next(now_ms()));

  std::optional<running_device> dev;
  dev.emplace(ctx, cfg);
  {
    control ctl(ctx, *dev);
    producer p(ctx, dev->clients(), "jobs");
    const auto r1 = p.send(acked);
    const auto r2 = p.send(acked);
    REQUIRE(r1.ok);
    REQUIRE(r2.ok);
    CHECK(r1.id == acked.id());
    CHECK(r2.id == acked.id());
    consumer c(ctx, dev->clients(), {"jobs"});
    auto d = c.receive(deadline);
    REQUIRE(d);
    CHECK(d->msg.id() == acked.id());
    c.ack(*d);
    CHECK_FALSE(c.receive(500ms));
    CHECK(ctl.field("enqueued", "jobs") == 1);
    CHECK(ctl.field("duplicates", "jobs") == 1);
    REQUIRE(ctl.wait_field("depth", "jobs", 0));
  }
  {
    // One left pending (no consumer) over the restart.
    producer p(ctx, dev->clients(), "jobs");
    REQUIRE(p.send(pending).ok);
  }
  dev.reset();
  dev.emplace(ctx, cfg);
  control ctl(ctx, *dev);
  producer p(ctx, dev->clients(), "jobs");
  const auto r3 = p.send(acked);
  const auto r4 = p.send(pending);
  CHECK(r3.ok);
  CHECK(r4.ok);
  CHECK(ctl.field("duplicates", "jobs") == 2);
  const auto other = p.send(message("order", "other"));  // a new id is not a duplicate
  REQUIRE(other.ok);

  consumer c(ctx, dev->clients(), {"jobs"});
  std::vector<std::string> got;
  while (auto d = c.receive(1s)) {
    got.emplace_back(d->msg.payload());
    c.ack(*d);
  }
  CHECK(got == std::vector<std::string>{"shipped", "other"});
}

TEST_CASE("queue: beyond --dedup-max-ids the oldest ids leave the window: a resend of one is "
          "enqueued again, a resend of a newer one is not",
          "[queue]") {
  test::temp_dir dir;
  context ctx;
  auto cfg = base_config(dir, test::transport_kind::tcp);
  cfg.dedup_max_ids = 10;
  running_device dev(ctx, cfg);
  control ctl(ctx, dev);
  producer p(ctx, dev.clients(), "jobs");
  id_generator ids;
  std::vector<message> sent;
  for (int i = 0; i < 20; ++i) {
    sent.emplace_back("order", "order-" + std::to_string(i));
    sent.back().set_id(ids.next(now_ms()));
    REQUIRE(p.send(sent.back()).ok);
  }
  CHECK(ctl.field("dedup_ids") == 10);
  CHECK(ctl.field("dedup_evicted") == 10);
  REQUIRE(p.send(sent.front()).ok);  // evicted: enqueued again
  REQUIRE(p.send(sent.back()).ok);   // still in the window: a duplicate
  CHECK(ctl.field("enqueued", "jobs") == 21);
  CHECK(ctl.field("duplicates", "jobs") == 1);
  CHECK(ctl.field("dedup_ids") == 10);
  CHECK(ctl.field("dedup_evicted") == 11);

  consumer c(ctx, dev.clients(), {"jobs"});
  std::vector<std::string> got;
  while (auto d = c.receive(1s)) {
    got.emplace_back(d->msg.payload());
    c.ack(*d);
  }
  REQUIRE(got.size() == 21);
  CHECK(std::count(got.begin(), got.end(), "order-0") == 2);
  CHECK(std::count(got.begin(), got.end(), "order-19") == 1);
}

TEST_CASE("queue: a copy that arrives while the first is being written is neither enqueued "
          "nor confirmed; one after the first is durable is confirmed",
          "[queue]") {
  test::temp_dir dir;
  context ctx;
  running_device dev(ctx, base_config(dir));
  control ctl(ctx, dev);
  zmq::socket_t h = raw_socket(ctx, zmq::socket_type::dealer, dev.device().client_endpoints().front());
  const std::string env = valid_envelope("order", "placed");
  // Two copies in one frame: the device handles both in one turn, before
  // the first append can have completed.
  using pub = std::tuple<std::string, int, std::string, int, int, std::vector<char>>;
  send_frames(h, {pack(std::string("batch"), std::vector<pub>{{"pub", 1, "jobs", 0, 0, as_bin(env)},
                                                              {"pub", 2, "jobs", 0, 0, as_bin(env)}})});
  auto confirmed = [&] {
    zmq::message_t reply;
    REQUIRE(h.recv(reply));
    const auto handle = msgpack::unpack(static_cast<const char*>(reply.data()), reply.size());
    const auto [cmd, seqs] = handle.get().as<std::tuple<std::string, std::vector<std::uint64_t>>>();
    REQUIRE(cmd == "ok");
    return seqs;
  };
  CHECK(confirmed() == std::vector<std::uint64_t>{1});
  h.set(zmq::sockopt::rcvtimeo, 300);
  zmq::message_t more;
  CHECK_FALSE(h.recv(more));  // nothing for the copy of its own
  h.set(zmq::sockopt::rcvtimeo, 10'000);
  CHECK(ctl.field("enqueued", "jobs") == 1);
  CHECK(ctl.field("duplicates", "jobs") == 1);
  send_frames(h, {pack(std::string("pub"), 3, std::string("jobs"), 0, 0, as_bin(env))});
  CHECK(confirmed() == std::vector<std::uint64_t>{3});
  CHECK(ctl.field("duplicates", "jobs") == 2);
  CHECK(ctl.field("depth", "jobs") == 1);
}

TEST_CASE("queue: one id sent to two queues is two messages; a resend to either is a duplicate",
          "[queue]") {
  test::temp_dir dir;
  context ctx;
  running_device dev(ctx, base_config(dir));
  control ctl(ctx, dev);
  id_generator ids;
  message m("order", "placed");
  m.set_id(ids.next(now_ms()));
  producer to_a(ctx, dev.clients(), "a");
  producer to_b(ctx, dev.clients(), "b");
  REQUIRE(to_a.send(m).ok);
  REQUIRE(to_b.send(m).ok);
  CHECK(ctl.field("enqueued", "a") == 1);
  CHECK(ctl.field("enqueued", "b") == 1);
  CHECK(ctl.field("duplicates", "b") == 0);
  REQUIRE(to_a.send(m).ok);
  REQUIRE(to_b.send(m).ok);
  CHECK(ctl.field("duplicates", "a") == 1);
  CHECK(ctl.field("duplicates", "b") == 1);
  for (const char* q : {"a", "b"}) {
    consumer c(ctx, dev.clients(), {q});
    auto d = c.receive(deadline);
    REQUIRE(d);
    CHECK(d->msg.id() == m.id());
    c.ack(*d);
    CHECK_FALSE(c.receive(300ms));
  }
}

// ------------------------------------------------------------ 5. visibility timeout

TEST_CASE("queue: a delivery held past the visibility timeout goes to another consumer, and the "
          "first consumer's late ack is refused, counted and acks nothing",
          "[queue]") {
  const auto t = GENERATE(test::transport_kind::tcp, test::transport_kind::ipc);
  test::temp_dir dir;
  context ctx;
  auto cfg = base_config(dir, t);
  cfg.visibility_timeout = 300ms;
  running_device dev(ctx, cfg);
  control ctl(ctx, dev);
  producer p(ctx, dev.clients(), "jobs");
  // Join in order: a first, then b; the device hands out round-robin from a.
  consumer a(ctx, dev.clients(), {"jobs"}, consumer_options{.socket = {}, .prefetch = 1, .heartbeat = 500ms});
  REQUIRE(ctl.wait_field("consumers", {}, 1));
  consumer b(ctx, dev.clients(), {"jobs"}, consumer_options{.socket = {}, .prefetch = 1, .heartbeat = 500ms});
  REQUIRE(ctl.wait_field("consumers", {}, 2));

  const auto sent = p.send(message("video", "transcode"));
  REQUIRE(sent.ok);
  auto first = a.receive(deadline);
  REQUIRE(first);
  const auto taken = steady::now();
  CHECK(first->attempt == 0);

  auto second = b.receive(deadline);  // a holds it, heartbeating, past the timeout
  REQUIRE(second);
  CHECK(steady::now() - taken >= cfg.visibility_timeout);
  CHECK(second->msg.id() == sent.id);
  CHECK(second->attempt == 1);
  CHECK(second->tag != first->tag);

  a.ack(*first);  // too late
  REQUIRE(ctl.wait_field("stale_acks", {}, 1));
  CHECK(ctl.field("depth", "jobs") == 1);
  CHECK(ctl.field("in_flight", "jobs") == 1);
  CHECK(ctl.field("acked", "jobs") == 0);
  CHECK(ctl.field("timeouts", "jobs") == 1);
  CHECK(ctl.field("unknown_acks") == 0);

  // b acks within its own visibility timeout (waiting first would let the
  // second delivery time out too), then neither consumer gets it again.
  b.ack(*second);
  CHECK(ctl.wait_field("depth", "jobs", 0));
  CHECK(ctl.field("acked", "jobs") == 1);
  CHECK_FALSE(a.receive(300ms));
  CHECK_FALSE(b.receive(300ms));
  dev.stop();
  CHECK(dev.device().device_stats().stale_acks == 1);
}

// ------------------------------------------------------------ 6. consumer leaving

TEST_CASE("queue: a consumer that leaves hands its unacked deliveries to another consumer at "
          "once, without counting an attempt",
          "[queue]") {
  const auto t = GENERATE(test::transport_kind::tcp, test::transport_kind::ipc);
  test::temp_dir dir;
  context ctx;
  running_device dev(ctx, base_config(dir, t));
  control ctl(ctx, dev);
  producer p(ctx, dev.clients(), "jobs");
  std::optional<consumer> leaving;
  leaving.emplace(ctx, dev.clients(), std::vector<std::string>{"jobs"});
  REQUIRE(ctl.wait_field("consumers", {}, 1));

  std::vector<std::string> sent;
  for (int i = 0; i < 5; ++i) {
    sent.push_back("job-" + std::to_string(i));
    REQUIRE(p.send(message("work", sent.back())).ok);
  }
  for (int i = 0; i < 5; ++i) {
    auto d = leaving->receive(deadline);
    REQUIRE(d);
    CHECK(d->msg.payload() == sent[static_cast<std::size_t>(i)]);
  }
  REQUIRE(ctl.wait_field("in_flight", "jobs", 5));

  consumer staying(ctx, dev.clients(), {"jobs"});
  REQUIRE(ctl.wait_field("consumers", {}, 2));
  leaving.reset();  // says "bye"

  std::vector<std::string> got;
  for (int i = 0; i < 5; ++i) {
    auto d = staying.receive(deadline);
    REQUIRE(d);
    CHECK(d->attempt == 0);
    got.emplace_back(d->msg.payload());
    staying.ack(*d);
  }
  std::sort(got.begin(), got.end());
  CHECK(got == sent);
  CHECK(ctl.wait_field("depth", "jobs", 0));
  CHECK(ctl.field("consumer_losses", "jobs") == 0);
  CHECK(ctl.field("redeliveries", "jobs") == 0);
  CHECK(ctl.field("timeouts", "jobs") == 0);
  CHECK_FALSE(staying.receive(300ms));
}

// Receives the deliveries of `taker.size()` messages (payloads "first",
// "first + 1", ...) on `cs`, acking each, and notes which consumer took each.
void take_all(const std::vector<consumer*>& cs, std::vector<int>& taker, int first) {
  const int n = static_cast<int>(taker.size());
  int got = 0;
  const auto give_up = steady::now() + deadline;
  while (got < n && steady::now() < give_up) {
    for (std::size_t index = 0; index < cs.size(); ++index) {
      while (auto d = cs[index]->receive(0ms)) {
        const int i = std::stoi(std::string(d->msg.payload())) - first;
        REQUIRE(i >= 0);
        REQUIRE(i < n);
        CHECK(taker[static_cast<std::size_t>(i)] == -1);  // delivered once
        taker[static_cast<std::size_t>(i)] = static_cast<int>(index);
        ++got;
        cs[index]->ack(*d);
      }
    }
    std::this_thread::sleep_for(1ms);
  }
  REQUIRE(got == n);
}

// The most messages sent one after another that one consumer took.
std::size_t longest_run(const std::vector<int>& taker) {
  std::size_t longest = 0, run = 0;
  for (std::size_t i = 0; i < taker.size(); ++i) {
    run = i > 0 && taker[i] == taker[i - 1] ? run + 1 : 1;
    longest = std::max(longest, run);
  }
  return longest;
}

TEST_CASE("queue: with many messages ready, consumers take them in runs of neighbours, at most "
          "64 long, and each takes its share",
          "[queue]") {
  test::temp_dir dir;
  context ctx;
  running_device dev(ctx, base_config(dir, test::transport_kind::tcp));
  control ctl(ctx, dev);
  const consumer_options opts{.socket = {}, .prefetch = 2'000, .heartbeat = 500ms};
  consumer a(ctx, dev.clients(), {"jobs"}, opts);
  consumer b(ctx, dev.clients(), {"jobs"}, opts);
  REQUIRE(ctl.wait_field("consumers", {}, 2));

  // Sent as fast as the producer goes, so the device finds many durable at once.
  constexpr int n = 2'000;
  producer p(ctx, dev.clients(), "jobs", producer_options{.socket = {}, .window = 2'000});
  int confirmed = 0;
  for (int i = 0; i < n; ++i) {
    p.send_async(message("work", std::to_string(i)),
                 [&confirmed](const confirm& c) { confirmed += c.ok; });
  }
  REQUIRE(p.flush(deadline));
  REQUIRE(confirmed == n);

  std::vector<int> taker(n, -1);
  take_all({&a, &b}, taker, 0);
  CHECK(ctl.wait_field("depth", "jobs", 0));

  // One at a time in turn, no message would go to the consumer that took the
  // one sent before it (both always have credit here). In runs, most do.
  int same = 0;
  for (std::size_t i = 1; i < taker.size(); ++i) same += taker[i] == taker[i - 1];
  INFO("neighbours delivered to one consumer: " << same << " of " << n - 1);
  CHECK(same >= (n - 1) / 2);
  CHECK(longest_run(taker) <= 64);
  const auto to_a = std::count(taker.begin(), taker.end(), 0);
  INFO("consumer a took " << to_a << " of " << n);
  CHECK(to_a >= n / 4);
  CHECK(to_a <= n - n / 4);
}

TEST_CASE("queue: a few messages ready at once are shared out, no consumer taking more than its "
          "share in a row",
          "[queue]") {
  test::temp_dir dir;
  context ctx;
  running_device dev(ctx, base_config(dir, test::transport_kind::tcp));
  control ctl(ctx, dev);
  const consumer_options opts{.socket = {}, .prefetch = 100, .heartbeat = 500ms};
  consumer a(ctx, dev.clients(), {"jobs"}, opts);
  consumer b(ctx, dev.clients(), {"jobs"}, opts);
  REQUIRE(ctl.wait_field("consumers", {}, 2));
  producer p(ctx, dev.clients(), "jobs");

  // Bursts of 20, one frame each, taken and acked before the next: at most
  // 20 are ready at once, so a share is at most 10, and a run no longer.
  constexpr int burst = 20;
  for (int round = 0; round < 10; ++round) {
    INFO("burst " << round);
    const int first = round * burst;
    int confirmed = 0;
    for (int i = first; i < first + burst; ++i) {
      p.send_async(message("work", std::to_string(i)),
                   [&confirmed](const confirm& c) { confirmed += c.ok; });
    }
    REQUIRE(p.flush(deadline));
    REQUIRE(confirmed == burst);
    std::vector<int> taker(burst, -1);
    take_all({&a, &b}, taker, first);
    CHECK(longest_run(taker) <= static_cast<std::size_t>(burst / 2));
    const auto to_a = std::count(taker.begin(), taker.end(), 0);
    CHECK(to_a > 0);
    CHECK(to_a < burst);
    REQUIRE(ctl.wait_field("in_flight", "jobs", 0));
  }
}

// A consumer that asks for far more credit than the tests' devices give.
consumer greedy_consumer(context& ctx, running_device& dev) {
  return consumer(ctx, dev.clients(), {"jobs"},
                  consumer_options{.socket = {}, .prefetch = 50, .heartbeat = 500ms});
}

// Receives `n` deliveries of "jobs" on `c`, then checks that the device holds
// back the rest: `n` in flight, and nothing more comes.
std::vector<delivery> hold_until_out_of_credit(consumer& c, control& ctl, std::uint64_t n) {
  std::vector<delivery> held;
  for (std::uint64_t i = 0; i < n; ++i) {
    auto d = c.receive(deadline);
    REQUIRE(d);
    held.push_back(std::move(*d));
  }
  REQUIRE(ctl.wait_field("in_flight", "jobs", n));
  CHECK_FALSE(c.receive(300ms));
  CHECK(ctl.field("in_flight", "jobs") == n);
  return held;
}

TEST_CASE("queue: a consumer asking for more prefetch than --max-prefetch holds that many at most",
          "[queue]") {
  test::temp_dir dir;
  context ctx;
  auto cfg = base_config(dir, test::transport_kind::tcp);
  cfg.max_prefetch = 3;
  running_device dev(ctx, cfg);
  control ctl(ctx, dev);
  producer p(ctx, dev.clients(), "jobs");
  for (int i = 0; i < 10; ++i) REQUIRE(p.send(message("work", "job-" + std::to_string(i))).ok);
  consumer greedy = greedy_consumer(ctx, dev);
  auto held = hold_until_out_of_credit(greedy, ctl, 3);  // the other 7 wait for credit
  greedy.ack(held.front());  // one credit back: one more delivery
  auto d = greedy.receive(deadline);
  REQUIRE(d);
  CHECK(d->msg.payload() == "job-3");
  CHECK(ctl.wait_field("in_flight", "jobs", 3));
}

TEST_CASE("queue: a consumer stops getting deliveries once it holds --max-prefetch-bytes, and "
          "always gets one",
          "[queue]") {
  test::temp_dir dir;
  context ctx;
  auto cfg = base_config(dir, test::transport_kind::tcp);
  cfg.max_prefetch_bytes = 1000;
  running_device dev(ctx, cfg);
  control ctl(ctx, dev);
  producer p(ctx, dev.clients(), "jobs");
  // Records of about 700 bytes: the first two fit under 1,000 bytes in
  // flight (the second starts below it), the third waits.
  for (int i = 0; i < 6; ++i) {
    REQUIRE(p.send(message("work", std::to_string(i) + std::string(600, 'x'))).ok);
  }
  REQUIRE(p.send(message("work", std::string(5000, 'L'))).ok);  // larger than the cap
  consumer greedy = greedy_consumer(ctx, dev);
  auto held = hold_until_out_of_credit(greedy, ctl, 2);
  // Acks free bytes: the rest come, never more than two held at a time,
  // and the large one too (the delivery that takes a consumer past the cap
  // still goes; the next waits).
  std::size_t got = held.size();
  while (!held.empty()) {
    greedy.ack(held.front());
    held.erase(held.begin());
    while (auto d = greedy.receive(300ms)) {
      held.push_back(std::move(*d));
      ++got;
    }
    CHECK(held.size() <= 2);
  }
  CHECK(got == 7);
}

// ------------------------------------------------------------ 7. hostile peers

TEST_CASE("queue: hostile peers on the clients, plain and control sockets are refused and "
          "counted while a producer and a consumer keep working",
          "[queue]") {
  test::temp_dir dir;
  context ctx;
  auto cfg = base_config(dir);
  cfg.plain_in = "@tcp://127.0.0.1:*";
  cfg.max_message_size = 64 * 1024;
  running_device dev(ctx, cfg);
  control ctl(ctx, dev);
  producer p(ctx, dev.clients(), "jobs");
  consumer c(ctx, dev.clients(), {"jobs"});
  const std::string clients_ep = dev.device().client_endpoints().front();
  const std::string plain_ep = dev.device().plain_in_endpoints().front();
  const std::string control_ep = dev.device().control_endpoints().front();

  int round = 0;
  auto still_works = [&] {
    const std::string payload = "healthy-" + std::to_string(round++);
    const auto r = p.send(message("work", payload));
    REQUIRE(r.ok);
    auto d = c.receive(deadline);
    REQUIRE(d);
    CHECK(d->msg.payload() == payload);
    c.ack(*d);
  };
  std::uint64_t rejected = 0, unknown_acks = 0, control_rejected = 0, producers_refused = 0;
  auto expect = [&](const char* field, std::uint64_t& counter, std::uint64_t by = 1) {
    counter += by;
    CHECK(ctl.wait_field(field, {}, counter));
    still_works();
  };
  still_works();

  SECTION("clients socket") {
    zmq::socket_t h = raw_socket(ctx, zmq::socket_type::dealer, clients_ep);
    const std::string huge(static_cast<std::size_t>(cfg.max_message_size) + 1, 'x');
    auto refusal = [&] {
      zmq::message_t reply;
      REQUIRE(h.recv(reply));
      REQUIRE_FALSE(reply.more());
      const auto handle = msgpack::unpack(static_cast<const char*>(reply.data()), reply.size());
      return handle.get().as<std::tuple<std::string, std::uint64_t, std::string>>();
    };
    auto bad = [&](const std::string& frame, const char* field, std::uint64_t& counter,
                   std::uint64_t by = 1) {
      send_frames(h, {frame});
      expect(field, counter, by);
    };
    INFO("garbage bytes");
    bad(std::string("\xc1\xc1 not msgpack at all"), "rejected", rejected);
    INFO("an empty frame");
    bad(std::string(), "rejected", rejected);
    INFO("three frames");
    send_frames(h, {pack(std::string("bye")), "x", "y"});
    expect("rejected", rejected);
    {
      INFO("a frame above max_message_size: libzmq drops the connection");
      zmq::socket_t big = raw_socket(ctx, zmq::socket_type::dealer, clients_ep);
      send_frames(big, {huge});
      still_works();
    }
    INFO("deep nesting");
    bad(std::string(60'000, '\x91'), "rejected", rejected);
    INFO("a string claiming 4 GiB");
    bad(std::string("\x92\xdb\xff\xff\xff\xff", 6), "rejected", rejected);
    INFO("an unknown command");
    bad(pack(std::string("zap"), 1), "rejected", rejected);
    INFO("a known command with the wrong element count");
    bad(pack(std::string("ack")), "rejected", rejected);
    INFO("pub with a string sequence number");
    bad(pack(std::string("pub"), std::string("seq"), std::string("jobs"), 0, 0,
             as_bin(valid_envelope("work", "x"))),
        "rejected", rejected);
    INFO("pub of a garbage envelope is refused with a reason");
    bad(pack(std::string("pub"), 3, std::string("jobs"), 0, 0, as_bin("not an envelope")),
        "rejected", rejected);
    auto no = refusal();
    CHECK(std::get<0>(no) == "no");
    CHECK(std::get<1>(no) == 3);
    CHECK_THAT(std::get<2>(no), Contains("bad envelope"));
    INFO("pub of a message without an id is refused with a reason");
    bad(pack(std::string("pub"), 4, std::string("jobs"), 0, 0,
             as_bin(valid_envelope("work", "x", false))),
        "rejected", rejected);
    no = refusal();
    CHECK(std::get<0>(no) == "no");
    CHECK(std::get<1>(no) == 4);
    CHECK_THAT(std::get<2>(no), Contains("no id"));
    INFO("ack whose tags are not an array");
    bad(pack(std::string("ack"), std::string("tags")), "rejected", rejected);
    INFO("take with a string prefetch");
    bad(pack(std::string("take"), std::vector<std::string>{"jobs"}, std::string("1"), 500),
        "rejected", rejected);
    INFO("take with no queues");
    bad(pack(std::string("take"), std::vector<std::string>{}, 1, 500), "rejected", rejected);
    INFO("take naming only bad queues");
    bad(pack(std::string("take"), std::vector<std::string>{"../etc", ".hidden"}, 1, 500),
        "rejected", rejected);
    INFO("nack with a negative tag");
    bad(pack(std::string("nack"), -1, 0, std::string("r")), "rejected", rejected);
    INFO("acks for unknown tags");
    bad(pack(std::string("ack"), std::vector<std::uint64_t>{12345, 67890}), "unknown_acks",
        unknown_acks, 2);
    INFO("a nack for an unknown tag");
    bad(pack(std::string("nack"), 99, 0, std::string("why")), "unknown_acks", unknown_acks);
    INFO("a reject for an unknown tag");
    bad(pack(std::string("rej"), 98, std::string("why")), "unknown_acks", unknown_acks);

    INFO("a pub to a bad queue name is refused with a reason");
    send_frames(h, {pack(std::string("pub"), 7, std::string("../etc"), 0, 0,
                         as_bin(valid_envelope("work", "x")))});
    const auto answer = refusal();
    CHECK(std::get<0>(answer) == "no");
    CHECK(std::get<1>(answer) == 7);
    CHECK_THAT(std::get<2>(answer), Contains("bad queue name"));
    expect("producers_refused", producers_refused);

    INFO("the regression corpus in tests/data/hostile-queue");
    const std::filesystem::path corpus = std::filesystem::path(POSTBOX_TEST_DATA_DIR) / "hostile-queue";
    std::vector<std::filesystem::path> files;
    for (const auto& e : std::filesystem::directory_iterator(corpus)) {
      if (e.path().extension() == ".bin") files.push_back(e.path());
    }
    std::sort(files.begin(), files.end());
    REQUIRE(files.size() >= 4);
    for (const auto& f : files) {
      INFO(f.filename().string());
      std::ifstream in(f, std::ios::binary);
      const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      bad(bytes, "rejected", rejected);
    }
  }

  SECTION("plain PULL socket") {
    zmq::socket_t h = raw_socket(ctx, zmq::socket_type::push, plain_ep);
    auto bad = [&](const std::vector<std::string>& frames) {
      send_frames(h, frames);
      expect("rejected", rejected);
    };
    INFO("garbage without a topic");
    bad({"garbage without a topic terminator"});
    INFO("an empty frame");
    bad({std::string()});
    INFO("three frames");
    bad({"jobs", "x", "y"});
    INFO("a topic that is not a queue name");
    bad({valid_envelope("../etc", "x")});
    INFO("a topic naming a dead-letter queue");
    bad({valid_envelope("jobs.dlq", "x")});
    INFO("a queue topic with a garbage envelope");
    bad({std::string("jobs\0\xc1\xc1\xc1", 8)});
    INFO("a message without an id");
    bad({valid_envelope("jobs", "x", false)});
    INFO("a frame above max_message_size: libzmq drops the connection");
    zmq::socket_t big = raw_socket(ctx, zmq::socket_type::push, plain_ep);
    send_frames(big, {std::string(static_cast<std::size_t>(cfg.max_message_size) + 1, 'x')});
    still_works();
    INFO("the other peer is still heard");
    bad({std::string("garbage again")});
  }

  SECTION("control socket") {
    auto answer_of = [&](const std::string& request) {
      auto a = test::control_client(ctx, control_ep).ask(request);
      REQUIRE(a);
      return *a;
    };
    for (const char* request : {"bogus", "", "list", "list nosuchqueue", "list jobs 0",
                                "list jobs x", "list jobs -1", "redrive jobs -5", "redrive jobs +5",
                                "redrive", "stats now", "ping ping"}) {
      INFO("request \"" << request << "\"");
      CHECK_THAT(answer_of(request), StartsWith("{\"error\":"));
      expect("control_rejected", control_rejected);
    }
    zmq::socket_t h = raw_socket(ctx, zmq::socket_type::dealer, control_ep);
    INFO("a request above 256 bytes");
    send_frames(h, {std::string(), std::string(300, 'p')});
    expect("control_rejected", control_rejected);
    INFO("four frames");
    send_frames(h, {std::string(), "ping", "ping"});
    expect("control_rejected", control_rejected);
    INFO("a non-empty delimiter");
    send_frames(h, {"x", "ping"});
    expect("control_rejected", control_rejected);
    {
      INFO("a frame above the control limit: libzmq drops the connection");
      zmq::socket_t big = raw_socket(ctx, zmq::socket_type::dealer, control_ep);
      send_frames(big, {std::string(), std::string(4096, 'p')});
      still_works();
    }
    INFO("a DEALER that sends the delimiter itself is answered");
    send_frames(h, {std::string(), "ping"});
    std::vector<std::string> reply;
    zmq::message_t part;
    do {
      REQUIRE(h.recv(part));
      reply.push_back(part.to_string());
    } while (part.more());
    CHECK(reply == std::vector<std::string>{"", "pong"});
  }

  CHECK(ctl.ask("ping") == "pong");
  still_works();
  // The consumer sends acks from its own thread: wait for the last one to land.
  CHECK(ctl.wait_field("acked", "jobs", static_cast<std::uint64_t>(round)));
  dev.stop();
  const auto& ds = dev.device().device_stats();
  CHECK(ds.rejected == rejected);
  CHECK(ds.unknown_acks == unknown_acks);
  CHECK(ds.control_rejected == control_rejected);
  CHECK(ds.producers_refused == producers_refused);
  CHECK(ds.stale_acks == 0);
  const auto all = dev.device().stats();
  const auto& jobs = stats_of(all, "jobs");
  CHECK(jobs.enqueued == static_cast<std::uint64_t>(round));  // nothing hostile got in
  CHECK(jobs.acked == static_cast<std::uint64_t>(round));
}

// ------------------------------------------------------------ 8. plain channels

TEST_CASE("queue: a plain sender's message is spooled into the queue its topic names", "[queue]") {
  test::temp_dir dir;
  context ctx;
  auto cfg = base_config(dir);
  cfg.plain_in = "@tcp://127.0.0.1:*";
  running_device dev(ctx, cfg);
  control ctl(ctx, dev);
  sender s(ctx, dev.device().plain_in_endpoints().front());
  s.send("jobs", "from a plain sender");
  message m("jobs", "with a key and a header");
  m.set_key("k-1").add_header("origin", "test");
  s.send(m);
  // The spool counts a record in depth as it is written, the device in
  // enqueued when it hears back: wait for the later one.
  REQUIRE(ctl.wait_field("enqueued", "jobs", 2));
  CHECK(ctl.field("depth", "jobs") == 2);  // on disk, with no consumer yet

  consumer c(ctx, dev.clients(), {"jobs"});
  auto d = c.receive(deadline);
  REQUIRE(d);
  CHECK(d->queue == "jobs");
  CHECK(d->msg.topic() == "jobs");
  CHECK(d->msg.payload() == "from a plain sender");
  CHECK_FALSE(d->msg.id().is_nil());
  CHECK(d->attempt == 0);
  c.ack(*d);
  d = c.receive(deadline);
  REQUIRE(d);
  CHECK(d->msg.payload() == "with a key and a header");
  CHECK(d->msg.key() == std::optional<std::string_view>("k-1"));
  CHECK(d->msg.header_value("origin") == std::optional<std::string_view>("test"));
  c.ack(*d);
  CHECK(ctl.wait_field("depth", "jobs", 0));
}

TEST_CASE("queue: a plain receiver pulls the plain queue's messages from the PUSH endpoint",
          "[queue]") {
  test::temp_dir dir;
  context ctx;
  auto cfg = base_config(dir);
  cfg.plain_out = "@tcp://127.0.0.1:*";
  cfg.plain_queue = "outbox";
  running_device dev(ctx, cfg);
  control ctl(ctx, dev);
  producer p(ctx, dev.clients(), "outbox");
  std::vector<message_id> ids;
  for (int i = 0; i < 10; ++i) {
    const auto r = p.send(message("mail", "mail-" + std::to_string(i)));
    REQUIRE(r.ok);
    ids.push_back(r.id);
  }
  receiver r(ctx, ">" + dev.device().plain_out_endpoints().front());
  for (int i = 0; i < 10; ++i) {
    auto m = r.receive(deadline);
    REQUIRE(m);
    CHECK(m->payload() == "mail-" + std::to_string(i));
    CHECK(m->topic() == "mail");
    CHECK(m->id() == ids[static_cast<std::size_t>(i)]);
  }
  CHECK_FALSE(r.receive(300ms));
  CHECK(ctl.wait_field("depth", "outbox", 0));
}

TEST_CASE("queue: deliveries reach a consumer in frames of at most 64 KiB, a larger delivery "
          "alone",
          "[queue]") {
  // A consumer that holds a delivery sharing its batch's buffer keeps the
  // whole frame alive (queue_client.hpp), so the bound matters.
  test::temp_dir dir;
  context ctx;
  running_device dev(ctx, base_config(dir));
  producer p(ctx, dev.clients(), "jobs");
  std::vector<std::size_t> sizes;
  for (int i = 0; i < 7; ++i) sizes.push_back(20 * 1024);
  sizes.push_back(100 * 1024);
  for (int i = 0; i < 5; ++i) sizes.push_back(20 * 1024);
  for (std::size_t i = 0; i < sizes.size(); ++i)
    REQUIRE(p.send(message("work", std::string(sizes[i], static_cast<char>('a' + i)))).ok);

  zmq::socket_t h = raw_socket(ctx, zmq::socket_type::dealer, dev.device().client_endpoints().front());
  send_frames(h, {pack(std::string("take"), std::vector<std::string>{"jobs"}, 1000, 10'000)});
  constexpr std::size_t batch_header = 12;  // ["batch", [...]]: fixarray, "batch", array32
  std::vector<std::size_t> got;  // payload sizes, in delivery order
  std::size_t batches = 0;
  while (got.size() < sizes.size()) {
    zmq::message_t frame;
    REQUIRE(h.recv(frame));
    const auto handle = msgpack::unpack(static_cast<const char*>(frame.data()), frame.size());
    const auto& cmd = handle.get().via.array;
    const auto name = cmd.ptr[0].as<std::string>();
    auto take_dlv = [&](const msgpack::object& o) {
      REQUIRE(o.via.array.ptr[0].as<std::string>() == "dlv");
      const auto env = o.via.array.ptr[4].as<std::vector<char>>();
      zmq::message_t f(env.data(), env.size());
      message m;
      REQUIRE_FALSE(decode(&f, 1, m));
      got.push_back(m.payload().size());
    };
    if (name == "hb") continue;
    INFO("frame of " << frame.size() << " bytes: " << name);
    if (name == "dlv") {
      take_dlv(handle.get());
    } else {
      REQUIRE(name == "batch");
      CHECK(frame.size() <= 64 * 1024 + batch_header);
      const auto& list = cmd.ptr[1].via.array;
      CHECK(list.size >= 2);
      for (std::uint32_t i = 0; i < list.size; ++i) {
        take_dlv(list.ptr[i]);
        CHECK(got.back() < 64 * 1024);  // the 100 KiB one travels alone
      }
      ++batches;
    }
  }
  CHECK(got == sizes);
  CHECK(batches >= 2);  // 20 KiB deliveries do travel in batches
}

// ------------------------------------------------------------ 9. refusals

TEST_CASE("queue: a producer to a queue the device will not take gets a refusal with a reason",
          "[queue]") {
  test::temp_dir dir;
  context ctx;
  auto cfg = base_config(dir);
  cfg.max_queues = 2;
  running_device dev(ctx, cfg);

  CHECK_THROWS_AS(producer(ctx, dev.clients(), "bad/name"), config_error);
  CHECK_THROWS_WITH(producer(ctx, dev.clients(), "bad/name"), Contains("bad/name"));

  producer dead(ctx, dev.clients(), "jobs.dlq");
  const auto r = dead.send(message("work", "x"));
  CHECK_FALSE(r.ok);
  CHECK_THAT(r.reason, Contains("dead-letter"));
  CHECK(dead.stats().refused == 1);

  producer a(ctx, dev.clients(), "a");
  producer b(ctx, dev.clients(), "b");
  producer third(ctx, dev.clients(), "c");
  CHECK(a.send(message("work", "x")).ok);
  CHECK(b.send(message("work", "x")).ok);
  const auto r3 = third.send(message("work", "x"));
  CHECK_FALSE(r3.ok);
  CHECK_THAT(r3.reason, Contains("too many queues"));
  dev.stop();
  CHECK(dev.device().device_stats().producers_refused == 2);
}

TEST_CASE("queue: a producer with no device gets \"timed out\" after give_up_after", "[queue]") {
  test::temp_dir dir;
  context ctx;
  producer_options o;
  o.resend_after = 100ms;
  o.give_up_after = 700ms;
  producer p(ctx, "ipc://" + (dir.path() / "nobody-here").string(), "jobs", o);
  const auto start = steady::now();
  const auto r = p.send(message("work", "x"));
  CHECK(steady::now() - start >= o.give_up_after);
  CHECK_FALSE(r.ok);
  CHECK(r.reason == "timed out");
  CHECK(p.stats().timed_out == 1);
  CHECK(p.unconfirmed() == 0);
}
