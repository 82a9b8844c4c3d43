// Request/reply channels (postbox/request_reply.hpp; docs/protocol.md,
// "Request/reply").
#include <postbox/request_reply.hpp>

namespace postbox {

// ---------------------------------------------------------------- requester

requester::requester(context& ctx, std::string_view endpoints, const request_options& ropts,
                     const socket_options& opts)
    : ctx_(&ctx),
      spec_(endpoints),
      opts_(opts),
      reopenable_(true),
      core_(ctx, zmq::socket_type::dealer, endpoints, endpoint_mode::connect, opts, true),
      ropts_(ropts) {
  for (const auto& ep : parse_endpoints(endpoints, endpoint_mode::connect)) {
    if (ep.mode == endpoint_mode::bind) reopenable_ = false;  // rebinding could race the old socket
  }
  if (ropts.timeout.count() <= 0) {
    throw config_error("request timeout must be positive, got " +
                       std::to_string(ropts.timeout.count()) + " ms");
  }
  if (ropts.retries < 0) {
    throw config_error("request retries must be >= 0, got " + std::to_string(ropts.retries));
  }
}

std::optional<message> requester::request(std::string_view topic, std::string_view payload) {
  return exchange(message(std::string(topic), payload));
}

std::optional<message> requester::request(const message& m) { return exchange(m); }

void requester::reopen() {
  detail::channel_socket fresh(*ctx_, zmq::socket_type::dealer, spec_, endpoint_mode::connect,
                               opts_, true);
  fresh.stats = core_.stats;
  fresh.ids = core_.ids;
  core_ = std::move(fresh);
}

std::optional<message> requester::exchange(const message& m) {
  stamp s = core_.next_stamp();
  const message_id id = m.id().is_nil() ? s.id : m.id();
  s.id = id;
  for (int attempt = 0; attempt <= ropts_.retries; ++attempt) {
    if (attempt > 0) {
      ++core_.stats.retries;
      if (reopenable_) reopen();
    }
    const auto deadline = std::chrono::steady_clock::now() + ropts_.timeout;
    encode(m, s, scratch_);
    zmq::message_t delimiter;
    if (core_.send(scratch_, ropts_.timeout, &delimiter, 1) != send_result::ok) continue;
    while (true) {
      const auto left = std::chrono::milliseconds(detail::remaining_ms(deadline, false));
      const auto got = core_.receive(frames_, 3, left);
      if (!got.got) break;
      std::optional<reject_reason> reason;
      message reply;
      if (got.count < 2 || got.count > 3 || frames_[0].size() != 0) {
        reason = reject_reason::frame_count;
      } else {
        reason = decode(frames_ + 1, got.count - 1, reply);
      }
      if (reason) {
        core_.stats.rejected.count(*reason);
      } else if (reply.correlation() && *reply.correlation() == id) {
        ++core_.stats.received;
        return reply;
      } else {
        ++core_.stats.stale_replies;
      }
      if (left.count() == 0) break;
    }
  }
  ++core_.stats.timeouts;
  return std::nullopt;
}

// ---------------------------------------------------------------- replier

replier::replier(context& ctx, std::string_view endpoints, const socket_options& opts)
    : core_(ctx, zmq::socket_type::router, endpoints, endpoint_mode::bind, opts, false) {
  // A reply to a requester that has gone is reported, not silently dropped.
  core_.socket.set(zmq::sockopt::router_mandatory, 1);
}

std::optional<request> replier::receive(std::chrono::milliseconds timeout) {
  // As receive_decoded: the clock starts only when a rejected request makes
  // us wait again.
  detail::time_budget budget(timeout);
  auto wait = timeout;
  while (true) {
    const auto got = core_.receive(frames_, 4, wait);
    if (!got.got) return std::nullopt;
    request req;
    std::optional<reject_reason> reason;
    if (got.count < 3 || got.count > 4 || frames_[1].size() != 0) {
      reason = reject_reason::frame_count;
    } else {
      reason = decode(frames_ + 2, got.count - 2, req.msg);
    }
    if (!reason) {
      req.routing_id = std::move(frames_[0]);
      ++core_.stats.received;
      return req;
    }
    core_.stats.rejected.count(*reason);
    if (budget.ran_out()) return std::nullopt;
    wait = std::chrono::milliseconds(budget.left());
  }
}

send_result replier::reply(const request& req, const message& m) {
  const stamp s = core_.next_stamp();
  // The correlation travels in the header; the message given may lack it.
  if (m.correlation() && *m.correlation() == req.msg.id()) {
    encode(m, s, scratch_);
  } else {
    message with_correlation(m);
    with_correlation.set_correlation(req.msg.id());
    encode(with_correlation, s, scratch_);
  }
  zmq::message_t envelope[2];
  envelope[0].copy(const_cast<zmq::message_t&>(req.routing_id));
  return core_.send(scratch_, std::chrono::milliseconds{0}, envelope, 2);
}

send_result replier::reply(const request& req, std::string_view payload) {
  message m(std::string(req.msg.topic()), payload);
  m.set_correlation(req.msg.id());
  return reply(req, m);
}

bool replier::serve_one(const std::function<std::string(const message&)>& handler,
                        std::chrono::milliseconds timeout) {
  auto req = receive(timeout);
  if (!req) return false;
  (void)reply(*req, handler(req->msg));
  return true;
}

}  // namespace postbox
