// Unit tests of socket options (postbox/options.hpp): the documented defaults
// reach a real socket, chosen values replace them, and bad values are refused
// before any socket is bound.
#include <catch2/catch.hpp>

#include <postbox/context.hpp>
#include <postbox/error.hpp>
#include <postbox/options.hpp>
#include <postbox/point_to_point.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>

#include <zmq.hpp>

using Catch::Contains;
using namespace std::chrono_literals;

namespace {

// A fresh inproc name per call, so tests never collide on a bound name.
std::string unique_inproc(const char* what) {
  static std::atomic<int> n{0};
  return std::string("inproc://options-test-") + what + "-" + std::to_string(n++);
}

}  // namespace

TEST_CASE("options: the documented defaults", "[unit][options]") {
  const postbox::socket_options o;
  CHECK(o.send_hwm == 10'000);
  CHECK(o.receive_hwm == 10'000);
  CHECK(o.linger == 1'000ms);
  CHECK(o.reconnect_interval == 100ms);
  CHECK(o.reconnect_interval_max == 5'000ms);
  CHECK(o.heartbeat_interval == 5'000ms);
  CHECK(o.heartbeat_timeout == 15'000ms);
  CHECK(o.max_message_size == 64 * 1024 * 1024);
  CHECK(o.immediate);
}

TEST_CASE("options: a sender's socket has the default options", "[unit][options]") {
  postbox::context ctx;
  postbox::sender tx(ctx, "@" + unique_inproc("sender"));
  auto& s = tx.native();
  CHECK(s.get(zmq::sockopt::maxmsgsize) == std::int64_t{64} * 1024 * 1024);
  CHECK(s.get(zmq::sockopt::linger) == 1'000);
  CHECK(s.get(zmq::sockopt::sndhwm) == 10'000);
  CHECK(s.get(zmq::sockopt::rcvhwm) == 10'000);
  CHECK(s.get(zmq::sockopt::immediate) == 1);
  CHECK(s.get(zmq::sockopt::reconnect_ivl) == 100);
  CHECK(s.get(zmq::sockopt::reconnect_ivl_max) == 5'000);
  CHECK(s.get(zmq::sockopt::heartbeat_ivl) == 5'000);
  CHECK(s.get(zmq::sockopt::heartbeat_timeout) == 15'000);
  CHECK(s.get(zmq::sockopt::type) == ZMQ_PUSH);
}

TEST_CASE("options: a receiver's socket has the default options", "[unit][options]") {
  postbox::context ctx;
  postbox::receiver rx(ctx, unique_inproc("receiver"));  // binds by default
  auto& s = rx.native();
  CHECK(s.get(zmq::sockopt::maxmsgsize) == std::int64_t{64} * 1024 * 1024);
  CHECK(s.get(zmq::sockopt::linger) == 1'000);
  CHECK(s.get(zmq::sockopt::rcvhwm) == 10'000);
  CHECK(s.get(zmq::sockopt::sndhwm) == 10'000);
  CHECK(s.get(zmq::sockopt::heartbeat_ivl) == 5'000);
  CHECK(s.get(zmq::sockopt::type) == ZMQ_PULL);
  REQUIRE(rx.endpoints().size() == 1);
}

TEST_CASE("options: chosen values replace the defaults on the socket", "[unit][options]") {
  postbox::context ctx;
  postbox::socket_options o;
  o.send_hwm = 5;
  o.receive_hwm = 7;
  o.linger = 0ms;
  o.reconnect_interval = 250ms;
  o.reconnect_interval_max = 1'000ms;
  o.heartbeat_interval = 0ms;
  o.heartbeat_timeout = 2'000ms;
  o.max_message_size = 4096;
  o.immediate = false;

  postbox::sender tx(ctx, "@" + unique_inproc("custom"), o);
  auto& s = tx.native();
  CHECK(s.get(zmq::sockopt::sndhwm) == 5);
  CHECK(s.get(zmq::sockopt::rcvhwm) == 7);
  CHECK(s.get(zmq::sockopt::linger) == 0);
  CHECK(s.get(zmq::sockopt::reconnect_ivl) == 250);
  CHECK(s.get(zmq::sockopt::reconnect_ivl_max) == 1'000);
  CHECK(s.get(zmq::sockopt::heartbeat_ivl) == 0);
  CHECK(s.get(zmq::sockopt::heartbeat_timeout) == 2'000);
  CHECK(s.get(zmq::sockopt::maxmsgsize) == 4096);
  CHECK(s.get(zmq::sockopt::immediate) == 0);

  postbox::receiver rx(ctx, unique_inproc("custom-rx"), o);
  CHECK(rx.native().get(zmq::sockopt::rcvhwm) == 7);
  CHECK(rx.native().get(zmq::sockopt::maxmsgsize) == 4096);
}

TEST_CASE("options: a bad option value is refused, naming the option", "[unit][options]") {
  postbox::context ctx;
  postbox::socket_options o;
  std::string name;
  SECTION("a negative send high-water mark") {
    o.send_hwm = -1;
    name = "send_hwm";
  }
  SECTION("a negative receive high-water mark") {
    o.receive_hwm = -5;
    name = "receive_hwm";
  }
  SECTION("a max_message_size of 0") {
    o.max_message_size = 0;
    name = "max_message_size";
  }
  SECTION("a negative max_message_size") {
    o.max_message_size = -1;
    name = "max_message_size";
  }
  SECTION("a linger below -1 (wait forever)") {
    o.linger = -2ms;
    name = "linger";
  }
  SECTION("a negative reconnect interval") {
    o.reconnect_interval = -1ms;
    name = "reconnect_interval";
  }
  SECTION("a negative heartbeat interval") {
    o.heartbeat_interval = -1ms;
    name = "heartbeat_interval";
  }
  CAPTURE(name);
  const auto endpoint = "@" + unique_inproc("bad");
  CHECK_THROWS_AS(postbox::sender(ctx, endpoint, o), postbox::config_error);
  CHECK_THROWS_WITH(postbox::sender(ctx, endpoint, o), Contains("socket option " + name));
  CHECK_THROWS_AS(postbox::receiver(ctx, endpoint, o), postbox::config_error);
  CHECK_THROWS_WITH(postbox::receiver(ctx, endpoint, o), Contains(name));

  // Nothing was bound: the same name binds with good options.
  CHECK_NOTHROW(postbox::receiver(ctx, endpoint));
}

TEST_CASE("options: the refusal says the value it got", "[unit][options]") {
  postbox::context ctx;
  postbox::socket_options o;
  o.send_hwm = -3;
  CHECK_THROWS_WITH(postbox::sender(ctx, "@" + unique_inproc("value"), o),
                    Contains("send_hwm") && Contains("-3"));
  o = {};
  o.max_message_size = 0;
  CHECK_THROWS_WITH(postbox::sender(ctx, "@" + unique_inproc("value"), o),
                    Contains("max_message_size") && Contains("got 0"));
}

TEST_CASE("options: a linger of -1 (wait forever) is allowed", "[unit][options]") {
  postbox::context ctx;
  postbox::socket_options o;
  o.linger = -1ms;
  o.send_hwm = 0;  // 0: no limit, also allowed
  postbox::sender tx(ctx, "@" + unique_inproc("linger"), o);
  CHECK(tx.native().get(zmq::sockopt::linger) == -1);
  CHECK(tx.native().get(zmq::sockopt::sndhwm) == 0);
  // A sender with nothing queued closes at once even with an infinite linger.
}
