// Multi-process: the real postbox-forwarder binary between publishers and
// subscribers (pubsub) or a producer and workers (pipeline).
#include <catch2/catch.hpp>

#include <postbox/postbox.hpp>

#include "support/support.hpp"

#include <csignal>
#include <map>
#include <fstream>
#include <set>

using namespace std::chrono_literals;
using postbox::test::child;

namespace {

// A running forwarder and the endpoints it reported in its "ready" line.
struct running_forwarder {
  std::unique_ptr<child> process;
  std::map<std::string, std::string> endpoints;  // frontend, backend, control, tap

  explicit running_forwarder(std::vector<std::string> args) {
    args.insert(args.begin(), postbox::test::forwarder_path());
    process = std::make_unique<child>(args, true);
    std::string line;
    while (process->read_line(line)) {
      const auto at = line.find(" ready ");
      if (at == std::string::npos) continue;
      std::string rest = line.substr(at + 7);
      std::size_t start = 0;
      while (start < rest.size()) {
        const auto end = rest.find(' ', start);
        const auto word = rest.substr(start, end == std::string::npos ? end : end - start);
        const auto eq = word.find('=');
        if (eq != std::string::npos) endpoints[word.substr(0, eq)] = word.substr(eq + 1);
        if (end == std::string::npos) break;
        start = end + 1;
      }
      return;
    }
    FAIL("the forwarder did not report ready");
  }
  std::string at(const std::string& which) const { return endpoints.at(which); }
};

// Asks the control endpoint; empty string when no answer in time.
std::string control(postbox::context& ctx, const std::string& endpoint, const std::string& cmd) {
  zmq::socket_t req(ctx.native(), zmq::socket_type::req);
  req.set(zmq::sockopt::rcvtimeo, 5000);
  req.set(zmq::sockopt::linger, 0);
  req.connect(endpoint);
  req.send(zmq::buffer(cmd), zmq::send_flags::none);
  zmq::message_t reply;
  if (!req.recv(reply)) return {};
  return reply.to_string();
}

std::uint64_t json_number(const std::string& json, const std::string& name) {
  const auto key = "\"" + name + "\":";
  const auto at = json.find(key);
  if (at == std::string::npos) return ~std::uint64_t{0};
  return std::stoull(json.substr(at + key.size()));
}

std::vector<std::string> receive_all(postbox::subscriber& sub, std::size_t n) {
  std::vector<std::string> got;
  while (got.size() < n) {
    auto m = sub.receive(10s);
    if (!m) break;
    got.push_back(std::string(m->topic()) + "=" + std::string(m->payload()));
  }
  return got;
}

}  // namespace

TEST_CASE("forwarder: two publishers to three subscribers, each gets exactly what its filter matches",
          "[multiprocess][forwarder]") {
  running_forwarder fwd({"--frontend", "@tcp://127.0.0.1:*", "--backend", "@tcp://127.0.0.1:*",
                         "--control", "@tcp://127.0.0.1:*"});
  postbox::context ctx;
  postbox::publisher p1(ctx, ">" + fwd.at("frontend"));
  postbox::publisher p2(ctx, ">" + fwd.at("frontend"));
  postbox::subscriber all_orders(ctx, ">" + fwd.at("backend"));
  postbox::subscriber created(ctx, ">" + fwd.at("backend"));
  postbox::subscriber billing(ctx, ">" + fwd.at("backend"));
  all_orders.subscribe("orders.");
  created.subscribe_pattern("orders.*.created");
  billing.subscribe_pattern("billing.>");
  // Subscriber markers travel through the forwarder: each publisher sees all three.
  REQUIRE(p1.wait_for_subscribers(3, 20s));
  REQUIRE(p2.wait_for_subscribers(3, 20s));

  const std::vector<std::string> topics = {"orders.eu.created", "orders.us.cancelled",
                                           "billing.invoice", "orders.us.created", "other"};
  std::multiset<std::string> sent_orders, sent_created, sent_billing;
  for (int i = 0; i < 500; ++i) {
    auto& pub = i % 2 ? p1 : p2;
    const auto& topic = topics[static_cast<std::size_t>(i) % topics.size()];
    const auto payload = (i % 2 ? "p1-" : "p2-") + std::to_string(i);
    pub.publish(topic, payload);
    const auto item = topic + "=" + payload;
    if (topic.rfind("orders.", 0) == 0) sent_orders.insert(item);
    if (topic == "orders.eu.created" || topic == "orders.us.created") sent_created.insert(item);
    if (topic == "billing.invoice") sent_billing.insert(item);
  }
  auto as_set = [](const std::vector<std::string>& v) {
    return std::multiset<std::string>(v.begin(), v.end());
  };
  CHECK(as_set(receive_all(all_orders, sent_orders.size())) == sent_orders);
  CHECK(as_set(receive_all(created, sent_created.size())) == sent_created);
  CHECK(as_set(receive_all(billing, sent_billing.size())) == sent_billing);
  for (auto* s : {&all_orders, &created, &billing}) {
    CHECK_FALSE(s->receive(100ms));
    CHECK(s->stats().gaps == 0);
  }
  const auto stats = control(ctx, fwd.at("control"), "stats");
  CHECK(json_number(stats, "messages_in") >= 300);
  CHECK(control(ctx, fwd.at("control"), "ping") == "pong");

  fwd.process->kill(SIGTERM);
  CHECK(fwd.process->wait() == 0);
  std::string line, last;
  while (fwd.process->read_line(line, 2s)) last = line;
  CHECK(last.find("stopped: in") != std::string::npos);
}

