// Integration: publish/subscribe channels over tcp, ipc and inproc.
#include <catch2/catch.hpp>

#include <postbox/postbox.hpp>

#include "support/support.hpp"

#include <algorithm>
#include <map>
#include <set>

using namespace std::chrono_literals;
using postbox::test::transport_kind;

namespace {

// The reference rule the subscribers must follow, written independently of
// topic.cpp: a prefix takes what starts with it; in a pattern "*" is one
// token and a final ">" one or more.
bool reference_match(const std::string& filter, bool pattern, const std::string& topic) {
  if (!pattern) return topic.rfind(filter, 0) == 0;
  std::vector<std::string> f, t;
  auto split = [](const std::string& s, std::vector<std::string>& out) {
    std::size_t start = 0;
    while (true) {
      auto dot = s.find('.', start);
      out.push_back(s.substr(start, dot - start));
      if (dot == std::string::npos) break;
      start = dot + 1;
    }
  };
  split(filter, f);
  split(topic, t);
  for (std::size_t i = 0; i < f.size(); ++i) {
    if (f[i] == ">") return t.size() > i;
    if (i >= t.size()) return false;
    if (f[i] != "*" && f[i] != t[i]) return false;
  }
  return f.size() == t.size();
}

}  // namespace

TEST_CASE("pub/sub: each subscriber gets exactly the messages its filters match, in order",
          "[integration][pubsub]") {
  const auto transport = GENERATE(transport_kind::tcp, transport_kind::ipc, transport_kind::inproc);
  INFO("transport " << postbox::test::name(transport));
  postbox::test::temp_dir dir;
  postbox::context ctx;
  postbox::publisher pub(ctx, "@" + postbox::test::bind_address(transport, dir));

  struct spec {
    std::string filter;
    bool pattern;
  };
  const std::vector<spec> specs = {{"orders.", false},
                                   {"orders.*.created", true},
                                   {"billing.>", true},
                                   {"orders.eu.created", true},
                                   {"", false}};
  std::vector<postbox::subscriber> subs;
  for (const auto& s : specs) {
    subs.emplace_back(ctx, ">" + pub.endpoints().front());
    if (s.pattern) {
      subs.back().subscribe_pattern(s.filter);
    } else {
      subs.back().subscribe(s.filter);
    }
  }
  REQUIRE(pub.wait_for_subscribers(specs.size(), 10s));

  const std::vector<std::string> topics = {
      "orders.eu.created", "orders.us.created", "orders.eu.cancelled", "orders.eu.created.v2",
      "orders",            "billing.invoice",   "billing.invoice.paid", "billing",
      "ordersx.eu.created", "shipping.eu.created"};
  std::vector<std::pair<std::string, std::string>> published;
  for (int i = 0; i < 400; ++i) {
    const auto& t = topics[static_cast<std::size_t>(i) * 7 % topics.size()];
    published.emplace_back(t, std::to_string(i));
    pub.publish(t, std::to_string(i));
  }

  for (std::size_t s = 0; s < specs.size(); ++s) {
    INFO("filter \"" << specs[s].filter << "\"");
    std::vector<std::pair<std::string, std::string>> expected, got;
    for (const auto& p : published) {
      if (reference_match(specs[s].filter, specs[s].pattern, p.first)) expected.push_back(p);
    }
    REQUIRE_FALSE(expected.empty());
    while (got.size() < expected.size()) {
      auto m = subs[s].receive(5s);
      if (!m) break;
      got.emplace_back(std::string(m->topic()), std::string(m->payload()));
    }
    CHECK(got == expected);
    CHECK_FALSE(subs[s].receive(100ms));
    CHECK(subs[s].stats().gaps == 0);
    CHECK(subs[s].stats().rejected.total() == 0);
  }
}

TEST_CASE("pub/sub: waiting for subscribers, then publishing, loses nothing",
          "[integration][pubsub]") {
  const auto transport = GENERATE(transport_kind::tcp, transport_kind::ipc, transport_kind::inproc);
  INFO("transport " << postbox::test::name(transport));
  postbox::test::temp_dir dir;
  postbox::context ctx;
  postbox::publisher pub(ctx, "@" + postbox::test::bind_address(transport, dir));
  CHECK_FALSE(pub.wait_for_subscribers(1, 50ms));

  postbox::subscriber a(ctx, ">" + pub.endpoints().front());
  postbox::subscriber b(ctx, ">" + pub.endpoints().front());
  a.subscribe("alerts.");
  b.subscribe_pattern("alerts.>");
  REQUIRE(pub.wait_for_subscribers(2, 10s));
  CHECK(pub.subscriber_count() == 2);
  // Published the moment the wait returns: none of it may miss a subscriber.
  for (int i = 0; i < 1000; ++i) pub.publish("alerts.fire", std::to_string(i));
  for (auto* s : {&a, &b}) {
    for (int i = 0; i < 1000; ++i) {
      auto m = s->receive(5s);
      REQUIRE(m);
      CHECK(m->payload() == std::to_string(i));
      CHECK(m->sequence() == static_cast<std::uint64_t>(i + 1));
      CHECK(m->origin() == pub.origin());
    }
  }
}

