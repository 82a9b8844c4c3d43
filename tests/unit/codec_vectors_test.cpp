// The wire format's test vectors (docs/protocol.md, section 14) as golden
// tests: each documented message encodes to the documented bytes, the bytes
// decode to the documented fields, and the decoder refuses what section 12
// says it refuses, with the reason it names. The hex blocks below are copied
// from the document; keep the two in step.
#include <catch2/catch.hpp>

#include <postbox/codec.hpp>
#include <postbox/error.hpp>
#include <postbox/message.hpp>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <msgpack.hpp>
#include <zmq.hpp>

namespace {

using postbox::reject_reason;

// Bytes from a hex dump as the document prints it: pairs of hex digits,
// separated by any whitespace.
std::string from_hex(std::string_view dump) {
  auto digit = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  std::string out;
  int high = -1;
  for (char c : dump) {
    const int d = digit(c);
    if (d < 0) {
      REQUIRE(high < 0);  // a digit pair split by whitespace is a typo in the vector
      continue;
    }
    if (high < 0) {
      high = d;
    } else {
      out.push_back(static_cast<char>(high * 16 + d));
      high = -1;
    }
  }
  REQUIRE(high < 0);
  return out;
}

std::string to_hex(std::string_view bytes) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out;
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    const auto b = static_cast<unsigned char>(bytes[i]);
    if (i != 0) out.push_back(i % 16 == 0 ? '\n' : ' ');
    out.push_back(digits[b >> 4]);
    out.push_back(digits[b & 0xF]);
  }
  return out;
}

std::string bytes_of(const zmq::message_t& frame) {
  return {static_cast<const char*>(frame.data()), frame.size()};
}

postbox::message_id id_from_hex(std::string_view hex) {
  const std::string bytes = from_hex(hex);
  REQUIRE(bytes.size() == 16);
  postbox::message_id id;
  for (std::size_t i = 0; i < 16; ++i) id.bytes[i] = static_cast<std::uint8_t>(bytes[i]);
  return id;
}

// Decodes `frames` (1 or 2 byte strings) and returns the reason, if refused.
std::optional<reject_reason> decode_bytes(const std::vector<std::string>& frames,
                                          postbox::message& out) {
  zmq::message_t parts[2];
  REQUIRE(frames.size() <= 2);
  for (std::size_t i = 0; i < frames.size(); ++i) parts[i].rebuild(frames[i].data(), frames[i].size());
  return postbox::decode(parts, frames.size(), out);
}

std::optional<reject_reason> decode_bytes(const std::vector<std::string>& frames) {
  postbox::message unused;
  return decode_bytes(frames, unused);
}

// ---- the documented vectors, copied from docs/protocol.md, section 14 ----

constexpr const char* vector1_hex = R"(
6a 6f 62 73 00 01 98 c4 10 01 8b cf e5 68 00 70
00 80 11 22 33 44 55 66 77 cf 00 06 0a 24 18 1e
40 00 00 00 00 c0 c0 c0
)";

constexpr const char* vector2_hex = R"(
6f 72 64 65 72 73 2e 65 75 2e 63 72 65 61 74 65
64 00 01 98 c4 10 01 8b cf e5 6b e8 70 00 80 11
22 33 44 55 66 78 cf 00 06 0a 24 18 2d 82 40 00
00 03 ab 63 75 73 74 6f 6d 65 72 2d 34 32 c4 10
01 8b cf e5 69 f4 70 05 9a bc de f0 12 34 56 78
82 a5 74 72 61 63 65 a6 61 62 63 31 32 33 ac 63
6f 6e 74 65 6e 74 2d 74 79 70 65 aa 74 65 78 74
2f 70 6c 61 69 6e 68 65 6c 6c 6f
)";

constexpr const char* vector3_hex = R"(
70 72 69 63 65 73 2e 65 75 72 75 73 64 00 01 98
c4 10 01 8b cf e5 6f d0 70 00 b3 5a 0c 1d 2e 3f
40 51 cf 00 06 0a 24 18 3c c4 80 cf 9e 37 79 b9
7f 4a 7c 15 2a 00 c0 c0 c0 31 2e 30 38 34 32
)";

