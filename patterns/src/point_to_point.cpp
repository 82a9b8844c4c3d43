// Point-to-point channels (postbox/point_to_point.hpp).
#include <postbox/point_to_point.hpp>

namespace postbox {

sender::sender(context& ctx, std::string_view endpoints, const socket_options& opts)
    : core_(ctx, zmq::socket_type::push, endpoints, endpoint_mode::connect, opts, true) {}

send_result sender::send_view(std::string_view topic, std::string_view payload,
                              std::chrono::milliseconds timeout) {
  const stamp s = core_.next_stamp();
  message_view v;
  v.topic = topic;
  v.payload = payload;
  v.id = s.id;
  v.timestamp_us = s.timestamp_us;
  encode(v, scratch_);
  return core_.send(scratch_, timeout);
}

send_result sender::send_message(const message& m, std::chrono::milliseconds timeout) {
  stamp s = core_.next_stamp();
  if (!m.id().is_nil()) s = stamp{};  // a resend keeps its id and timestamp
  encode(m, s, scratch_);
  return core_.send(scratch_, timeout);
}

void sender::send(std::string_view topic, std::string_view payload) {
  (void)send_view(topic, payload, forever);
}
void sender::send(const message& m) { (void)send_message(m, forever); }

send_result sender::send_for(std::string_view topic, std::string_view payload,
                             std::chrono::milliseconds timeout) {
  return send_view(topic, payload, timeout < std::chrono::milliseconds{0} ? forever : timeout);
}
send_result sender::send_for(const message& m, std::chrono::milliseconds timeout) {
  return send_message(m, timeout < std::chrono::milliseconds{0} ? forever : timeout);
}
send_result sender::try_send(std::string_view topic, std::string_view payload) {
  return send_view(topic, payload, std::chrono::milliseconds{0});
}
send_result sender::try_send(const message& m) {
  return send_message(m, std::chrono::milliseconds{0});
}

receiver::receiver(context& ctx, std::string_view endpoints, const socket_options& opts)
    : core_(ctx, zmq::socket_type::pull, endpoints, endpoint_mode::bind, opts, false) {}

namespace detail {

bool receive_decoded(channel_socket& core, zmq::message_t (&frames)[2], message& into,
                     std::chrono::milliseconds timeout) {
  // The first wait is the whole timeout; only a rejected message, which makes
  // us wait again, starts the clock.
  time_budget budget(timeout);
  auto wait = timeout;
  while (true) {
    const auto got = core.receive(frames, 2, wait);
    if (!got.got) return false;
    const auto reason = got.count > 2 ? std::optional(reject_reason::frame_count)
                                      : decode(frames, got.count, into);
    if (!reason) {
      ++core.stats.received;
      return true;
    }
    core.stats.rejected.count(*reason);
    if (budget.ran_out()) return false;
    wait = std::chrono::milliseconds(budget.left());
  }
}

}  // namespace detail

bool receiver::receive(message& into, std::chrono::milliseconds timeout) {
  return detail::receive_decoded(core_, frames_, into, timeout);
}

std::optional<message> receiver::receive(std::chrono::milliseconds timeout) {
  message m;
  if (!receive(m, timeout)) return std::nullopt;
  return m;
}

}  // namespace postbox
