// Publish/subscribe channels (postbox/pub_sub.hpp; docs/protocol.md,
// "Publish/subscribe").
#include <postbox/pub_sub.hpp>

#include <postbox/point_to_point.hpp>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

namespace postbox {
namespace {

constexpr std::size_t marker_id_size = 16;
constexpr std::uint32_t drain_every = 1024;

}  // namespace

// ---------------------------------------------------------------- publisher

publisher::publisher(context& ctx, std::string_view endpoints, const socket_options& opts)
    : core_(ctx, zmq::socket_type::xpub, endpoints, endpoint_mode::bind, opts, true),
      origin_(detail::random_nonzero()) {
  // Every subscribe and unsubscribe reaches us, duplicates included, so the
  // counts below stay exact as subscribers come and go. ZMQ_IMMEDIATE (set
  // as for every sending socket) matters here too: without it a connection
  // that drops keeps its pipe, and with it the pipe's stale subscriptions.
  core_.socket.set(zmq::sockopt::xpub_verboser, 1);
  // An XPUB receives only subscriptions: a topic prefix or a marker. A huge
  // one would cost libzmq's subscription trie a node per byte (hundreds of
  // MB, and a stack overflow when it is freed), so refuse them at the door.
  core_.socket.set(zmq::sockopt::maxmsgsize, detail::max_subscription_size);
}

std::uint64_t publisher::next_sequence(std::string_view topic) {
  if (!last_.is(0, topic)) {
    auto it = sequences_.find(topic);
    if (it == sequences_.end()) it = sequences_.emplace(std::string(topic), 0).first;
    last_ = {0, it->first, &it->second};
  }
  return ++*last_.counter;
}

void publisher::publish(std::string_view topic, std::string_view payload) {
  const stamp s = core_.next_stamp();
  message_view v;
  v.topic = topic;
  v.payload = payload;
  v.id = s.id;
  v.timestamp_us = s.timestamp_us;
  v.origin = origin_;
  v.sequence = next_sequence(topic);
  encode(v, scratch_);
  (void)core_.send(scratch_, forever);  // XPUB never blocks: it drops at the HWM
  if (++sends_since_drain_ >= drain_every) drain_subscriptions(0);
}

void publisher::publish(const message& m) {
  stamp s = core_.next_stamp();
  if (!m.id().is_nil()) s.id = {}, s.timestamp_us = 0;
  s.origin = origin_;
  s.sequence = next_sequence(m.topic());
  encode(m, s, scratch_);
  (void)core_.send(scratch_, forever);
  if (++sends_since_drain_ >= drain_every) drain_subscriptions(0);
}

void publisher::drain_subscriptions(int wait_ms) {
  sends_since_drain_ = 0;
  zmq::message_t event;
  void* handle = core_.socket.handle();
  int flags = ZMQ_DONTWAIT;
  if (wait_ms != 0) {
    zmq::pollitem_t item{handle, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&item, 1, wait_ms) <= 0) return;
  }
  while (zmq_msg_recv(event.handle(), handle, flags) >= 0) {
    const auto* data = static_cast<const char*>(event.data());
    const std::size_t size = event.size();
    if (size == 0 || (data[0] != 0 && data[0] != 1)) continue;  // not a subscription
    const bool subscribe = data[0] == 1;
    const std::string_view filter(data + 1, size - 1);
    if (filter.starts_with(detail::subscriber_marker) &&
        filter.size() >= detail::subscriber_marker.size() + marker_id_size) {
      const auto id = filter.substr(detail::subscriber_marker.size(), marker_id_size);
      auto it = subscribers_.find(id);
      if (subscribe) {
        if (it == subscribers_.end()) it = subscribers_.emplace(std::string(id), 0).first;
        ++it->second;
      } else if (it != subscribers_.end() && --it->second == 0) {
        subscribers_.erase(it);
      }
      continue;
    }
    auto it = subscriptions_.find(filter);
    if (subscribe) {
      if (it == subscriptions_.end()) it = subscriptions_.emplace(std::string(filter), 0).first;
      ++it->second;
    } else if (it != subscriptions_.end() && --it->second == 0) {
      subscriptions_.erase(it);
    }
  }
}

bool publisher::has_subscriber_for(std::string_view topic) const {
  // A SUB filter takes a message when it is a prefix of the first frame,
  // which starts with the topic and its 0x00 terminator.
  for (const auto& entry : subscriptions_) {
    if (prefix_matches(entry.first, topic)) return true;
  }
  return false;
}