TEST_CASE("forwarder pipeline: every message is processed exactly once and every worker gets a share",
          "[multiprocess][forwarder]") {
  running_forwarder fwd({"--mode", "pipeline", "--frontend", "@tcp://127.0.0.1:*", "--backend",
                         "@tcp://127.0.0.1:*", "--control", "none"});
  postbox::context ctx;
  postbox::sender producer(ctx, ">" + fwd.at("frontend"));
  std::vector<postbox::receiver> workers;
  for (int i = 0; i < 3; ++i) workers.emplace_back(ctx, ">" + fwd.at("backend"));
  // Probes until each worker has one: every worker's connection is then up.
  std::vector<int> probes(3, 0);
  REQUIRE(postbox::test::wait_until([&] {
    (void)producer.try_send("probe", "");
    for (std::size_t i = 0; i < 3; ++i) {
      while (workers[i].receive(0ms)) ++probes[i];
    }
    return probes[0] > 0 && probes[1] > 0 && probes[2] > 0;
  }, 20s));
  // Probes still in flight come first; they are not counted as work.
  constexpr int jobs = 3000;
  for (int i = 0; i < jobs; ++i) producer.send("job", std::to_string(i));
  std::multiset<std::string> done;
  std::vector<int> share(3, 0);
  REQUIRE(postbox::test::wait_until([&] {
    for (std::size_t w = 0; w < 3; ++w) {
      while (auto m = workers[w].receive(0ms)) {
        if (m->topic() != "job") continue;
        done.insert(std::string(m->payload()));
        ++share[w];
      }
    }
    return done.size() >= jobs;
  }, 30s));
  CHECK(done.size() == jobs);
  for (int i = 0; i < jobs; ++i) CHECK(done.count(std::to_string(i)) == 1);
  for (int w = 0; w < 3; ++w) CHECK(share[static_cast<std::size_t>(w)] > 0);
}