constexpr const char* vector4_frame1_hex = R"(
62 6c 6f 62 73 00 01 98 c4 10 01 8b cf e5 73 b8
70 00 80 11 22 33 44 55 66 79 cf 00 06 0a 24 18
4c 06 c0 00 00 00 a7 76 69 64 65 6f 2d 37 c0 c0
)";

constexpr const char* vector5_hex = R"(
6a 6f 62 73 00 01 9a c4 10 01 8b cf e5 68 00 70
00 80 11 22 33 44 55 66 77 cf 00 06 0a 24 18 1e
40 00 00 00 00 c0 c0 c0 91 91 91 07 81 a6 66 75
74 75 72 65 c3 6f 6b
)";

constexpr const char* id1_hex = "018bcfe568007000 8011223344556677";
constexpr const char* id2_hex = "018bcfe56be87000 8011223344556678";
constexpr const char* correlation2_hex = "018bcfe569f47005 9abcdef012345678";
constexpr const char* id3_hex = "018bcfe56fd07000 b35a0c1d2e3f4051";
constexpr const char* id4_hex = "018bcfe573b87000 8011223344556679";

constexpr std::uint64_t vector3_origin = 0x9e3779b97f4a7c15;
static_assert(vector3_origin == 11400714819323198485ULL);

// Vector 4's payload: 20000 bytes, byte i = i mod 251.
std::string vector4_payload() {
  std::string p(20000, '\0');
  for (std::size_t i = 0; i < p.size(); ++i) p[i] = static_cast<char>(i % 251);
  return p;
}
static_assert(20000 >= postbox::large_payload_threshold);

const std::vector<postbox::header>& vector2_headers() {
  static const std::vector<postbox::header> headers{{"trace", "abc123"},
                                                    {"content-type", "text/plain"}};
  return headers;
}

postbox::message_view vector1_view(const postbox::message_id& id) {
  postbox::message_view v;
  v.topic = "jobs";
  v.payload = "";
  v.id = id;
  v.timestamp_us = 1700000000000000;
  return v;
}

void check_vector1_fields(const postbox::message& m) {
  CHECK(m.topic() == "jobs");
  CHECK(m.id() == id_from_hex(id1_hex));
  CHECK(m.id().unix_ms() == 1700000000000);
  CHECK(m.timestamp_us() == 1700000000000000);
  CHECK(m.origin() == 0);
  CHECK(m.sequence() == 0);
  CHECK(m.attempt() == 0);
  CHECK_FALSE(m.key().has_value());
  CHECK_FALSE(m.correlation().has_value());
  CHECK(m.headers().empty());
}

}  // namespace

// ---------------------------------------------------------------- encoding

TEST_CASE("codec: a minimal message with an empty payload encodes to the documented bytes",
          "[unit][codec]") {
  const auto id = id_from_hex(id1_hex);
  postbox::encoded out;
  postbox::encode(vector1_view(id), out);
  CHECK(out.frames == 1);
  CHECK(to_hex(bytes_of(out.first)) == to_hex(from_hex(vector1_hex)));
}

TEST_CASE("codec: a message with key, correlation and headers encodes to the documented bytes",
          "[unit][codec]") {
  const auto id = id_from_hex(id2_hex);
  const auto correlation = id_from_hex(correlation2_hex);
  postbox::message_view v;
  v.topic = "orders.eu.created";
  v.payload = "hello";
  v.id = id;
  v.timestamp_us = 1700000001000000;
  v.attempt = 3;
  v.key = std::string_view("customer-42");
  v.correlation = &correlation;
  v.headers = vector2_headers();
  postbox::encoded out;
  postbox::encode(v, out);
  CHECK(out.frames == 1);
  CHECK(to_hex(bytes_of(out.first)) == to_hex(from_hex(vector2_hex)));
}

TEST_CASE("codec: a published message with origin and sequence encodes to the documented bytes",
          "[unit][codec]") {
  postbox::message_view v;
  v.topic = "prices.eurusd";
  v.payload = "1.0842";
  v.id = id_from_hex(id3_hex);
  v.timestamp_us = 1700000002000000;
  v.origin = vector3_origin;
  v.sequence = 42;
  postbox::encoded out;
  postbox::encode(v, out);
  CHECK(out.frames == 1);
  CHECK(to_hex(bytes_of(out.first)) == to_hex(from_hex(vector3_hex)));
}

