// Unit tests of endpoint parsing (postbox/endpoint.hpp): the '@'/'>' notation,
// the defaults per role, comma lists, and the one-line errors naming the
// endpoint.
#include <catch2/catch.hpp>

#include <postbox/endpoint.hpp>
#include <postbox/error.hpp>

#include <string>
#include <vector>

using Catch::Contains;
using postbox::endpoint_mode;
using postbox::parse_endpoint;
using postbox::parse_endpoints;

TEST_CASE("endpoint: '@' binds and '>' connects whatever the default", "[unit][endpoint]") {
  const auto mode = GENERATE(endpoint_mode::bind, endpoint_mode::connect);

  const auto bound = parse_endpoint("@tcp://127.0.0.1:5555", mode);
  CHECK(bound.mode == endpoint_mode::bind);
  CHECK(bound.transport == postbox::transport::tcp);
  CHECK(bound.address == "tcp://127.0.0.1:5555");

  const auto connected = parse_endpoint(">tcp://127.0.0.1:5555", mode);
  CHECK(connected.mode == endpoint_mode::connect);
  CHECK(connected.address == "tcp://127.0.0.1:5555");
}

TEST_CASE("endpoint: a bare endpoint takes the default of the role using it",
          "[unit][endpoint]") {
  CHECK(parse_endpoint("tcp://127.0.0.1:5555", endpoint_mode::bind).mode == endpoint_mode::bind);
  CHECK(parse_endpoint("tcp://127.0.0.1:5555", endpoint_mode::connect).mode ==
        endpoint_mode::connect);
  CHECK(parse_endpoint("ipc:///tmp/postbox.sock", endpoint_mode::bind).mode ==
        endpoint_mode::bind);
  CHECK(parse_endpoint("inproc://jobs", endpoint_mode::connect).mode == endpoint_mode::connect);
}

TEST_CASE("endpoint: each transport is recognised and its address kept without the prefix",
          "[unit][endpoint]") {
  const auto tcp = parse_endpoint("@tcp://*:5555", endpoint_mode::connect);
  CHECK(tcp.transport == postbox::transport::tcp);
  CHECK(tcp.address == "tcp://*:5555");

  const auto v6 = parse_endpoint(">tcp://[::1]:5555", endpoint_mode::bind);
  CHECK(v6.transport == postbox::transport::tcp);
  CHECK(v6.address == "tcp://[::1]:5555");

  const auto ipc = parse_endpoint("ipc:///tmp/postbox.sock", endpoint_mode::bind);
  CHECK(ipc.transport == postbox::transport::ipc);
  CHECK(ipc.address == "ipc:///tmp/postbox.sock");

  const auto inproc = parse_endpoint(">inproc://jobs", endpoint_mode::bind);
  CHECK(inproc.transport == postbox::transport::inproc);
  CHECK(inproc.address == "inproc://jobs");
}

TEST_CASE("endpoint: a comma list gives each endpoint its own mode, in order",
          "[unit][endpoint]") {
  const auto list =
      parse_endpoints("@tcp://127.0.0.1:5555,>ipc:///tmp/a.sock,inproc://jobs", endpoint_mode::bind);
  REQUIRE(list.size() == 3);
  CHECK(list[0].mode == endpoint_mode::bind);
  CHECK(list[0].address == "tcp://127.0.0.1:5555");
  CHECK(list[1].mode == endpoint_mode::connect);
  CHECK(list[1].transport == postbox::transport::ipc);
  CHECK(list[1].address == "ipc:///tmp/a.sock");
  CHECK(list[2].mode == endpoint_mode::bind);  // the default
  CHECK(list[2].transport == postbox::transport::inproc);

  const auto one = parse_endpoints("tcp://127.0.0.1:1", endpoint_mode::connect);
  REQUIRE(one.size() == 1);
  CHECK(one[0] == parse_endpoint("tcp://127.0.0.1:1", endpoint_mode::connect));
}

TEST_CASE("endpoint: a comma list names its first bad endpoint", "[unit][endpoint]") {
  const auto text = "tcp://127.0.0.1:5555,tcp://127.0.0.1,udp://x:1";
  CHECK_THROWS_AS(parse_endpoints(text, endpoint_mode::connect), postbox::config_error);
  CHECK_THROWS_WITH(parse_endpoints(text, endpoint_mode::connect),
                    Contains("endpoint \"tcp://127.0.0.1\"") && Contains(":port"));
}