TEST_CASE("forwarder: the last-value cache gives a late subscriber the latest value of each matching topic, and only those",
          "[multiprocess][forwarder]") {
  running_forwarder fwd({"--frontend", "@tcp://127.0.0.1:*", "--backend", "@tcp://127.0.0.1:*",
                         "--control", "@tcp://127.0.0.1:*", "--last-value-cache"});
  postbox::context ctx;
  postbox::publisher pub(ctx, ">" + fwd.at("frontend"));
  // With the cache on, the forwarder takes every topic itself.
  REQUIRE(pub.wait_for_subscriber("prices.anything", 20s));
  int published = 0;
  for (int round = 1; round <= 3; ++round) {
    for (const char* t : {"prices.acme", "prices.globex", "weather.oslo"}) {
      pub.publish(t, std::string(t) + "#" + std::to_string(round));
      ++published;
    }
  }
  REQUIRE(postbox::test::wait_until([&] {
    return json_number(control(ctx, fwd.at("control"), "stats"), "messages_in") ==
           static_cast<std::uint64_t>(published);
  }, 20s));

  postbox::subscriber late(ctx, ">" + fwd.at("backend"));
  late.subscribe("prices.");
  std::set<std::string> got;
  for (auto m = late.receive(10s); m; m = late.receive(got.size() < 2 ? 10000ms : 300ms)) {
    got.insert(std::string(m->payload()));
  }
  CHECK(got == std::set<std::string>{"prices.acme#3", "prices.globex#3"});

  // A second newcomer gets the values too; the first drops the replayed
  // copies as duplicates instead of seeing them twice.
  postbox::subscriber later(ctx, ">" + fwd.at("backend"));
  later.subscribe("prices.acme");
  auto m = later.receive(10s);
  REQUIRE(m);
  CHECK(m->payload() == "prices.acme#3");
  CHECK_FALSE(late.receive(300ms));
  pub.publish("prices.acme", "prices.acme#4");
  auto fresh = late.receive(10s);
  REQUIRE(fresh);
  CHECK(fresh->payload() == "prices.acme#4");
}

TEST_CASE("forwarder: killed with -9 and restarted on the same endpoints, peers reconnect and the gap is reported",
          "[multiprocess][forwarder][crash]") {
  auto fwd = std::make_unique<running_forwarder>(std::vector<std::string>{
      "--frontend", "@tcp://127.0.0.1:*", "--backend", "@tcp://127.0.0.1:*", "--control", "none"});
  const auto frontend = fwd->at("frontend"), backend = fwd->at("backend");
  postbox::context ctx;
  postbox::socket_options fast;
  fast.reconnect_interval = 20ms;
  fast.reconnect_interval_max = 200ms;
  postbox::publisher pub(ctx, ">" + frontend, fast);
  postbox::subscriber sub(ctx, ">" + backend, fast);
  sub.subscribe("ticks");
  REQUIRE(pub.wait_for_subscribers(1, 20s));
  for (int i = 0; i < 100; ++i) pub.publish("ticks", std::to_string(i));
  CHECK(receive_all(sub, 100).size() == 100);

  fwd->process->kill(SIGKILL);
  CHECK(fwd->process->wait() == 128 + SIGKILL);
  // The subscriber's unsubscribe reaches the publisher when the link drops.
  REQUIRE(postbox::test::wait_until([&] { return pub.subscriber_count() == 0; }, 20s));
  for (int i = 100; i < 150; ++i) pub.publish("ticks", std::to_string(i));  // lost: nowhere to go

  // Restart on the same ports; the kernel may hold them for a moment.
  REQUIRE(postbox::test::wait_until([&] {
    try {
      fwd = std::make_unique<running_forwarder>(std::vector<std::string>{
          "--frontend", "@" + frontend, "--backend", "@" + backend, "--control", "none"});
      return true;
    } catch (...) {
      return false;
    }
  }, 20s));
  // The subscriber heals its link from inside receive(): keep it receiving.
  REQUIRE(postbox::test::wait_until([&] {
    CHECK_FALSE(sub.receive(1ms));
    return pub.subscriber_count() == 1;
  }, 20s));
  for (int i = 150; i < 250; ++i) pub.publish("ticks", std::to_string(i));
  const auto second = receive_all(sub, 100);
  REQUIRE(second.size() == 100);
  CHECK(second.front() == "ticks=150");
  CHECK(second.back() == "ticks=249");
  CHECK(sub.stats().gaps == 1);
  CHECK(sub.stats().missed == 50);
}

