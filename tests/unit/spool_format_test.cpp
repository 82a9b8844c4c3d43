// Unit tests for the spool's on-disk format (docs/spool-format.md): the worked
// example byte for byte, segment headers, and recovery as byte surgery on real
// files at documented offsets.
#include <postbox/crc32c.hpp>
#include <postbox/detail/spool_format.hpp>
#include <postbox/error.hpp>
#include <postbox/spool.hpp>

#include "support/support.hpp"

#include <catch2/catch.hpp>

#include <fstream>
#include <iterator>
#include <random>

namespace fmt = postbox::detail::spool_format;
using postbox::position;
using Catch::Matchers::Contains;

namespace {

std::string read_file(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), {}};
}

void write_file(const std::filesystem::path& p, const std::string& bytes) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::vector<std::pair<position, std::string>> read_all(const postbox::spool& s) {
  std::vector<std::pair<position, std::string>> out;
  auto c = s.read_from();
  postbox::spool_record r;
  while (true) {
    const auto st = c.next(r);
    if (st == postbox::read_status::end) break;
    if (st == postbox::read_status::ok) out.emplace_back(r.pos, r.data);
  }
  return out;
}

// Ten records "record-0".."record-9": 8-byte payloads, 17 bytes framed, so
// record k starts at offset 24 + 17k and the file is 24 + 170 = 194 bytes.
constexpr std::uint32_t rec_size = 17;
constexpr std::uint32_t rec_offset(std::uint32_t k) { return 24 + rec_size * k; }
static_assert(rec_offset(10) == 194);

std::string ten_records(const std::filesystem::path& dir) {
  postbox::spool s(dir, {.fsync = postbox::fsync_policy::never});
  for (int k = 0; k < 10; ++k) {
    const auto o = s.append_and_wait("record-" + std::to_string(k));
    REQUIRE(!o.error);
    REQUIRE(o.pos == position{1, rec_offset(static_cast<std::uint32_t>(k))});
  }
  return read_file(dir / "00000001.log");
}

std::string payload_of(std::uint32_t k) { return "record-" + std::to_string(k); }

struct collect final : fmt::scan_sink {
  std::vector<std::uint32_t> records;
  std::vector<std::pair<std::uint32_t, std::uint32_t>> corrupt;
  void on_record(std::uint32_t off, std::uint8_t, const unsigned char*, std::uint32_t) override {
    records.push_back(off);
  }
  void on_corrupt(std::uint32_t off, std::uint32_t size, postbox::corruption_reason) override {
    corrupt.emplace_back(off, size);
  }
};

std::uint32_t bitwise_crc32c(const std::string& s) {
  std::uint32_t c = 0xffffffffu;
  for (unsigned char x : s) {
    c ^= x;
    for (int i = 0; i < 8; ++i) c = (c & 1u) ? (c >> 1) ^ 0x82f63b78u : c >> 1;
  }
  return ~c;
}

}  // namespace

TEST_CASE("spool format: the worked example of docs/spool-format.md, byte for byte",
          "[unit][spool]") {
  postbox::test::temp_dir dir;
  {
    postbox::spool s(dir.path());
    CHECK(s.append_and_wait("hello").pos == position{1, 24});
    CHECK(s.append_and_wait("").pos == position{1, 38});
    CHECK(s.mark_done({1, 24}) == postbox::done_status::ok);
    CHECK(!s.flush());
  }
  const unsigned char golden[] = {
      0x50, 0x42, 0x53, 0x50, 0x4f, 0x4f, 0x4c, 0x0a, 0x01, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00,
      0x00, 0x00, 0x00, 0x00, 0x00, 0x5e, 0x77, 0xe3, 0x7c, 0x82, 0x62, 0xd5, 0x52, 0x05, 0x00,
      0x00, 0x00, 0x01, 0x68, 0x65, 0x6c, 0x6c, 0x6f, 0x0b, 0x59, 0xf0, 0x8c, 0x00, 0x00, 0x00,
      0x00, 0x01, 0x2e, 0xf4, 0xc3, 0x6d, 0x08, 0x00, 0x00, 0x00, 0x02, 0x01, 0x00, 0x00, 0x00,
      0x18, 0x00, 0x00, 0x00};
  static_assert(sizeof golden == 64);
  CHECK(read_file(dir.path() / "00000001.log") ==
        std::string(reinterpret_cast<const char*>(golden), sizeof golden));
  // The CRCs in the table of the document, from an independent bitwise CRC32C.
  using std::string_literals::operator""s;
  CHECK(postbox::crc32c_mask(bitwise_crc32c("PBSPOOL\n\1\0\0\0\1\0\0\0\0\0\0\0"s)) == 0x7ce3775eu);
  CHECK(postbox::crc32c_mask(bitwise_crc32c("\5\0\0\0\1hello"s)) == 0x52d56282u);
  CHECK(postbox::crc32c_mask(bitwise_crc32c("\0\0\0\0\1"s)) == 0x8cf0590bu);
  CHECK(postbox::crc32c_mask(bitwise_crc32c("\x08\0\0\0\2\1\0\0\0\x18\0\0\0"s)) == 0x6dc3f42eu);

  postbox::spool s(dir.path());
  CHECK(s.recovery().records == 2);
  CHECK(s.recovery().pending == 1);
  CHECK(s.is_done({1, 24}));
  CHECK_FALSE(s.is_done({1, 38}));
}

