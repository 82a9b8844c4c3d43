// postbox/endpoint.hpp: parsing and validating ZeroMQ endpoints.
//
// Notation as in CZMQ: "@tcp://127.0.0.1:5555" binds, ">tcp://host:5555"
// connects, and a bare endpoint takes the default of the role using it.
// Several endpoints may be given separated by commas.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace postbox {

enum class transport { tcp, ipc, inproc };

/// Whether a socket binds or connects an endpoint.
enum class endpoint_mode { bind, connect };

/// One validated endpoint.
struct endpoint {
  endpoint_mode mode = endpoint_mode::connect;
  postbox::transport transport = transport::tcp;
  std::string address;  ///< the ZeroMQ address, without '@' or '>', e.g. "tcp://127.0.0.1:5555"

  /// The endpoint in postbox notation, with its '@' or '>' prefix.
  [[nodiscard]] std::string to_string() const;

  friend bool operator==(const endpoint&, const endpoint&) = default;
};

/// Parses one endpoint. `default_mode` applies when there is no '@' or '>'.
/// Throws config_error naming the endpoint and what is wrong with it.
[[nodiscard]] endpoint parse_endpoint(std::string_view text, endpoint_mode default_mode);

/// Parses a comma-separated list of endpoints (at least one).
/// Throws config_error naming the first bad endpoint.
[[nodiscard]] std::vector<endpoint> parse_endpoints(std::string_view text,
                                                    endpoint_mode default_mode);

}  // namespace postbox
