// postbox/crc32c.hpp: CRC32C (Castagnoli), table-driven or SSE4.2, and the
// LevelDB-style mask. See docs/spool-format.md ("Records").
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace postbox {

/// Extends `crc` (a finished CRC32C of earlier bytes, 0 for none) over
/// `size` bytes at `data`. Uses the SSE4.2 instruction when the CPU has it.
/// Never throws; `data` may be null when `size` is 0.
[[nodiscard]] std::uint32_t crc32c_extend(std::uint32_t crc, const void* data,
                                          std::size_t size) noexcept;

/// CRC32C of `size` bytes at `data`; crc32c("123456789") == 0xE3069283.
[[nodiscard]] inline std::uint32_t crc32c(const void* data, std::size_t size) noexcept {
  return crc32c_extend(0, data, size);
}
[[nodiscard]] inline std::uint32_t crc32c(std::string_view bytes) noexcept {
  return crc32c_extend(0, bytes.data(), bytes.size());
}

/// The portable table-driven implementation (also used to test the fast one).
[[nodiscard]] std::uint32_t crc32c_extend_portable(std::uint32_t crc, const void* data,
                                                   std::size_t size) noexcept;

/// True when crc32c_extend uses the SSE4.2 instruction on this CPU.
[[nodiscard]] bool crc32c_hardware() noexcept;

inline constexpr std::uint32_t crc32c_mask_delta = 0xa282ead8u;

/// LevelDB's mask: a CRC stored in checksummed bytes does not checksum to a constant.
[[nodiscard]] constexpr std::uint32_t crc32c_mask(std::uint32_t crc) noexcept {
  return ((crc >> 15) | (crc << 17)) + crc32c_mask_delta;
}
[[nodiscard]] constexpr std::uint32_t crc32c_unmask(std::uint32_t masked) noexcept {
  const std::uint32_t rot = masked - crc32c_mask_delta;
  return (rot >> 17) | (rot << 15);
}

}  // namespace postbox
