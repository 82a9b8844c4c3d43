// The forwarder device (postbox/devices/forwarder.hpp; README
// "postbox-forwarder"): one loop polling the frontend, the backend and the
// control endpoint, forwarding in bursts as libzmq's own zmq_proxy does.
#include <postbox/devices/forwarder.hpp>

#include <postbox/detail/socket.hpp>
#include <postbox/error.hpp>
#include <postbox/pub_sub.hpp>
#include <postbox/topic.hpp>

#include "control.hpp"
#include "resolve.hpp"

#include <cerrno>
#include <cstring>
#include <unordered_map>
#include <utility>

namespace postbox::devices {
namespace {

constexpr int burst = 1000;           // messages forwarded per wake-up, at most
constexpr int poll_interval_ms = 100;  // how often the stop flag is looked at
constexpr std::size_t max_frames = 64; // a longer multipart message is refused
constexpr std::size_t max_control_request = 64;

struct string_hash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const noexcept {
    return std::hash<std::string_view>{}(s);
  }
};

// The postbox topic of a message, if its first frame looks like an envelope.
std::optional<std::string_view> envelope_topic(const zmq::message_t& head) noexcept {
  const auto* data = static_cast<const char*>(head.data());
  const std::size_t limit = std::min(head.size(), max_topic_size + 1);
  const void* nul = std::memchr(data, 0, limit);
  if (nul == nullptr) return std::nullopt;
  const auto size = static_cast<std::size_t>(static_cast<const char*>(nul) - data);
  if (size + 1 >= head.size() || static_cast<std::uint8_t>(data[size + 1]) != wire_version) {
    return std::nullopt;
  }
  return std::string_view(data, size);
}

std::string to_json(const forwarder_stats& s, const forwarder_config& c) {
  std::string j = "{\"mode\":\"";
  j += c.mode == forwarder_mode::pubsub ? "pubsub" : "pipeline";
  auto field = [&](const char* name, std::uint64_t v) {
    j += ",\"";
    j += name;
    j += "\":" + std::to_string(v);
  };
  j += "\"";
  field("messages_in", s.messages_in);
  field("bytes_in", s.bytes_in);
  field("messages_out", s.messages_out);
  field("bytes_out", s.bytes_out);
  field("subscriptions", s.subscriptions);
  field("tapped", s.tapped);
  field("lvc_topics", s.lvc_topics);
  field("lvc_sent", s.lvc_sent);
  field("lvc_uncached", s.lvc_uncached);
  field("control_requests", s.control_requests);
  field("control_rejected", s.control_rejected);
  j += ",\"rejected\":{";
  for (std::size_t i = 0; i < reject_reason_count; ++i) {
    if (i) j += ",";
    j += '"';
    j += to_string(static_cast<reject_reason>(i));
    j += "\":";
    j += std::to_string(s.rejected.by_reason[i]);
  }
  j += "}}";
  return j;
}

std::string join(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : ",") + s;
  return out.empty() ? "-" : out;
}

}  // namespace

struct forwarder::impl {
  impl(context& ctx, forwarder_config cfg)
      : config(std::move(cfg)),
        log("postbox-forwarder", config.log),
        frontend(ctx, config.mode == forwarder_mode::pubsub ? zmq::socket_type::xsub
                                                            : zmq::socket_type::pull,
                 config.frontend, endpoint_mode::bind, options(), false),
        backend(ctx, config.mode == forwarder_mode::pubsub ? zmq::socket_type::xpub
                                                           : zmq::socket_type::push,
                config.backend, endpoint_mode::bind, options(),
                config.mode == forwarder_mode::pipeline) {
    if (config.last_value_cache && config.mode != forwarder_mode::pubsub) {
      throw config_error("--last-value-cache works in pubsub mode only");
    }
    if (config.mode == forwarder_mode::pubsub) {
      // Every subscribe and unsubscribe, duplicates included, comes through
      // and goes upstream, so publishers behind us count subscribers exactly
      // and the cache can greet each newcomer.
      backend.socket.set(zmq::sockopt::xpub_verboser, 1);
      // Subscriptions only come in here; a huge one would crash libzmq's
      // subscription trie upstream (see pub_sub.hpp).
      backend.socket.set(zmq::sockopt::maxmsgsize, postbox::detail::max_subscription_size);
      if (config.last_value_cache) {
        // The cache must see every topic, subscribed to or not.
        const char all = 1;
        frontend.socket.send(zmq::const_buffer(&all, 1), zmq::send_flags::none);
      }
    }
    if (!config.control.empty()) {
      control.emplace(ctx, zmq::socket_type::router, config.control, endpoint_mode::bind,
                      options(), false);
      control->socket.set(zmq::sockopt::maxmsgsize, std::int64_t{1024});
    }
    if (!config.tap.empty()) {
      tap.emplace(ctx, zmq::socket_type::pub, config.tap, endpoint_mode::bind, options(), false);
    }
    frames.resize(max_frames);
  }

