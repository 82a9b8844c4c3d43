// Connect endpoints whose host the resolver does not know. libzmq accepts
// such an endpoint and keeps trying it in the background without a word,
// so a daemon says so once, at start. Private to devices/.
#pragma once

#include <string>
#include <vector>

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>

namespace postbox::devices {

/// For each tcp:// address in `addresses` (as a channel_socket lists them:
/// bound ones numeric, connected ones as given) whose host does not resolve
/// now: "ADDRESS: cannot resolve host \"HOST\" (REASON)".
inline std::vector<std::string> unresolved_hosts(const std::vector<std::string>& addresses) {
  constexpr std::string_view scheme = "tcp://";
  std::vector<std::string> out;
  for (const auto& a : addresses) {
    if (a.rfind(scheme, 0) != 0) continue;
    const auto colon = a.rfind(':');
    if (colon == std::string::npos || colon <= scheme.size()) continue;
    std::string host = a.substr(scheme.size(), colon - scheme.size());
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
    in6_addr numeric{};
    if (host == "*" || ::inet_pton(AF_INET, host.c_str(), &numeric) == 1 ||
        ::inet_pton(AF_INET6, host.c_str(), &numeric) == 1) {
      continue;
    }
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* found = nullptr;
    const int rc = ::getaddrinfo(host.c_str(), nullptr, &hints, &found);
    if (rc == 0) {
      ::freeaddrinfo(found);
      continue;
    }
    out.push_back(a + ": cannot resolve host \"" + host + "\" (" + ::gai_strerror(rc) + ")");
  }
  return out;
}

}  // namespace postbox::devices