TEST_CASE("codec: a large payload travels in a second frame after the documented header frame",
          "[unit][codec]") {
  const std::string payload = vector4_payload();
  postbox::message_view v;
  v.topic = "blobs";
  v.payload = payload;
  v.id = id_from_hex(id4_hex);
  v.timestamp_us = 1700000003000000;
  v.key = std::string_view("video-7");
  postbox::encoded out;
  postbox::encode(v, out);
  REQUIRE(out.frames == 2);
  CHECK(to_hex(bytes_of(out.first)) == to_hex(from_hex(vector4_frame1_hex)));
  CHECK(bytes_of(out.second) == payload);
}

TEST_CASE("codec: payloads of 8192 bytes or more take two frames, shorter ones one",
          "[unit][codec]") {
  const auto id = id_from_hex(id1_hex);
  const std::size_t size = GENERATE(std::size_t{0}, std::size_t{1},
                                    postbox::large_payload_threshold - 1,
                                    postbox::large_payload_threshold,
                                    postbox::large_payload_threshold + 1);
  const std::string payload(size, 'p');
  auto v = vector1_view(id);
  v.payload = payload;
  postbox::encoded out;
  postbox::encode(v, out);
  CAPTURE(size);
  CHECK(out.frames == (size >= 8192 ? 2 : 1));
  // Vector 1 is 40 bytes with an empty payload; the header never grows with it.
  if (out.frames == 1) {
    CHECK(out.first.size() == 40 + size);
  } else {
    CHECK(out.first.size() == 40);
    CHECK(out.second.size() == size);
  }
}

TEST_CASE("codec: the documented header is an 8-element msgpack array as msgpack-c reads it",
          "[unit][codec]") {
  // Independent of our hand-written reader: msgpack-c parses vector 2's header.
  const std::string frame = from_hex(vector2_hex);
  const std::size_t header_start = std::string_view("orders.eu.created").size() + 2;
  std::size_t offset = header_start;
  const auto handle = msgpack::unpack(frame.data(), frame.size(), offset);
  const msgpack::object& header = handle.get();
  REQUIRE(header.type == msgpack::type::ARRAY);
  REQUIRE(header.via.array.size == 8);
  const msgpack::object* f = header.via.array.ptr;
  CHECK(f[0].type == msgpack::type::BIN);
  CHECK(f[0].via.bin.size == 16);
  CHECK(f[1].as<std::uint64_t>() == 1700000001000000);
  CHECK(f[2].as<std::uint64_t>() == 0);
  CHECK(f[3].as<std::uint64_t>() == 0);
  CHECK(f[4].as<std::uint32_t>() == 3);
  CHECK(f[5].type == msgpack::type::STR);
  CHECK(f[5].as<std::string>() == "customer-42");
  CHECK(f[6].type == msgpack::type::BIN);
  REQUIRE(f[7].type == msgpack::type::MAP);
  CHECK(f[7].via.map.size == 2);
  CHECK(frame.substr(offset) == "hello");  // the payload starts where the array ends
}

// ---------------------------------------------------------------- decoding

TEST_CASE("codec: the minimal message decodes from the documented bytes with every field",
          "[unit][codec]") {
  postbox::message m;
  REQUIRE_FALSE(decode_bytes({from_hex(vector1_hex)}, m));
  check_vector1_fields(m);
  CHECK(m.payload().empty());
}