  socket_options options() const {
    socket_options o;
    o.max_message_size = config.max_message_size;
    o.send_hwm = o.receive_hwm = config.hwm;
    return o;
  }

  void run(const std::atomic<bool>& stop);
  bool forward_one(bool pipeline);
  bool send_held();
  void on_subscription(zmq::message_t& event);
  void serve_control();
  void send_cached(std::string_view filter);
  void cache(std::size_t count);
  void log_rates(bool final);

  forwarder_config config;
  logger log;
  detail::channel_socket frontend;
  detail::channel_socket backend;
  std::optional<detail::channel_socket> control;
  std::optional<detail::channel_socket> tap;
  forwarder_stats stats;
  std::vector<zmq::message_t> frames;
  std::unordered_map<std::string, std::vector<zmq::message_t>, string_hash, std::equal_to<>> lvc;
  std::unordered_map<std::string, std::uint64_t, string_hash, std::equal_to<>> filters;
  message scratch;
  std::size_t held = 0;        // frames of a message taken in but not yet sent on
  std::size_t held_bytes = 0;
  forwarder_stats last_logged;
  std::chrono::steady_clock::time_point last_log_time = std::chrono::steady_clock::now();
};

// Sends the message held in frames[0..held) to the backend without waiting;
// false (still held) when the backend cannot take it now.
bool forwarder::impl::send_held() {
  void* out = backend.socket.handle();
  for (std::size_t i = 0; i < held; ++i) {
    // Once the first frame is in, libzmq takes the rest of the message.
    const int flags = (i + 1 < held ? ZMQ_SNDMORE : 0) | (i == 0 ? ZMQ_DONTWAIT : 0);
    while (zmq_msg_send(frames[i].handle(), out, flags) < 0) {
      if (i == 0 && zmq_errno() == EAGAIN) return false;
      if (zmq_errno() != EINTR) {
        throw transport_error(std::string("backend send: ") + zmq_strerror(zmq_errno()));
      }
    }
  }
  ++stats.messages_out;
  stats.bytes_out += held_bytes;
  held = 0;
  return true;
}

// Receives one message from the frontend and forwards it; false when there
// was none, or when the (pipeline) backend could not take it: then it stays
// held, and the frontend is not read again until it has gone out.
bool forwarder::impl::forward_one(bool pipeline) {
  if (held > 0 && !send_held()) return false;
  void* in = frontend.socket.handle();
  if (zmq_msg_recv(frames[0].handle(), in, ZMQ_DONTWAIT) < 0) {
    if (zmq_errno() == EAGAIN || zmq_errno() == EINTR) return false;
    throw transport_error(std::string("frontend receive: ") + zmq_strerror(zmq_errno()));
  }
  std::size_t count = 1;
  std::size_t bytes = frames[0].size();
  bool too_many = false;
  while (frames[count - 1].more()) {
    zmq::message_t& target = count < max_frames ? frames[count] : frames[max_frames - 1];
    if (count >= max_frames) too_many = true;
    while (zmq_msg_recv(target.handle(), in, 0) < 0) {
      if (zmq_errno() != EINTR) throw transport_error(std::string("frontend receive: ") + zmq_strerror(zmq_errno()));
    }
    bytes += target.size();
    if (count < max_frames) ++count;
    if (too_many && !target.more()) break;
  }
  ++stats.messages_in;
  stats.bytes_in += bytes;
  if (too_many) {
    stats.rejected.count(reject_reason::frame_count);
    log.fault("frame_count", "refused a message of more than " + std::to_string(max_frames) +
                                 " frames");
    return true;
  }
  if (config.strict) {
    std::optional<reject_reason> reason;
    if (count > 2) {
      reason = reject_reason::frame_count;
    } else {
      zmq::message_t copies[2];
      for (std::size_t i = 0; i < count; ++i) copies[i].copy(frames[i]);
      reason = decode(copies, count, scratch);
    }
    if (reason) {
      stats.rejected.count(*reason);
      log.fault(to_string(*reason), "strict: refused a message from the frontend: " +
                                        std::string(to_string(*reason)));
      return true;
    }
  }
  if (config.last_value_cache) cache(count);
  if (tap) {
    for (std::size_t i = 0; i < count; ++i) {
      zmq::message_t copy;
      copy.copy(frames[i]);
      (void)zmq_msg_send(copy.handle(), tap->socket.handle(), i + 1 < count ? ZMQ_SNDMORE : 0);
    }
    ++stats.tapped;
  }
  held = count;
  held_bytes = bytes;
  // XPUB never refuses (a full subscriber queue drops, and its gap
  // accounting reports it); PUSH may, and then the message waits here.
  return send_held() || !pipeline;
}

