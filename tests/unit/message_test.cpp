// Unit tests of the message value type and message ids (postbox/message.hpp,
// postbox/message_id.hpp): construction, setters, copies sharing a large
// payload, typed payloads under unpack limits, and time-ordered ids.
#include <catch2/catch.hpp>

#include <postbox/codec.hpp>
#include <postbox/error.hpp>
#include <postbox/message.hpp>
#include <postbox/message_id.hpp>

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <msgpack.hpp>

using Catch::Contains;

namespace {

struct order {
  std::string id;
  int quantity = 0;
  std::vector<std::string> items;
  std::map<std::string, double> prices;
  MSGPACK_DEFINE(id, quantity, items, prices)
  friend bool operator==(const order&, const order&) = default;
};

order sample_order() {
  return {"A-1001", 3, {"book", "pen"}, {{"book", 12.5}, {"pen", 1.25}}};
}

// `depth` arrays nested in one another around a 1: [[[...[1]...]]].
std::string nested_arrays(std::size_t depth) {
  return std::string(depth, '\x91') + '\x01';
}

std::uint64_t now_ms() {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                        std::chrono::system_clock::now().time_since_epoch())
                                        .count());
}

}  // namespace

TEST_CASE("message: a new message has its topic and payload and an unset header",
          "[unit][message]") {
  const postbox::message m("orders.created", std::string("hello"));
  CHECK(m.topic() == "orders.created");
  CHECK(m.payload() == "hello");
  CHECK(m.id().is_nil());
  CHECK(m.timestamp_us() == 0);
  CHECK(m.origin() == 0);
  CHECK(m.sequence() == 0);
  CHECK(m.attempt() == 0);
  CHECK_FALSE(m.key().has_value());
  CHECK_FALSE(m.correlation().has_value());
  CHECK(m.headers().empty());

  const postbox::message from_literal("t", "abc");
  CHECK(from_literal.payload() == "abc");
  const std::string bytes("a\0b", 3);
  const postbox::message from_view("t", std::string_view(bytes));
  CHECK(from_view.payload().size() == 3);
  CHECK(from_view.payload() == bytes);

  const postbox::message empty;
  CHECK(empty.topic().empty());
  CHECK(empty.payload().empty());
}

TEST_CASE("message: a large payload is kept intact", "[unit][message]") {
  std::string big(postbox::large_payload_threshold * 3 + 7, '\0');
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 31 + 7);
  const std::string expected = big;
  const postbox::message adopted("t", std::move(big));
  CHECK(adopted.payload() == expected);
  const postbox::message copied("t", std::string_view(expected));
  CHECK(copied.payload() == expected);
}