TEST_CASE("codec: the message with key, correlation and headers decodes with every field",
          "[unit][codec]") {
  postbox::message m;
  REQUIRE_FALSE(decode_bytes({from_hex(vector2_hex)}, m));
  CHECK(m.topic() == "orders.eu.created");
  CHECK(m.payload() == "hello");
  CHECK(m.id() == id_from_hex(id2_hex));
  CHECK(m.id().unix_ms() == 1700000001000);
  CHECK(m.timestamp_us() == 1700000001000000);
  CHECK(m.origin() == 0);
  CHECK(m.sequence() == 0);
  CHECK(m.attempt() == 3);
  REQUIRE(m.key().has_value());
  CHECK(*m.key() == "customer-42");
  REQUIRE(m.correlation().has_value());
  CHECK(*m.correlation() == id_from_hex(correlation2_hex));
  CHECK(m.headers() == vector2_headers());  // wire order kept
  CHECK(m.header_value("content-type") == std::optional<std::string_view>("text/plain"));
}

TEST_CASE("codec: the published message decodes with its origin and sequence",
          "[unit][codec]") {
  postbox::message m;
  REQUIRE_FALSE(decode_bytes({from_hex(vector3_hex)}, m));
  CHECK(m.topic() == "prices.eurusd");
  CHECK(m.payload() == "1.0842");
  CHECK(m.id() == id_from_hex(id3_hex));
  CHECK(m.timestamp_us() == 1700000002000000);
  CHECK(m.origin() == vector3_origin);
  CHECK(m.sequence() == 42);
  CHECK(m.attempt() == 0);
  CHECK_FALSE(m.key().has_value());
  CHECK_FALSE(m.correlation().has_value());
  CHECK(m.headers().empty());
}

TEST_CASE("codec: the two-frame message decodes with its payload from the second frame",
          "[unit][codec]") {
  const std::string payload = vector4_payload();
  postbox::message m;
  REQUIRE_FALSE(decode_bytes({from_hex(vector4_frame1_hex), payload}, m));
  CHECK(m.topic() == "blobs");
  CHECK(m.id() == id_from_hex(id4_hex));
  CHECK(m.timestamp_us() == 1700000003000000);
  CHECK(m.origin() == 0);
  CHECK(m.sequence() == 0);
  CHECK(m.attempt() == 0);
  REQUIRE(m.key().has_value());
  CHECK(*m.key() == "video-7");
  CHECK_FALSE(m.correlation().has_value());
  CHECK(m.headers().empty());
  CHECK(m.payload().size() == 20000);
  CHECK(m.payload() == payload);
}

TEST_CASE("codec: a two-frame message round-trips through encode and decode", "[unit][codec]") {
  const std::string payload = vector4_payload();
  postbox::message original("media.uploaded", payload);
  original.set_key("user-9").set_attempt(2).add_header("a", "1").add_header("b", "2");
  original.set_correlation(id_from_hex(correlation2_hex));
  postbox::stamp s;
  s.id = id_from_hex(id4_hex);
  s.timestamp_us = 1700000003000000;
  s.origin = 7;
  s.sequence = 9;

  postbox::encoded out;
  postbox::encode(original, s, out);
  REQUIRE(out.frames == 2);
  CHECK(out.second.size() == payload.size());

  zmq::message_t frames[2];
  frames[0].move(out.first);
  frames[1].move(out.second);
  postbox::message back;
  REQUIRE_FALSE(postbox::decode(frames, 2, back));
  CHECK(back.topic() == "media.uploaded");
  CHECK(back.payload() == payload);
  CHECK(back.id() == s.id);
  CHECK(back.timestamp_us() == s.timestamp_us);
  CHECK(back.origin() == 7);
  CHECK(back.sequence() == 9);
  CHECK(back.attempt() == 2);
  CHECK(back.key() == std::optional<std::string_view>("user-9"));
  CHECK(back.correlation() == std::optional(id_from_hex(correlation2_hex)));
  CHECK(back.headers() == original.headers());
}

TEST_CASE("codec: encode_single gives one frame's bytes, the frames of encode() joined",
          "[unit][codec]") {
  for (const std::size_t size : {std::size_t{0}, std::size_t{100}, postbox::large_payload_threshold + 5}) {
    INFO("payload of " << size << " bytes");
    postbox::message m("media.uploaded", std::string(size, 'q'));
    m.set_key("user-9").add_header("a", "1");
    postbox::stamp s;
    s.id = id_from_hex(id4_hex);
    s.timestamp_us = 1700000003000000;
    postbox::encoded frames;
    postbox::encode(m, s, frames);
    std::string joined(static_cast<const char*>(frames.first.data()), frames.first.size());
    if (frames.frames == 2) joined.append(static_cast<const char*>(frames.second.data()), frames.second.size());
    std::string single = "left over from before";
    postbox::encode_single(m, s, single);
    CHECK(single == joined);
  }
}