void forwarder::impl::cache(std::size_t count) {
  const auto topic = envelope_topic(frames[0]);
  if (!topic) return;
  auto it = lvc.find(*topic);
  if (it == lvc.end()) {
    if (lvc.size() >= config.lvc_max_topics) {
      if (stats.lvc_uncached++ == 0) {
        log.warn("last-value cache is full (" + std::to_string(config.lvc_max_topics) +
                 " topics): new topics pass but are not cached");
      }
      return;
    }
    it = lvc.emplace(std::string(*topic), std::vector<zmq::message_t>()).first;
    stats.lvc_topics = lvc.size();
  }
  it->second.resize(count);
  for (std::size_t i = 0; i < count; ++i) it->second[i].copy(frames[i]);
}

void forwarder::impl::send_cached(std::string_view filter) {
  for (auto& [topic, value] : lvc) {
    if (!prefix_matches(filter, topic)) continue;
    for (std::size_t i = 0; i < value.size(); ++i) {
      zmq::message_t copy;
      copy.copy(value[i]);
      (void)zmq_msg_send(copy.handle(), backend.socket.handle(),
                         (i + 1 < value.size() ? ZMQ_SNDMORE : 0) | ZMQ_DONTWAIT);
    }
    ++stats.lvc_sent;
  }
}

void forwarder::impl::on_subscription(zmq::message_t& event) {
  const auto* data = static_cast<const char*>(event.data());
  if (event.size() == 0 || (data[0] != 0 && data[0] != 1)) return;
  const bool subscribe = data[0] == 1;
  const std::string_view filter(data + 1, event.size() - 1);
  const bool marker = !filter.empty() && static_cast<unsigned char>(filter[0]) == 0xFF;
  if (!marker) {
    auto it = filters.find(filter);
    if (subscribe) {
      if (it == filters.end()) it = filters.emplace(std::string(filter), 0).first;
      ++it->second;
      ++stats.subscriptions;
    } else if (it != filters.end()) {
      --stats.subscriptions;
      if (--it->second == 0) filters.erase(it);
    }
  }
  if (subscribe && !marker && config.last_value_cache) send_cached(filter);
  // Upstream, as it came (XSUB takes subscription messages as sends).
  (void)zmq_msg_send(event.handle(), frontend.socket.handle(), ZMQ_DONTWAIT);
}

void forwarder::impl::serve_control() {
  control_endpoint::request r;
  const auto got = control_endpoint::receive(*control, max_control_request, r);
  if (got == control_endpoint::received::none) return;
  ++stats.control_requests;
  if (got == control_endpoint::received::malformed) {
    ++stats.control_rejected;
    log.fault("control", "refused a malformed control request");
    return;
  }
  std::string answer;
  if (r.text == "ping") {
    answer = "pong";
  } else if (r.text == "stats") {
    answer = to_json(stats, config);
  } else {
    ++stats.control_rejected;
    answer = "error: unknown command (use ping or stats)";
  }
  control_endpoint::answer(*control, r, answer);
}

void forwarder::impl::log_rates(bool final) {
  const auto now = std::chrono::steady_clock::now();
  const double secs = std::chrono::duration<double>(now - last_log_time).count();
  auto rate = [&](std::uint64_t now_v, std::uint64_t then_v) {
    return secs > 0 ? static_cast<double>(now_v - then_v) / secs : 0.0;
  };
  char line[320];
  if (final) {
    std::snprintf(line, sizeof line,
                  "stopped: in %llu messages (%llu bytes), out %llu messages (%llu bytes), "
                  "rejected %llu, subscriptions %llu",
                  static_cast<unsigned long long>(stats.messages_in),
                  static_cast<unsigned long long>(stats.bytes_in),
                  static_cast<unsigned long long>(stats.messages_out),
                  static_cast<unsigned long long>(stats.bytes_out),
                  static_cast<unsigned long long>(stats.rejected.total()),
                  static_cast<unsigned long long>(stats.subscriptions));
  } else {
    std::snprintf(line, sizeof line,
                  "rate: in %.0f msg/s (%.2f MB/s), out %.0f msg/s, rejected %llu, "
                  "subscriptions %llu",
                  rate(stats.messages_in, last_logged.messages_in),
                  rate(stats.bytes_in, last_logged.bytes_in) / 1e6,
                  rate(stats.messages_out, last_logged.messages_out),
                  static_cast<unsigned long long>(stats.rejected.total()),
                  static_cast<unsigned long long>(stats.subscriptions));
  }
  log.info(line);
  last_logged = stats;
  last_log_time = now;
}