TEST_CASE("message: setters set each field and chain", "[unit][message]") {
  postbox::id_generator ids;
  const auto id = ids.next(1'700'000'000'000);
  const auto corr = ids.next(1'700'000'000'001);

  postbox::message m("a", "1");
  m.set_topic("orders.eu.created")
      .set_payload("body")
      .set_key("customer-42")
      .set_attempt(7)
      .set_id(id)
      .set_timestamp_us(1'700'000'000'123'456)
      .set_correlation(corr)
      .add_header("trace", "abc")
      .add_header("tenant", "t1");

  CHECK(m.topic() == "orders.eu.created");
  CHECK(m.payload() == "body");
  REQUIRE(m.key().has_value());
  CHECK(*m.key() == "customer-42");
  CHECK(m.attempt() == 7);
  CHECK(m.id() == id);
  CHECK(m.timestamp_us() == 1'700'000'000'123'456);
  CHECK(m.timestamp().time_since_epoch() == std::chrono::microseconds(1'700'000'000'123'456));
  REQUIRE(m.correlation().has_value());
  CHECK(*m.correlation() == corr);
  REQUIRE(m.headers().size() == 2);
  CHECK(m.headers()[0] == postbox::header{"trace", "abc"});
  CHECK(m.headers()[1] == postbox::header{"tenant", "t1"});

  m.clear_key().set_correlation(std::nullopt);
  CHECK_FALSE(m.key().has_value());
  CHECK_FALSE(m.correlation().has_value());

  // An empty key is a key, not the absence of one.
  m.set_key("");
  REQUIRE(m.key().has_value());
  CHECK(m.key()->empty());
}

TEST_CASE("message: header_value gives the first header of that name, or nothing",
          "[unit][message]") {
  postbox::message m("t", "p");
  CHECK_FALSE(m.header_value("trace").has_value());
  m.add_header("trace", "first").add_header("other", "x").add_header("trace", "second");
  REQUIRE(m.header_value("trace").has_value());
  CHECK(*m.header_value("trace") == "first");
  CHECK(*m.header_value("other") == "x");
  CHECK_FALSE(m.header_value("Trace").has_value());
  CHECK_FALSE(m.header_value("").has_value());
}

TEST_CASE("message: a copy shares a large payload's buffer and has every field",
          "[unit][message]") {
  const std::string body(postbox::large_payload_threshold * 4, 'x');
  postbox::message original("orders", std::string(body));
  original.set_key("k").set_attempt(2).add_header("h", "v");

  const postbox::message copy(original);
  CHECK(copy.payload().data() == original.payload().data());  // shared, not copied
  CHECK(copy.payload() == body);
  CHECK(copy.topic() == "orders");
  CHECK(copy.key() == original.key());
  CHECK(copy.attempt() == 2);
  CHECK(copy.headers() == original.headers());

  postbox::message assigned("other", "small");
  assigned = original;
  CHECK(assigned.payload().data() == original.payload().data());
  CHECK(assigned.topic() == "orders");

  // Replacing the original's payload leaves the copies with theirs.
  original.set_payload("new");
  CHECK(original.payload() == "new");
  CHECK(copy.payload() == body);
  CHECK(assigned.payload() == body);
}

TEST_CASE("message: a copy of a small payload is equal and independent", "[unit][message]") {
  postbox::message original("t", "small payload");
  postbox::message copy(original);
  CHECK(copy.payload() == "small payload");
  original.set_payload("changed");
  CHECK(copy.payload() == "small payload");
  copy = copy;  // self-assignment keeps the message
  CHECK(copy.payload() == "small payload");
}

TEST_CASE("message: a typed payload packed with msgpack comes back with as<T>",
          "[unit][message]") {
  const auto value = sample_order();
  const auto m = postbox::message::packed("orders.created", value);
  CHECK(m.topic() == "orders.created");
  CHECK_FALSE(m.payload().empty());
  CHECK(m.as<order>() == value);

  const auto back = m.try_as<order>();
  REQUIRE(back.has_value());
  CHECK(*back == value);

  // Packed bytes are plain msgpack: another reader sees the same array.
  const auto handle = msgpack::unpack(m.payload().data(), m.payload().size());
  REQUIRE(handle.get().type == msgpack::type::ARRAY);
  CHECK(handle.get().via.array.size == 4);

  CHECK(postbox::message::packed("n", 42).as<int>() == 42);
  CHECK(postbox::message::packed("s", std::string("hi")).as<std::string>() == "hi");
}

TEST_CASE("message: as<T> on a payload that is not valid msgpack throws protocol_error",
          "[unit][message]") {
  const std::string garbage = GENERATE(std::string("\xc1"), std::string("\x92\x01"),
                                       std::string("\xdb\xff\xff\xff\xff" "abc"),
                                       std::string(""));
  CAPTURE(garbage.size());
  const postbox::message m("t", std::string_view(garbage));
  CHECK_THROWS_AS(m.as<order>(), postbox::protocol_error);
  CHECK_THROWS_AS(m.as<int>(), postbox::protocol_error);
  CHECK_FALSE(m.try_as<order>().has_value());
  CHECK_FALSE(m.try_as<int>().has_value());
}

TEST_CASE("message: as<T> names why the payload was refused", "[unit][message]") {
  CHECK_THROWS_WITH(postbox::message("t", "\xc1").as<int>(), Contains("not valid msgpack"));
  // Valid msgpack of another type.
  const auto text = postbox::message::packed("t", std::string("not an order"));
  CHECK_THROWS_AS(text.as<order>(), postbox::protocol_error);
  CHECK_THROWS_WITH(text.as<order>(), Contains("not the expected type"));
  // A valid value followed by more bytes.
  const postbox::message trailing("t", std::string_view("\x01\x02\x03", 3));
  CHECK_THROWS_AS(trailing.as<int>(), postbox::protocol_error);
  CHECK_THROWS_WITH(trailing.as<int>(), Contains("2 bytes after its msgpack value"));
}

TEST_CASE("message: try_as returns nothing where as<T> would throw", "[unit][message]") {
  const auto m = postbox::message::packed("t", 42);
  CHECK(m.try_as<int>() == std::optional<int>(42));
  CHECK_FALSE(m.try_as<order>().has_value());
  CHECK_FALSE(m.try_as<std::string>().has_value());
  CHECK_FALSE(postbox::message("t", "\xc1").try_as<int>().has_value());
}

TEST_CASE("message: a payload nested deeper than the unpack limit throws protocol_error",
          "[unit][message]") {
  const postbox::message deep("t", std::string_view(nested_arrays(40)));
  postbox::unpack_limits limits;
  REQUIRE(limits.depth == 32);  // the documented default
  CHECK_THROWS_AS(deep.as<int>(limits), postbox::protocol_error);
  CHECK_THROWS_WITH(deep.as<std::vector<int>>(), Contains("deeper than 32"));
  CHECK_FALSE(deep.try_as<std::vector<int>>().has_value());

  // The limit is inclusive: 32 levels pass it, 33 do not.
  CHECK_THROWS_WITH(postbox::message("t", std::string_view(nested_arrays(32))).as<int>(),
                    Contains("not the expected type"));
  CHECK_THROWS_WITH(postbox::message("t", std::string_view(nested_arrays(33))).as<int>(),
                    Contains("deeper than 32"));

  // A tighter limit refuses what the default takes: by default the depth
  // passes and only the type is wrong.
  const postbox::message shallow("t", std::string_view(nested_arrays(10)));
  CHECK_THROWS_WITH(shallow.as<int>(), Contains("not the expected type"));
  limits.depth = 4;
  CHECK_THROWS_AS(shallow.as<int>(limits), postbox::protocol_error);
  CHECK_THROWS_WITH(shallow.as<int>(limits), Contains("deeper than 4"));

  using nested3 = std::vector<std::vector<std::vector<int>>>;
  const auto three = postbox::message::packed("t", nested3{{{1, 2}}, {{3}}});
  CHECK(three.as<nested3>() == nested3{{{1, 2}}, {{3}}});
  limits.depth = 2;
  CHECK_THROWS_WITH(three.as<nested3>(limits), Contains("deeper than 2"));
}

TEST_CASE("message: a container larger than the element limit throws protocol_error",
          "[unit][message]") {
  const auto m = postbox::message::packed("t", std::vector<int>(100, 1));
  CHECK(m.as<std::vector<int>>().size() == 100);
  postbox::unpack_limits limits;
  limits.elements = 50;
  CHECK_THROWS_AS(m.as<std::vector<int>>(limits), postbox::protocol_error);
  CHECK_THROWS_WITH(m.as<std::vector<int>>(limits), Contains("unpack limit"));

  // A claimed size larger than the payload is refused, not allocated.
  const postbox::message liar("t", std::string_view("\xdd\x7f\xff\xff\xff\x01", 6));
  CHECK_THROWS_AS(liar.as<std::vector<int>>(), postbox::protocol_error);
}

TEST_CASE("message id: ids from one generator are strictly increasing", "[unit][message_id]") {
  postbox::id_generator ids;
  SECTION("on the real clock") {
    auto previous = ids.next(now_ms());
    for (int i = 0; i < 100'000; ++i) {
      const auto id = ids.next(now_ms());
      if (!(previous < id)) {
        FAIL_CHECK("id " << i << " " << id.to_hex() << " is not after " << previous.to_hex());
        break;
      }
      previous = id;
    }
    CHECK_FALSE(previous.is_nil());
  }
  SECTION("within one millisecond, past the 4096 ids of its sub-millisecond counter") {
    const std::uint64_t ms = 1'700'000'000'000;
    auto previous = ids.next(ms);
    CHECK(previous.unix_ms() == ms);
    for (int i = 0; i < 100'000; ++i) {
      const auto id = ids.next(ms);
      if (!(previous < id)) {
        FAIL_CHECK("id " << i << " " << id.to_hex() << " is not after " << previous.to_hex());
        break;
      }
      previous = id;
    }
    CHECK(previous.unix_ms() > ms);  // the counter carried into the time
  }
  SECTION("when the clock steps back") {
    const auto later = ids.next(2'000'000'000'000);
    const auto earlier_clock = ids.next(1'000'000'000'000);
    CHECK(later < earlier_clock);
    CHECK(earlier_clock.unix_ms() >= later.unix_ms());
  }
}

TEST_CASE("message id: unix_ms gives back the time an id was made with", "[unit][message_id]") {
  postbox::id_generator ids;
  const std::uint64_t ms = GENERATE(std::uint64_t{1}, std::uint64_t{1'700'000'000'123},
                                    now_ms(), (std::uint64_t{1} << 48) - 1);
  CAPTURE(ms);
  const auto id = ids.next(ms);
  CHECK(id.unix_ms() == ms);
  CHECK_FALSE(id.is_nil());
  CHECK((id.bytes[6] >> 4) == 7);      // UUIDv7 version nibble
  CHECK((id.bytes[8] >> 6) == 0b10);   // RFC 4122 variant

  postbox::message_id fixed;
  fixed.bytes = {0x01, 0x8b, 0xcf, 0xe5, 0x68, 0x00, 0x70, 0, 0x80, 0, 0, 0, 0, 0, 0, 1};
  CHECK(fixed.unix_ms() == 0x018bcfe56800);
}

TEST_CASE("message id: to_hex is 32 lowercase hex digits of the bytes in order",
          "[unit][message_id]") {
  postbox::message_id id;
  CHECK(id.is_nil());
  CHECK(id.to_hex() == std::string(32, '0'));
  for (std::size_t i = 0; i < id.bytes.size(); ++i) {
    id.bytes[i] = static_cast<std::uint8_t>(i * 0x11);
  }
  CHECK_FALSE(id.is_nil());
  CHECK(id.to_hex() == "00112233445566778899aabbccddeeff");

  postbox::id_generator ids;
  const auto hex = ids.next(now_ms()).to_hex();
  CHECK(hex.size() == 32);
  CHECK(hex.find_first_not_of("0123456789abcdef") == std::string::npos);
}

TEST_CASE("message id: high and low are the two big-endian halves, and from_halves inverts them",
          "[unit][message_id]") {
  postbox::message_id id;
  for (std::size_t i = 0; i < id.bytes.size(); ++i) id.bytes[i] = static_cast<std::uint8_t>(i + 1);
  CHECK(id.high() == 0x0102030405060708ull);
  CHECK(id.low() == 0x090a0b0c0d0e0f10ull);
  CHECK(postbox::message_id::from_halves(id.high(), id.low()) == id);
  postbox::id_generator gen;
  const auto a = gen.next(1'700'000'000'000ull), b = gen.next(1'700'000'000'000ull);
  CHECK(b.high() == a.high() + 1);  // the sequence within the millisecond
  CHECK(b.low() == a.low() + 1);    // the tail
}

TEST_CASE("message id: two generators in the same millisecond make different ids",
          "[unit][message_id]") {
  postbox::id_generator a, b;
  const std::uint64_t ms = 1'700'000'000'000;
  CHECK(a.next(ms) != b.next(ms));
}

TEST_CASE("message: a moved-from message is empty, not a view of the moved payload",
          "[unit][message]") {
  postbox::message a("t", std::string(4000, 'p'));
  postbox::message b(std::move(a));
  CHECK(b.payload().size() == 4000);
  CHECK(a.payload().empty());  // NOLINT(bugprone-use-after-move): the contract under test
  postbox::message c("u", std::string(5000, 'q'));
  c = std::move(b);
  CHECK(c.payload() == std::string(4000, 'p'));
  CHECK(b.payload().empty());  // NOLINT(bugprone-use-after-move)
}

TEST_CASE("message: a payload claiming huge nested maps is refused without reserving memory",
          "[unit][message]") {
  std::string payload;
  for (int i = 0; i < 31; ++i) payload += std::string("\xdf\x00\x10\x00\x00", 5);
  postbox::message m("t", payload);
  using int_map = std::map<int, int>;
  CHECK_THROWS_AS(m.as<int_map>(), postbox::protocol_error);
}
