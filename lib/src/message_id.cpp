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
  // Two big-endian words: [ms:48 | 0x7:4 | counter:12] and [0b10:2 | tail:62].
  const std::uint64_t hi = ((last_ms_ & 0xFFFF'FFFF'FFFF) << 16) | 0x7000 | (counter_ & 0xFFF);
  const std::uint64_t lo = (std::uint64_t{2} << 62) | (tail_ & ((std::uint64_t{1} << 62) - 1));
  return message_id::from_halves(hi, lo);
}

}  // namespace postbox
