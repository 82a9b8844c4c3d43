// postbox/context.hpp: the process-wide ZeroMQ context every channel uses.
#pragma once

#include <zmq.hpp>

namespace postbox {

/// Owns one zmq::context_t. Channels take it by reference: the context must
/// outlive every channel made from it. Thread-safe, as ZeroMQ's context is.
class context {
 public:
  /// `io_threads`: libzmq I/O threads; one moves about a gigabyte a second.
  explicit context(int io_threads = 1);
  context(const context&) = delete;
  context& operator=(const context&) = delete;

  [[nodiscard]] zmq::context_t& native() noexcept { return ctx_; }

 private:
  zmq::context_t ctx_;
};

}  // namespace postbox
