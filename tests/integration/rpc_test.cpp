// Integration: request/reply over tcp, ipc and inproc.
#include <catch2/catch.hpp>

#include <postbox/postbox.hpp>

#include "support/support.hpp"

#include <future>

using namespace std::chrono_literals;
using postbox::test::transport_kind;

TEST_CASE("request/reply: a request gets the reply to it, correlated by id", "[integration][rpc]") {
  const auto transport = GENERATE(transport_kind::tcp, transport_kind::ipc, transport_kind::inproc);
  INFO("transport " << postbox::test::name(transport));
  postbox::test::temp_dir dir;
  postbox::context ctx;
  postbox::replier rep(ctx, "@" + postbox::test::bind_address(transport, dir));
  postbox::requester req(ctx, ">" + rep.endpoints().front());
  auto served = std::async(std::launch::async, [&] {
    int n = 0;
    while (n < 50 && rep.serve_one([](const postbox::message& m) {
      return "re:" + std::string(m.payload());
    }, 5s)) {
      ++n;
    }
    return n;
  });
  for (int i = 0; i < 50; ++i) {
    auto reply = req.request("quote", std::to_string(i));
    REQUIRE(reply);
    CHECK(reply->payload() == "re:" + std::to_string(i));
    CHECK(reply->topic() == "quote");
    CHECK(reply->correlation().has_value());
  }
  CHECK(served.get() == 50);
  CHECK(req.stats().retries == 0);
}

TEST_CASE("request/reply: a request retried across a replier restart gets its reply",
          "[integration][rpc]") {
  const auto transport = GENERATE(transport_kind::tcp, transport_kind::ipc, transport_kind::inproc);
  INFO("transport " << postbox::test::name(transport));
  postbox::test::temp_dir dir;
  postbox::context ctx;
  auto first = std::make_unique<postbox::replier>(
      ctx, "@" + postbox::test::bind_address(transport, dir));
  const std::string where = first->endpoints().front();
  postbox::requester req(ctx, ">" + where, postbox::request_options{300ms, 30});

  auto answer = std::async(std::launch::async, [&] { return req.request("work", "payload"); });
  // The first replier takes the request and dies without answering.
  auto taken = first->receive(10s);
  REQUIRE(taken);
  const auto id = taken->msg.id();
  first.reset();

  // libzmq closes a listener asynchronously: the address may stay taken for
  // a moment after the first replier is gone.
  std::unique_ptr<postbox::replier> restarted;
  REQUIRE(postbox::test::wait_until([&] {
    try {
      restarted = std::make_unique<postbox::replier>(ctx, "@" + where);
      return true;
    } catch (const postbox::transport_error&) {
      return false;
    }
  }));
  auto& second = *restarted;
  auto again = second.receive(10s);
  REQUIRE(again);
  CHECK(again->msg.id() == id);  // a retry is the same request
  CHECK(second.reply(*again, "done") == postbox::send_result::ok);

  auto reply = answer.get();
  REQUIRE(reply);
  CHECK(reply->payload() == "done");
  CHECK(req.stats().retries >= 1);
  CHECK(req.stats().timeouts == 0);
}

TEST_CASE("request/reply: with no replier a request times out after its retries",
          "[integration][rpc]") {
  postbox::context ctx;
  postbox::requester req(ctx, ">tcp://127.0.0.1:1", postbox::request_options{50ms, 2});
  const auto start = std::chrono::steady_clock::now();
  CHECK_FALSE(req.request("nobody", "hello"));
  CHECK(std::chrono::steady_clock::now() - start >= 150ms);
  CHECK(req.stats().retries == 2);
  CHECK(req.stats().timeouts == 1);
  CHECK_THROWS_AS(postbox::requester(ctx, ">inproc://x", postbox::request_options{0ms, 1}),
                  postbox::config_error);
}

TEST_CASE("request/reply: a raw REQ client can call a postbox replier", "[integration][rpc]") {
  postbox::context ctx;
  postbox::replier rep(ctx, "@inproc://raw-req");
  zmq::socket_t raw(ctx.native(), zmq::socket_type::req);
  raw.connect("inproc://raw-req");
  // A raw request that is not a postbox envelope is refused and counted ...
  raw.send(zmq::str_buffer("not an envelope"));
  CHECK_FALSE(rep.receive(200ms));
  CHECK(rep.stats().rejected[postbox::reject_reason::bad_topic] == 1);
  // ... a REQ socket is now stuck waiting for a reply; a fresh one sends a
  // valid envelope and gets its answer.
  zmq::socket_t good(ctx.native(), zmq::socket_type::req);
  good.connect("inproc://raw-req");
  postbox::encoded frames;
  postbox::message_view v;
  v.topic = "t";
  v.payload = "ping";
  postbox::encode(v, frames);
  good.send(frames.first, zmq::send_flags::none);
  auto r = rep.receive(5s);
  REQUIRE(r);
  CHECK(rep.reply(*r, "pong") == postbox::send_result::ok);
  zmq::message_t answer;
  REQUIRE(good.recv(answer));
  postbox::message decoded;
  CHECK_FALSE(postbox::decode(&answer, 1, decoded));
  CHECK(decoded.payload() == "pong");
}