TEST_CASE("spool format: segment file names are at least 8 digits and canonical",
          "[unit][spool]") {
  CHECK(fmt::segment_file_name(1) == "00000001.log");
  CHECK(fmt::segment_file_name(4294967295u) == "4294967295.log");
  std::uint32_t n = 0;
  CHECK((fmt::parse_segment_file_name("00000042.log", n) && n == 42));
  CHECK((fmt::parse_segment_file_name("4294967295.log", n) && n == 4294967295u));
  CHECK_FALSE(fmt::parse_segment_file_name("000000042.log", n));
  CHECK_FALSE(fmt::parse_segment_file_name("4294967296.log", n));
  CHECK_FALSE(fmt::parse_segment_file_name("00000000.log", n));
  CHECK_FALSE(fmt::parse_segment_file_name("0000001.log", n));
  CHECK_FALSE(fmt::parse_segment_file_name("0000000a.log", n));
  CHECK_FALSE(fmt::parse_segment_file_name("00000001.log.tmp", n));
}

TEST_CASE("spool recovery: a corrupt segment header refuses to open, naming the file and reason",
          "[unit][spool]") {
  postbox::test::temp_dir dir;
  const std::string good = ten_records(dir.path());
  const auto file = dir.path() / "00000001.log";
  struct surgery {
    const char* what;
    std::size_t offset;  // byte changed (xor 0x01), or the new size for "short"
    const char* reason;
  };
  const auto [what, offset, reason] = GENERATE(values<surgery>({
      {"magic", 0, "bad magic"},
      {"version", 8, "checksum"},
      {"segment number", 12, "checksum"},
      {"flags", 16, "checksum"},
      {"header crc", 20, "checksum"},
      {"short", 23, "shorter than the 24-byte segment header"},
  }));
  INFO("surgery on the " << what);
  std::string bad = good;
  if (std::string(what) == "short")
    bad.resize(offset);
  else
    bad[offset] = static_cast<char>(bad[offset] ^ 0x01);
  write_file(file, bad);
  CHECK_THROWS_AS(postbox::spool(dir.path()), postbox::spool_error);
  CHECK_THROWS_WITH(postbox::spool(dir.path()),
                    Contains("00000001.log") && Contains(reason) && Contains("corrupt segment header"));
}

TEST_CASE("spool recovery: a header with a valid checksum but a newer version or another "
          "segment number refuses to open",
          "[unit][spool]") {
  postbox::test::temp_dir dir;
  std::string bytes = ten_records(dir.path());
  unsigned char h[24];
  SECTION("version 2") {
    fmt::encode_segment_header(1, h);
    fmt::store_u32(h + 8, 2);
  }
  SECTION("segment 7 in 00000001.log") { fmt::encode_segment_header(7, h); }
  fmt::store_u32(h + 20, postbox::crc32c_mask(postbox::crc32c(h, 20)));
  bytes.replace(0, 24, reinterpret_cast<const char*>(h), 24);
  write_file(dir.path() / "00000001.log", bytes);
  CHECK_THROWS_WITH(postbox::spool(dir.path()),
                    Contains("00000001.log") &&
                        (Contains("newer spool format") || Contains("differs from the file name")));
}

TEST_CASE("spool recovery: a torn tail cut at any byte of the last records, with zeros or "
          "garbage after it, is truncated and everything before the cut recovered",
          "[unit][spool]") {
  postbox::test::temp_dir dir;
  const std::string good = ten_records(dir.path());
  const auto file = dir.path() / "00000001.log";
  std::mt19937 rng(11);
  for (std::uint32_t cut = rec_offset(7); cut < rec_offset(10); ++cut) {
    for (const int filler : {0, 1, 2}) {  // nothing, zeros, garbage
      std::string bytes = good.substr(0, cut);
      std::string extra(filler == 0 ? 0 : 1 + rng() % 40, '\0');
      if (filler == 2)
        for (auto& c : extra) c = static_cast<char>(rng());
      bytes += extra;
      write_file(file, bytes);
      const std::uint32_t whole = (cut - 24) / rec_size;  // records entirely before the cut
      INFO("cut at " << cut << ", filler " << filler << ", " << extra.size() << " bytes");
      {
        postbox::spool s(dir.path(), {.fsync = postbox::fsync_policy::never});
        CHECK(s.recovery().records == whole);
        CHECK(s.recovery().corrupt.empty());
        CHECK(s.recovery().truncated_bytes == bytes.size() - rec_offset(whole));
        const auto all = read_all(s);
        REQUIRE(all.size() == whole);
        for (std::uint32_t k = 0; k < whole; ++k) {
          CHECK(all[k].first == position{1, rec_offset(k)});
          CHECK(all[k].second == payload_of(k));
        }
        // Appends continue right after the last good record.
        CHECK(s.append_and_wait("after").pos == position{1, rec_offset(whole)});
      }
      CHECK(read_file(file).size() == rec_offset(whole) + 9 + 5);
    }
  }
}