bool publisher::wait_for_subscribers(std::size_t n, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  drain_subscriptions(0);
  while (subscribers_.size() < n) {
    const int wait = detail::remaining_ms(deadline, false);
    if (wait == 0) return false;
    drain_subscriptions(wait);
  }
  return true;
}

bool publisher::wait_for_subscriber(std::string_view topic, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  drain_subscriptions(0);
  while (!has_subscriber_for(topic)) {
    const int wait = detail::remaining_ms(deadline, false);
    if (wait == 0) return false;
    drain_subscriptions(wait);
  }
  return true;
}

std::size_t publisher::subscriber_count() {
  drain_subscriptions(0);
  return subscribers_.size();
}

// ---------------------------------------------------------------- subscriber

subscriber::subscriber(context& ctx, std::string_view endpoints, const socket_options& opts)
    : core_(ctx, zmq::socket_type::sub, endpoints, endpoint_mode::connect, opts, false) {
  char id[marker_id_size + 1];
  std::snprintf(id, sizeof id, "%016llx",
                static_cast<unsigned long long>(detail::random_nonzero()));
  marker_base_ = std::string(detail::subscriber_marker) + id + ".";
  // Connections that complete after this one are reconnections (or new
  // endpoints): each makes us send the filters again.
  const std::string monitor_endpoint = "inproc://postbox-subscriber-monitor-" + std::string(id);
  // The socket is already connecting, so the monitor can miss the first
  // handshake: a disconnection marks the next handshake as a reconnection too.
  if (zmq_socket_monitor(core_.socket.handle(), monitor_endpoint.c_str(),
                         ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_DISCONNECTED) != 0) {
    throw transport_error("subscriber: cannot monitor its socket: " +
                          std::string(zmq_strerror(zmq_errno())));
  }
  // A bound subscriber sees every new publisher on its one address: those
  // are new peers, not reconnections, and carry the filters by themselves.
  const auto parsed = parse_endpoints(endpoints, endpoint_mode::connect);
  for (std::size_t i = 0; i < parsed.size() && i < core_.endpoints.size(); ++i) {
    if (parsed[i].mode == endpoint_mode::bind) bound_.insert(core_.endpoints[i]);
  }
  monitor_ = zmq::socket_t(ctx.native(), zmq::socket_type::pair);
  monitor_.set(zmq::sockopt::linger, 0);
  monitor_.connect(monitor_endpoint);
}

void subscriber::announce() {
  // A new marker after each filter change: it travels after the filter, so a
  // publisher that has seen it has seen the filter too.
  std::string next = marker_base_ + std::to_string(++generation_);
  core_.socket.set(zmq::sockopt::subscribe, next);
  if (!marker_.empty()) core_.socket.set(zmq::sockopt::unsubscribe, marker_);
  marker_ = std::move(next);
}

void subscriber::subscribe(std::string_view prefix) {
  if (prefix.size() > max_topic_size) {
    throw config_error("subscription prefix is " + std::to_string(prefix.size()) +
                       " bytes, more than " + std::to_string(max_topic_size));
  }
  filters_.push_back({std::string(prefix), std::nullopt, std::string(prefix)});
  core_.socket.set(zmq::sockopt::subscribe, prefix);
  announce();
}

void subscriber::subscribe_pattern(std::string_view text) {
  topic_pattern pattern(text);
  std::string prefix = pattern.socket_prefix();
  core_.socket.set(zmq::sockopt::subscribe, prefix);
  filters_.push_back({std::string(text), std::move(pattern), std::move(prefix)});
  any_pattern_ = true;
  announce();
}

void subscriber::unsubscribe(std::string_view text) {
  auto it = std::find_if(filters_.begin(), filters_.end(),
                         [&](const filter& f) { return f.text == text; });
  if (it == filters_.end()) return;
  core_.socket.set(zmq::sockopt::unsubscribe, it->socket_prefix);
  filters_.erase(it);
  any_pattern_ = std::any_of(filters_.begin(), filters_.end(),
                             [](const filter& f) { return f.pattern.has_value(); });
}

bool subscriber::wanted(std::string_view topic) const noexcept {
  if (!any_pattern_) return true;  // the socket's prefix filter decided already
  for (const auto& f : filters_) {
    if (f.pattern ? f.pattern->matches(topic) : prefix_matches(f.socket_prefix, topic)) return true;
  }
  return false;
}

