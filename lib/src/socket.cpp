// The socket plumbing shared by all channels (postbox/detail/socket.hpp).
#include <postbox/detail/socket.hpp>

#include <postbox/error.hpp>

#include <cerrno>
#include <optional>
#include <random>

namespace postbox::detail {
namespace {

void validate(const socket_options& o) {
  auto bad = [](const std::string& what) { throw config_error("socket option " + what); };
  if (o.send_hwm < 0) bad("send_hwm must be >= 0, got " + std::to_string(o.send_hwm));
  if (o.receive_hwm < 0) bad("receive_hwm must be >= 0, got " + std::to_string(o.receive_hwm));
  if (o.linger.count() < -1) bad("linger must be >= -1 ms");
  if (o.reconnect_interval.count() < 0) bad("reconnect_interval must be >= 0 ms");
  if (o.heartbeat_interval.count() < 0) bad("heartbeat_interval must be >= 0 ms");
  if (o.max_message_size < 1) {
    bad("max_message_size must be positive, got " + std::to_string(o.max_message_size));
  }
}

std::uint64_t now_us() noexcept {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(
                                        std::chrono::system_clock::now().time_since_epoch())
                                        .count());
}

}  // namespace

channel_socket::channel_socket(context& ctx, zmq::socket_type type, std::string_view list,
                               endpoint_mode default_mode, const socket_options& opts,
                               bool sending)
    : socket(ctx.native(), type) {
  validate(opts);
  const auto parsed = parse_endpoints(list, default_mode);
  apply_options(socket, opts, sending);
  for (const auto& ep : parsed) {
    try {
      if (ep.mode == endpoint_mode::bind) {
        socket.bind(ep.address);
        endpoints.push_back(socket.get(zmq::sockopt::last_endpoint));
        bound_.push_back(endpoints.back());
      } else {
        socket.connect(ep.address);
        endpoints.push_back(ep.address);
      }
    } catch (const zmq::error_t& e) {
      const bool bind = ep.mode == endpoint_mode::bind;
      // libzmq says "No such device" for a host it cannot bind: say what to do.
      const std::string why = bind && e.num() == ENODEV
                                  ? "not an address or interface of this machine (bind to one of "
                                    "its addresses, 127.0.0.1, or * for all)"
                                  : e.what();
      throw transport_error(std::string(bind ? "bind " : "connect ") + ep.address + ": " + why);
    }
  }
}

channel_socket::~channel_socket() {
  // Unbinding now, rather than when libzmq's reaper gets to the socket, frees
  // the address at once: a restarted channel can bind it again right away.
  if (socket.handle() == nullptr) return;
  for (const auto& ep : bound_) (void)zmq_unbind(socket.handle(), ep.c_str());
}

stamp channel_socket::next_stamp() noexcept {
  stamp s;
  s.timestamp_us = now_us();
  s.id = ids.next(s.timestamp_us / 1000);
  return s;
}

int remaining_ms(std::chrono::steady_clock::time_point deadline, bool forever) noexcept {
  if (forever) return -1;
  // Rounded up: a wait never ends before its deadline.
  const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline -
                                                                 std::chrono::steady_clock::now());
  return left.count() > 0 ? static_cast<int>(left.count()) : 0;
}

std::uint64_t random_nonzero() {
  std::random_device rd;
  std::uint64_t v = 0;
  while (v == 0) v = (std::uint64_t{rd()} << 32) | rd();
  return v;
}

send_result channel_socket::send(encoded& frames, std::chrono::milliseconds timeout,
                                 zmq::message_t* prefix, std::size_t prefix_count) {
  const bool forever = timeout.count() < 0;
  time_budget budget(timeout);  // the fast path, sent at once, reads no clock
  void* handle = socket.handle();
  zmq_msg_t* first = prefix_count > 0 ? prefix[0].handle() : frames.first.handle();
  const std::size_t total = prefix_count + static_cast<std::size_t>(frames.frames);
  const int first_flags = total > 1 ? ZMQ_SNDMORE : 0;

  // The first frame decides: once it is queued, libzmq takes the rest of a
  // multipart message without blocking.
  while (true) {
    const int flags = first_flags | (forever ? 0 : ZMQ_DONTWAIT);
    if (zmq_msg_send(first, handle, flags) >= 0) break;
    const int err = zmq_errno();
    if (err == EHOSTUNREACH) {
      ++stats.unreachable;
      return send_result::unreachable;
    }
    if (err == EINTR) continue;
    if (err != EAGAIN) throw transport_error(std::string("send: ") + zmq_strerror(err));
    const int wait = budget.left();
    if (wait == 0) {
      ++stats.would_block;
      return timeout.count() == 0 ? send_result::would_block : send_result::timed_out;
    }
    zmq::pollitem_t item{handle, 0, ZMQ_POLLOUT, 0};
    if (zmq_poll(&item, 1, wait) < 0 && zmq_errno() != EINTR) {
      throw transport_error(std::string("send: ") + zmq_strerror(zmq_errno()));
    }
  }
  for (std::size_t i = 1; i < total; ++i) {
    zmq_msg_t* part = i < prefix_count ? prefix[i].handle()
                      : (i - prefix_count == 0 ? frames.first.handle() : frames.second.handle());
    const int flags = i + 1 < total ? ZMQ_SNDMORE : 0;
    while (zmq_msg_send(part, handle, flags) < 0) {
      if (zmq_errno() != EINTR) throw transport_error(std::string("send: ") + zmq_strerror(zmq_errno()));
    }
  }
  ++stats.sent;
  return send_result::ok;
}

received_frames channel_socket::receive(zmq::message_t* out, std::size_t max,
                                        std::chrono::milliseconds timeout) {
  const bool forever = timeout.count() < 0;
  time_budget budget(timeout);
  void* handle = socket.handle();
  received_frames result;
  zmq::message_t scratch;
  while (true) {
    zmq_msg_t* target = max > 0 ? out[0].handle() : scratch.handle();
    if (zmq_msg_recv(target, handle, forever ? 0 : ZMQ_DONTWAIT) >= 0) break;
    const int err = zmq_errno();
    if (err == EINTR) return result;
    if (err != EAGAIN) throw transport_error(std::string("receive: ") + zmq_strerror(err));
    const int wait = budget.left();
    if (wait == 0) return result;
    zmq::pollitem_t item{handle, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&item, 1, wait) < 0) {
      if (zmq_errno() == EINTR) return result;
      throw transport_error(std::string("receive: ") + zmq_strerror(zmq_errno()));
    }
  }
  result.got = true;
  result.count = 1;
  // The rest of a multipart message is already here (libzmq delivers whole
  // messages); frames beyond `max` are read and dropped.
  bool more = max > 0 ? out[0].more() : scratch.more();
  while (more) {
    zmq_msg_t* target = result.count < max ? out[result.count].handle() : scratch.handle();
    while (zmq_msg_recv(target, handle, 0) < 0) {
      if (zmq_errno() != EINTR) throw transport_error(std::string("receive: ") + zmq_strerror(zmq_errno()));
    }
    more = zmq_msg_more(target) != 0;
    ++result.count;
  }
  return result;
}

}  // namespace postbox::detail