TEST_CASE("spool recovery: a bad record in the middle is reported with position, size and "
          "reason, and every other record is kept",
          "[unit][spool]") {
  postbox::test::temp_dir dir;
  const std::string good = ten_records(dir.path());
  const auto file = dir.path() / "00000001.log";
  struct surgery {
    const char* what;
    std::size_t offset;  // in the file; record 4 starts at 92
    unsigned char xor_with;
    postbox::corruption_reason reason;
  };
  static_assert(rec_offset(4) == 92);
  const auto s = GENERATE(values<surgery>({
      {"payload bit", 92 + 9 + 3, 0x10, postbox::corruption_reason::bad_checksum},
      {"crc bit", 92 + 1, 0x80, postbox::corruption_reason::bad_checksum},
      {"length, small change", 92 + 4, 0x02, postbox::corruption_reason::bad_checksum},
      {"length, past the end", 92 + 7, 0x40, postbox::corruption_reason::bad_length},
      {"type 1 -> 3", 92 + 8, 0x02, postbox::corruption_reason::unknown_type},
      {"type 1 -> 0x81", 92 + 8, 0x80, postbox::corruption_reason::bad_checksum},
  }));
  INFO("surgery: " << s.what);
  std::string bytes = good;
  bytes[s.offset] = static_cast<char>(bytes[s.offset] ^ s.xor_with);
  write_file(file, bytes);
  postbox::spool sp(dir.path(), {.fsync = postbox::fsync_policy::never});
  const auto& rep = sp.recovery();
  CHECK(rep.records == 9);
  CHECK(rep.truncated_bytes == 0);
  REQUIRE(rep.corrupt.size() == 1);
  CHECK(rep.corrupt[0].where == position{1, 92});
  CHECK(rep.corrupt[0].size == rec_size);
  CHECK(rep.corrupt[0].reason == s.reason);
  const auto all = read_all(sp);
  REQUIRE(all.size() == 9);
  std::uint32_t k = 0;
  for (const auto& [pos, data] : all) {
    if (k == 4) ++k;
    CHECK(pos == position{1, rec_offset(k)});
    CHECK(data == payload_of(k));
    ++k;
  }
  CHECK(read_file(file).size() == good.size());  // nothing after it was truncated
}

TEST_CASE("spool recovery: none of 1,000 random single-bit flips goes undetected",
          "[unit][spool]") {
  postbox::test::temp_dir dir;
  const std::string good = ten_records(dir.path());
  std::mt19937 rng(1234);
  for (int i = 0; i < 1000; ++i) {
    std::string bytes = good;
    const std::size_t bit = rng() % (bytes.size() * 8);
    bytes[bit / 8] = static_cast<char>(bytes[bit / 8] ^ (1 << (bit % 8)));
    collect sink;
    const auto r = fmt::scan_segment(reinterpret_cast<const unsigned char*>(bytes.data()),
                                     bytes.size(), 1, sink);
    INFO("bit " << bit);
    if (bit / 8 < 24) {
      CHECK(r.header != fmt::header_problem::none);
      continue;
    }
    // Exactly the hit record is lost, and the loss is reported.
    const std::uint32_t hit = static_cast<std::uint32_t>((bit / 8 - 24) / rec_size);
    CHECK(sink.records.size() == 9);
    CHECK(std::find(sink.records.begin(), sink.records.end(), rec_offset(hit)) ==
          sink.records.end());
    const bool reported = !sink.corrupt.empty() || r.tail_size > 0;
    CHECK(reported);
  }
}

TEST_CASE("spool recovery: a record with the ignore bit is skipped; a reserved type is corrupt",
          "[unit][spool]") {
  postbox::test::temp_dir dir;
  std::string bytes = ten_records(dir.path());
  auto record = [](std::uint8_t type, const std::string& payload) {
    std::string r(9, '\0');
    fmt::encode_record_header(type, payload.data(), static_cast<std::uint32_t>(payload.size()),
                              reinterpret_cast<unsigned char*>(r.data()));
    return r + payload;
  };
  bytes.insert(rec_offset(3), record(0x85, "future hint"));
  bytes.insert(rec_offset(6) + 20, record(0x05, "needs v2"));
  write_file(dir.path() / "00000001.log", bytes);
  postbox::spool s(dir.path(), {.fsync = postbox::fsync_policy::never});
  CHECK(s.recovery().records == 10);
  CHECK(s.recovery().ignored_records == 1);
  REQUIRE(s.recovery().corrupt.size() == 1);
  CHECK(s.recovery().corrupt[0].reason == postbox::corruption_reason::unknown_type);
  CHECK(s.recovery().corrupt[0].where == position{1, rec_offset(6) + 20});
  CHECK(s.recovery().corrupt[0].size == 9 + 8);
  CHECK(read_all(s).size() == 10);
}
