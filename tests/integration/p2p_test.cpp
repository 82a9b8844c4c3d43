// Integration: point-to-point channels over tcp, ipc and inproc.
#include <catch2/catch.hpp>

#include <postbox/postbox.hpp>

#include "support/support.hpp"

#include <map>
#include <set>
#include <thread>

using namespace std::chrono_literals;
using postbox::test::transport_kind;

TEST_CASE("point-to-point: each message reaches exactly one of N receivers, and all share the load",
          "[integration][p2p]") {
  const auto transport = GENERATE(transport_kind::tcp, transport_kind::ipc, transport_kind::inproc);
  INFO("transport " << postbox::test::name(transport));
  postbox::test::temp_dir dir;
  postbox::context ctx;
  constexpr int receivers = 3;
  constexpr int messages = 3000;

  // The receivers bind and the sender connects to all of them: a sender only
  // round-robins over connected peers, and it is the one that connects, so it
  // knows when all are there (each first send of a probe succeeds).
  std::vector<postbox::receiver> rx;
  std::string list;
  for (int i = 0; i < receivers; ++i) {
    rx.emplace_back(ctx, "@" + postbox::test::bind_address(transport, dir));
    list += (i ? ",>" : ">") + rx.back().endpoints().front();
  }
  postbox::sender tx(ctx, list);
  // Each receiver must have a connection before the load is sent: send a
  // probe with a timeout until every receiver has taken one.
  std::vector<int> probes(receivers, 0);
  REQUIRE(postbox::test::wait_until([&] {
    if (tx.try_send("probe", "") != postbox::send_result::ok) return false;
    for (int i = 0; i < receivers; ++i) {
      while (auto m = rx[i].receive(0ms)) ++probes[i];
    }
    return std::all_of(probes.begin(), probes.end(), [](int n) { return n > 0; });
  }));

  for (int i = 0; i < messages; ++i) tx.send("jobs", "job-" + std::to_string(i));

  std::multiset<std::string> seen;
  std::vector<int> share(receivers, 0);
  REQUIRE(postbox::test::wait_until([&] {
    for (int i = 0; i < receivers; ++i) {
      while (auto m = rx[i].receive(0ms)) {
        if (m->topic() != "jobs") continue;
        seen.insert(std::string(m->payload()));
        ++share[i];
      }
    }
    return seen.size() >= messages;
  }));
  CHECK(seen.size() == messages);
  for (int i = 0; i < messages; ++i) CHECK(seen.count("job-" + std::to_string(i)) == 1);
  for (int i = 0; i < receivers; ++i) {
    INFO("receiver " << i);
    CHECK(share[i] > messages / (receivers * 4));
  }
  CHECK(tx.stats().sent >= messages);
}

TEST_CASE("point-to-point: every header field and the payload arrive as sent",
          "[integration][p2p]") {
  const auto transport = GENERATE(transport_kind::tcp, transport_kind::ipc, transport_kind::inproc);
  INFO("transport " << postbox::test::name(transport));
  postbox::test::temp_dir dir;
  postbox::context ctx;
  postbox::receiver rx(ctx, "@" + postbox::test::bind_address(transport, dir));
  postbox::sender tx(ctx, ">" + rx.endpoints().front());

  const auto size = GENERATE(std::size_t{0}, std::size_t{100}, postbox::large_payload_threshold - 1,
                             postbox::large_payload_threshold, std::size_t{1} << 20);
  std::string payload(size, '\0');
  for (std::size_t i = 0; i < size; ++i) payload[i] = static_cast<char>(i * 7);
  postbox::message out("orders.eu.created", payload);
  out.set_key("customer-42").set_attempt(3).add_header("trace", "abc").add_header("empty", "");
  tx.send(out);
  tx.send("plain", "bytes");

  auto in = rx.receive(5s);
  REQUIRE(in);
  CHECK(in->topic() == "orders.eu.created");
  CHECK(in->payload() == payload);
  CHECK(in->key() == std::optional<std::string_view>("customer-42"));
  CHECK(in->attempt() == 3);
  CHECK(in->headers() == std::vector<postbox::header>{{"trace", "abc"}, {"empty", ""}});
  CHECK_FALSE(in->id().is_nil());
  CHECK(in->timestamp_us() > 0);
  auto plain = rx.receive(5s);
  REQUIRE(plain);
  CHECK(plain->payload() == "bytes");
  CHECK_FALSE(plain->key());
  CHECK(plain->id() > in->id());  // time-ordered ids from one sender
}

