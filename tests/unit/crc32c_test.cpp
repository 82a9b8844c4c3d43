// Unit tests for CRC32C (lib/src/crc32c.cpp); docs/spool-format.md, "Records".
#include <postbox/crc32c.hpp>

#include <catch2/catch.hpp>

#include <random>
#include <string>

TEST_CASE("crc32c: the check value of \"123456789\" is 0xE3069283", "[unit][crc32c]") {
  CHECK(postbox::crc32c("123456789") == 0xE3069283u);
  CHECK(postbox::crc32c_extend_portable(0, "123456789", 9) == 0xE3069283u);
  CHECK(postbox::crc32c("") == 0u);
}

TEST_CASE("crc32c: known vectors from RFC 3720 (iSCSI)", "[unit][crc32c]") {
  const std::string zeros(32, '\0'), ones(32, '\xff');
  std::string inc(32, '\0');
  for (int i = 0; i < 32; ++i) inc[static_cast<std::size_t>(i)] = static_cast<char>(i);
  CHECK(postbox::crc32c(zeros) == 0x8A9136AAu);
  CHECK(postbox::crc32c(ones) == 0x62A8AB43u);
  CHECK(postbox::crc32c(inc) == 0x46DD794Eu);
}

TEST_CASE("crc32c: the hardware and table implementations agree at every length and alignment",
          "[unit][crc32c]") {
  INFO("SSE4.2 in use: " << postbox::crc32c_hardware());
  std::mt19937 rng(7);
  std::string data(1000, '\0');
  for (auto& c : data) c = static_cast<char>(rng());
  for (std::size_t start = 0; start < 9; ++start)
    for (std::size_t len = 0; start + len <= data.size(); len += 1 + len / 7)
      REQUIRE(postbox::crc32c(data.data() + start, len) ==
              postbox::crc32c_extend_portable(0, data.data() + start, len));
}

TEST_CASE("crc32c: extending in pieces equals one pass", "[unit][crc32c]") {
  const std::string s = "hello, spool: the quick brown fox jumps over the lazy dog";
  for (std::size_t cut = 0; cut <= s.size(); ++cut) {
    const auto a = postbox::crc32c(s.data(), cut);
    CHECK(postbox::crc32c_extend(a, s.data() + cut, s.size() - cut) == postbox::crc32c(s));
  }
}

TEST_CASE("crc32c: masking is LevelDB's and unmask inverts it", "[unit][crc32c]") {
  const std::uint32_t c = postbox::crc32c("123456789");
  CHECK(postbox::crc32c_mask(c) == (((c >> 15) | (c << 17)) + 0xa282ead8u));
  CHECK(postbox::crc32c_mask(c) != c);
  for (std::uint32_t v : {0u, 1u, 0xffffffffu, 0x12345678u, c})
    CHECK(postbox::crc32c_unmask(postbox::crc32c_mask(v)) == v);
}