TEST_CASE("forwarder --strict: garbage is counted and not forwarded while valid traffic flows",
          "[multiprocess][forwarder][hostile]") {
  running_forwarder fwd({"--frontend", "@tcp://127.0.0.1:*", "--backend", "@tcp://127.0.0.1:*",
                         "--control", "@tcp://127.0.0.1:*", "--strict"});
  postbox::context ctx;
  postbox::publisher pub(ctx, ">" + fwd.at("frontend"));
  zmq::socket_t evil(ctx.native(), zmq::socket_type::xpub);
  evil.connect(fwd.at("frontend"));
  postbox::subscriber sub(ctx, ">" + fwd.at("backend"));
  sub.subscribe("");
  REQUIRE(pub.wait_for_subscribers(1, 20s));
  zmq::message_t upstream;
  REQUIRE(evil.recv(upstream));  // the forwarder subscribed the evil publisher too

  for (int i = 0; i < 100; ++i) {
    evil.send(zmq::str_buffer("garbage without a terminator"), zmq::send_flags::none);
    evil.send(zmq::buffer(std::string("t\0\x09", 3)), zmq::send_flags::none);
    pub.publish("valid", std::to_string(i));
  }
  const auto got = receive_all(sub, 100);
  REQUIRE(got.size() == 100);
  for (int i = 0; i < 100; ++i) CHECK(got[static_cast<std::size_t>(i)] == "valid=" + std::to_string(i));
  CHECK_FALSE(sub.receive(200ms));
  CHECK(sub.stats().rejected.total() == 0);  // nothing invalid reached the subscriber
  std::string stats;
  REQUIRE(postbox::test::wait_until([&] {
    stats = control(ctx, fwd.at("control"), "stats");
    return json_number(stats, "bad_topic") == 100 && json_number(stats, "unknown_version") == 100;
  }, 10s));
  CHECK(json_number(stats, "messages_out") == 100);
  CHECK(control(ctx, fwd.at("control"), "nonsense").find("unknown command") != std::string::npos);
  CHECK(control(ctx, fwd.at("control"), "ping") == "pong");
}

TEST_CASE("forwarder: a bad option, endpoint, busy address or unreadable config is one line on stderr and exit 2",
          "[multiprocess][forwarder]") {
  postbox::test::temp_dir dir;
  postbox::context ctx;
  postbox::receiver squatter(ctx, "@tcp://127.0.0.1:*");
  const auto busy = squatter.endpoints().front();
  const auto unreadable = (dir.path() / "missing.conf").string();
  const auto binary = (dir.path() / "binary.conf").string();
  {
    std::ofstream f(binary, std::ios::binary);
    f << "frontend = @tcp://127.0.0.1:*\nstats" << '\0' << "-interval = 5\n";
  }

  struct bad_case {
    std::vector<std::string> args;
    std::string says;
  };
  const std::vector<bad_case> cases = {
      {{"--no-such-option"}, "unrecognised option '--no-such-option'"},
      {{"--frontend", "tcp://127.0.0.1"}, "--frontend: endpoint \"tcp://127.0.0.1\": missing \":port\""},
      {{"--backend", "bogus://x"}, "unsupported transport \"bogus\""},
      {{"--frontend", "@" + busy, "--backend", "@tcp://127.0.0.1:*", "--control", "none"},
       "bind " + busy + ": Address already in use"},
      {{"--config", unreadable}, "cannot read config file \"" + unreadable + "\""},
      {{"--mode", "fanout"}, "--mode \"fanout\": use pubsub or pipeline"},
      {{"--log-level", "loud"}, "log level \"loud\""},
      {{"--lvc-max-topics", "-3"}, "--lvc-max-topics takes digits only (no sign), got \"-3\""},
      {{"--strict", "1"}, "unexpected argument \"1\""},
      {{"--backend", "inproc://b"}, "--backend: inproc://b reaches only this process"},
      {{"--config", binary}, "line 2 holds a control character"},
      {{"--config", dir.path().string()}, "it is a directory"},
  };
  for (const auto& c : cases) {
    std::vector<std::string> args = c.args;
    args.insert(args.begin(), postbox::test::forwarder_path());
    child p(args, true);
    std::string line, all;
    while (p.read_line(line, 5s)) all += line + "\n";
    INFO("args: " << args.back() << "\noutput: " << all);
    CHECK(p.wait() == 2);
    CHECK(std::count(all.begin(), all.end(), '\n') == 1);
    CHECK(all.find(c.says) != std::string::npos);
    CHECK(all.rfind("postbox-forwarder: ", 0) == 0);
  }
}

