// The queue protocol's command reader and writer (docs/protocol.md, 16).
#include <postbox/detail/queue_wire.hpp>

#include <postbox/codec.hpp>

namespace postbox::detail::queue_wire {

std::optional<std::string> invalid_queue_name(std::string_view name) {
  if (name.empty()) return "a queue name cannot be empty";
  if (name.size() > 100) return "a queue name has at most 100 characters";
  if (name.front() == '.') return "a queue name cannot start with '.'";
  for (const char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-';
    if (!ok) return "a queue name holds only letters, digits, '.', '_' and '-'";
  }
  return std::nullopt;
}

bool reader::be(std::uint64_t& v, int n) noexcept {
  if (end_ - p_ < n) return false;
  v = 0;
  for (int i = 0; i < n; ++i) v = (v << 8) | *p_++;
  return true;
}

bool reader::array(std::uint32_t& n) noexcept {
  if (p_ == end_) return false;
  const std::uint8_t t = *p_++;
  std::uint64_t v = 0;
  if ((t & 0xf0) == 0x90) {
    v = t & 0x0f;
  } else if (t == 0xdc) {
    if (!be(v, 2)) return false;
  } else if (t == 0xdd) {
    if (!be(v, 4)) return false;
  } else {
    return false;
  }
  // Each element takes at least one byte: a count the frame cannot hold is a lie.
  if (v > static_cast<std::uint64_t>(end_ - p_)) return false;
  n = static_cast<std::uint32_t>(v);
  return true;
}

bool reader::uint(std::uint64_t& v) noexcept {
  if (p_ == end_) return false;
  const std::uint8_t t = *p_++;
  if (t < 0x80) {
    v = t;
    return true;
  }
  switch (t) {
    case 0xcc: return be(v, 1);
    case 0xcd: return be(v, 2);
    case 0xce: return be(v, 4);
    case 0xcf: return be(v, 8);
    default: return false;
  }
}

bool reader::bytes(std::string_view& s, std::size_t limit) noexcept {
  if (p_ == end_) return false;
  const std::uint8_t t = *p_++;
  std::uint64_t n = 0;
  if ((t & 0xe0) == 0xa0) {
    n = t & 0x1f;
  } else if (t == 0xd9 || t == 0xc4) {
    if (!be(n, 1)) return false;
  } else if (t == 0xda || t == 0xc5) {
    if (!be(n, 2)) return false;
  } else if (t == 0xdb || t == 0xc6) {
    if (!be(n, 4)) return false;
  } else {
    return false;
  }
  if (n > limit || n > static_cast<std::uint64_t>(end_ - p_)) return false;
  s = {reinterpret_cast<const char*>(p_), static_cast<std::size_t>(n)};
  p_ += n;
  return true;
}

writer& writer::start(std::string_view command, std::uint32_t elements_after) {
  buf_.bytes.clear();
  pk_.pack_array(elements_after + 1);
  return str(command);
}

void encode_envelope(const message& m, const stamp& s, std::string& out) {
  encode_single(m, s, out);
}

}  // namespace postbox::detail::queue_wire