TEST_CASE("codec: decode_shared reads one of several messages packed in a frame, shares the frame's "
          "buffer with a payload that fills much of it and copies a small one",
          "[unit][codec]") {
  postbox::message a("orders.created", "first payload");
  postbox::message b("orders.paid", std::string(300, 'b'));
  b.set_key("customer-7").add_header("trace", "t-1");
  postbox::stamp s;
  s.id = id_from_hex(id4_hex);
  s.timestamp_us = 1700000003000000;
  std::string ea, eb;
  postbox::encode_single(a, s, ea);
  postbox::encode_single(b, s, eb);
  const std::string packed = "hdr" + ea + "mid" + eb + "end";
  postbox::message back_a, back_b;
  {
    zmq::message_t frame(packed.data(), packed.size());  // libzmq's own copy
    REQUIRE_FALSE(postbox::decode_shared(frame, 3, ea.size(), back_a));
    REQUIRE_FALSE(postbox::decode_shared(frame, 3 + ea.size() + 3, eb.size(), back_b));
    // b's payload is most of the frame: shared. a's is small beside it:
    // copied, so that holding a does not keep the frame.
    const auto* begin = static_cast<const char*>(frame.data());
    const auto* end = begin + frame.size();
    CHECK(back_b.payload().data() >= begin);
    CHECK(back_b.payload().data() + back_b.payload().size() <= end);
    CHECK((back_a.payload().data() >= end || back_a.payload().data() + back_a.payload().size() <= begin));
    // Out of the frame's bounds: refused, nothing read.
    postbox::message none;
    CHECK(postbox::decode_shared(frame, packed.size() + 1, 0, none) == postbox::reject_reason::bad_header);
    CHECK(postbox::decode_shared(frame, 3, packed.size(), none) == postbox::reject_reason::bad_header);
  }  // the frame is gone; the messages still hold its buffer
  CHECK(back_a.topic() == "orders.created");
  CHECK(back_a.payload() == "first payload");
  CHECK(back_a.id() == s.id);
  CHECK(back_b.topic() == "orders.paid");
  CHECK(back_b.payload() == std::string(300, 'b'));
  CHECK(back_b.key() == std::optional<std::string_view>("customer-7"));
  CHECK(back_b.headers() == b.headers());
  // A copy of a decoded message outlives the original too.
  postbox::message copy = back_b;
  back_b = postbox::message();
  CHECK(copy.payload() == std::string(300, 'b'));

  // A large payload is shared however big the frame around it.
  postbox::message c("videos.uploaded", std::string(postbox::large_payload_threshold, 'c'));
  std::string ec;
  postbox::encode_single(c, s, ec);
  const std::string big = std::string(5 * postbox::large_payload_threshold, 'x') + ec;
  postbox::message back_c;
  {
    zmq::message_t frame(big.data(), big.size());
    REQUIRE_FALSE(postbox::decode_shared(frame, big.size() - ec.size(), ec.size(), back_c));
    const auto* begin = static_cast<const char*>(frame.data());
    CHECK(back_c.payload().data() >= begin);
    CHECK(back_c.payload().data() + back_c.payload().size() <= begin + frame.size());
  }
  CHECK(back_c.payload() == c.payload());
}

TEST_CASE("codec: a reader accepts both frame forms for any payload size", "[unit][codec]") {
  const std::string header_frame = from_hex(vector1_hex);  // ends with the header
  SECTION("a short payload in a second frame") {
    postbox::message m;
    REQUIRE_FALSE(decode_bytes({header_frame, "abc"}, m));
    check_vector1_fields(m);
    CHECK(m.payload() == "abc");
  }
  SECTION("an empty second frame") {
    postbox::message m;
    REQUIRE_FALSE(decode_bytes({header_frame, ""}, m));
    check_vector1_fields(m);
    CHECK(m.payload().empty());
  }
  SECTION("a large payload inline in the first frame") {
    const std::string payload = vector4_payload();
    postbox::message m;
    REQUIRE_FALSE(decode_bytes({header_frame + payload}, m));
    check_vector1_fields(m);
    CHECK(m.payload() == payload);
  }
}