TEST_CASE("forwarder: a config file takes the same keys as the command line",
          "[multiprocess][forwarder]") {
  postbox::test::temp_dir dir;
  const auto path = dir.path() / "forwarder.conf";
  {
    std::ofstream f(path);
    f << "# a comment\nmode = pipeline\nfrontend = @tcp://127.0.0.1:*\n"
         "backend = @tcp://127.0.0.1:*\ncontrol = none\nlog-level = debug\n";
  }
  running_forwarder fwd({"--config", path.string()});
  CHECK(fwd.at("mode") == "pipeline");
  CHECK(fwd.at("control") == "-");
  fwd.process->kill(SIGINT);
  CHECK(fwd.process->wait() == 0);
}

TEST_CASE("forwarder: the tap mirrors every message that passes, and the rate log reports",
          "[multiprocess][forwarder]") {
  running_forwarder fwd({"--frontend", "@tcp://127.0.0.1:*", "--backend", "@tcp://127.0.0.1:*",
                         "--control", "none", "--tap", "@tcp://127.0.0.1:*", "--stats-interval",
                         "1"});
  postbox::context ctx;
  postbox::publisher pub(ctx, ">" + fwd.at("frontend"));
  postbox::subscriber sub(ctx, ">" + fwd.at("backend"));
  postbox::subscriber tap(ctx, ">" + fwd.at("tap"));
  sub.subscribe("jobs.");
  tap.subscribe("");
  REQUIRE(pub.wait_for_subscribers(1, 20s));
  // The tap's subscriber is connected once it sees a probe published on the
  // topic the real subscriber wants.
  REQUIRE(postbox::test::wait_until([&] {
    pub.publish("jobs.probe", "");
    while (auto m = sub.receive(0ms)) {
    }
    return tap.receive(1ms).has_value();
  }, 20s));
  while (tap.receive(200ms) || sub.receive(0ms)) {
  }
  for (int i = 0; i < 50; ++i) pub.publish("jobs.x", std::to_string(i));
  const auto seen = receive_all(sub, 50);
  std::vector<std::string> mirrored;
  for (auto m = tap.receive(10s); m; m = tap.receive(mirrored.size() < 49 ? 10000ms : 200ms)) {
    if (m->topic() == "jobs.x") mirrored.push_back("jobs.x=" + std::string(m->payload()));
  }
  CHECK(seen.size() == 50);
  CHECK(mirrored == seen);

  std::string line;
  bool rate_logged = false;
  while (!rate_logged && fwd.process->read_line(line, 5s)) {
    rate_logged = line.find(" rate: in ") != std::string::npos;
  }
  CHECK(rate_logged);
}

