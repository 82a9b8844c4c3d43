// Multi-process: channels whose peers are separate processes
// (tests/support/peer_main.cpp), over tcp and ipc.
#include <catch2/catch.hpp>

#include <postbox/postbox.hpp>

#include "support/support.hpp"

#include <csignal>
#include <map>

using namespace std::chrono_literals;
using postbox::test::transport_kind;

namespace {

std::string hex(std::string_view bytes) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) {
    out.push_back(digits[c >> 4]);
    out.push_back(digits[c & 0xF]);
  }
  return out;
}

// The value of a string field in one of the peer's JSON lines.
std::string field(const std::string& line, const std::string& name) {
  const auto key = "\"" + name + "\":\"";
  const auto at = line.find(key);
  if (at == std::string::npos) return {};
  const auto start = at + key.size();
  return line.substr(start, line.find('"', start) - start);
}

std::string ready_endpoint(postbox::test::child& peer) {
  std::string line;
  REQUIRE(peer.read_line(line));
  REQUIRE(line.rfind("READY ", 0) == 0);
  return line.substr(6);
}

}  // namespace

TEST_CASE("point-to-point: messages cross process boundaries intact, in order",
          "[multiprocess][p2p]") {
  const auto transport = GENERATE(transport_kind::tcp, transport_kind::ipc);
  INFO("transport " << postbox::test::name(transport));
  postbox::test::temp_dir dir;
  postbox::test::child peer({postbox::test::peer_path(), "recv",
                             "@" + postbox::test::bind_address(transport, dir), "300", "10000"});
  const auto where = ready_endpoint(peer);

  postbox::context ctx;
  postbox::sender tx(ctx, ">" + where);
  for (int i = 0; i < 300; ++i) {
    postbox::message m("jobs." + std::to_string(i % 3),
                       std::string(static_cast<std::size_t>(i) * 50, static_cast<char>('a' + i % 26)));
    m.set_key("k" + std::to_string(i));
    tx.send(m);
  }
  for (int i = 0; i < 300; ++i) {
    std::string line;
    REQUIRE(peer.read_line(line));
    INFO(line.substr(0, 200));
    CHECK(field(line, "topic") == hex("jobs." + std::to_string(i % 3)));
    CHECK(field(line, "key") == hex("k" + std::to_string(i)));
    CHECK(field(line, "payload") ==
          hex(std::string(static_cast<std::size_t>(i) * 50, static_cast<char>('a' + i % 26))));
  }
  std::string done;
  REQUIRE(peer.read_line(done));
  CHECK(done.find("\"received\":300") != std::string::npos);
  CHECK(peer.wait() == 0);
}

TEST_CASE("pub/sub: subscriber processes get exactly what their filters match",
          "[multiprocess][pubsub]") {
  const auto transport = GENERATE(transport_kind::tcp, transport_kind::ipc);
  INFO("transport " << postbox::test::name(transport));
  postbox::test::temp_dir dir;
  postbox::context ctx;
  postbox::publisher pub(ctx, "@" + postbox::test::bind_address(transport, dir));
  const auto where = ">" + pub.endpoints().front();

  // Expected counts out of 400 messages cycling over four topics.
  const std::vector<std::string> topics = {"orders.eu.created", "orders.us.created",
                                           "orders.eu.cancelled", "billing.invoice"};
  postbox::test::child created({postbox::test::peer_path(), "sub", where, "200", "10000",
                                "orders.*.created"});
  postbox::test::child billing({postbox::test::peer_path(), "sub", where, "100", "10000",
                                "billing."});
  ready_endpoint(created);
  ready_endpoint(billing);
  REQUIRE(pub.wait_for_subscribers(2, 20s));
  for (int i = 0; i < 400; ++i) pub.publish(topics[i % 4], std::to_string(i));

  auto collect = [](postbox::test::child& peer, std::size_t n) {
    std::vector<std::pair<std::string, std::string>> got;
    std::string line;
    while (got.size() < n && peer.read_line(line)) {
      got.emplace_back(field(line, "topic"), field(line, "payload"));
    }
    return got;
  };
  const auto a = collect(created, 200);
  const auto b = collect(billing, 100);
  REQUIRE(a.size() == 200);
  REQUIRE(b.size() == 100);
  int ai = 0, bi = 0;
  for (int i = 0; i < 400; ++i) {
    const auto want = std::make_pair(hex(topics[i % 4]), hex(std::to_string(i)));
    if (i % 4 < 2) CHECK(a[ai++] == want);
    if (i % 4 == 3) CHECK(b[bi++] == want);
  }
  for (auto* peer : {&created, &billing}) {
    std::string done;
    REQUIRE(peer->read_line(done));
    CHECK(done.find("\"gaps\":0") != std::string::npos);
    CHECK(peer->wait() == 0);
  }
}

TEST_CASE("request/reply: a replier process killed with -9 and restarted answers the retried request",
          "[multiprocess][rpc]") {
  postbox::test::temp_dir dir;
  auto first = std::make_unique<postbox::test::child>(std::vector<std::string>{
      postbox::test::peer_path(), "reply", "@tcp://127.0.0.1:*", "1000"});
  const auto where = ready_endpoint(*first);
  postbox::context ctx;
  postbox::requester req(ctx, ">" + where, {300ms, 40});
  auto reply = req.request("echo", "one");
  REQUIRE(reply);
  CHECK(reply->payload() == "reply:one");

  first->kill(SIGKILL);
  CHECK(first->wait() == 128 + SIGKILL);
  // The same port again; the kernel may hold it for a moment after the kill.
  std::unique_ptr<postbox::test::child> second;
  REQUIRE(postbox::test::wait_until([&] {
    second = std::make_unique<postbox::test::child>(
        std::vector<std::string>{postbox::test::peer_path(), "reply", "@" + where, "1000"});
    std::string line;
    if (second->read_line(line) && line.rfind("READY", 0) == 0) return true;
    second->wait();
    return false;
  }));
  reply = req.request("echo", "two");
  REQUIRE(reply);
  CHECK(reply->payload() == "reply:two");
}
