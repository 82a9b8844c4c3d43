// postbox/pub_sub.hpp: publish/subscribe channels, publisher (XPUB) and
// subscriber (SUB). Every subscriber whose filter matches a topic gets every
// message published on it.
//
// Loss is accounted, not silent: the publisher numbers messages per topic and
// a subscriber counts the numbers it never saw (a high-water-mark drop, a
// reconnect). The slow-joiner problem is solved by waiting: a publisher can
// wait until subscribers (or a subscriber of a topic) have arrived.
#pragma once

#include <postbox/codec.hpp>
#include <postbox/context.hpp>
#include <postbox/detail/socket.hpp>
#include <postbox/message.hpp>
#include <postbox/options.hpp>
#include <postbox/stats.hpp>
#include <postbox/topic.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include <msgpack.hpp>

namespace postbox {

namespace detail {
struct string_hash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const noexcept {
    return std::hash<std::string_view>{}(s);
  }
};
using sequence_map = std::unordered_map<std::string, std::uint64_t, string_hash, std::equal_to<>>;

/// The sequence counter used last and the (origin, topic) it belongs to: a
/// stream that repeats is found again by one comparison instead of hashing.
/// Points into a sequence_map's node, which stays put until it is erased.
struct last_stream {
  std::uint64_t origin = 0;
  std::string_view topic;
  std::uint64_t* counter = nullptr;

  [[nodiscard]] bool is(std::uint64_t o, std::string_view t) const noexcept {
    return counter != nullptr && origin == o && topic == t;
  }
};
}  // namespace detail

/// Publishes messages to subscribers. One thread at a time; the context must
/// outlive it. Endpoints default to bind (">" to connect, e.g. to a forwarder).
///
/// A publisher drops a message for a subscriber whose queue is full (the
/// ZeroMQ PUB rule); the subscriber's gap accounting reports it.
class publisher {
 public:
  publisher(context& ctx, std::string_view endpoints, const socket_options& opts = {});

  /// Publishes on `topic`; never blocks. Throws config_error for a topic
  /// over max_topic_size or containing 0x00.
  void publish(std::string_view topic, std::string_view payload);
  void publish(const message& m);
  template <class T>
  void publish_packed(std::string_view topic, const T& value) {
    pack_buffer_.bytes.clear();
    msgpack::pack(pack_buffer_, value);
    publish(topic, pack_buffer_.view());
  }

  /// Waits until at least `n` postbox subscribers have subscribed (to
  /// anything). True when they have, false when `timeout` ran out first.
  [[nodiscard]] bool wait_for_subscribers(std::size_t n, std::chrono::milliseconds timeout);
  /// Waits until some subscriber's filter takes `topic` (any ZeroMQ SUB
  /// counts, postbox or not). True when one does, false on timeout.
  [[nodiscard]] bool wait_for_subscriber(std::string_view topic, std::chrono::milliseconds timeout);
  /// Postbox subscribers currently subscribed, as far as the publisher knows.
  [[nodiscard]] std::size_t subscriber_count();

  /// This publisher's stream id, stamped on every message as its origin.
  [[nodiscard]] std::uint64_t origin() const noexcept { return origin_; }
  [[nodiscard]] const std::vector<std::string>& endpoints() const noexcept {
    return core_.endpoints;
  }
  [[nodiscard]] const channel_stats& stats() const noexcept { return core_.stats; }
  [[nodiscard]] zmq::socket_t& native() noexcept { return core_.socket; }

 private:
  std::uint64_t next_sequence(std::string_view topic);
  void drain_subscriptions(int wait_ms);
  [[nodiscard]] bool has_subscriber_for(std::string_view topic) const;

  detail::channel_socket core_;
  std::uint64_t origin_;
  detail::sequence_map sequences_;
  detail::last_stream last_;
  std::map<std::string, std::uint64_t, std::less<>> subscriptions_;  // filter -> subscribers
  std::map<std::string, std::uint64_t, std::less<>> subscribers_;    // subscriber id -> live markers
  std::uint32_t sends_since_drain_ = 0;
  encoded scratch_;
  detail::pack_buffer pack_buffer_;
};