TEST_CASE("forwarder: a frame over --max-message-size drops only its sender's connection",
          "[multiprocess][forwarder][hostile]") {
  running_forwarder fwd({"--mode", "pipeline", "--frontend", "@tcp://127.0.0.1:*", "--backend",
                         "@tcp://127.0.0.1:*", "--control", "@tcp://127.0.0.1:*",
                         "--max-message-size", "4096"});
  postbox::context ctx;
  postbox::receiver worker(ctx, ">" + fwd.at("backend"));
  postbox::sender honest(ctx, ">" + fwd.at("frontend"));
  zmq::socket_t greedy(ctx.native(), zmq::socket_type::push);
  greedy.connect(fwd.at("frontend"));
  greedy.send(zmq::buffer(std::string(100'000, 'g')), zmq::send_flags::none);
  for (int i = 0; i < 20; ++i) honest.send("job", std::to_string(i));
  for (int i = 0; i < 20; ++i) {
    auto m = worker.receive(10s);
    REQUIRE(m);
    CHECK(m->payload() == std::to_string(i));
  }
  CHECK_FALSE(worker.receive(200ms));
  CHECK(json_number(control(ctx, fwd.at("control"), "stats"), "messages_in") == 20);
}

TEST_CASE("forwarder pipeline: with no worker nothing is dropped, and SIGTERM still stops it",
          "[multiprocess][forwarder]") {
  running_forwarder fwd({"--mode", "pipeline", "--frontend", "@tcp://127.0.0.1:*", "--backend",
                         "@tcp://127.0.0.1:*", "--control", "@tcp://127.0.0.1:*"});
  postbox::context ctx;
  postbox::sender producer(ctx, ">" + fwd.at("frontend"));
  for (int i = 0; i < 100; ++i) {
    REQUIRE(producer.send_for("job", std::to_string(i), 10s) == postbox::send_result::ok);
  }
  // With no worker the forwarder reads nothing (the messages wait in the
  // queues, and producers would block once those are full), and it keeps
  // serving its control endpoint meanwhile.
  CHECK(control(ctx, fwd.at("control"), "ping") == "pong");
  CHECK(json_number(control(ctx, fwd.at("control"), "stats"), "messages_out") == 0);
  postbox::receiver worker(ctx, ">" + fwd.at("backend"));
  for (int i = 0; i < 100; ++i) {
    auto m = worker.receive(10s);
    REQUIRE(m);
    CHECK(m->payload() == std::to_string(i));
  }

  running_forwarder stuck({"--mode", "pipeline", "--frontend", "@tcp://127.0.0.1:*", "--backend",
                           "@tcp://127.0.0.1:*", "--control", "@tcp://127.0.0.1:*"});
  postbox::sender lonely(ctx, ">" + stuck.at("frontend"));
  REQUIRE(lonely.send_for("job", "nobody takes this", 10s) == postbox::send_result::ok);
  CHECK(control(ctx, stuck.at("control"), "ping") == "pong");
  stuck.process->kill(SIGTERM);
  CHECK(stuck.process->wait(10s) == 0);
}

TEST_CASE("daemons: a connect endpoint whose host does not resolve is named in a warning at "
          "start, and the daemon serves on",
          "[multiprocess][forwarder]") {
  postbox::test::temp_dir dir;
  const std::string data = (dir.path() / "data").string();
  // RFC 6761: no name under .invalid resolves.
  const std::string nowhere = "tcp://nohost.invalid:5590";
  struct daemon_case {
    std::vector<std::string> argv;
    std::string option;
  };
  const auto c = GENERATE_COPY(values<daemon_case>({
      {{postbox::test::forwarder_path(), "--frontend", ">" + nowhere, "--backend", "@tcp://127.0.0.1:*",
        "--control", "@tcp://127.0.0.1:*"},
       "frontend"},
      {{postbox::test::queue_path(), "--clients", ">" + nowhere, "--plain-in", "none", "--plain-out",
        "none", "--control", "@tcp://127.0.0.1:*", "--data-dir", data},
       "clients"},
  }));
  INFO(c.argv.front());
  child daemon(c.argv, true);
  std::string line, warned, ready;
  while (ready.empty() && daemon.read_line(line, 60s)) {
    if (line.find(" warn: ") != std::string::npos) warned = line;
    if (line.find(" info: ready ") != std::string::npos) ready = line;
  }
  REQUIRE_FALSE(ready.empty());
  CHECK(warned.find(" warn: " + c.option + " " + nowhere + ": cannot resolve host \"nohost.invalid\" (") !=
        std::string::npos);
  CHECK(warned.find("; libzmq keeps trying") != std::string::npos);
  // Still serving: its control endpoint answers.
  const auto at = ready.find(" control=tcp://");
  REQUIRE(at != std::string::npos);
  const auto control = ready.substr(at + 9, ready.find(' ', at + 9) - (at + 9));
  postbox::context ctx;
  zmq::socket_t req(ctx.native(), zmq::socket_type::req);
  req.set(zmq::sockopt::rcvtimeo, 10000);
  req.set(zmq::sockopt::linger, 0);
  req.connect(control);
  REQUIRE(req.send(zmq::str_buffer("ping"), zmq::send_flags::none));
  zmq::message_t reply;
  REQUIRE(req.recv(reply));
  CHECK(reply.size() > 0);
  daemon.kill(SIGTERM);
  CHECK(daemon.wait() == 0);
}

