// Endpoint parsing: the grammar of postbox/endpoint.hpp, with one-line errors.
#include <postbox/endpoint.hpp>

#include <postbox/error.hpp>

#include <charconv>
#include <sys/un.h>

namespace postbox {
namespace {

[[noreturn]] void bad(std::string_view text, std::string_view why) {
  throw config_error("endpoint \"" + std::string(text) + "\": " + std::string(why));
}

bool valid_port(std::string_view port, endpoint_mode mode) {
  if (port == "*" || port == "0") return mode == endpoint_mode::bind;
  if (port.empty() || port.size() > 5) return false;
  unsigned value = 0;
  auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  return ec == std::errc{} && end == port.data() + port.size() && value >= 1 && value <= 65535;
}

void check_tcp(std::string_view text, std::string_view rest, endpoint_mode mode) {
  // host:port, where host may be a bracketed IPv6 address; for connect, an
  // optional "source;" part as libzmq allows is not supported on purpose.
  const auto colon = rest.rfind(':');
  if (colon == std::string_view::npos) bad(text, "missing \":port\" (e.g. tcp://127.0.0.1:5555)");
  const auto host = rest.substr(0, colon);
  const auto port = rest.substr(colon + 1);
  if (host.empty()) bad(text, "missing host (e.g. tcp://127.0.0.1:5555)");
  if (host.find_first_of(" \t;/") != std::string_view::npos) bad(text, "bad host");
  if (host == "*" && mode == endpoint_mode::connect) bad(text, "cannot connect to host \"*\"");
  if (!valid_port(port, mode)) {
    bad(text, mode == endpoint_mode::bind
                  ? "port must be 1-65535 or \"*\" for any free port"
                  : "port must be 1-65535");
  }
}

}  // namespace

std::string endpoint::to_string() const {
  return (mode == endpoint_mode::bind ? "@" : ">") + address;
}

endpoint parse_endpoint(std::string_view text, endpoint_mode default_mode) {
  endpoint ep;
  ep.mode = default_mode;
  std::string_view rest = text;
  if (!rest.empty() && (rest.front() == '@' || rest.front() == '>')) {
    ep.mode = rest.front() == '@' ? endpoint_mode::bind : endpoint_mode::connect;
    rest.remove_prefix(1);
  }
  if (rest.empty()) bad(text, "empty endpoint");
  const auto sep = rest.find("://");
  if (sep == std::string_view::npos) {
    bad(text, "missing transport (use tcp://, ipc:// or inproc://)");
  }
  const auto scheme = rest.substr(0, sep);
  const auto where = rest.substr(sep + 3);
  if (scheme == "tcp") {
    ep.transport = transport::tcp;
    check_tcp(text, where, ep.mode);
  } else if (scheme == "ipc") {
    ep.transport = transport::ipc;
    if (where.empty()) bad(text, "missing path (e.g. ipc:///tmp/postbox.sock)");
    if (where.size() >= sizeof(sockaddr_un::sun_path)) {
      bad(text, "path longer than " + std::to_string(sizeof(sockaddr_un::sun_path) - 1) +
                    " bytes");
    }
  } else if (scheme == "inproc") {
    ep.transport = transport::inproc;
    if (where.empty()) bad(text, "missing name (e.g. inproc://jobs)");
  } else {
    bad(text, "unsupported transport \"" + std::string(scheme) +
                  "\" (use tcp://, ipc:// or inproc://)");
  }
  ep.address = std::string(rest);
  return ep;
}

std::vector<endpoint> parse_endpoints(std::string_view text, endpoint_mode default_mode) {
  std::vector<endpoint> out;
  std::size_t start = 0;
  while (true) {
    const auto comma = text.find(',', start);
    const auto one = text.substr(start, comma == std::string_view::npos ? text.npos : comma - start);
    out.push_back(parse_endpoint(one, default_mode));
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  return out;
}

}  // namespace postbox
