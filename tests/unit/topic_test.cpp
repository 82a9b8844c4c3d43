// Unit tests of hierarchical topic patterns (postbox/topic.hpp): "*" is one
// token, a last ">" one or more, no wildcard an exact match; the SUB socket
// prefix; and the patterns refused.
#include <catch2/catch.hpp>

#include <postbox/error.hpp>
#include <postbox/topic.hpp>

#include <string>

using Catch::Contains;
using postbox::topic_pattern;

namespace {

struct match_case {
  const char* pattern;
  const char* topic;
  bool expected;
};

// (pattern, topic, matches?)
constexpr match_case match_cases[] = {
    // no wildcard: exact match only
    {"orders", "orders", true},
    {"orders", "order", false},
    {"orders", "ordersx", false},
    {"orders", "orders.eu", false},
    {"orders.created", "orders.created", true},
    {"orders.created", "orders.created.eu", false},
    {"orders.created", "orders", false},
    {"orders.created", "orders.create", false},
    {"orders.created", "Orders.created", false},
    // "*": exactly one token
    {"*", "orders", true},
    {"*", "orders.eu", false},
    {"*", "", false},
    {"orders.*", "orders.eu", true},
    {"orders.*", "orders", false},
    {"orders.*", "orders.", false},
    {"orders.*", "orders.eu.created", false},
    {"orders.*.created", "orders.eu.created", true},
    {"orders.*.created", "orders.us.created", true},
    {"orders.*.created", "orders.created", false},
    {"orders.*.created", "orders..created", false},
    {"orders.*.created", "orders.eu.x.created", false},
    {"orders.*.created", "orders.eu.created.x", false},
    {"orders.*.created", "orders.eu.deleted", false},
    {"orders.*.created", "payments.eu.created", false},
    {"*.*", "a.b", true},
    {"*.*", "a", false},
    {"*.*", "a.b.c", false},
    {"*.created", "orders.created", true},
    {"*.created", "created", false},
    // ">": one or more trailing tokens
    {">", "orders", true},
    {">", "orders.eu.created", true},
    {">", "", false},
    {"orders.>", "orders.eu", true},
    {"orders.>", "orders.eu.created", true},
    {"orders.>", "orders", false},
    {"orders.>", "orders.", false},
    {"orders.>", "ordersx.eu", false},
    {"orders.>", "payments.eu", false},
    // ">" takes whatever remains if it is at least one byte, unchecked
    // (docs/protocol.md, "Topics and patterns")
    {"orders.>", "orders..x", true},
    {">", ".", true},
    {"orders.*", "orders.eu.", false},
    {"orders.*.>", "orders.eu.created", true},
    {"orders.*.>", "orders.eu.created.today", true},
    {"orders.*.>", "orders.eu", false},
    {"*.>", "a.b", true},
    {"*.>", "a", false},
    // the empty topic never matches
    {"orders", "", false},
    {"orders.>", "", false},
};

}  // namespace

TEST_CASE("topic: a pattern matches the topics its wildcards allow, and only those",
          "[unit][topic]") {
  for (const auto& c : match_cases) {
    const topic_pattern pattern(c.pattern);
    INFO("pattern \"" << c.pattern << "\", topic \"" << c.topic << "\"");
    CHECK(pattern.matches(c.topic) == c.expected);
  }
}

TEST_CASE("topic: every topic a pattern matches passes the pattern's socket prefix filter",
          "[unit][topic]") {
  // The SUB socket sees the wire bytes "topic 0x00 ..."; a pattern must never
  // filter out at the socket what it would match in the subscriber.
  for (const auto& c : match_cases) {
    if (!c.expected) continue;
    const topic_pattern pattern(c.pattern);
    const std::string wire = std::string(c.topic) + '\0' + "\x01";
    INFO("pattern \"" << c.pattern << "\", topic \"" << c.topic << "\"");
    CHECK(wire.starts_with(pattern.socket_prefix()));
  }
}

TEST_CASE("topic: the socket prefix is the literal tokens before the first wildcard, with their dot",
          "[unit][topic]") {
  const auto [text, prefix] = GENERATE(table<const char*, const char*>({
      {"orders.*.created", "orders."},
      {"orders.>", "orders."},
      {"orders.eu.*", "orders.eu."},
      {"orders.eu.>", "orders.eu."},
      {"a.*.b.>", "a."},
      {"*", ""},
      {">", ""},
      {"*.created", ""},
      {"*.eu.>", ""},
  }));
  const topic_pattern pattern(text);
  CAPTURE(text);
  CHECK(pattern.has_wildcards());
  CHECK(pattern.socket_prefix() == prefix);
  CHECK(pattern.text() == text);
}

TEST_CASE("topic: without wildcards the socket prefix is the whole topic and its 0x00",
          "[unit][topic]") {
  const std::string text = GENERATE("orders", "orders.created", "a.b.c.d");
  const topic_pattern pattern(text);
  CAPTURE(text);
  CHECK_FALSE(pattern.has_wildcards());
  CHECK(pattern.socket_prefix().size() == text.size() + 1);
  CHECK(pattern.socket_prefix() == text + std::string(1, '\0'));
  CHECK(pattern.text() == text);
  // The terminator keeps "orders" from receiving "orders.created" at the socket.
  const std::string longer_wire = text + ".more" + std::string(1, '\0');
  CHECK_FALSE(longer_wire.starts_with(pattern.socket_prefix()));
}

TEST_CASE("topic: a wildcard inside a token is a literal character", "[unit][topic]") {
  const topic_pattern pattern("orders.eu*");
  CHECK_FALSE(pattern.has_wildcards());
  CHECK(pattern.matches("orders.eu*"));
  CHECK_FALSE(pattern.matches("orders.eux"));
}

TEST_CASE("topic: a bad pattern is refused, naming the pattern", "[unit][topic]") {
  const auto [text, why] = GENERATE(table<const char*, const char*>({
      {"", "empty pattern"},
      {"a..b", "empty token"},
      {".a", "empty token"},
      {"a.", "empty token"},
      {".", "empty token"},
      {"orders.>.created", "\">\" must be the last token"},
      {">.a", "\">\" must be the last token"},
      {"a.>.>", "\">\" must be the last token"},
  }));
  CAPTURE(text);
  CHECK_THROWS_AS(topic_pattern(text), postbox::config_error);
  CHECK_THROWS_WITH(topic_pattern(text),
                    Contains("topic pattern \"" + std::string(text) + "\"") && Contains(why));
}

TEST_CASE("topic: a pattern with a 0x00 byte is refused", "[unit][topic]") {
  const std::string text("orders\0x", 8);
  CHECK_THROWS_AS(topic_pattern(text), postbox::config_error);
}

TEST_CASE("topic: the refusal of a pattern with a 0x00 byte says so", "[unit][topic]") {
  const std::string text("orders\0x", 8);
  CHECK_THROWS_WITH(topic_pattern(text), Contains("0x00") && Contains("\"orders...\""));
}