TEST_CASE("endpoint: an empty element in a comma list is refused", "[unit][endpoint]") {
  const auto text = GENERATE("tcp://127.0.0.1:5555,,inproc://a", "tcp://127.0.0.1:5555,",
                             ",tcp://127.0.0.1:5555");
  CAPTURE(text);
  CHECK_THROWS_AS(parse_endpoints(text, endpoint_mode::connect), postbox::config_error);
  CHECK_THROWS_WITH(parse_endpoints(text, endpoint_mode::connect), Contains("empty endpoint"));
}

TEST_CASE("endpoint: a tcp port is 1-65535", "[unit][endpoint]") {
  const auto mode = GENERATE(endpoint_mode::bind, endpoint_mode::connect);
  CHECK(parse_endpoint("tcp://127.0.0.1:1", mode).address == "tcp://127.0.0.1:1");
  CHECK(parse_endpoint("tcp://127.0.0.1:65535", mode).address == "tcp://127.0.0.1:65535");

  const auto port = GENERATE("65536", "99999", "123456", "-1", "abc", "55a", "", " 80", "+80");
  const std::string text = std::string("tcp://127.0.0.1:") + port;
  CAPTURE(text, mode == endpoint_mode::bind);
  CHECK_THROWS_AS(parse_endpoint(text, mode), postbox::config_error);
  CHECK_THROWS_WITH(parse_endpoint(text, mode),
                    Contains("endpoint \"" + text + "\"") && Contains("port must be 1-65535"));
}

TEST_CASE("endpoint: a tcp port of '*' or 0 (any free port) is only for bind",
          "[unit][endpoint]") {
  const auto port = GENERATE("*", "0");
  const std::string text = std::string("tcp://127.0.0.1:") + port;
  CAPTURE(text);
  const auto bound = parse_endpoint(text, endpoint_mode::bind);
  CHECK(bound.mode == endpoint_mode::bind);
  CHECK(bound.address == text);
  CHECK(parse_endpoint("@" + text, endpoint_mode::connect).mode == endpoint_mode::bind);

  CHECK_THROWS_AS(parse_endpoint(text, endpoint_mode::connect), postbox::config_error);
  CHECK_THROWS_WITH(parse_endpoint(">" + text, endpoint_mode::bind),
                    Contains("endpoint \">" + text + "\"") && Contains("port must be 1-65535"));
}

TEST_CASE("endpoint: connecting to host '*' is refused", "[unit][endpoint]") {
  CHECK(parse_endpoint("tcp://*:5555", endpoint_mode::bind).address == "tcp://*:5555");
  CHECK_THROWS_AS(parse_endpoint("tcp://*:5555", endpoint_mode::connect), postbox::config_error);
  CHECK_THROWS_WITH(parse_endpoint("tcp://*:5555", endpoint_mode::connect),
                    Contains("endpoint \"tcp://*:5555\"") && Contains("host \"*\""));
}

TEST_CASE("endpoint: a tcp endpoint without a port is refused, naming the endpoint",
          "[unit][endpoint]") {
  CHECK_THROWS_AS(parse_endpoint("tcp://127.0.0.1", endpoint_mode::connect),
                  postbox::config_error);
  CHECK_THROWS_WITH(parse_endpoint("tcp://127.0.0.1", endpoint_mode::connect),
                    Contains("endpoint \"tcp://127.0.0.1\"") && Contains("missing \":port\""));
  CHECK_THROWS_WITH(parse_endpoint("@tcp://localhost", endpoint_mode::connect),
                    Contains("endpoint \"@tcp://localhost\"") && Contains("missing \":port\""));
}

TEST_CASE("endpoint: a tcp endpoint without a host is refused, naming the endpoint",
          "[unit][endpoint]") {
  CHECK_THROWS_AS(parse_endpoint("tcp://:5555", endpoint_mode::bind), postbox::config_error);
  CHECK_THROWS_WITH(parse_endpoint("tcp://:5555", endpoint_mode::bind),
                    Contains("endpoint \"tcp://:5555\"") && Contains("missing host"));
}

