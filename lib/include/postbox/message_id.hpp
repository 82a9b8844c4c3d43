// postbox/message_id.hpp: 16-byte, time-ordered message identifiers.
//
// Layout (docs/protocol.md, "Message id"): the UUIDv7 layout. 48 bits of Unix
// time in milliseconds, big-endian, then a 12-bit sequence within the
// millisecond, then 62 bits that start random per generator and count up by
// one per id. Ids from one generator sort in the order they were made; ids
// from different generators differ in their random bits.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace postbox {

struct message_id {
  std::array<std::uint8_t, 16> bytes{};

  [[nodiscard]] bool is_nil() const noexcept;
  /// Milliseconds since the Unix epoch, from the first 48 bits.
  [[nodiscard]] std::uint64_t unix_ms() const noexcept;
  /// 32 lowercase hex digits.
  [[nodiscard]] std::string to_hex() const;

  /// The first and the last 8 bytes, each read as a big-endian number.
  [[nodiscard]] std::uint64_t high() const noexcept { return half(0); }
  [[nodiscard]] std::uint64_t low() const noexcept { return half(8); }
  /// The id whose high() and low() these are.
  [[nodiscard]] static message_id from_halves(std::uint64_t high, std::uint64_t low) noexcept {
    message_id id;
    for (std::size_t i = 0; i < 8; ++i) {
      id.bytes[i] = static_cast<std::uint8_t>(high >> (56 - 8 * i));
      id.bytes[8 + i] = static_cast<std::uint8_t>(low >> (56 - 8 * i));
    }
    return id;
  }

  friend auto operator<=>(const message_id&, const message_id&) = default;

 private:
  [[nodiscard]] std::uint64_t half(std::size_t from) const noexcept {
    std::uint64_t v = 0;
    for (std::size_t i = from; i < from + 8; ++i) v = (v << 8) | bytes[i];
    return v;
  }
};

/// Makes ids for one thread (it is not synchronised): one per channel.
class id_generator {
 public:
  id_generator();
  /// A new id stamped with `unix_ms`; strictly greater than the previous one.
  [[nodiscard]] message_id next(std::uint64_t unix_ms) noexcept;

 private:
  std::uint64_t last_ms_ = 0;
  std::uint64_t counter_ = 0;  // 12-bit sequence within last_ms_; overflow moves last_ms_ on
  std::uint64_t tail_ = 0;     // 62 bits: random start, +1 per id
};

}  // namespace postbox
