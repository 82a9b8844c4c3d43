// Time-ordered message ids (docs/protocol.md, "Message id").
#include <postbox/message_id.hpp>

#include <random>

namespace postbox {

bool message_id::is_nil() const noexcept {
  for (auto b : bytes) {
    if (b != 0) return false;
  }
  return true;
}

std::uint64_t message_id::unix_ms() const noexcept {
  std::uint64_t ms = 0;
  for (int i = 0; i < 6; ++i) ms = (ms << 8) | bytes[i];
  return ms;
}

std::string message_id::to_hex() const {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out(32, '0');
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    out[2 * i] = digits[bytes[i] >> 4];
    out[2 * i + 1] = digits[bytes[i] & 0xF];
  }
  return out;
}

id_generator::id_generator() {
  std::random_device rd;
  tail_ = ((std::uint64_t{rd()} << 32) | rd()) & ((std::uint64_t{1} << 62) - 1);
}

message_id id_generator::next(std::uint64_t unix_ms) noexcept {
  if (unix_ms > last_ms_) {
    last_ms_ = unix_ms;
    counter_ = 0;
  } else {
    // Same millisecond, or the clock stepped back: keep the order by counting
    // on from the last id rather than trusting the clock.
    if (++counter_ > 0xFFF) {
      counter_ = 0;
      ++last_ms_;
    }
  }
  ++tail_;
  message_id id;
  const std::uint64_t ms = last_ms_ & 0xFFFF'FFFF'FFFF;
  for (int i = 0; i < 6; ++i) id.bytes[i] = static_cast<std::uint8_t>(ms >> (40 - 8 * i));
  id.bytes[6] = static_cast<std::uint8_t>(0x70 | ((counter_ >> 8) & 0x0F));
  id.bytes[7] = static_cast<std::uint8_t>(counter_ & 0xFF);
  const std::uint64_t tail = tail_ & ((std::uint64_t{1} << 62) - 1);
  id.bytes[8] = static_cast<std::uint8_t>(0x80 | ((tail >> 56) & 0x3F));
  for (int i = 9; i < 16; ++i) id.bytes[i] = static_cast<std::uint8_t>(tail >> (8 * (15 - i)));
  return id;
}

}  // namespace postbox
