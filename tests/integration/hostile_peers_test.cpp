// Integration: hostile peers on a real socket. Whatever they send is counted
// and refused, and the honest peer beside them keeps getting through.
#include <catch2/catch.hpp>

#include <postbox/postbox.hpp>

#include "support/support.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <random>
#include <sys/socket.h>
#include <unistd.h>

using namespace std::chrono_literals;

namespace {

int tcp_port(const std::string& endpoint) {
  return std::stoi(endpoint.substr(endpoint.rfind(':') + 1));
}

// Writes `bytes` to 127.0.0.1:port on a plain TCP socket, then closes it.
void raw_tcp_write(int port, const std::string& bytes) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  (void)::write(fd, bytes.data(), bytes.size());
  ::close(fd);
}

}  // namespace

TEST_CASE("receiver: garbage frames, wrong frame counts and oversized frames are counted and refused, "
          "while an honest sender keeps flowing",
          "[integration][hostile]") {
  postbox::context ctx;
  postbox::socket_options opts;
  opts.max_message_size = 1 << 20;
  postbox::receiver rx(ctx, "@tcp://127.0.0.1:*", opts);
  const auto where = rx.endpoints().front();
  postbox::sender honest(ctx, ">" + where);

  zmq::socket_t evil(ctx.native(), zmq::socket_type::push);
  evil.connect(where);
  evil.send(zmq::str_buffer("no topic terminator"), zmq::send_flags::none);
  evil.send(zmq::buffer(std::string("t\0\x07", 3)), zmq::send_flags::none);  // unknown version
  evil.send(zmq::str_buffer("a"), zmq::send_flags::sndmore);         // three frames
  evil.send(zmq::str_buffer("b"), zmq::send_flags::sndmore);
  evil.send(zmq::str_buffer("c"), zmq::send_flags::none);
  std::string huge(2 << 20, 'h');  // over max_message_size: libzmq drops that connection
  evil.send(zmq::buffer(huge), zmq::send_flags::none);

  // Random bytes straight onto the TCP port (libzmq may even take some for
  // old-style frames), and a claimed 4 GB frame.
  std::mt19937 rng(7);
  for (int i = 0; i < 20; ++i) {
    std::string noise(static_cast<std::size_t>(rng() % 2000), '\0');
    for (auto& c : noise) c = static_cast<char>(rng());
    raw_tcp_write(tcp_port(where), noise);
  }
  raw_tcp_write(tcp_port(where), std::string("\xff\x00\x00\x00\x00\xff\xff\xff\xff\x7f", 10));

  for (int i = 0; i < 200; ++i) honest.send("honest", std::to_string(i));
  for (int i = 0; i < 200; ++i) {
    auto m = rx.receive(10s);
    REQUIRE(m);
    CHECK(m->topic() == "honest");
    CHECK(m->payload() == std::to_string(i));
  }
  // Each evil message is counted under its reason (the raw TCP noise may add
  // more of any kind, so these are lower bounds).
  REQUIRE(postbox::test::wait_until([&] {
    (void)rx.receive(0ms);
    return rx.stats().rejected.total() >= 3;
  }));
  CHECK(rx.stats().rejected[postbox::reject_reason::bad_topic] >= 1);
  CHECK(rx.stats().rejected[postbox::reject_reason::unknown_version] >= 1);
  CHECK(rx.stats().rejected[postbox::reject_reason::frame_count] >= 1);
  CHECK(rx.stats().received == 200);
}

TEST_CASE("subscriber: garbage published by a raw PUB is counted while postbox messages arrive",
          "[integration][hostile]") {
  postbox::context ctx;
  zmq::socket_t raw(ctx.native(), zmq::socket_type::xpub);
  raw.bind("inproc://raw-pub");
  postbox::subscriber sub(ctx, ">inproc://raw-pub");
  sub.subscribe("");
  zmq::message_t subscription;
  REQUIRE(raw.recv(subscription));  // the subscription arrived: nothing is sent into the void

  raw.send(zmq::str_buffer("garbage without terminator"), zmq::send_flags::none);
  postbox::encoded good;
  postbox::message_view v;
  v.topic = "ok";
  v.payload = "fine";
  postbox::encode(v, good);
  raw.send(good.first, zmq::send_flags::none);
  auto m = sub.receive(5s);
  REQUIRE(m);
  CHECK(m->payload() == "fine");
  CHECK(sub.stats().rejected.total() == 1);
}

TEST_CASE("publisher: a huge subscription is refused at the door while others keep being served",
          "[integration][hostile][pubsub]") {
  postbox::context ctx;
  postbox::publisher pub(ctx, "@tcp://127.0.0.1:*");
  zmq::socket_t greedy(ctx.native(), zmq::socket_type::sub);
  greedy.connect(pub.endpoints().front());
  // 64 KiB: far over the 1 KiB a publisher accepts, yet small enough that the
  // raw SUB's own subscription trie (libzmq frees it recursively) survives.
  greedy.set(zmq::sockopt::subscribe, std::string(64 * 1024, 'x'));
  postbox::subscriber honest(ctx, ">" + pub.endpoints().front());
  honest.subscribe("news.");
  REQUIRE(pub.wait_for_subscribers(1, 10s));
  pub.publish("news.a", "still here");
  auto m = honest.receive(5s);
  REQUIRE(m);
  CHECK(m->payload() == "still here");
  greedy.close();
  REQUIRE(postbox::test::wait_until([&] {
    CHECK_FALSE(honest.receive(1ms));
    return !pub.wait_for_subscriber(std::string(10, 'x'), 0ms);
  }));
  pub.publish("news.b", "and still");
  CHECK(honest.receive(5s));
}
