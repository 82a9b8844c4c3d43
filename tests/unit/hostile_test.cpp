// Unit tests of the decoder against hostile input (postbox/codec.hpp, and
// docs/protocol.md "Rejections"): the corpus in tests/data/hostile, random
// bytes, and every bit flip and truncation of a valid message. Each input is
// either refused with a reason or decoded into a message that respects the
// limits; never a crash (this file is meant to run under ASan and UBSan).
//
// Inputs are decoded from heap buffers of exactly their size, handed to
// libzmq without a copy, so that a read past the end is an ASan error even
// for inputs small enough for libzmq to keep inline.
#include <catch2/catch.hpp>

#include <postbox/codec.hpp>
#include <postbox/message.hpp>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include <zmq.hpp>

namespace fs = std::filesystem;
using postbox::reject_reason;

namespace {

const fs::path hostile_dir = fs::path(POSTBOX_TEST_DATA_DIR) / "hostile";

std::vector<reject_reason> all_reasons() {
  std::vector<reject_reason> out;
  for (std::size_t i = 0; i < postbox::reject_reason_count; ++i) {
    out.push_back(static_cast<reject_reason>(i));
  }
  return out;
}

// What a decode gave: a reason, or the decoded message's fields.
struct outcome {
  std::optional<reject_reason> reason;
  std::string topic;
  std::string payload;
  std::optional<std::string> key;
  std::size_t headers = 0;
  bool payload_in_frame = true;  // the payload lies within its slice of the frame, or wholly apart
};

std::string describe(const std::optional<reject_reason>& r) {
  return r ? std::string(postbox::to_string(*r)) : std::string("(decoded)");
}

// Decodes `parts` as one message of parts.size() frames. Each frame's bytes
// are in a heap buffer of exactly their size, not copied by libzmq.
outcome decode_exact(const std::vector<std::string_view>& parts) {
  std::vector<std::unique_ptr<std::uint8_t[]>> buffers;
  std::vector<zmq::message_t> frames;
  frames.reserve(parts.size());
  for (const auto part : parts) {
    buffers.emplace_back(new std::uint8_t[part.size()]);
    if (!part.empty()) std::memcpy(buffers.back().get(), part.data(), part.size());
    frames.emplace_back(buffers.back().get(), part.size(), nullptr, nullptr);
  }
  outcome result;
  {
    postbox::message m;
    result.reason = postbox::decode(frames.data(), frames.size(), m);
    if (!result.reason) {
      result.topic = std::string(m.topic());
      result.payload = std::string(m.payload());
      if (m.key()) result.key = std::string(*m.key());
      result.headers = m.headers().size();
      const auto* p = reinterpret_cast<const std::uint8_t*>(m.payload().data());
      const auto& source = buffers.back();  // the payload is in the last frame
      const std::size_t n = parts.back().size();
      result.payload_in_frame =
          m.payload().empty() || (p >= source.get() && p + m.payload().size() <= source.get() + n);
    }
  }  // the message, which may refer to a buffer, goes before the buffers
  frames.clear();
  return result;
}

outcome decode_exact(std::string_view one_frame) {
  return decode_exact(std::vector<std::string_view>{one_frame});
}

// Decodes `bytes` with decode_shared() as the last of the messages packed in
// a frame: a heap buffer of exactly prefix + bytes, so that a read past the
// end of the slice is an ASan error too.
outcome decode_shared_exact(std::string_view bytes) {
  const std::string_view prefix = "[other messages]";
  const std::size_t size = prefix.size() + bytes.size();
  std::unique_ptr<std::uint8_t[]> buffer(new std::uint8_t[size]);
  std::memcpy(buffer.get(), prefix.data(), prefix.size());
  if (!bytes.empty()) std::memcpy(buffer.get() + prefix.size(), bytes.data(), bytes.size());
  zmq::message_t frame(buffer.get(), size, nullptr, nullptr);
  outcome result;
  {
    postbox::message m;
    result.reason = postbox::decode_shared(frame, prefix.size(), bytes.size(), m);
    if (!result.reason) {
      result.topic = std::string(m.topic());
      result.payload = std::string(m.payload());
      if (m.key()) result.key = std::string(*m.key());
      result.headers = m.headers().size();
      const auto* p = reinterpret_cast<const std::uint8_t*>(m.payload().data());
      // Shared (large, or a good part of the frame), the payload lies inside
      // this message's slice of the frame; copied, wholly outside it.
      const std::size_t n = m.payload().size();
      const bool inside = p >= buffer.get() + prefix.size() && p + n <= buffer.get() + size;
      const bool outside = p + n <= buffer.get() || p >= buffer.get() + size;
      const bool shared =
          n >= postbox::large_payload_threshold || n * postbox::share_ratio >= size;
      result.payload_in_frame = n == 0 || (shared ? inside : outside);
    }
  }
  return result;
}

// A decoded message respects the limits of docs/protocol.md.
void check_limits(const outcome& o) {
  if (o.reason) return;
  CHECK(o.topic.size() <= postbox::max_topic_size);
  CHECK(o.topic.find('\0') == std::string::npos);
  if (o.key) CHECK(o.key->size() <= postbox::max_key_size);
  CHECK(o.headers <= postbox::max_user_headers);
  CHECK(o.payload_in_frame);
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// "bad_header--id-as-str.bin" -> bad_header; "any--..." -> nothing expected.
struct corpus_file {
  fs::path path;
  std::string name;
  std::string expected;  // a to_string(reject_reason) name, or "any"
};

std::vector<corpus_file> corpus() {
  std::vector<corpus_file> files;
  for (const auto& entry : fs::directory_iterator(hostile_dir)) {
    if (!entry.is_regular_file() || entry.path().extension() != ".bin") continue;
    const auto name = entry.path().filename().string();
    const auto sep = name.find("--");
    files.push_back({entry.path(), name, sep == std::string::npos ? "" : name.substr(0, sep)});
  }
  std::sort(files.begin(), files.end(),
            [](const corpus_file& a, const corpus_file& b) { return a.name < b.name; });
  return files;
}

std::optional<reject_reason> reason_named(std::string_view name) {
  for (const auto r : all_reasons()) {
    if (postbox::to_string(r) == name) return r;
  }
  return std::nullopt;
}

// A valid message with every optional header field set.
struct valid_message {
  postbox::message_id id;
  postbox::message_id correlation;
  std::vector<postbox::header> headers{{"trace", "abc123"}, {"tenant", "t1"}};
  std::string payload;
  postbox::encoded frames;

  explicit valid_message(std::string body) : payload(std::move(body)) {
    for (std::size_t i = 0; i < 16; ++i) {
      id.bytes[i] = static_cast<std::uint8_t>(0x10 + i);
      correlation.bytes[i] = static_cast<std::uint8_t>(0x30 + i);
    }
    postbox::message_view v;
    v.topic = "orders.eu.created";
    v.payload = payload;
    v.id = id;
    v.timestamp_us = 1'700'000'000'123'456;
    v.origin = 0x1234'5678'9abc;
    v.sequence = 42;
    v.attempt = 3;
    v.key = "customer-42";
    v.correlation = &correlation;
    v.headers = headers;
    postbox::encode(v, frames);
  }

  [[nodiscard]] std::string first() const {
    return {static_cast<const char*>(frames.first.data()), frames.first.size()};
  }
  [[nodiscard]] std::string second() const {
    return {static_cast<const char*>(frames.second.data()), frames.second.size()};
  }
  // Where the header ends and the payload begins in a 1-frame encoding.
  [[nodiscard]] std::size_t header_end() const { return frames.first.size() - payload.size(); }
};

}  // namespace

TEST_CASE("codec: every input in the hostile corpus is rejected with a reason, never a crash",
          "[unit][codec][hostile]") {
  const auto files = corpus();
  REQUIRE(files.size() >= 50);
  for (const auto& f : files) {
    INFO("file " << f.name);
    const std::string bytes = read_file(f.path);
    const auto got = decode_exact(bytes);
    REQUIRE(got.reason.has_value());
    if (f.expected != "any") {
      const auto expected = reason_named(f.expected);
      INFO("the file name must start with a reject reason or \"any\", then \"--\"");
      REQUIRE(expected.has_value());
      CHECK(describe(got.reason) == describe(expected));
    }
    // As the first of two frames the input is refused for the same reason:
    // the header is judged before the frame count matters.
    const auto two = decode_exact(std::vector<std::string_view>{bytes, "payload"});
    CHECK(describe(two.reason) == describe(got.reason));
    // Packed among others in one frame (a queue delivery batch), the same.
    CHECK(describe(decode_shared_exact(bytes).reason) == describe(got.reason));
  }
}

TEST_CASE("codec: the hostile corpus README lists every file with its expected reason",
          "[unit][codec][hostile]") {
  const std::string readme = read_file(hostile_dir / "README.md");
  std::set<std::string> on_disk;
  for (const auto& f : corpus()) {
    on_disk.insert(f.name);
    INFO("file " << f.name);
    const auto at = readme.find("`" + f.name + "`");
    REQUIRE(at != std::string::npos);
    const auto line_end = readme.find('\n', at);
    const auto row = readme.substr(at, line_end - at);
    CHECK_THAT(row, Catch::Contains(f.expected == "any" ? "(any)" : "`" + f.expected + "`"));
  }
  // And every file the README lists is there.
  std::istringstream lines(readme);
  std::string line;
  while (std::getline(lines, line)) {
    if (!line.starts_with("| `")) continue;
    const auto name = line.substr(3, line.find('`', 3) - 3);
    INFO("README row for " << name);
    CHECK(on_disk.count(name) == 1);
  }
}

TEST_CASE("codec: 100000 random byte strings are each refused or decoded within the limits",
          "[unit][codec][hostile]") {
  std::mt19937_64 rng(0x5eed'b0c5);
  postbox::reject_counts counts;
  std::size_t decoded = 0;
  postbox::message reused;  // decoding into a used message must not depend on what it held
  constexpr int total = 100'000;
  for (int i = 0; i < total; ++i) {
    std::string bytes;
    switch (i % 3) {
      case 0: break;                                   // anything at all
      case 1: bytes = std::string("orders\0\x01", 8); break;  // valid topic and version
      case 2: bytes = std::string("orders\0\x01\x98", 9); break;  // ... and an 8-array
    }
    const auto n = static_cast<std::size_t>(rng() % 97);
    for (std::size_t k = 0; k < n; ++k) bytes.push_back(static_cast<char>(rng() & 0xFF));

    const auto got = decode_exact(bytes);
    zmq::message_t copy(bytes.data(), bytes.size());
    const auto again = postbox::decode(&copy, 1, reused);
    if (describe(got.reason) != describe(again)) {
      FAIL_CHECK("input " << i << " (" << bytes.size() << " bytes): " << describe(got.reason)
                          << " from a fresh message, " << describe(again) << " from a used one");
    }
    const auto shared = decode_shared_exact(bytes);
    if (describe(got.reason) != describe(shared.reason) || got.payload != shared.payload) {
      FAIL_CHECK("input " << i << " (" << bytes.size() << " bytes): " << describe(got.reason)
                          << " alone, " << describe(shared.reason) << " packed in a frame");
    }
    check_limits(shared);
    if (got.reason) {
      counts.count(*got.reason);
    } else {
      ++decoded;
      check_limits(got);
    }
  }
  CHECK(counts.total() + decoded == total);
  // The three kinds of input reach the topic, the version and the header.
  CHECK(counts[reject_reason::bad_topic] > 0);
  CHECK(counts[reject_reason::unknown_version] > 0);
  CHECK(counts[reject_reason::bad_header] > 0);
  CHECK(counts[reject_reason::bad_msgpack] > 0);
}

TEST_CASE("codec: every bit flip of a valid message is refused or decoded within the limits",
          "[unit][codec][hostile]") {
  const valid_message v("the payload, 30 bytes of text.");
  REQUIRE(v.frames.frames == 1);
  const std::string good = v.first();
  REQUIRE_FALSE(decode_exact(good).reason.has_value());

  std::size_t refused = 0, decoded = 0;
  for (std::size_t bit = 0; bit < good.size() * 8; ++bit) {
    std::string bad = good;
    bad[bit / 8] = static_cast<char>(bad[bit / 8] ^ (1 << (bit % 8)));
    INFO("bit " << bit << " of " << good.size() * 8);
    const auto got = decode_exact(bad);
    if (got.reason) {
      ++refused;
      continue;
    }
    ++decoded;
    check_limits(got);
    const auto shared = decode_shared_exact(bad);
    CHECK_FALSE(shared.reason.has_value());
    CHECK(shared.payload == got.payload);
    check_limits(shared);
    // A flip in the payload changes the payload and nothing else.
    if (bit / 8 >= v.header_end()) {
      CHECK(got.payload == bad.substr(v.header_end()));
      CHECK(got.topic == "orders.eu.created");
    }
  }
  CHECK(refused > 0);
  CHECK(decoded >= v.payload.size() * 8);  // at least every payload flip decodes
}

TEST_CASE("codec: every bit flip of a two-frame message's first frame is refused or decoded",
          "[unit][codec][hostile]") {
  const valid_message v(std::string(postbox::large_payload_threshold, 'p'));
  REQUIRE(v.frames.frames == 2);
  const std::string head = v.first();
  const std::string body = v.second();
  REQUIRE_FALSE(decode_exact(std::vector<std::string_view>{head, body}).reason.has_value());
  std::size_t refused = 0;
  for (std::size_t bit = 0; bit < head.size() * 8; ++bit) {
    std::string bad = head;
    bad[bit / 8] = static_cast<char>(bad[bit / 8] ^ (1 << (bit % 8)));
    INFO("bit " << bit);
    const auto got = decode_exact(std::vector<std::string_view>{bad, body});
    if (got.reason) {
      ++refused;
    } else {
      check_limits(got);
      CHECK(got.payload == body);
    }
  }
  CHECK(refused > 0);
}

TEST_CASE("codec: a valid message cut at every length is refused until its header is whole",
          "[unit][codec][hostile]") {
  const valid_message v("payload bytes");
  const std::string good = v.first();
  const std::size_t topic_size = std::string_view("orders.eu.created").size();
  for (std::size_t n = 0; n <= good.size(); ++n) {
    INFO("first " << n << " of " << good.size() << " bytes");
    const auto got = decode_exact(std::string_view(good).substr(0, n));
    if (n <= topic_size) {
      CHECK(describe(got.reason) == "bad_topic");  // no 0x00 yet
    } else if (n < v.header_end()) {
      CHECK(describe(got.reason) == "bad_msgpack");  // the header is cut short
    } else {
      REQUIRE_FALSE(got.reason.has_value());
      CHECK(got.topic == "orders.eu.created");
      CHECK(got.key == std::optional<std::string>("customer-42"));
      CHECK(got.headers == 2);
      CHECK(got.payload == v.payload.substr(0, n - v.header_end()));
    }
  }
}

TEST_CASE("codec: a message of 0 or 3 frames is refused as frame_count", "[unit][codec][hostile]") {
  const valid_message v("small");
  const std::string first = v.first();
  CHECK(describe(decode_exact(std::vector<std::string_view>{first, "", "x"}).reason) ==
        "frame_count");
  const valid_message big(std::string(postbox::large_payload_threshold * 2, 'b'));
  REQUIRE(big.frames.frames == 2);
  const std::string head = big.first(), body = big.second();
  CHECK(describe(decode_exact(std::vector<std::string_view>{head, body}).reason) == "(decoded)");
  CHECK(describe(decode_exact(std::vector<std::string_view>{head, body, body}).reason) ==
        "frame_count");

  postbox::message m;
  CHECK(postbox::decode(nullptr, 0, m) == reject_reason::frame_count);
}

TEST_CASE("codec: two frames whose first still has payload bytes after the header are bad_header",
          "[unit][codec][hostile]") {
  const valid_message inline_payload("abc");
  REQUIRE(inline_payload.frames.frames == 1);
  const std::string first = inline_payload.first();
  CHECK(describe(decode_exact(std::vector<std::string_view>{first, "more"}).reason) ==
        "bad_header");
  CHECK(describe(decode_exact(std::vector<std::string_view>{first, ""}).reason) == "bad_header");

  // With nothing after the header, the second frame is the payload.
  const valid_message empty_payload("");
  const std::string head = empty_payload.first();
  const auto got = decode_exact(std::vector<std::string_view>{head, "the payload"});
  REQUIRE_FALSE(got.reason.has_value());
  CHECK(got.payload == "the payload");
}

TEST_CASE("codec: each reject reason has its own name", "[unit][codec]") {
  std::set<std::string_view> names;
  for (const auto r : all_reasons()) {
    const auto name = postbox::to_string(r);
    CHECK(name != "unknown");
    CHECK(reason_named(name) == r);
    names.insert(name);
  }
  CHECK(names.size() == postbox::reject_reason_count);
}

TEST_CASE("codec: a header that runs past the 64 KiB header window is too_large; a bad byte keeps its reason",
          "[unit][codec][hostile]") {
  // docs/protocol.md, "Rejections", step 5.9.
  const valid_message v("");
  std::string head = v.first();
  const std::size_t array_prefix = std::string_view("orders.eu.created").size() + 2;
  REQUIRE(static_cast<std::uint8_t>(head[array_prefix]) == 0x98);

  // A 9th, ignored element: bin 32 claiming 70000 bytes.
  std::string nine = head;
  nine[array_prefix] = '\x99';
  nine += std::string("\xc6\x00\x01\x11\x70", 5);
  const std::string big(70000, 'b');
  CHECK(describe(decode_exact(nine + big).reason) == "too_large");
  // The same claim in a short frame is cut off by the frame, not the window.
  CHECK(describe(decode_exact(nine + big.substr(0, 100)).reason) == "bad_msgpack");

  // A reserved byte is bad msgpack, whatever the size of the frame around it.
  std::string bad = head;
  bad[array_prefix] = '\xc1';
  CHECK(describe(decode_exact(bad).reason) == "bad_msgpack");
  CHECK(describe(decode_exact(bad + std::string(2 * postbox::max_header_size, 'x')).reason) ==
        "bad_msgpack");

  const std::string window(postbox::max_header_size, 'x');
  // A valid header in such a frame still decodes: the payload is the rest.
  const std::string good = v.first() + window + window;
  const auto got = decode_exact(good);
  REQUIRE_FALSE(got.reason.has_value());
  CHECK(got.payload.size() == 2 * postbox::max_header_size);
}