TEST_CASE("pub/sub: a publisher can wait for a subscriber of one topic",
          "[integration][pubsub]") {
  postbox::context ctx;
  postbox::publisher pub(ctx, "@tcp://127.0.0.1:*");
  // A raw ZeroMQ SUB counts for a topic wait, though not as a postbox subscriber.
  zmq::socket_t raw(ctx.native(), zmq::socket_type::sub);
  raw.set(zmq::sockopt::subscribe, "metrics.cpu");
  raw.connect(pub.endpoints().front());
  postbox::subscriber exact(ctx, ">" + pub.endpoints().front());
  exact.subscribe_pattern("logs.app");
  CHECK(pub.wait_for_subscriber("metrics.cpu.load", 10s));
  CHECK(pub.wait_for_subscriber("logs.app", 10s));
  CHECK_FALSE(pub.wait_for_subscriber("logs.app.debug", 100ms));  // exact pattern only
  CHECK_FALSE(pub.wait_for_subscriber("metrics.mem", 100ms));
  CHECK(pub.subscriber_count() == 1);
}

TEST_CASE("pub/sub: a gap forced by a high-water-mark drop is counted, and nothing else is lost",
          "[integration][pubsub]") {
  const auto transport = GENERATE(transport_kind::tcp, transport_kind::ipc, transport_kind::inproc);
  INFO("transport " << postbox::test::name(transport));
  postbox::test::temp_dir dir;
  postbox::context ctx;
  postbox::socket_options small;
  small.send_hwm = 10;
  small.receive_hwm = 10;
  postbox::publisher pub(ctx, "@" + postbox::test::bind_address(transport, dir), small);
  postbox::subscriber sub(ctx, ">" + pub.endpoints().front(), small);
  sub.subscribe("ticks");
  std::uint64_t reported = 0, callbacks = 0;
  sub.on_gap([&](const postbox::gap_info& g) {
    CHECK(g.topic == "ticks");
    CHECK(g.received > g.expected);
    reported += g.missed();
    ++callbacks;
  });
  REQUIRE(pub.wait_for_subscribers(1, 10s));

  // Far more than every queue and socket buffer holds, while nobody reads.
  constexpr int burst = 20'000;
  const std::string payload(1024, 'p');
  for (int i = 0; i < burst; ++i) pub.publish("ticks", payload);

  std::uint64_t first = 0, last = 0, received = 0;
  postbox::message m;
  while (sub.receive(m, 500ms)) {
    if (first == 0) first = m.sequence();
    last = m.sequence();
    ++received;
  }
  // The queues are empty now, so this one must arrive.
  pub.publish("ticks", "final");
  REQUIRE(sub.receive(m, 5s));
  last = m.sequence();
  ++received;

  CHECK(last == burst + 1);
  CHECK(sub.stats().gaps >= 1);
  CHECK(sub.stats().missed >= 1);
  CHECK(received + sub.stats().missed == last - first + 1);
  CHECK(reported == sub.stats().missed);
  CHECK(callbacks == sub.stats().gaps);
}

TEST_CASE("pub/sub: a pattern subscriber counts what its socket prefix let through but it did not want",
          "[integration][pubsub]") {
  postbox::context ctx;
  postbox::publisher pub(ctx, "@inproc://filtered");
  postbox::subscriber sub(ctx, ">inproc://filtered");
  sub.subscribe_pattern("orders.*.created");
  REQUIRE(pub.wait_for_subscribers(1, 10s));
  pub.publish("orders.eu.cancelled", "no");
  pub.publish("orders.eu.created", "yes");
  auto m = sub.receive(5s);
  REQUIRE(m);
  CHECK(m->payload() == "yes");
  CHECK(sub.stats().filtered == 1);
  CHECK(sub.stats().received == 1);
}