TEST_CASE("endpoint: an unsupported transport is refused, naming it", "[unit][endpoint]") {
  const auto text = GENERATE("udp://127.0.0.1:5555", "pgm://eth0;239.192.1.1:5555",
                             "TCP://127.0.0.1:5555", "http://example.com:80");
  CAPTURE(text);
  const std::string scheme = std::string(text).substr(0, std::string(text).find("://"));
  CHECK_THROWS_AS(parse_endpoint(text, endpoint_mode::connect), postbox::config_error);
  CHECK_THROWS_WITH(parse_endpoint(text, endpoint_mode::connect),
                    Contains("endpoint \"" + std::string(text) + "\"") &&
                        Contains("unsupported transport \"" + scheme + "\""));
}

TEST_CASE("endpoint: an endpoint without a transport is refused", "[unit][endpoint]") {
  const auto text = GENERATE("127.0.0.1:5555", "@localhost:5555", "tcp:/127.0.0.1:5555");
  CAPTURE(text);
  CHECK_THROWS_AS(parse_endpoint(text, endpoint_mode::connect), postbox::config_error);
  CHECK_THROWS_WITH(parse_endpoint(text, endpoint_mode::connect),
                    Contains("endpoint \"" + std::string(text) + "\"") &&
                        Contains("missing transport"));
}

TEST_CASE("endpoint: an empty endpoint is refused", "[unit][endpoint]") {
  const auto text = GENERATE("", "@", ">");
  CAPTURE(text);
  CHECK_THROWS_AS(parse_endpoint(text, endpoint_mode::bind), postbox::config_error);
  CHECK_THROWS_WITH(parse_endpoint(text, endpoint_mode::bind),
                    Contains("endpoint \"" + std::string(text) + "\"") &&
                        Contains("empty endpoint"));
  CHECK_THROWS_AS(parse_endpoints(text, endpoint_mode::bind), postbox::config_error);
}

TEST_CASE("endpoint: an ipc path longer than 107 bytes is refused", "[unit][endpoint]") {
  const std::string longest = "/tmp/" + std::string(107 - 5, 'p');
  REQUIRE(longest.size() == 107);
  const auto ok = parse_endpoint("ipc://" + longest, endpoint_mode::bind);
  CHECK(ok.transport == postbox::transport::ipc);
  CHECK(ok.address == "ipc://" + longest);

  const std::string text = "ipc://" + longest + "x";
  CHECK_THROWS_AS(parse_endpoint(text, endpoint_mode::bind), postbox::config_error);
  CHECK_THROWS_WITH(parse_endpoint(text, endpoint_mode::bind),
                    Contains("endpoint \"" + text + "\"") &&
                        Contains("path longer than 107 bytes"));
}

TEST_CASE("endpoint: an ipc endpoint without a path is refused", "[unit][endpoint]") {
  CHECK_THROWS_AS(parse_endpoint("ipc://", endpoint_mode::bind), postbox::config_error);
  CHECK_THROWS_WITH(parse_endpoint("ipc://", endpoint_mode::bind),
                    Contains("endpoint \"ipc://\"") && Contains("missing path"));
}

TEST_CASE("endpoint: an inproc endpoint with an empty name is refused", "[unit][endpoint]") {
  CHECK_THROWS_AS(parse_endpoint("inproc://", endpoint_mode::connect), postbox::config_error);
  CHECK_THROWS_WITH(parse_endpoint(">inproc://", endpoint_mode::connect),
                    Contains("endpoint \">inproc://\"") && Contains("missing name"));
}

TEST_CASE("endpoint: to_string gives the notation back, and parsing it gives the same endpoint",
          "[unit][endpoint]") {
  const auto text = GENERATE("tcp://127.0.0.1:5555", "tcp://*:*", "tcp://[::1]:1", "tcp://host:0",
                             "ipc:///tmp/postbox.sock", "inproc://jobs");
  const auto default_mode = GENERATE(endpoint_mode::bind, endpoint_mode::connect);
  const std::string t(text);
  const bool any_port = t.ends_with(":*") || t.ends_with(":0");
  if (any_port && default_mode == endpoint_mode::connect) return;  // refused, tested above
  CAPTURE(t, default_mode == endpoint_mode::bind);

  const auto ep = parse_endpoint(t, default_mode);
  const auto s = ep.to_string();
  CHECK(s == (default_mode == endpoint_mode::bind ? "@" : ">") + t);
  // The round trip holds whatever the default of the role re-reading it.
  CHECK(parse_endpoint(s, endpoint_mode::bind) == ep);
  CHECK(parse_endpoint(s, endpoint_mode::connect) == ep);
  CHECK(parse_endpoints(s + "," + s, endpoint_mode::connect) ==
        std::vector<postbox::endpoint>{ep, ep});
}