// ---------------------------------------------------------------- forward compatibility

TEST_CASE("codec: a header with extra trailing elements still decodes", "[unit][codec]") {
  SECTION("the documented vector 5: a nested array of depth 3 and a map") {
    postbox::message m;
    REQUIRE_FALSE(decode_bytes({from_hex(vector5_hex)}, m));
    check_vector1_fields(m);
    CHECK(m.payload() == "ok");  // the payload starts after the skipped elements
  }
  SECTION("every msgpack type may be skipped") {
    const std::vector<std::string> elements{
        "c0", "c2", "c3",                                   // nil, false, true
        "7f", "e0",                                         // positive and negative fixint
        "cc ff", "cd ff ff", "ce 00 00 00 01", "cf 00 00 00 00 00 00 00 01",
        "d0 80", "d1 80 00", "d2 80 00 00 00", "d3 80 00 00 00 00 00 00 00",
        "ca 3f 80 00 00", "cb 3f f0 00 00 00 00 00 00",     // float 32, float 64
        "a1 61", "d9 01 61", "da 00 01 61", "db 00 00 00 01 61",
        "c4 02 61 62", "c5 00 01 00", "c6 00 00 00 01 00",
        "90", "dc 00 01 c0", "dd 00 00 00 01 c0",
        "80", "de 00 01 a1 6b 01", "df 00 00 00 01 a1 6b 01",
        "d4 01 02", "d5 01 00 00", "d6 01 00 00 00 00", "d7 01 00 00 00 00 00 00 00 00",
        "d8 01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00",
        "c7 01 05 ff", "c8 00 01 05 ff", "c9 00 00 00 01 05 ff",  // ext 8, 16, 32
    };
    // Vector 1's fields in an array 16 that also holds one of each type.
    const std::size_t count = 8 + elements.size();
    std::string frame = from_hex(vector1_hex);
    frame[6] = '\xdc';
    frame.insert(7, std::string{static_cast<char>(count >> 8), static_cast<char>(count & 0xFF)});
    for (const auto& e : elements) frame += from_hex(e);
    frame += "tail";
    postbox::message m;
    REQUIRE_FALSE(decode_bytes({frame}, m));
    check_vector1_fields(m);
    CHECK(m.payload() == "tail");
  }
  SECTION("in the two-frame form the skipped elements still end frame 1") {
    std::string frame = from_hex(vector5_hex);
    frame.resize(frame.size() - 2);  // without the inline payload "ok"
    postbox::message m;
    REQUIRE_FALSE(decode_bytes({frame, "ok"}, m));
    check_vector1_fields(m);
    CHECK(m.payload() == "ok");
  }
}

TEST_CASE("codec: a skipped element may nest 8 deep but not deeper", "[unit][codec]") {
  // Vector 1 with one trailing element: `arrays` nested fixarrays, the
  // innermost empty or holding the integer 7.
  auto with_nesting = [](int arrays, bool innermost_holds_int) {
    std::string frame = from_hex(vector1_hex);
    frame[6] = '\x99';
    std::string element(static_cast<std::size_t>(arrays), '\x91');
    if (innermost_holds_int) {
      element.push_back('\x07');
    } else {
      element.back() = '\x90';
    }
    return frame + element;
  };
  CHECK_FALSE(decode_bytes({with_nesting(8, false)}));
  CHECK_FALSE(decode_bytes({with_nesting(7, true)}));
  CHECK(decode_bytes({with_nesting(8, true)}) == reject_reason::depth_exceeded);
  CHECK(decode_bytes({with_nesting(9, false)}) == reject_reason::depth_exceeded);
  CHECK(decode_bytes({with_nesting(1000, false)}) == reject_reason::depth_exceeded);
}

// ---------------------------------------------------------------- rejections

