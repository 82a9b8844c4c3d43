// postbox/options.hpp: every socket option postbox sets, in one place.
//
// The defaults are chosen so that nothing is dropped silently: senders queue
// only to connected peers (ZMQ_IMMEDIATE) and block or report would-block at
// the high-water mark; a closing socket lingers long enough to flush; every
// socket refuses frames larger than max_message_size, so a peer cannot make
// libzmq reserve memory it claims in a frame header.
#pragma once

#include <chrono>
#include <cstdint>

#include <zmq.hpp>

namespace postbox {

struct socket_options {
  /// Messages queued per peer before a sender blocks (PUSH, DEALER) or a
  /// publisher drops (PUB; the subscriber's gap accounting reports it).
  int send_hwm = 10'000;
  /// Messages queued per peer on the receiving side.
  int receive_hwm = 10'000;
  /// How long close() waits to flush unsent messages. Finite, so a channel's
  /// destructor never hangs on a peer that went away.
  std::chrono::milliseconds linger{1'000};
  /// First reconnect delay, and the cap of its exponential back-off.
  std::chrono::milliseconds reconnect_interval{100};
  std::chrono::milliseconds reconnect_interval_max{5'000};
  /// ZMTP heartbeats: a PING every interval; a peer silent for timeout is
  /// disconnected (so its queued messages stop waiting on a dead connection).
  std::chrono::milliseconds heartbeat_interval{5'000};
  std::chrono::milliseconds heartbeat_timeout{15'000};
  /// The largest frame accepted from the network, in bytes (ZMQ_MAXMSGSIZE).
  /// Larger frames make libzmq drop the connection.
  std::int64_t max_message_size = 64 * 1024 * 1024;
  /// Queue messages only to completed connections: a send with no peer
  /// blocks or reports would-block instead of waiting in a dead pipe, and a
  /// publisher forgets a dropped connection's subscriptions at once.
  bool immediate = true;
};

namespace detail {
/// Applies `opts` to a fresh socket; `sending` selects ZMQ_IMMEDIATE.
void apply_options(zmq::socket_t& socket, const socket_options& opts, bool sending);
}  // namespace detail

}  // namespace postbox
