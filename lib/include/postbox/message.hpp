// postbox/message.hpp: the postbox message (docs/protocol.md, "Envelope").
//
// A message carries a topic, a small header (id, timestamp, origin and
// sequence, attempt count, optional key, correlation id and user headers) and
// a payload of raw bytes. Typed payloads are msgpack: any type with
// MSGPACK_DEFINE goes in with message::packed and comes out with as<T>().
#pragma once

#include <postbox/error.hpp>
#include <postbox/message_id.hpp>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <msgpack.hpp>
#include <zmq.hpp>

namespace postbox {

/// One user header: a name and a value, both text.
struct header {
  std::string name;
  std::string value;
  friend bool operator==(const header&, const header&) = default;
};

/// Limits applied when a typed payload is unpacked (msgpack::unpack_limit):
/// no container may hold more than this many elements, no string or binary
/// more than payload bytes, no nesting deeper than depth.
struct unpack_limits {
  std::size_t elements = 1 << 20;
  std::size_t depth = 32;
};

/// A message. Movable and copyable; a copy shares a large payload's buffer
/// (libzmq reference counting) instead of copying it.
class message {
 public:
  message() = default;
  /// A message with `topic` and raw `payload`. A payload of at least
  /// large_payload_threshold bytes is adopted without a copy.
  message(std::string topic, std::string payload);
  message(std::string topic, std::string_view payload);
  message(std::string topic, const char* payload) : message(std::move(topic), std::string_view(payload)) {}

  message(const message& other);
  message& operator=(const message& other);
  /// A moved-from message is empty (no payload), not a dangling view.
  message(message&& other) noexcept;
  message& operator=(message&& other) noexcept;

  /// A message whose payload is `value` packed with msgpack.
  template <class T>
  [[nodiscard]] static message packed(std::string topic, const T& value) {
    msgpack::sbuffer buffer;
    msgpack::pack(buffer, value);
    return message(std::move(topic), std::string_view(buffer.data(), buffer.size()));
  }

  [[nodiscard]] std::string_view topic() const noexcept { return topic_; }
  [[nodiscard]] std::string_view payload() const noexcept {
    return {static_cast<const char*>(payload_frame_.data()) + payload_offset_, payload_size_};
  }
  /// Nil until the message is sent or received: a channel stamps a new id on
  /// a message whose id is nil and keeps one that is set (a resend).
  [[nodiscard]] const message_id& id() const noexcept { return id_; }
  /// Microseconds since the Unix epoch; 0 until sent (stamped like the id).
  [[nodiscard]] std::uint64_t timestamp_us() const noexcept { return timestamp_us_; }
  [[nodiscard]] std::chrono::system_clock::time_point timestamp() const noexcept {
    return std::chrono::system_clock::time_point(std::chrono::microseconds(timestamp_us_));
  }
  /// The publishing stream: a random number per publisher, 0 when none.
  [[nodiscard]] std::uint64_t origin() const noexcept { return origin_; }
  /// Per origin and topic, 1, 2, 3... as published; 0 when not sequenced.
  [[nodiscard]] std::uint64_t sequence() const noexcept { return sequence_; }
  /// How many times this message was delivered before (0 on the first).
  [[nodiscard]] std::uint32_t attempt() const noexcept { return attempt_; }
  [[nodiscard]] std::optional<std::string_view> key() const noexcept {
    return has_key_ ? std::optional<std::string_view>(key_) : std::nullopt;
  }
  [[nodiscard]] const std::optional<message_id>& correlation() const noexcept {
    return correlation_;
  }
  [[nodiscard]] const std::vector<header>& headers() const noexcept { return headers_; }
  /// The value of the first header named `name`, if any.
  [[nodiscard]] std::optional<std::string_view> header_value(std::string_view name) const noexcept;

  message& set_topic(std::string topic) { topic_ = std::move(topic); return *this; }
  message& set_payload(std::string payload);
  message& set_key(std::string key) { key_ = std::move(key); has_key_ = true; return *this; }
  message& clear_key() noexcept { key_.clear(); has_key_ = false; return *this; }
  message& set_attempt(std::uint32_t attempt) noexcept { attempt_ = attempt; return *this; }
  message& set_id(const message_id& id) noexcept { id_ = id; return *this; }
  message& set_timestamp_us(std::uint64_t us) noexcept { timestamp_us_ = us; return *this; }
  message& set_correlation(std::optional<message_id> id) noexcept { correlation_ = id; return *this; }
  message& add_header(std::string name, std::string value) {
    headers_.push_back({std::move(name), std::move(value)});
    return *this;
  }

  /// Unpacks a msgpack payload into T under `limits`. Throws protocol_error
  /// saying why when the payload is not a valid T.
  template <class T>
  [[nodiscard]] T as(const unpack_limits& limits = {}) const {
    msgpack::object_handle handle = unpack_payload(limits);
    try {
      return handle.get().as<T>();
    } catch (const std::exception& e) {
      throw protocol_error(std::string("payload is not the expected type: ") + e.what());
    }
  }
  /// As as<T>(), but an absent value instead of an exception.
  template <class T>
  [[nodiscard]] std::optional<T> try_as(const unpack_limits& limits = {}) const noexcept {
    try {
      return as<T>(limits);
    } catch (...) {
      return std::nullopt;
    }
  }

 private:
  friend struct detail_access;
  [[nodiscard]] msgpack::object_handle unpack_payload(const unpack_limits& limits) const;

  std::string topic_;
  zmq::message_t payload_frame_;
  std::size_t payload_offset_ = 0;
  std::size_t payload_size_ = 0;
  message_id id_{};
  std::uint64_t timestamp_us_ = 0;
  std::uint64_t origin_ = 0;
  std::uint64_t sequence_ = 0;
  std::uint32_t attempt_ = 0;
  bool has_key_ = false;
  std::string key_;
  std::optional<message_id> correlation_;
  std::vector<header> headers_;
};

}  // namespace postbox
