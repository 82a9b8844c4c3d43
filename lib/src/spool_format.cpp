// The spool's segment header, record framing and recovery scan over bytes.
// Implements docs/spool-format.md ("Segment header", "Records", "Recovery").
#include <postbox/detail/spool_format.hpp>

#include <postbox/crc32c.hpp>

#include <cstdio>
#include <cstring>
#include <limits>

namespace postbox {

const char* name(corruption_reason r) noexcept {
  switch (r) {
    case corruption_reason::truncated_header: return "truncated_header";
    case corruption_reason::bad_length: return "bad_length";
    case corruption_reason::bad_checksum: return "bad_checksum";
    case corruption_reason::unknown_type: return "unknown_type";
    case corruption_reason::bad_done: return "bad_done";
  }
  return "?";
}

std::string position::to_string() const {
  return std::to_string(segment) + ":" + std::to_string(offset);
}

namespace detail::spool_format {

std::uint32_t load_u32(const unsigned char* p) noexcept {
  return std::uint32_t{p[0]} | std::uint32_t{p[1]} << 8 | std::uint32_t{p[2]} << 16 |
         std::uint32_t{p[3]} << 24;
}

void store_u32(unsigned char* p, std::uint32_t v) noexcept {
  p[0] = static_cast<unsigned char>(v);
  p[1] = static_cast<unsigned char>(v >> 8);
  p[2] = static_cast<unsigned char>(v >> 16);
  p[3] = static_cast<unsigned char>(v >> 24);
}

void encode_segment_header(std::uint32_t segment, unsigned char* out) noexcept {
  std::memcpy(out, magic, sizeof magic);
  store_u32(out + 8, version);
  store_u32(out + 12, segment);
  store_u32(out + 16, 0);
  store_u32(out + 20, crc32c_mask(crc32c(out, 20)));
}

const char* describe(header_problem p) noexcept {
  switch (p) {
    case header_problem::none: return "ok";
    case header_problem::too_short: return "shorter than the 24-byte segment header";
    case header_problem::bad_magic: return "bad magic (not a postbox spool segment)";
    case header_problem::bad_checksum: return "segment header checksum mismatch";
    case header_problem::newer_version:
      return "written by a newer spool format version (needs a newer postbox)";
    case header_problem::bad_segment: return "segment number in the header differs from the file name";
  }
  return "?";
}

header_problem check_segment_header(const unsigned char* data, std::size_t size,
                                    std::uint32_t expected_segment) noexcept {
  if (size < segment_header_size) return header_problem::too_short;
  if (std::memcmp(data, magic, sizeof magic) != 0) return header_problem::bad_magic;
  if (crc32c_unmask(load_u32(data + 20)) != crc32c(data, 20)) return header_problem::bad_checksum;
  const std::uint32_t v = load_u32(data + 8);
  if (v != version) return header_problem::newer_version;  // 0 is as unknown as 2
  if (load_u32(data + 12) != expected_segment) return header_problem::bad_segment;
  return header_problem::none;
}

std::uint32_t record_crc(std::uint8_t type, const void* payload, std::uint32_t length) noexcept {
  unsigned char head[5];
  store_u32(head, length);
  head[4] = type;
  return crc32c_mask(crc32c_extend(crc32c(head, sizeof head), payload, length));
}

void encode_record_header(std::uint8_t type, const void* payload, std::uint32_t length,
                          unsigned char* out) noexcept {
  store_u32(out, record_crc(type, payload, length));
  store_u32(out + 4, length);
  out[8] = type;
}

namespace {

// Checks the record at `off`; on success sets `length`, else `why`.
bool check_record(const unsigned char* data, std::uint64_t size, std::uint64_t off,
                  std::uint32_t& length, corruption_reason& why) noexcept {
  if (size - off < record_header_size) {
    why = corruption_reason::truncated_header;
    return false;
  }
  const unsigned char* h = data + off;
  length = load_u32(h + 4);
  if (length > size - off - record_header_size) {
    why = corruption_reason::bad_length;
    return false;
  }
  const std::uint8_t type = h[8];
  if (type != type_data && type != type_done && (type & type_ignore_bit) == 0) {
    why = corruption_reason::unknown_type;
    return false;
  }
  // CRC over length, type and payload: bytes 4..9+length of the record.
  const std::uint32_t crc = crc32c_mask(crc32c(h + 4, record_header_size - 4 + length));
  if (crc != load_u32(h)) {
    why = corruption_reason::bad_checksum;
    return false;
  }
  if (type == type_done && (length == 0 || length % done_entry_size != 0)) {
    why = corruption_reason::bad_done;
    return false;
  }
  return true;
}

}  // namespace

scan_result scan_segment(const unsigned char* data, std::size_t size_in,
                         std::uint32_t expected_segment, scan_sink& sink) {
  scan_result r;
  const std::uint64_t size =
      std::min<std::uint64_t>(size_in, std::numeric_limits<std::uint32_t>::max());
  r.header = check_segment_header(data, size, expected_segment);
  if (r.header != header_problem::none) return r;
  std::uint64_t off = segment_header_size;
  std::uint32_t length = 0;
  corruption_reason why{};
  while (off < size) {
    if (check_record(data, size, off, length, why)) {
      sink.on_record(static_cast<std::uint32_t>(off), data[off + 8],
                     data + off + record_header_size, length);
      ++r.records;
      off += record_header_size + length;
      continue;
    }
    // Search forward for the next offset where a whole record passes.
    const std::uint64_t bad = off;
    const corruption_reason first_why = why;
    std::uint64_t next = bad + 1;
    corruption_reason ignored{};
    while (next < size && !check_record(data, size, next, length, ignored)) ++next;
    if (next >= size) {
      r.valid_end = bad;
      r.tail_size = size - bad;
      r.tail_reason = first_why;
      return r;
    }
    sink.on_corrupt(static_cast<std::uint32_t>(bad), static_cast<std::uint32_t>(next - bad),
                    first_why);
    off = next;
  }
  r.valid_end = off;
  return r;
}

std::string segment_file_name(std::uint32_t segment) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%08u.log", segment);
  return buf;
}

bool parse_segment_file_name(const std::string& name, std::uint32_t& segment) noexcept {
  if (name.size() < 12 || name.size() > 14 || name.compare(name.size() - 4, 4, ".log") != 0)
    return false;
  std::uint64_t v = 0;
  for (std::size_t i = 0; i + 4 < name.size(); ++i) {
    const char c = name[i];
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<std::uint64_t>(c - '0');
  }
  if (v == 0 || v > std::numeric_limits<std::uint32_t>::max()) return false;
  segment = static_cast<std::uint32_t>(v);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%08u.log", segment);
  return name == buf;  // canonical only: "000000001.log" is not segment 1
}

}  // namespace detail::spool_format
}  // namespace postbox
