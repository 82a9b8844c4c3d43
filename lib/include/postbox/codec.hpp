// postbox/codec.hpp: the wire format of docs/protocol.md, both ways.
//
// A message travels as one frame, [topic 0x00 version header payload], or,
// when its payload is large, as two, [topic 0x00 version header][payload], so
// that a large payload is never copied into a bigger buffer. The topic comes
// first so that SUB prefix filtering works on the raw bytes.
//
// Decoding assumes hostile bytes: every length is checked against the frame
// and the limits below, nothing is allocated from a claimed size, and failure
// is a reject_reason, never an exception.
#pragma once

#include <postbox/message.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include <zmq.hpp>

namespace postbox {

/// Why received bytes were refused. See docs/protocol.md, "Rejections".
enum class reject_reason : std::uint8_t {
  frame_count,      ///< not 1 or 2 frames (or the request/reply envelope is wrong)
  too_large,        ///< header or topic longer than its limit
  bad_topic,        ///< no 0x00 after at most max_topic_size bytes
  unknown_version,  ///< format version byte this build does not speak
  bad_header,       ///< header is valid msgpack but not the documented array
  bad_msgpack,      ///< header is not valid msgpack (truncated, reserved byte)
  depth_exceeded,   ///< an ignored trailing header element nests too deep
};
inline constexpr std::size_t reject_reason_count = 7;

/// "frame_count", "too_large", ... as used in stats and logs.
[[nodiscard]] std::string_view to_string(reject_reason reason) noexcept;

/// Counts per reject_reason, indexable by the enum.
struct reject_counts {
  std::array<std::uint64_t, reject_reason_count> by_reason{};
  [[nodiscard]] std::uint64_t total() const noexcept;
  [[nodiscard]] std::uint64_t operator[](reject_reason r) const noexcept {
    return by_reason[static_cast<std::size_t>(r)];
  }
  void count(reject_reason r) noexcept { ++by_reason[static_cast<std::size_t>(r)]; }
};

inline constexpr std::uint8_t wire_version = 1;
inline constexpr std::size_t max_topic_size = 255;
inline constexpr std::size_t max_key_size = 1024;
inline constexpr std::size_t max_header_size = 64 * 1024;
inline constexpr std::size_t max_user_headers = 64;
inline constexpr std::size_t max_skip_depth = 8;
/// Payloads this size or larger travel in a frame of their own (bench/ shows
/// why: below it one frame is faster, above it the copy costs more).
inline constexpr std::size_t large_payload_threshold = 8 * 1024;
/// decode_shared() shares a frame with a payload of at least 1/share_ratio
/// of it.
inline constexpr std::size_t share_ratio = 4;

/// The header fields a channel stamps as it sends, over what the message has.
struct stamp {
  message_id id{};
  std::uint64_t timestamp_us = 0;
  std::uint64_t origin = 0;
  std::uint64_t sequence = 0;
};

/// What is on the wire, by reference: the zero-copy form encode() reads.
struct message_view {
  std::string_view topic;
  std::string_view payload;
  message_id id{};
  std::uint64_t timestamp_us = 0;
  std::uint64_t origin = 0;
  std::uint64_t sequence = 0;
  std::uint32_t attempt = 0;
  std::optional<std::string_view> key;
  const message_id* correlation = nullptr;
  std::span<const header> headers;
};

/// The frames of one encoded message; `second` is used when `frames == 2`.
struct encoded {
  zmq::message_t first;
  zmq::message_t second;
  int frames = 1;
};

/// Encodes `m`. Throws config_error when a field is over its limit (topic,
/// key, header count or size), or the topic contains a 0x00 byte.
void encode(const message_view& m, encoded& out);
/// Encodes `m` with the fields of `s` that are set (non-nil, non-zero) in
/// place of its own; shares a large payload's buffer instead of copying it.
void encode(const message& m, const stamp& s, encoded& out);
/// Encodes `m` (with `s` as above) as the bytes of one frame, whatever the
/// payload's size, into `out`: the envelope the queue protocol carries.
void encode_single(const message& m, const stamp& s, std::string& out);

/// Decodes one message of `count` frames (1 or 2) into `out`, taking the
/// frames over. On failure `out` is unspecified and the reason is returned.
[[nodiscard]] std::optional<reject_reason> decode(zmq::message_t* frames, std::size_t count,
                                                  message& out) noexcept;
/// Decodes the one-frame message in bytes [offset, offset + size) of `frame`
/// (one of several packed in it) into `out`. A payload of at least
/// large_payload_threshold bytes, or of at least 1/share_ratio of the frame,
/// shares the frame's buffer instead of copying it: the buffer then lives as
/// long as any message decoded from it, so a held message keeps at most
/// share_ratio times its payload (or one frame beside a large payload)
/// alive. Smaller payloads are copied. (A frame over borrowed bytes, made
/// without a free function, is shared only as long as those bytes live.)
[[nodiscard]] std::optional<reject_reason> decode_shared(zmq::message_t& frame, std::size_t offset,
                                                         std::size_t size, message& out) noexcept;

}  // namespace postbox
