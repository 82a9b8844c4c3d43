// Socket options and the context: the one place libzmq options are set.
#include <postbox/context.hpp>
#include <postbox/options.hpp>

namespace postbox {

context::context(int io_threads) : ctx_(io_threads) {
  // Lots of channels in one process is normal; libzmq's default is 1023.
  ctx_.set(zmq::ctxopt::max_sockets, 4096);
}

namespace detail {

void apply_options(zmq::socket_t& socket, const socket_options& opts, bool sending) {
  socket.set(zmq::sockopt::sndhwm, opts.send_hwm);
  socket.set(zmq::sockopt::rcvhwm, opts.receive_hwm);
  socket.set(zmq::sockopt::linger, static_cast<int>(opts.linger.count()));
  socket.set(zmq::sockopt::reconnect_ivl, static_cast<int>(opts.reconnect_interval.count()));
  socket.set(zmq::sockopt::reconnect_ivl_max,
             static_cast<int>(opts.reconnect_interval_max.count()));
  socket.set(zmq::sockopt::heartbeat_ivl, static_cast<int>(opts.heartbeat_interval.count()));
  socket.set(zmq::sockopt::heartbeat_timeout, static_cast<int>(opts.heartbeat_timeout.count()));
  socket.set(zmq::sockopt::maxmsgsize, opts.max_message_size);
  if (sending) socket.set(zmq::sockopt::immediate, opts.immediate ? 1 : 0);
}

}  // namespace detail
}  // namespace postbox