bool subscriber::track(const message& m) {
  if (m.sequence() == 0 || m.origin() == 0) return true;
  if (!last_.is(m.origin(), m.topic())) {
    auto& topics = streams_[m.origin()];
    auto it = topics.find(m.topic());
    if (it == topics.end()) {
      if (tracked_ >= max_tracked_streams) {
        streams_.clear();
        tracked_ = 0;
        it = streams_[m.origin()].emplace(std::string(m.topic()), m.sequence()).first;
      } else {
        it = topics.emplace(std::string(m.topic()), m.sequence()).first;
      }
      ++tracked_;
      last_ = {m.origin(), it->first, &it->second};
      return true;
    }
    last_ = {m.origin(), it->first, &it->second};
  }
  std::uint64_t& seen = *last_.counter;
  const std::uint64_t expected = seen + 1;
  if (m.sequence() < expected) {
    // Seen before: one stream's numbers only grow (a restarted publisher is
    // a new origin), so this is a copy, e.g. a forwarder's last-value cache
    // replaying to a newcomer.
    ++core_.stats.duplicates;
    return false;
  }
  seen = m.sequence();
  if (m.sequence() > expected) {
    ++core_.stats.gaps;
    core_.stats.missed += m.sequence() - expected;
    if (on_gap_) on_gap_(gap_info{m.topic(), m.origin(), expected, m.sequence()});
  }
  return true;
}

void subscriber::resubscribe_after_reconnect() {
  // Each event is two frames: [event id (16 bits), value][endpoint]. The
  // first handshake on an endpoint is the first connection, which carries
  // the filters by itself; any later one, or one after a disconnection, is
  // a reconnection.
  bool reconnected = false;
  zmq::message_t event;
  std::uint16_t id = 0;
  while (zmq_msg_recv(event.handle(), monitor_.handle(), ZMQ_DONTWAIT) >= 0) {
    if (event.more()) {
      if (event.size() >= sizeof id) std::memcpy(&id, event.data(), sizeof id);
      continue;
    }
    std::string endpoint = event.to_string();
    if (bound_.count(endpoint) != 0) continue;
    if (id == ZMQ_EVENT_DISCONNECTED) {
      dropped_.insert(std::move(endpoint));
    } else if (!connected_.insert(endpoint).second || dropped_.erase(endpoint) != 0) {
      reconnected = true;
    }
  }
  if (!reconnected || filters_.empty()) return;
  // libzmq 4.3 may not resend a SUB's filters over a connection that came
  // back (its resend happens while the link is down, and is lost), so a
  // publisher or forwarder that restarted would never hear of them. Send
  // them again: all unsubscribes first, so shared prefixes really go out.
  // Between a filter's unsubscribe and its subscribe, messages for it are
  // dropped upstream, so the marker goes first: a publisher stops counting
  // this subscriber until the new marker, which follows the filters, says
  // they are back (libzmq's own resend may have shown the old one already).
  if (!marker_.empty()) {
    core_.socket.set(zmq::sockopt::unsubscribe, marker_);
    marker_.clear();
  }
  for (const auto& f : filters_) core_.socket.set(zmq::sockopt::unsubscribe, f.socket_prefix);
  for (const auto& f : filters_) core_.socket.set(zmq::sockopt::subscribe, f.socket_prefix);
  announce();
}

bool subscriber::receive(message& into, std::chrono::milliseconds timeout) {
  if (++receives_since_check_ >= 256) {
    receives_since_check_ = 0;
    resubscribe_after_reconnect();
  }
  detail::time_budget budget(timeout);
  while (true) {
    if (detail::receive_decoded(core_, frames_, into, std::chrono::milliseconds(0))) {
      const bool fresh = track(into);
      if (fresh && wanted(into.topic())) return true;
      --core_.stats.received;
      if (fresh) ++core_.stats.filtered;
      continue;
    }
    // Nothing queued: wait for a message, or for a reconnection to handle.
    const int wait = budget.left();
    if (wait == 0) {
      resubscribe_after_reconnect();
      return false;
    }
    zmq_pollitem_t items[2] = {{core_.socket.handle(), 0, ZMQ_POLLIN, 0},
                               {monitor_.handle(), 0, ZMQ_POLLIN, 0}};
    const int ready = zmq_poll(items, 2, wait);
    if (ready < 0) {
      if (zmq_errno() == EINTR) return false;
      throw transport_error(std::string("receive: ") + zmq_strerror(zmq_errno()));
    }
    if (items[1].revents & ZMQ_POLLIN) resubscribe_after_reconnect();
  }
}

std::optional<message> subscriber::receive(std::chrono::milliseconds timeout) {
  message m;
  if (!receive(m, timeout)) return std::nullopt;
  return m;
}

}  // namespace postbox
