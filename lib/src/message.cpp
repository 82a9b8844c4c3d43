// The message value type (docs/protocol.md, "Envelope").
#include <postbox/codec.hpp>
#include <postbox/message.hpp>

#include <algorithm>
#include <cstring>
#include <utility>

namespace postbox {
namespace {

// A large payload is adopted by the frame: the string moves to the heap and
// libzmq frees it when the last frame sharing it is closed.
zmq::message_t adopt(std::string&& payload) {
  if (payload.size() < large_payload_threshold) {
    return zmq::message_t(payload.data(), payload.size());
  }
  auto* owned = new std::string(std::move(payload));
  return zmq::message_t(
      owned->data(), owned->size(),
      [](void*, void* hint) { delete static_cast<std::string*>(hint); }, owned);
}

}  // namespace

message::message(std::string topic, std::string payload)
    : topic_(std::move(topic)), payload_frame_(adopt(std::move(payload))) {
  payload_size_ = payload_frame_.size();
}

message::message(std::string topic, std::string_view payload)
    : topic_(std::move(topic)), payload_frame_(payload.data(), payload.size()) {
  payload_size_ = payload.size();
}

message::message(const message& other)
    : topic_(other.topic_),
      payload_offset_(other.payload_offset_),
      payload_size_(other.payload_size_),
      id_(other.id_),
      timestamp_us_(other.timestamp_us_),
      origin_(other.origin_),
      sequence_(other.sequence_),
      attempt_(other.attempt_),
      has_key_(other.has_key_),
      key_(other.key_),
      correlation_(other.correlation_),
      headers_(other.headers_) {
  payload_frame_.copy(const_cast<zmq::message_t&>(other.payload_frame_));
}

message::message(message&& other) noexcept
    : topic_(std::move(other.topic_)),
      payload_frame_(std::move(other.payload_frame_)),
      payload_offset_(std::exchange(other.payload_offset_, 0)),
      payload_size_(std::exchange(other.payload_size_, 0)),
      id_(other.id_),
      timestamp_us_(other.timestamp_us_),
      origin_(other.origin_),
      sequence_(other.sequence_),
      attempt_(other.attempt_),
      has_key_(std::exchange(other.has_key_, false)),
      key_(std::move(other.key_)),
      correlation_(other.correlation_),
      headers_(std::move(other.headers_)) {}

message& message::operator=(message&& other) noexcept {
  if (this != &other) {
    topic_ = std::move(other.topic_);
    payload_frame_ = std::move(other.payload_frame_);
    other.payload_frame_.rebuild();
    payload_offset_ = std::exchange(other.payload_offset_, 0);
    payload_size_ = std::exchange(other.payload_size_, 0);
    id_ = other.id_;
    timestamp_us_ = other.timestamp_us_;
    origin_ = other.origin_;
    sequence_ = other.sequence_;
    attempt_ = other.attempt_;
    has_key_ = std::exchange(other.has_key_, false);
    key_ = std::move(other.key_);
    correlation_ = other.correlation_;
    headers_ = std::move(other.headers_);
  }
  return *this;
}

message& message::operator=(const message& other) {
  if (this != &other) {
    message copy(other);
    *this = std::move(copy);
  }
  return *this;
}

message& message::set_payload(std::string payload) {
  payload_frame_ = adopt(std::move(payload));
  payload_offset_ = 0;
  payload_size_ = payload_frame_.size();
  return *this;
}

std::optional<std::string_view> message::header_value(std::string_view name) const noexcept {
  for (const auto& h : headers_) {
    if (h.name == name) return std::string_view(h.value);
  }
  return std::nullopt;
}

msgpack::object_handle message::unpack_payload(const unpack_limits& limits) const {
  const auto data = payload();
  // Every element takes at least one byte: a claimed count beyond the
  // payload's size is a lie, and msgpack-c would reserve memory for it.
  const std::size_t elements = std::min(limits.elements, data.size());
  const msgpack::unpack_limit limit(elements, elements, data.size(), data.size(), data.size(),
                                    limits.depth);
  try {
    std::size_t offset = 0;
    auto handle = msgpack::unpack(data.data(), data.size(), offset, nullptr, nullptr, limit);
    if (offset != data.size()) {
      throw protocol_error("payload has " + std::to_string(data.size() - offset) +
                           " bytes after its msgpack value");
    }
    return handle;
  } catch (const msgpack::depth_size_overflow&) {
    throw protocol_error("payload nests deeper than " + std::to_string(limits.depth));
  } catch (const msgpack::size_overflow& e) {
    throw protocol_error(std::string("payload exceeds an unpack limit: ") + e.what());
  } catch (const msgpack::unpack_error& e) {
    throw protocol_error(std::string("payload is not valid msgpack: ") + e.what());
  } catch (const std::bad_alloc&) {
    throw protocol_error("payload claims more memory than can be had");
  }
}

}  // namespace postbox