TEST_CASE("point-to-point: a non-blocking send at the high-water mark says would_block, never drops",
          "[integration][p2p]") {
  const auto transport = GENERATE(transport_kind::tcp, transport_kind::ipc, transport_kind::inproc);
  INFO("transport " << postbox::test::name(transport));
  postbox::test::temp_dir dir;
  postbox::context ctx;
  postbox::socket_options small;
  small.send_hwm = 5;
  small.receive_hwm = 5;
  postbox::receiver rx(ctx, "@" + postbox::test::bind_address(transport, dir), small);
  postbox::sender tx(ctx, ">" + rx.endpoints().front(), small);

  // Fill every buffer between the two (queues and, for tcp/ipc, the kernel's)
  // while nothing is received, until a send that waits 50 ms still cannot go.
  const std::string payload(64 * 1024, 'x');
  int accepted = 0;
  REQUIRE(postbox::test::wait_until(
      [&] {
        const auto r = tx.send_for("fill", payload, 50ms);
        if (r == postbox::send_result::ok) {
          ++accepted;
          return false;
        }
        REQUIRE(r == postbox::send_result::timed_out);
        return true;
      },
      60s));
  CHECK(accepted > 0);
  CHECK(tx.try_send("fill", payload) == postbox::send_result::would_block);
  CHECK(tx.stats().would_block >= 2);

  // Everything the sender accepted arrives; what it refused was never sent.
  int received = 0;
  while (auto m = rx.receive(received < accepted ? 5000ms : 200ms)) ++received;
  CHECK(received == accepted);
  CHECK(tx.stats().sent == static_cast<std::uint64_t>(accepted));
}

TEST_CASE("point-to-point: a sender with no receiver connected reports would_block",
          "[integration][p2p]") {
  postbox::context ctx;
  postbox::sender tx(ctx, "@tcp://127.0.0.1:*");
  CHECK(tx.try_send("nobody", "x") == postbox::send_result::would_block);
  CHECK(tx.send_for("nobody", "x", 20ms) == postbox::send_result::timed_out);
  CHECK(tx.stats().sent == 0);
}

namespace {
struct job {
  std::string video;
  int height = 0;
  std::vector<std::string> formats;
  MSGPACK_DEFINE(video, height, formats)
};
using int_map = std::map<int, int>;
}  // namespace

TEST_CASE("point-to-point: typed payloads round-trip through msgpack", "[integration][p2p]") {
  postbox::context ctx;
  postbox::receiver rx(ctx, "@inproc://typed");
  postbox::sender tx(ctx, ">inproc://typed");
  tx.send_packed("video.transcode", job{"cat.mp4", 1080, {"h264", "vp9"}});
  auto m = rx.receive(5s);
  REQUIRE(m);
  const auto j = m->as<job>();
  CHECK(j.video == "cat.mp4");
  CHECK(j.height == 1080);
  CHECK(j.formats == std::vector<std::string>{"h264", "vp9"});
  CHECK_THROWS_AS(m->as<int_map>(), postbox::protocol_error);
}

TEST_CASE("point-to-point: bad endpoints and failed binds throw with the endpoint named",
          "[integration][p2p]") {
  postbox::context ctx;
  CHECK_THROWS_AS(postbox::sender(ctx, "tcp://127.0.0.1"), postbox::config_error);
  CHECK_THROWS_WITH(postbox::sender(ctx, "udp://127.0.0.1:5"), Catch::Contains("udp://127.0.0.1:5"));
  postbox::receiver first(ctx, "@tcp://127.0.0.1:*");
  const auto taken = first.endpoints().front();
  CHECK_THROWS_AS(postbox::receiver(ctx, "@" + taken), postbox::transport_error);
  CHECK_THROWS_WITH(postbox::receiver(ctx, "@" + taken),
                    Catch::Contains(taken) && Catch::Contains("Address already in use"));
  CHECK_THROWS_WITH(postbox::receiver(ctx, "@tcp://no-such-host.invalid:5555"),
                    Catch::Contains("bind tcp://no-such-host.invalid:5555: not an address or "
                                    "interface of this machine"));
}