/// A jump in one stream's sequence numbers, seen by a subscriber.
struct gap_info {
  std::string_view topic;
  std::uint64_t origin = 0;
  std::uint64_t expected = 0;  ///< the sequence number that should have come
  std::uint64_t received = 0;  ///< the one that came instead
  [[nodiscard]] std::uint64_t missed() const noexcept { return received - expected; }
};

/// Receives the messages its filters take. One thread at a time; the context
/// must outlive it. Endpoints default to connect ("@" to bind).
///
/// When a connection comes back (a restarted publisher or forwarder), the
/// filters are sent again from inside receive(): libzmq 4.3 does not always
/// do it, so keep receiving (any timeout, even 0) and the link heals.
class subscriber {
 public:
  subscriber(context& ctx, std::string_view endpoints, const socket_options& opts = {});

  /// Takes every topic that starts with `prefix` ("" takes all).
  void subscribe(std::string_view prefix);
  /// Takes topics matching a hierarchical pattern, "orders.*.created",
  /// "orders.>" (see topic.hpp). Throws config_error for a bad pattern.
  void subscribe_pattern(std::string_view pattern);
  /// Removes a filter given before, prefix or pattern; unknown ones are ignored.
  void unsubscribe(std::string_view filter);

  /// Called on each gap, from inside receive().
  void on_gap(std::function<void(const gap_info&)> callback) { on_gap_ = std::move(callback); }

  /// The next message a filter takes, or nothing on timeout or a signal.
  [[nodiscard]] std::optional<message> receive(std::chrono::milliseconds timeout = forever);
  [[nodiscard]] bool receive(message& into, std::chrono::milliseconds timeout = forever);

  [[nodiscard]] const std::vector<std::string>& endpoints() const noexcept {
    return core_.endpoints;
  }
  [[nodiscard]] const channel_stats& stats() const noexcept { return core_.stats; }
  [[nodiscard]] zmq::socket_t& native() noexcept { return core_.socket; }

  /// A message whose sequence number its stream has passed already is a
  /// duplicate: it is dropped and counted in stats().duplicates.
  /// At most this many (origin, topic) streams are tracked for gaps; past
  /// it the table starts afresh (and the first message of each stream after
  /// that is not checked).
  static constexpr std::size_t max_tracked_streams = 65'536;

 private:
  struct filter {
    std::string text;
    std::optional<topic_pattern> pattern;  // none: a plain prefix
    std::string socket_prefix;
  };
  [[nodiscard]] bool wanted(std::string_view topic) const noexcept;
  /// Gap accounting; false when `m` is a duplicate to drop.
  [[nodiscard]] bool track(const message& m);
  void announce();
  void resubscribe_after_reconnect();

  detail::channel_socket core_;
  std::vector<filter> filters_;
  bool any_pattern_ = false;
  std::string marker_base_;
  std::string marker_;
  std::uint64_t generation_ = 0;
  std::unordered_map<std::uint64_t, detail::sequence_map> streams_;
  detail::last_stream last_;
  std::size_t tracked_ = 0;
  std::function<void(const gap_info&)> on_gap_;
  zmq::message_t frames_[2];
  zmq::socket_t monitor_;  // handshake events of core_.socket
  std::set<std::string> connected_;  // endpoints that completed a handshake once
  std::set<std::string> dropped_;    // endpoints disconnected since their last handshake
  std::set<std::string> bound_;      // our bound addresses: peers there are new, not back
  std::uint32_t receives_since_check_ = 0;
};

static_assert(std::is_nothrow_move_constructible_v<publisher>);
static_assert(std::is_nothrow_move_constructible_v<subscriber>);

namespace detail {
/// Subscription marker prefix: byte 0xFF sorts after every UTF-8 topic, so a
/// reconnecting SUB sends it after its real filters (docs/protocol.md).
inline constexpr std::string_view subscriber_marker = "\xFFpostbox.subscriber.";
/// The largest subscription message an XPUB accepts (ZMQ_MAXMSGSIZE): a
/// flag byte and a filter of at most a topic and its 0x00, or a marker.
inline constexpr std::int64_t max_subscription_size = 1024;
static_assert(max_subscription_size >= 1 + static_cast<std::int64_t>(max_topic_size) + 1);
}  // namespace detail

}  // namespace postbox