TEST_CASE("pub/sub: unsubscribing stops the messages of that filter", "[integration][pubsub]") {
  postbox::context ctx;
  postbox::publisher pub(ctx, "@inproc://unsub");
  postbox::subscriber sub(ctx, ">inproc://unsub");
  sub.subscribe("a.");
  sub.subscribe("b.");
  REQUIRE(pub.wait_for_subscriber("b.x", 10s));
  sub.unsubscribe("a.");
  REQUIRE(postbox::test::wait_until([&] { return !pub.wait_for_subscriber("a.x", 0ms); }));
  pub.publish("a.x", "1");
  pub.publish("b.x", "2");
  auto m = sub.receive(5s);
  REQUIRE(m);
  CHECK(m->topic() == "b.x");
  CHECK_THROWS_AS(sub.subscribe_pattern("a.>.b"), postbox::config_error);
}

// A raw XPUB that a subscriber to everything has reached: what it sends is not lost.
struct raw_publisher {
  explicit raw_publisher(postbox::context& ctx, const std::string& address)
      : socket(ctx.native(), zmq::socket_type::xpub) {
    socket.bind(address);
  }
  // Waits for `sub`'s subscription to arrive.
  void subscribed() {
    zmq::message_t subscription;
    REQUIRE(socket.recv(subscription));
  }
  // Sends a message of stream (origin, topic) numbered `seq`, with `payload`.
  void send(std::uint64_t origin, std::string_view topic, std::uint64_t seq, std::string_view payload) {
    postbox::encoded frames;
    postbox::message_view v;
    v.topic = topic;
    v.origin = origin;
    v.sequence = seq;
    v.payload = payload;
    postbox::encode(v, frames);
    socket.send(frames.first, zmq::send_flags::none);
  }
  zmq::socket_t socket;
};

TEST_CASE("pub/sub: a copy of a message already delivered is dropped and counted as a duplicate",
          "[integration][pubsub]") {
  postbox::context ctx;
  raw_publisher raw(ctx, "inproc://dups");
  postbox::subscriber sub(ctx, ">inproc://dups");
  sub.subscribe("");
  raw.subscribed();
  // One stream (origin 7) with numbers 1, 2, 5, 6, 6, 3, 7: docs/protocol.md's example.
  for (std::uint64_t seq : {1, 2, 5, 6, 6, 3, 7}) raw.send(7, "t", seq, std::to_string(seq));
  std::vector<std::string> got;
  while (auto m = sub.receive(got.size() < 5 ? 5000ms : 100ms)) got.emplace_back(m->payload());
  CHECK(got == std::vector<std::string>{"1", "2", "5", "6", "7"});
  CHECK(sub.stats().gaps == 1);
  CHECK(sub.stats().missed == 2);
  CHECK(sub.stats().duplicates == 2);
  CHECK(sub.stats().received == 5);
}

TEST_CASE("pub/sub: interleaved streams keep their own numbers", "[integration][pubsub]") {
  postbox::context ctx;
  raw_publisher raw(ctx, "inproc://interleaved");
  postbox::subscriber sub(ctx, ">inproc://interleaved");
  sub.subscribe("");
  raw.subscribed();
  // Three streams: (7, "t"), (8, "t") and (7, "u"), taking turns, so that no
  // message follows one of its own stream. Each stream has one gap or one copy.
  struct step {
    std::uint64_t origin;
    const char* topic;
    std::uint64_t seq;
  };
  const step steps[] = {{7, "t", 1}, {8, "t", 1}, {7, "u", 1}, {7, "t", 2}, {8, "t", 1},
                        {7, "u", 4}, {7, "t", 3}, {8, "t", 2}, {7, "u", 5}, {7, "t", 2}};
  for (const auto& st : steps) {
    raw.send(st.origin, st.topic, st.seq, std::to_string(st.origin) + st.topic + std::to_string(st.seq));
  }
  std::vector<std::string> got;
  while (auto m = sub.receive(got.size() < 8 ? 5000ms : 100ms)) got.emplace_back(m->payload());
  CHECK(got == std::vector<std::string>{"7t1", "8t1", "7u1", "7t2", "7u4", "7t3", "8t2", "7u5"});
  CHECK(sub.stats().duplicates == 2);  // (8, "t") 1 again, (7, "t") 2 again
  CHECK(sub.stats().gaps == 1);        // (7, "u") 1 -> 4
  CHECK(sub.stats().missed == 2);
}

