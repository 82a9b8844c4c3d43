// postbox/detail/queue_wire.hpp: the commands of the queue protocol
// (docs/protocol.md, "16. The queue device"), shared by the device and its
// reliable clients. Every command is one frame holding one msgpack array
// whose first element names it. Not part of the public API.
#pragma once

#include <postbox/detail/socket.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <msgpack.hpp>

namespace postbox::detail::queue_wire {

// Command names (the first element of every command array).
inline constexpr std::string_view cmd_publish = "pub";    // producer -> device
inline constexpr std::string_view cmd_confirm = "ok";     // device -> producer
inline constexpr std::string_view cmd_refuse = "no";      // device -> producer
inline constexpr std::string_view cmd_take = "take";      // consumer -> device (also its heartbeat)
inline constexpr std::string_view cmd_deliver = "dlv";    // device -> consumer
inline constexpr std::string_view cmd_ack = "ack";        // consumer -> device
inline constexpr std::string_view cmd_nack = "nack";      // consumer -> device
inline constexpr std::string_view cmd_reject = "rej";     // consumer -> device
inline constexpr std::string_view cmd_bye = "bye";        // consumer -> device
inline constexpr std::string_view cmd_heartbeat = "hb";   // device -> consumer
inline constexpr std::string_view cmd_batch = "batch";    // several "pub" or "dlv" in one frame

/// Queue names: 1..100 of [A-Za-z0-9._-], not starting with '.' (they name
/// directories). Returns why a name is not one, or nothing when it is.
[[nodiscard]] std::optional<std::string> invalid_queue_name(std::string_view name);

/// Reads the msgpack subset the queue protocol uses, bounds-checked: every
/// read fails (returns false) instead of running past the frame.
class reader {
 public:
  reader(const void* data, std::size_t size) noexcept
      : p_(static_cast<const std::uint8_t*>(data)), end_(p_ + size) {}

  [[nodiscard]] bool array(std::uint32_t& n) noexcept;
  [[nodiscard]] bool uint(std::uint64_t& v) noexcept;
  /// str or bin, at most `limit` bytes.
  [[nodiscard]] bool bytes(std::string_view& s, std::size_t limit) noexcept;
  [[nodiscard]] bool at_end() const noexcept { return p_ == end_; }

 private:
  [[nodiscard]] bool be(std::uint64_t& v, int n) noexcept;
  const std::uint8_t* p_;
  const std::uint8_t* end_;
};

/// Packs commands into a reused buffer.
class writer {
 public:
  writer() : pk_(buf_) {}
  writer(const writer&) = delete;
  writer& operator=(const writer&) = delete;

  writer& start(std::string_view command, std::uint32_t elements_after);
  writer& uint(std::uint64_t v) { pk_.pack_uint64(v); return *this; }
  writer& str(std::string_view s) {
    pk_.pack_str(static_cast<std::uint32_t>(s.size()));
    pk_.pack_str_body(s.data(), static_cast<std::uint32_t>(s.size()));
    return *this;
  }
  writer& bin(std::string_view s) {
    pk_.pack_bin(static_cast<std::uint32_t>(s.size()));
    pk_.pack_bin_body(s.data(), static_cast<std::uint32_t>(s.size()));
    return *this;
  }
  writer& array(std::uint32_t n) { pk_.pack_array(n); return *this; }
  [[nodiscard]] zmq::message_t frame() const { return zmq::message_t(buf_.bytes.data(), buf_.bytes.size()); }
  [[nodiscard]] std::string_view view() const noexcept { return buf_.view(); }

 private:
  pack_buffer buf_;
  msgpack::packer<pack_buffer> pk_;
};

/// The single-frame encoding of `m` (topic 0x00 version header payload),
/// however large the payload: a queue command carries it as one bin.
void encode_envelope(const message& m, const stamp& s, std::string& out);

}  // namespace postbox::detail::queue_wire