TEST_CASE("codec: version byte 0x02 is refused as unknown_version", "[unit][codec]") {
  std::string frame = from_hex(vector1_hex);
  REQUIRE(frame[5] == '\x01');
  frame[5] = '\x02';
  CHECK(decode_bytes({frame}) == reject_reason::unknown_version);
  frame[5] = '\x00';
  CHECK(decode_bytes({frame}) == reject_reason::unknown_version);
}

TEST_CASE("codec: each malformed message is refused with the reason docs/protocol.md gives",
          "[unit][codec]") {
  const std::string topic = std::string("jobs\0\x01", 6);
  const std::string id = from_hex("c4 10 018bcfe568007000 8011223344556677");
  const std::string rest = from_hex("00 00 00 00 c0 c0 c0");  // fields 1-7 of vector 1
  struct row {
    const char* what;
    std::vector<std::string> frames;
    reject_reason reason;
  };
  const std::vector<row> rows{
      {"no frames", {}, reject_reason::frame_count},
      {"an empty frame 1", {""}, reject_reason::bad_topic},
      {"255 bytes without 0x00", {std::string(255, 'a')}, reject_reason::bad_topic},
      {"256 bytes without 0x00", {std::string(256, 'a')}, reject_reason::too_large},
      {"no version byte", {std::string("jobs\0", 5)}, reject_reason::bad_msgpack},
      {"version 2", {std::string("jobs\0\x02", 6) + "\x98" + id + rest},
       reject_reason::unknown_version},
      {"a map instead of the array", {topic + "\x80"}, reject_reason::bad_header},
      {"0xc1 instead of the array", {topic + "\xc1"}, reject_reason::bad_msgpack},
      {"header cut off before the array", {topic}, reject_reason::bad_msgpack},
      {"7 elements", {topic + "\x97" + id + rest.substr(0, 6)}, reject_reason::bad_header},
      {"an array claiming 200 elements", {topic + from_hex("dc 00 c8") + id + rest},
       reject_reason::bad_msgpack},
      {"id as str", {topic + "\x98" + from_hex("b0") + id.substr(2) + rest},
       reject_reason::bad_header},
      {"id of 15 bytes", {topic + "\x98" + from_hex("c4 0f") + id.substr(2, 15) + rest},
       reject_reason::bad_header},
      {"id as bin 16", {topic + "\x98" + from_hex("c5 00 10") + id.substr(2) + rest},
       reject_reason::bad_header},
      {"id cut off", {topic + "\x98" + id.substr(0, 10)}, reject_reason::bad_msgpack},
      {"timestamp nil", {topic + "\x98" + id + from_hex("c0 00 00 00 c0 c0 c0")},
       reject_reason::bad_header},
      {"timestamp negative", {topic + "\x98" + id + from_hex("ff 00 00 00 c0 c0 c0")},
       reject_reason::bad_header},
      {"origin int8 -1", {topic + "\x98" + id + from_hex("00 d0 ff 00 00 c0 c0 c0")},
       reject_reason::bad_header},
      {"sequence 0xc1", {topic + "\x98" + id + from_hex("00 00 c1 00 c0 c0 c0")},
       reject_reason::bad_msgpack},
      {"attempt 2^32",
       {topic + "\x98" + id + from_hex("00 00 00 cf 00 00 00 01 00 00 00 00 c0 c0 c0")},
       reject_reason::bad_header},
      {"key as bin", {topic + "\x98" + id + from_hex("00 00 00 00 c4 01 61 c0 c0")},
       reject_reason::bad_header},
      {"key of 1025 bytes",
       {topic + "\x98" + id + from_hex("00 00 00 00 da 04 01") + std::string(1025, 'k') +
        from_hex("c0 c0")},
       reject_reason::too_large},
      {"key claiming 2000 bytes in a short frame",
       {topic + "\x98" + id + from_hex("00 00 00 00 da 07 d0 61")}, reject_reason::too_large},
      {"correlation of 8 bytes",
       {topic + "\x98" + id + from_hex("00 00 00 00 c0 c4 08 01 02 03 04 05 06 07 08 c0")},
       reject_reason::bad_header},
      {"headers as an array", {topic + "\x98" + id + from_hex("00 00 00 00 c0 c0 90")},
       reject_reason::bad_header},
      {"65 user headers", {topic + "\x98" + id + from_hex("00 00 00 00 c0 c0 de 00 41")},
       reject_reason::too_large},
      {"a header value as an integer",
       {topic + "\x98" + id + from_hex("00 00 00 00 c0 c0 81 a1 61 01")},
       reject_reason::bad_header},
      {"a header map cut off", {topic + "\x98" + id + from_hex("00 00 00 00 c0 c0 82 a1 61 a1")},
       reject_reason::bad_msgpack},
      {"a trailing 0xc1", {topic + "\x99" + id + rest + "\xc1"}, reject_reason::bad_msgpack},
      {"a trailing array claiming more than is left",
       {topic + "\x99" + id + rest + from_hex("dd 00 01 00 00")}, reject_reason::bad_msgpack},
      {"bytes after the header in a two-frame message", {topic + "\x98" + id + rest + "x", "p"},
       reject_reason::bad_header},
      {"a header cut off by the 64 KiB window",
       {topic + from_hex("98") + id + from_hex("00 00 00 00 c0 c0 81 a1 61 da ff ff") +
        std::string(70000, 'v')},
       reject_reason::too_large},
  };
  for (const auto& r : rows) {
    CAPTURE(r.what);
    CHECK(decode_bytes(r.frames) == std::optional(r.reason));
  }
  // decode() itself refuses three frames (channels drop frames past the second).
  zmq::message_t three[3];
  postbox::message m;
  CHECK(postbox::decode(three, 3, m) == reject_reason::frame_count);
}

