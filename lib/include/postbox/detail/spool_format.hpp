// postbox/detail/spool_format.hpp: the spool's on-disk constants, segment
// header and record framing, and the recovery scan over one segment's bytes.
// See docs/spool-format.md. Pure functions over bytes: no files, no throws;
// the fuzz target and the corpus replay call scan_segment directly.
#pragma once

#include <postbox/spool.hpp>

#include <cstddef>
#include <cstdint>
#include <string>

namespace postbox::detail::spool_format {

inline constexpr unsigned char magic[8] = {'P', 'B', 'S', 'P', 'O', 'O', 'L', '\n'};
inline constexpr std::uint32_t version = 1;
inline constexpr std::size_t segment_header_size = 24;
inline constexpr std::size_t record_header_size = 9;  // crc:u32 length:u32 type:u8
inline constexpr std::size_t done_entry_size = 8;     // segment:u32 offset:u32
static_assert(segment_header_size == sizeof magic + 4 + 4 + 4 + 4);

inline constexpr std::uint8_t type_data = 0x01;
inline constexpr std::uint8_t type_done = 0x02;
inline constexpr std::uint8_t type_ignore_bit = 0x80;

/// Fills out[0..24) with the header of segment `segment`.
void encode_segment_header(std::uint32_t segment, unsigned char* out) noexcept;

enum class header_problem { none, too_short, bad_magic, bad_checksum, newer_version, bad_segment };
[[nodiscard]] const char* describe(header_problem p) noexcept;

/// Checks the first 24 bytes of a segment (all of `size` may be less).
[[nodiscard]] header_problem check_segment_header(const unsigned char* data, std::size_t size,
                                                  std::uint32_t expected_segment) noexcept;

/// The masked CRC a record of `type` with this payload carries.
[[nodiscard]] std::uint32_t record_crc(std::uint8_t type, const void* payload,
                                       std::uint32_t length) noexcept;

/// Fills out[0..9) with the header of a record of `type` over `payload`.
void encode_record_header(std::uint8_t type, const void* payload, std::uint32_t length,
                          unsigned char* out) noexcept;

/// Little-endian helpers.
[[nodiscard]] std::uint32_t load_u32(const unsigned char* p) noexcept;
void store_u32(unsigned char* p, std::uint32_t v) noexcept;

/// What a scan of one segment's record area hands to its sink, in file order.
class scan_sink {
 public:
  virtual ~scan_sink() = default;
  /// A record that passed every check (data, done or ignorable).
  virtual void on_record(std::uint32_t offset, std::uint8_t type, const unsigned char* payload,
                         std::uint32_t length) = 0;
  /// Bytes skipped between good records.
  virtual void on_corrupt(std::uint32_t offset, std::uint32_t size, corruption_reason why) = 0;
};

struct scan_result {
  header_problem header = header_problem::none;
  /// End of the last good record (or of the header): where a torn tail is cut.
  std::uint64_t valid_end = 0;
  /// Bytes after valid_end with no good record in them (torn tail, or
  /// trailing garbage of a segment that is not the last), and why the first
  /// record there failed.
  std::uint64_t tail_size = 0;
  corruption_reason tail_reason = corruption_reason::truncated_header;
  std::uint64_t records = 0;  // good records of any type
};

/// Scans a whole segment file: header, then records. Any bytes are safe;
/// throws only what the sink throws.
/// Segments longer than 4 GiB - 1 are scanned only up to that size.
[[nodiscard]] scan_result scan_segment(const unsigned char* data, std::size_t size,
                                       std::uint32_t expected_segment, scan_sink& sink);

/// The canonical file name of a segment: at least 8 digits, then ".log".
[[nodiscard]] std::string segment_file_name(std::uint32_t segment);
/// Parses a canonical segment file name; false for anything else.
[[nodiscard]] bool parse_segment_file_name(const std::string& name, std::uint32_t& segment) noexcept;

}  // namespace postbox::detail::spool_format