TEST_CASE("pub/sub: a subscriber hears a publisher restarted on the same endpoint",
          "[integration][pubsub]") {
  const auto transport = GENERATE(transport_kind::tcp, transport_kind::ipc);
  INFO("transport " << postbox::test::name(transport));
  postbox::test::temp_dir dir;
  postbox::context ctx;
  postbox::socket_options fast;
  fast.reconnect_interval = 10ms;
  fast.reconnect_interval_max = 100ms;
  auto pub = std::make_unique<postbox::publisher>(
      ctx, "@" + postbox::test::bind_address(transport, dir), fast);
  const auto where = pub->endpoints().front();
  postbox::subscriber sub(ctx, ">" + where, fast);
  sub.subscribe("news.");
  sub.subscribe_pattern("news.>");  // the same socket prefix twice
  REQUIRE(pub->wait_for_subscribers(1, 10s));
  pub->publish("news.a", "before");
  REQUIRE(sub.receive(5s));

  pub.reset();
  // The old listener goes away asynchronously; bind again once it has.
  REQUIRE(postbox::test::wait_until([&] {
    try {
      pub = std::make_unique<postbox::publisher>(ctx, "@" + where, fast);
      return true;
    } catch (const postbox::transport_error&) {
      return false;
    }
  }));
  REQUIRE(postbox::test::wait_until([&] {
    CHECK_FALSE(sub.receive(1ms));
    return pub->wait_for_subscriber("news.b", 0ms) && pub->subscriber_count() == 1;
  }));
  pub->publish("news.b", "after");
  auto m = sub.receive(5s);
  REQUIRE(m);
  CHECK(m->payload() == "after");
  CHECK(m->origin() == pub->origin());
}

TEST_CASE("pub/sub: after a reconnection, a publisher never counts the subscriber while one of its "
          "filters is missing",
          "[integration][pubsub]") {
  // A raw XPUB that passes every subscription message stands in for the
  // publisher and replays the publisher's rule (docs/protocol.md, 10): the
  // subscriber counts while one of its markers is subscribed. After the
  // reconnection, whenever it counts, both its filters (set before) must be
  // subscribed, or a publisher that saw it could publish into the gap.
  postbox::context ctx;
  postbox::socket_options fast;
  fast.reconnect_interval = 10ms;
  fast.reconnect_interval_max = 100ms;
  auto make_xpub = [&ctx](const std::string& where) {
    auto x = std::make_unique<zmq::socket_t>(ctx.native(), zmq::socket_type::xpub);
    x->set(zmq::sockopt::xpub_verboser, 1);
    x->set(zmq::sockopt::linger, 0);
    x->bind(where);
    return x;
  };
  auto xpub = make_xpub("tcp://127.0.0.1:*");
  const std::string where = xpub->get(zmq::sockopt::last_endpoint);
  postbox::subscriber sub(ctx, ">" + where, fast);
  sub.subscribe("news.");
  sub.subscribe("sport.");

  std::map<std::string, int> live;  // subscription -> subscribes minus unsubscribes
  auto counted = [&live] {
    int markers = 0;
    for (const auto& [s, n] : live)
      if (s.rfind(std::string(postbox::detail::subscriber_marker), 0) == 0) markers += n;
    return markers > 0;
  };
  bool violated = false, reconnected = false;
  // Reads what arrived, applying each message in order; true once counted.
  auto read = [&] {
    zmq::message_t m;
    while (xpub->recv(m, zmq::recv_flags::dontwait)) {
      const auto* d = static_cast<const char*>(m.data());
      if (m.size() == 0 || (d[0] != 0 && d[0] != 1)) continue;
      live[std::string(d + 1, m.size() - 1)] += d[0] == 1 ? 1 : -1;
      if (reconnected && counted() && (live["news."] <= 0 || live["sport."] <= 0)) violated = true;
    }
    return counted();
  };
  REQUIRE(postbox::test::wait_until([&] {
    CHECK_FALSE(sub.receive(1ms));
    const bool all_in = read();
    // Both filters and one marker, the latest.
    return all_in && std::count_if(live.begin(), live.end(), [](const auto& e) { return e.second > 0; }) == 3;
  }));
  std::set<std::string> first_markers;
  for (const auto& [s, n] : live)
    if (s.rfind(std::string(postbox::detail::subscriber_marker), 0) == 0) first_markers.insert(s);

  // The publisher's side goes away and comes back on the same address.
  xpub.reset();
  live.clear();
  reconnected = true;
  REQUIRE(postbox::test::wait_until([&] {
    try {
      xpub = make_xpub(where);
      return true;
    } catch (const zmq::error_t&) {
      return false;
    }
  }));
  // Until the subscriber has resent everything: libzmq's own resend, then
  // the subscriber's, which ends with a marker not used before.
  REQUIRE(postbox::test::wait_until([&] {
    CHECK_FALSE(sub.receive(1ms));
    (void)read();
    for (const auto& [s, n] : live) {
      if (n > 0 && s.rfind(std::string(postbox::detail::subscriber_marker), 0) == 0 &&
          first_markers.count(s) == 0)
        return true;
    }
    return false;
  }, 10s));
  CHECK(counted());
  CHECK(live["news."] > 0);
  CHECK(live["sport."] > 0);
  CHECK_FALSE(violated);
}