void forwarder::impl::run(const std::atomic<bool>& stop) {
  const bool pipeline = config.mode == forwarder_mode::pipeline;
  const std::pair<const char*, const detail::channel_socket*> sockets[] = {
      {"frontend", &frontend},
      {"backend", &backend},
      {"control", control ? &*control : nullptr},
      {"tap", tap ? &*tap : nullptr}};
  for (const auto& [name, s] : sockets) {
    if (s == nullptr) continue;
    for (const auto& why : unresolved_hosts(s->endpoints)) {
      log.warn(std::string(name) + " " + why + "; libzmq keeps trying");
    }
  }
  log.info("ready mode=" + std::string(pipeline ? "pipeline" : "pubsub") +
           " frontend=" + join(frontend.endpoints) + " backend=" + join(backend.endpoints) +
           " control=" + join(control ? control->endpoints : std::vector<std::string>{}) +
           " tap=" + join(tap ? tap->endpoints : std::vector<std::string>{}));
  zmq::message_t event;
  while (!stop.load()) {
    // In pipeline mode the frontend is read only while the backend can take
    // a message: back-pressure goes to the producers, nothing is dropped.
    const bool backend_ready =
        !pipeline ||
        (held == 0 && (backend.socket.get(zmq::sockopt::events) & ZMQ_POLLOUT) != 0);
    zmq_pollitem_t items[3];
    int n = 0;
    const int front_at = backend_ready ? n : -1;
    if (backend_ready) items[n++] = {frontend.socket.handle(), 0, ZMQ_POLLIN, 0};
    const int back_at = n;
    items[n++] = {backend.socket.handle(), 0, static_cast<short>(pipeline ? ZMQ_POLLOUT : ZMQ_POLLIN), 0};
    const int control_at = control ? n : -1;
    if (control) items[n++] = {control->socket.handle(), 0, ZMQ_POLLIN, 0};
    if (zmq_poll(items, n, poll_interval_ms) < 0) {
      if (zmq_errno() == EINTR) continue;
      throw transport_error(std::string("poll: ") + zmq_strerror(zmq_errno()));
    }
    if ((front_at >= 0 && (items[front_at].revents & ZMQ_POLLIN)) ||
        (pipeline && (items[back_at].revents & ZMQ_POLLOUT))) {
      for (int i = 0; i < burst && forward_one(pipeline); ++i) {
      }
    }
    if (!pipeline && (items[back_at].revents & ZMQ_POLLIN)) {
      for (int i = 0; i < burst; ++i) {
        if (zmq_msg_recv(event.handle(), backend.socket.handle(), ZMQ_DONTWAIT) < 0) break;
        on_subscription(event);
      }
    }
    if (control_at >= 0 && (items[control_at].revents & ZMQ_POLLIN)) {
      for (int i = 0; i < 16; ++i) {
        const auto before = stats.control_requests;
        serve_control();
        if (stats.control_requests == before) break;
      }
    }
    if (config.stats_interval.count() > 0 &&
        std::chrono::steady_clock::now() - last_log_time >= config.stats_interval) {
      log_rates(false);
    }
  }
  if (held > 0) {
    log.warn("stopping with one message taken from the frontend that no worker could take");
  }
  log_rates(true);
}

forwarder_config default_forwarder_config(forwarder_mode mode) {
  forwarder_config c;
  c.mode = mode;
  if (mode == forwarder_mode::pubsub) {
    c.frontend = "@tcp://127.0.0.1:5570";
    c.backend = "@tcp://127.0.0.1:5571";
    c.control = "@tcp://127.0.0.1:5572";
  } else {
    c.frontend = "@tcp://127.0.0.1:5580";
    c.backend = "@tcp://127.0.0.1:5581";
    c.control = "@tcp://127.0.0.1:5582";
  }
  return c;
}

forwarder::forwarder(context& ctx, forwarder_config config)
    : impl_(std::make_unique<impl>(ctx, std::move(config))) {}
forwarder::~forwarder() = default;

void forwarder::run(const std::atomic<bool>& stop) { impl_->run(stop); }

const std::vector<std::string>& forwarder::frontend_endpoints() const noexcept {
  return impl_->frontend.endpoints;
}
const std::vector<std::string>& forwarder::backend_endpoints() const noexcept {
  return impl_->backend.endpoints;
}
const std::vector<std::string>& forwarder::control_endpoints() const noexcept {
  static const std::vector<std::string> none;
  return impl_->control ? impl_->control->endpoints : none;
}
const std::vector<std::string>& forwarder::tap_endpoints() const noexcept {
  static const std::vector<std::string> none;
  return impl_->tap ? impl_->tap->endpoints : none;
}
const forwarder_stats& forwarder::stats() const noexcept { return impl_->stats; }
std::string forwarder::stats_json() const { return to_json(impl_->stats, impl_->config); }

}  // namespace postbox::devices