TEST_CASE("codec: the limits are inclusive and encoding refuses a field over one",
          "[unit][codec]") {
  const auto id = id_from_hex(id1_hex);
  postbox::encoded out;

  SECTION("topic") {
    const std::string at_limit(postbox::max_topic_size, 't');
    auto v = vector1_view(id);
    v.topic = at_limit;
    postbox::encode(v, out);
    postbox::message m;
    zmq::message_t frames[1];
    frames[0].move(out.first);
    REQUIRE_FALSE(postbox::decode(frames, 1, m));
    CHECK(m.topic() == at_limit);

    const std::string over(postbox::max_topic_size + 1, 't');
    v.topic = over;
    CHECK_THROWS_AS(postbox::encode(v, out), postbox::config_error);
    v.topic = std::string_view("a\0b", 3);
    CHECK_THROWS_AS(postbox::encode(v, out), postbox::config_error);
  }
  SECTION("key") {
    const std::string at_limit(postbox::max_key_size, 'k');
    auto v = vector1_view(id);
    v.key = std::string_view(at_limit);
    postbox::encode(v, out);
    postbox::message m;
    zmq::message_t frames[1];
    frames[0].move(out.first);
    REQUIRE_FALSE(postbox::decode(frames, 1, m));
    CHECK(m.key() == std::optional<std::string_view>(at_limit));

    const std::string over(postbox::max_key_size + 1, 'k');
    v.key = std::string_view(over);
    CHECK_THROWS_AS(postbox::encode(v, out), postbox::config_error);
  }
  SECTION("user headers") {
    std::vector<postbox::header> headers;
    for (std::size_t i = 0; i < postbox::max_user_headers; ++i) {
      headers.push_back({"h" + std::to_string(i), "v"});
    }
    auto v = vector1_view(id);
    v.headers = headers;
    postbox::encode(v, out);
    postbox::message m;
    zmq::message_t frames[1];
    frames[0].move(out.first);
    REQUIRE_FALSE(postbox::decode(frames, 1, m));
    CHECK(m.headers() == headers);

    headers.push_back({"one", "too many"});
    v.headers = headers;
    CHECK_THROWS_AS(postbox::encode(v, out), postbox::config_error);
  }
  SECTION("header size") {
    const std::vector<postbox::header> headers{
        {"big", std::string(postbox::max_header_size, 'v')}};
    auto v = vector1_view(id);
    v.headers = headers;
    CHECK_THROWS_AS(postbox::encode(v, out), postbox::config_error);
  }
}
