// postbox/stats.hpp: outcomes of sends and the counters every channel keeps.
#pragma once

#include <postbox/codec.hpp>

#include <chrono>
#include <cstdint>

namespace postbox {

/// What became of a send. Never a silent drop: anything but `ok` means the
/// message was not queued and is still the caller's.
enum class send_result {
  ok,           ///< queued to libzmq for a connected peer
  would_block,  ///< high-water mark reached, or no connected peer (non-blocking send)
  timed_out,    ///< still would block when the timeout ran out
  unreachable,  ///< the addressed peer is gone (a reply to a requester that left)
};

[[nodiscard]] constexpr const char* to_string(send_result r) noexcept {
  switch (r) {
    case send_result::ok: return "ok";
    case send_result::would_block: return "would_block";
    case send_result::timed_out: return "timed_out";
    case send_result::unreachable: return "unreachable";
  }
  return "unknown";
}

/// Wait forever (blocking calls).
inline constexpr std::chrono::milliseconds forever{-1};

/// Counters of one channel. Fields a channel has no use for stay 0.
struct channel_stats {
  std::uint64_t sent = 0;         ///< messages handed to libzmq
  std::uint64_t received = 0;     ///< messages delivered to the caller
  std::uint64_t would_block = 0;  ///< sends refused at the high-water mark or with no peer
  std::uint64_t unreachable = 0;  ///< replies whose requester had gone
  reject_counts rejected;         ///< received bytes refused, by reason
  std::uint64_t filtered = 0;     ///< subscriber: arrived by socket prefix, matched no pattern
  std::uint64_t gaps = 0;         ///< subscriber: sequence jumps seen
  std::uint64_t missed = 0;       ///< subscriber: messages those jumps skipped
  std::uint64_t duplicates = 0;   ///< subscriber: already-seen sequence numbers, dropped
  std::uint64_t retries = 0;      ///< requester: requests sent again after a timeout
  std::uint64_t timeouts = 0;     ///< requester: requests that got no reply at all
  std::uint64_t stale_replies = 0;  ///< requester: replies to an earlier request, dropped
};

}  // namespace postbox
