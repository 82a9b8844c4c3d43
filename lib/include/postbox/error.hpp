// postbox/error.hpp: the exception hierarchy for setup and programmer errors.
//
// Expected outcomes (would-block, timeout) are return values, and hostile input
// is counted and dropped (see reject_reason in codec.hpp); only what the caller
// must fix is thrown, always from one root, postbox::error.
#pragma once

#include <stdexcept>
#include <string>

namespace postbox {

/// Root of every exception postbox throws.
class error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// A bad option, endpoint, pattern or configuration value; the message names it.
class config_error : public error {
 public:
  using error::error;
};

/// A socket operation failed (bind, connect, a terminated context).
class transport_error : public error {
 public:
  using error::error;
};

/// The disk spool cannot be opened, written or synced.
class spool_error : public error {
 public:
  using error::error;
};

/// Bytes that do not follow docs/protocol.md, where the caller asked for them
/// to be decoded and an exception is the way to say no (message::as<T>).
class protocol_error : public error {
 public:
  using error::error;
};

}  // namespace postbox
