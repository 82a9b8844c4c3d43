// The invariants of the spool's recovery scan over arbitrary bytes
// (docs/spool-format.md, "Recovery"), shared by the libFuzzer target and the
// corpus replay in the unit tests. Returns an empty string when they hold.
#pragma once

#include <postbox/detail/spool_format.hpp>

#include <cstdint>
#include <string>

namespace postbox::test {

class scan_checker final : public detail::spool_format::scan_sink {
 public:
  explicit scan_checker(std::uint64_t size) : size_(size) {}
  void on_record(std::uint32_t offset, std::uint8_t type, const unsigned char* payload,
                 std::uint32_t length) override {
    namespace f = detail::spool_format;
    if (offset < next_) fail("record overlaps what came before");
    if (offset + std::uint64_t{f::record_header_size} + length > size_) fail("record past the end");
    if (type == f::type_done && (length == 0 || length % 8 != 0)) fail("malformed done record");
    if (length > 0) checksum_ ^= payload[0] ^ payload[length - 1];  // touch the bytes
    next_ = offset + std::uint64_t{f::record_header_size} + length;
    ++records_;
  }
  void on_corrupt(std::uint32_t offset, std::uint32_t size, corruption_reason) override {
    if (offset < next_) fail("corrupt range overlaps what came before");
    if (size == 0 || offset + std::uint64_t{size} > size_) fail("bad corrupt range size");
    next_ = offset + std::uint64_t{size};
  }
  /// Checks the scan's result against what the sink saw.
  std::string finish(const detail::spool_format::scan_result& r) {
    if (r.header != detail::spool_format::header_problem::none) {
      if (records_ != 0) fail("records after a bad header");
      return problem_;
    }
    if (r.records != records_) fail("record count differs");
    if (next_ > r.valid_end) fail("valid_end before the last record");
    if (r.valid_end + r.tail_size != size_ && size_ <= 0xffffffffu) fail("valid_end + tail != size");
    return problem_;
  }

 private:
  void fail(const char* what) {
    if (problem_.empty()) problem_ = what;
  }
  std::uint64_t size_;
  std::uint64_t next_ = 0;
  std::uint64_t records_ = 0;
  unsigned checksum_ = 0;
  std::string problem_;
};

/// Scans `bytes` as segment 1 and checks the invariants.
inline std::string check_spool_scan(const unsigned char* data, std::size_t size) {
  scan_checker c(size);
  const auto r = detail::spool_format::scan_segment(data, size, 1, c);
  return c.finish(r);
}

}  // namespace postbox::test
