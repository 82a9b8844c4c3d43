// The wire codec of docs/protocol.md: a hand-written writer and a strict,
// bounds-checked reader for the fixed header array, so that encoding needs no
// allocation and decoding never trusts a length it has not checked.
#include <postbox/codec.hpp>

#include <postbox/error.hpp>

#include <cassert>
#include <cstring>

namespace postbox {

std::string_view to_string(reject_reason reason) noexcept {
  switch (reason) {
    case reject_reason::frame_count: return "frame_count";
    case reject_reason::too_large: return "too_large";
    case reject_reason::bad_topic: return "bad_topic";
    case reject_reason::unknown_version: return "unknown_version";
    case reject_reason::bad_header: return "bad_header";
    case reject_reason::bad_msgpack: return "bad_msgpack";
    case reject_reason::depth_exceeded: return "depth_exceeded";
  }
  return "unknown";
}

std::uint64_t reject_counts::total() const noexcept {
  std::uint64_t sum = 0;
  for (auto n : by_reason) sum += n;
  return sum;
}

namespace {

constexpr std::size_t header_fields = 8;
constexpr std::size_t id_size = 16;

// ---- writing: sizes first, then bytes into a buffer of exactly that size ----

constexpr std::size_t uint_size(std::uint64_t v) noexcept {
  if (v < 0x80) return 1;
  if (v <= 0xFF) return 2;
  if (v <= 0xFFFF) return 3;
  if (v <= 0xFFFF'FFFF) return 5;
  return 9;
}

constexpr std::size_t str_size(std::size_t n) noexcept {
  if (n < 32) return 1 + n;
  if (n <= 0xFF) return 2 + n;
  if (n <= 0xFFFF) return 3 + n;
  return 5 + n;
}

constexpr std::size_t map_prefix_size(std::size_t n) noexcept { return n < 16 ? 1 : 3; }

inline std::uint8_t* put_be(std::uint8_t* p, std::uint64_t v, int bytes) noexcept {
  for (int i = bytes - 1; i >= 0; --i) *p++ = static_cast<std::uint8_t>(v >> (8 * i));
  return p;
}

inline std::uint8_t* put_uint(std::uint8_t* p, std::uint64_t v) noexcept {
  if (v < 0x80) {
    *p++ = static_cast<std::uint8_t>(v);
  } else if (v <= 0xFF) {
    *p++ = 0xcc;
    *p++ = static_cast<std::uint8_t>(v);
  } else if (v <= 0xFFFF) {
    *p++ = 0xcd;
    p = put_be(p, v, 2);
  } else if (v <= 0xFFFF'FFFF) {
    *p++ = 0xce;
    p = put_be(p, v, 4);
  } else {
    *p++ = 0xcf;
    p = put_be(p, v, 8);
  }
  return p;
}

inline std::uint8_t* put_str(std::uint8_t* p, std::string_view s) noexcept {
  const auto n = s.size();
  if (n < 32) {
    *p++ = static_cast<std::uint8_t>(0xa0 | n);
  } else if (n <= 0xFF) {
    *p++ = 0xd9;
    *p++ = static_cast<std::uint8_t>(n);
  } else if (n <= 0xFFFF) {
    *p++ = 0xda;
    p = put_be(p, n, 2);
  } else {
    *p++ = 0xdb;
    p = put_be(p, n, 4);
  }
  std::memcpy(p, s.data(), n);
  return p + n;
}

inline std::uint8_t* put_id(std::uint8_t* p, const message_id& id) noexcept {
  *p++ = 0xc4;  // bin 8
  *p++ = id_size;
  std::memcpy(p, id.bytes.data(), id_size);
  return p + id_size;
}

void check_limits(const message_view& m) {
  if (m.topic.size() > max_topic_size) {
    throw config_error("topic is " + std::to_string(m.topic.size()) + " bytes, more than " +
                       std::to_string(max_topic_size));
  }
  if (m.topic.find('\0') != std::string_view::npos) {
    throw config_error("topic \"" + std::string(m.topic.substr(0, m.topic.find('\0'))) +
                       "...\" contains a 0x00 byte");
  }
  if (m.key && m.key->size() > max_key_size) {
    throw config_error("key is " + std::to_string(m.key->size()) + " bytes, more than " +
                       std::to_string(max_key_size));
  }
  if (m.headers.size() > max_user_headers) {
    throw config_error(std::to_string(m.headers.size()) + " headers, more than " +
                       std::to_string(max_user_headers));
  }
}

std::size_t header_size(const message_view& m) noexcept {
  std::size_t n = 1;  // fixarray of 8
  n += 2 + id_size;
  n += uint_size(m.timestamp_us) + uint_size(m.origin) + uint_size(m.sequence) +
       uint_size(m.attempt);
  n += m.key ? str_size(m.key->size()) : 1;
  n += m.correlation ? 2 + id_size : 1;
  if (m.headers.empty()) {
    n += 1;
  } else {
    n += map_prefix_size(m.headers.size());
    for (const auto& h : m.headers) n += str_size(h.name.size()) + str_size(h.value.size());
  }
  return n;
}

std::uint8_t* put_header(std::uint8_t* p, const message_view& m) noexcept {
  *p++ = 0x90 | header_fields;
  p = put_id(p, m.id);
  p = put_uint(p, m.timestamp_us);
  p = put_uint(p, m.origin);
  p = put_uint(p, m.sequence);
  p = put_uint(p, m.attempt);
  if (m.key) {
    p = put_str(p, *m.key);
  } else {
    *p++ = 0xc0;
  }
  if (m.correlation) {
    p = put_id(p, *m.correlation);
  } else {
    *p++ = 0xc0;
  }
  if (m.headers.empty()) {
    *p++ = 0xc0;
  } else {
    if (m.headers.size() < 16) {
      *p++ = static_cast<std::uint8_t>(0x80 | m.headers.size());
    } else {
      *p++ = 0xde;
      p = put_be(p, m.headers.size(), 2);
    }
    for (const auto& h : m.headers) {
      p = put_str(p, h.name);
      p = put_str(p, h.value);
    }
  }
  return p;
}

// The size of the first frame, after checking the limits; with
// `inline_payload` false the payload is left to a second frame.
std::size_t head_size(const message_view& m, bool inline_payload) {
  check_limits(m);
  const std::size_t hsize = header_size(m);
  if (hsize > max_header_size) {
    throw config_error("header is " + std::to_string(hsize) + " bytes, more than " +
                       std::to_string(max_header_size));
  }
  return m.topic.size() + 2 + hsize + (inline_payload ? m.payload.size() : 0);
}

// Writes the first frame's `total` bytes (from head_size()) at `out`.
void write_head(const message_view& m, bool inline_payload, std::size_t total, void* out) noexcept {
  auto* p = static_cast<std::uint8_t*>(out);
  std::memcpy(p, m.topic.data(), m.topic.size());
  p += m.topic.size();
  *p++ = 0x00;
  *p++ = wire_version;
  p = put_header(p, m);
  if (inline_payload && !m.payload.empty()) {
    std::memcpy(p, m.payload.data(), m.payload.size());
    p += m.payload.size();
  }
  assert(p == static_cast<std::uint8_t*>(out) + total);
  (void)total;
}

// Builds the first frame.
void encode_head(const message_view& m, bool inline_payload, zmq::message_t& frame) {
  const std::size_t total = head_size(m, inline_payload);
  frame.rebuild(total);
  write_head(m, inline_payload, total, frame.data());
}

// ---- reading: a cursor that never reads past its end ----

class reader {
 public:
  reader(const std::uint8_t* p, std::size_t n) : p_(p), end_(p + n) {}

  [[nodiscard]] std::size_t left() const noexcept { return static_cast<std::size_t>(end_ - p_); }
  /// Refuses a claimed count of items larger than the bytes left: every item
  /// takes at least one byte, so the claim is a lie we need not loop over.
  std::optional<reject_reason> claim(std::uint64_t items) noexcept {
    if (items > left()) return short_read();
    return std::nullopt;
  }
  /// True when a read failed for want of bytes (as opposed to a bad byte).
  [[nodiscard]] bool exhausted() const noexcept { return exhausted_; }
  [[nodiscard]] const std::uint8_t* pos() const noexcept { return p_; }

  // Each returns the reason on failure; on success the cursor has moved.
  std::optional<reject_reason> byte(std::uint8_t& b) noexcept {
    if (p_ == end_) return short_read();
    b = *p_++;
    return std::nullopt;
  }

  std::optional<reject_reason> be(std::uint64_t& v, int bytes) noexcept {
    if (left() < static_cast<std::size_t>(bytes)) return short_read();
    v = 0;
    for (int i = 0; i < bytes; ++i) v = (v << 8) | *p_++;
    return std::nullopt;
  }

  std::optional<reject_reason> take(std::size_t n, const std::uint8_t*& out) noexcept {
    if (left() < n) return short_read();
    out = p_;
    p_ += n;
    return std::nullopt;
  }

  bool peek_nil() noexcept {
    if (p_ != end_ && *p_ == 0xc0) {
      ++p_;
      return true;
    }
    return false;
  }

  std::optional<reject_reason> uint(std::uint64_t& v) noexcept {
    std::uint8_t t = 0;
    if (auto r = byte(t)) return r;
    if (t < 0x80) {
      v = t;
      return std::nullopt;
    }
    switch (t) {
      case 0xcc: return be(v, 1);
      case 0xcd: return be(v, 2);
      case 0xce: return be(v, 4);
      case 0xcf: return be(v, 8);
      case 0xd0: case 0xd1: case 0xd2: case 0xd3: {  // signed, accepted when not negative
        const int bytes = 1 << (t - 0xd0);
        if (auto r = be(v, bytes)) return r;
        if (v >> (8 * bytes - 1)) return reject_reason::bad_header;
        return std::nullopt;
      }
      default:
        return t == 0xc1 ? reject_reason::bad_msgpack : reject_reason::bad_header;
    }
  }

  std::optional<reject_reason> str(std::string_view& s, std::size_t limit) noexcept {
    std::uint8_t t = 0;
    if (auto r = byte(t)) return r;
    std::uint64_t n = 0;
    if ((t & 0xe0) == 0xa0) {
      n = t & 0x1f;
    } else if (t == 0xd9) {
      if (auto r = be(n, 1)) return r;
    } else if (t == 0xda) {
      if (auto r = be(n, 2)) return r;
    } else if (t == 0xdb) {
      if (auto r = be(n, 4)) return r;
    } else {
      return t == 0xc1 ? reject_reason::bad_msgpack : reject_reason::bad_header;
    }
    if (n > limit) return reject_reason::too_large;
    const std::uint8_t* data = nullptr;
    if (auto r = take(n, data)) return r;
    s = {reinterpret_cast<const char*>(data), n};
    return std::nullopt;
  }

  std::optional<reject_reason> id(message_id& out) noexcept {
    std::uint8_t t = 0, n = 0;
    if (auto r = byte(t)) return r;
    if (t != 0xc4) return t == 0xc1 ? reject_reason::bad_msgpack : reject_reason::bad_header;
    if (auto r = byte(n)) return r;
    if (n != id_size) return reject_reason::bad_header;
    const std::uint8_t* data = nullptr;
    if (auto r = take(id_size, data)) return r;
    std::memcpy(out.bytes.data(), data, id_size);
    return std::nullopt;
  }

  // Container prefixes: fixarray/array16/array32 and fixmap/map16/map32.
  std::optional<reject_reason> container(std::uint8_t fix_base, std::uint8_t t16,
                                         std::uint64_t& n) noexcept {
    std::uint8_t t = 0;
    if (auto r = byte(t)) return r;
    if ((t & 0xf0) == fix_base) {
      n = t & 0x0f;
      return std::nullopt;
    }
    if (t == t16) return be(n, 2);
    if (t == t16 + 1) return be(n, 4);
    return t == 0xc1 ? reject_reason::bad_msgpack : reject_reason::bad_header;
  }

  // Skips one msgpack value of any type, nested at most max_skip_depth.
  std::optional<reject_reason> skip(std::size_t depth) noexcept {
    if (depth > max_skip_depth) return reject_reason::depth_exceeded;
    std::uint8_t t = 0;
    if (auto r = byte(t)) return r;
    std::uint64_t n = 0;
    const std::uint8_t* unused = nullptr;
    if (t < 0x80 || t >= 0xe0 || t == 0xc0 || t == 0xc2 || t == 0xc3) return std::nullopt;
    if ((t & 0xe0) == 0xa0) return take(t & 0x1f, unused);
    if ((t & 0xf0) == 0x90) return skip_items(t & 0x0f, depth);
    if ((t & 0xf0) == 0x80) return skip_items(2 * std::uint64_t{t & 0x0fu}, depth);
    switch (t) {
      case 0xc4: case 0xd9: if (auto r = be(n, 1)) return r; return take(n, unused);
      case 0xc5: case 0xda: if (auto r = be(n, 2)) return r; return take(n, unused);
      case 0xc6: case 0xdb: if (auto r = be(n, 4)) return r; return take(n, unused);
      case 0xc7: if (auto r = be(n, 1)) return r; return take(n + 1, unused);
      case 0xc8: if (auto r = be(n, 2)) return r; return take(n + 1, unused);
      case 0xc9: if (auto r = be(n, 4)) return r; return take(n + 1, unused);
      case 0xca: case 0xce: case 0xd2: return take(4, unused);
      case 0xcb: case 0xcf: case 0xd3: return take(8, unused);
      case 0xcc: case 0xd0: return take(1, unused);
      case 0xcd: case 0xd1: return take(2, unused);
      case 0xd4: return take(2, unused);
      case 0xd5: return take(3, unused);
      case 0xd6: return take(5, unused);
      case 0xd7: return take(9, unused);
      case 0xd8: return take(17, unused);
      case 0xdc: if (auto r = be(n, 2)) return r; return skip_items(n, depth);
      case 0xdd: if (auto r = be(n, 4)) return r; return skip_items(n, depth);
      case 0xde: if (auto r = be(n, 2)) return r; return skip_items(2 * n, depth);
      case 0xdf: if (auto r = be(n, 4)) return r; return skip_items(2 * n, depth);
      default: return reject_reason::bad_msgpack;  // 0xc1, never used
    }
  }

 private:
  std::optional<reject_reason> skip_items(std::uint64_t n, std::size_t depth) noexcept {
    if (auto r = claim(n)) return r;
    for (std::uint64_t i = 0; i < n; ++i) {
      if (auto r = skip(depth + 1)) return r;
    }
    return std::nullopt;
  }

  reject_reason short_read() noexcept {
    exhausted_ = true;
    return reject_reason::bad_msgpack;
  }

  const std::uint8_t* p_;
  const std::uint8_t* end_;
  bool exhausted_ = false;
};

std::optional<reject_reason> read_header(reader& in, message& out, std::string_view& key,
                                         bool& has_key, std::vector<header>& headers);

}  // namespace

// Access to message's private fields for the codec.
struct detail_access {
  static void set_payload_frame(message& m, zmq::message_t&& frame, std::size_t offset,
                                std::size_t size) noexcept {
    m.payload_frame_ = std::move(frame);
    m.payload_offset_ = offset;
    m.payload_size_ = size;
  }
  static const zmq::message_t& payload_frame(const message& m) noexcept {
    return m.payload_frame_;
  }
  static std::string& topic(message& m) noexcept { return m.topic_; }
  static std::string& key(message& m) noexcept { return m.key_; }
  static bool& has_key(message& m) noexcept { return m.has_key_; }
  static std::vector<header>& headers(message& m) noexcept { return m.headers_; }
  static void fields(message& m, const message_id& id, std::uint64_t ts, std::uint64_t origin,
                     std::uint64_t seq, std::uint32_t attempt) noexcept {
    m.id_ = id;
    m.timestamp_us_ = ts;
    m.origin_ = origin;
    m.sequence_ = seq;
    m.attempt_ = attempt;
  }
  static std::optional<message_id>& correlation(message& m) noexcept { return m.correlation_; }
};

void encode(const message_view& m, encoded& out) {
  const bool split = m.payload.size() >= large_payload_threshold;
  encode_head(m, !split, out.first);
  out.frames = split ? 2 : 1;
  if (split) out.second.rebuild(m.payload.data(), m.payload.size());
}

namespace {

message_view view_of(const message& m, const stamp& s) noexcept {
  message_view v;
  v.topic = m.topic();
  v.payload = m.payload();
  v.id = s.id.is_nil() ? m.id() : s.id;
  v.timestamp_us = s.timestamp_us != 0 ? s.timestamp_us : m.timestamp_us();
  v.origin = s.origin != 0 ? s.origin : m.origin();
  v.sequence = s.sequence != 0 ? s.sequence : m.sequence();
  v.attempt = m.attempt();
  v.key = m.key();
  v.correlation = m.correlation() ? &*m.correlation() : nullptr;
  v.headers = m.headers();
  return v;
}

}  // namespace

void encode_single(const message& m, const stamp& s, std::string& out) {
  const message_view v = view_of(m, s);
  const std::size_t total = head_size(v, true);
  out.resize(total);
  write_head(v, true, total, out.data());
}

void encode(const message& m, const stamp& s, encoded& out) {
  const message_view v = view_of(m, s);
  const bool split = v.payload.size() >= large_payload_threshold;
  encode_head(v, !split, out.first);
  out.frames = split ? 2 : 1;
  if (!split) return;
  const zmq::message_t& frame = detail_access::payload_frame(m);
  if (frame.size() == v.payload.size()) {
    out.second.copy(const_cast<zmq::message_t&>(frame));  // shares the buffer, no byte copy
  } else {
    out.second.rebuild(v.payload.data(), v.payload.size());
  }
}

namespace {

std::optional<reject_reason> read_header(reader& in, message& out, std::string_view& key,
                                         bool& has_key, std::vector<header>& headers) {
  std::uint64_t fields = 0;
  if (auto r = in.container(0x90, 0xdc, fields)) return r;
  if (fields < header_fields) return reject_reason::bad_header;
  if (auto r = in.claim(fields)) return r;
  message_id id;
  std::uint64_t ts = 0, origin = 0, seq = 0, attempt = 0;
  if (auto r = in.id(id)) return r;
  if (auto r = in.uint(ts)) return r;
  if (auto r = in.uint(origin)) return r;
  if (auto r = in.uint(seq)) return r;
  if (auto r = in.uint(attempt)) return r;
  if (attempt > 0xFFFF'FFFF) return reject_reason::bad_header;
  has_key = !in.peek_nil();
  if (has_key) {
    if (auto r = in.str(key, max_key_size)) return r;
  }
  auto& corr = detail_access::correlation(out);
  if (in.peek_nil()) {
    corr.reset();
  } else {
    message_id c;
    if (auto r = in.id(c)) return r;
    corr = c;
  }
  headers.clear();
  if (!in.peek_nil()) {
    std::uint64_t n = 0;
    if (auto r = in.container(0x80, 0xde, n)) return r;
    if (n > max_user_headers) return reject_reason::too_large;
    for (std::uint64_t i = 0; i < n; ++i) {
      std::string_view name, value;
      if (auto r = in.str(name, max_header_size)) return r;
      if (auto r = in.str(value, max_header_size)) return r;
      headers.push_back({std::string(name), std::string(value)});
    }
  }
  for (std::uint64_t i = header_fields; i < fields; ++i) {
    if (auto r = in.skip(1)) return r;
  }
  detail_access::fields(out, id, ts, origin, seq, static_cast<std::uint32_t>(attempt));
  return std::nullopt;
}

}  // namespace

namespace {

// Everything but the payload, from the first frame's `size` bytes at `data`;
// on success `payload_offset` is where the payload starts in them.
std::optional<reject_reason> decode_head(const std::uint8_t* data, std::size_t size, message& out,
                                         std::size_t& payload_offset) noexcept {
  const auto* nul = static_cast<const std::uint8_t*>(
      std::memchr(data, 0, size < max_topic_size + 1 ? size : max_topic_size + 1));
  if (nul == nullptr) return size > max_topic_size ? reject_reason::too_large : reject_reason::bad_topic;
  const std::size_t topic_size = static_cast<std::size_t>(nul - data);
  if (topic_size + 1 == size) return reject_reason::bad_msgpack;  // no version byte
  if (data[topic_size + 1] != wire_version) return reject_reason::unknown_version;

  const std::size_t header_start = topic_size + 2;
  const std::size_t header_room = size - header_start;
  reader in(data + header_start, header_room < max_header_size ? header_room : max_header_size);
  std::string_view key;
  bool has_key = false;
  try {
    if (auto r = read_header(in, out, key, has_key, detail_access::headers(out))) {
      // A header cut off by the size limit, not by the frame, is too large.
      if (r == reject_reason::bad_msgpack && in.exhausted() && header_room > max_header_size) {
        return reject_reason::too_large;
      }
      return r;
    }
    detail_access::topic(out).assign(reinterpret_cast<const char*>(data), topic_size);
    detail_access::has_key(out) = has_key;
    detail_access::key(out).assign(key);
  } catch (const std::bad_alloc&) {
    return reject_reason::too_large;
  }
  payload_offset = static_cast<std::size_t>(in.pos() - data);
  return std::nullopt;
}

}  // namespace

std::optional<reject_reason> decode(zmq::message_t* frames, std::size_t count,
                                    message& out) noexcept {
  if (count < 1 || count > 2) return reject_reason::frame_count;
  zmq::message_t& head = frames[0];
  const std::size_t size = head.size();
  std::size_t payload_offset = 0;
  if (auto r = decode_head(static_cast<const std::uint8_t*>(head.data()), size, out, payload_offset)) {
    return r;
  }
  if (count == 2) {
    if (payload_offset != size) return reject_reason::bad_header;  // payload in both frames
    const std::size_t body_size = frames[1].size();
    detail_access::set_payload_frame(out, std::move(frames[1]), 0, body_size);
  } else {
    detail_access::set_payload_frame(out, std::move(head), payload_offset, size - payload_offset);
  }
  return std::nullopt;
}

std::optional<reject_reason> decode_shared(zmq::message_t& frame, std::size_t offset,
                                           std::size_t size, message& out) noexcept {
  if (offset > frame.size() || size > frame.size() - offset) return reject_reason::bad_header;
  std::size_t payload_offset = 0;
  const auto* data = static_cast<const std::uint8_t*>(frame.data()) + offset;
  if (auto r = decode_head(data, size, out, payload_offset)) return r;
  const std::size_t payload_size = size - payload_offset;
  if (payload_size < large_payload_threshold && payload_size * share_ratio < frame.size()) {
    // A small payload in a big frame is copied: held, it must not keep
    // the whole frame alive. Without memory for the copy it shares the
    // frame after all: a valid message is never refused for that.
    try {
      detail_access::set_payload_frame(out, zmq::message_t(data + payload_offset, payload_size), 0,
                                       payload_size);
      return std::nullopt;
    } catch (const zmq::error_t&) {
    }
  }
  zmq::message_t shared;
  shared.copy(frame);  // a reference to the same buffer (bytes copied only when tiny)
  detail_access::set_payload_frame(out, std::move(shared), offset + payload_offset, payload_size);
  return std::nullopt;
}

}  // namespace postbox
