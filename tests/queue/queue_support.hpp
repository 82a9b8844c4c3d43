// Support for the queue device's in-process tests: the device on its own
// thread, and a client of its control endpoint.
#pragma once

#include <postbox/context.hpp>
#include <postbox/devices/queue.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <thread>

#include <zmq.hpp>

namespace postbox::test {

// A device running on its own thread for the life of the object.
class running_device {
 public:
  running_device(context& ctx, devices::queue_config c) : device_(ctx, std::move(c)) {
    thread_ = std::thread([this] { device_.run(stop_); });
  }
  ~running_device() {
    stop_ = true;
    thread_.join();
  }
  running_device(const running_device&) = delete;
  running_device& operator=(const running_device&) = delete;

  [[nodiscard]] std::string clients() const { return ">" + device_.client_endpoints().front(); }
  devices::queue_device& device() { return device_; }
  // Stats are read while the loop runs only for coarse waiting; exact checks stop it first.
  void stop() {
    if (!stop_) {
      stop_ = true;
      thread_.join();
      thread_ = std::thread([] {});
    }
  }

 private:
  devices::queue_device device_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// A client of the device's control endpoint (REQ). A request that gets no
// answer within its timeout returns nothing, and the next one starts over on
// a fresh socket (a REQ socket waiting for a reply refuses to send).
class control_client {
 public:
  control_client(context& ctx, std::string endpoint) : ctx_(ctx), endpoint_(std::move(endpoint)) {}

  [[nodiscard]] std::optional<std::string> ask(std::string_view request,
                                               std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
    if (!req_) {
      req_.emplace(ctx_.native(), zmq::socket_type::req);
      req_->set(zmq::sockopt::linger, 0);
      req_->connect(endpoint_);
    }
    req_->set(zmq::sockopt::rcvtimeo, static_cast<int>(timeout.count()));
    zmq::message_t reply;
    if (!req_->send(zmq::buffer(request), zmq::send_flags::none) || !req_->recv(reply)) {
      req_.reset();
      return std::nullopt;
    }
    return reply.to_string();
  }

 private:
  context& ctx_;
  std::string endpoint_;
  std::optional<zmq::socket_t> req_;
};

// The number after "field": in a stats answer: of the queue named `queue`
// when given, else of the device (the fields after the queues array).
// Empty optional when absent.
inline std::optional<std::uint64_t> json_field(const std::string& json, std::string_view field,
                                               std::string_view queue = {}) {
  std::size_t from = 0, to = json.size();
  if (!queue.empty()) {
    from = json.find("{\"name\":\"" + std::string(queue) + "\"");
    if (from == std::string::npos) return std::nullopt;
    to = json.find('}', from);
  } else {
    from = json.rfind("],\"consumers\"");
    if (from == std::string::npos) return std::nullopt;
    ++from;
  }
  const std::string needle = "\"" + std::string(field) + "\":";
  const auto at = json.find(needle, from);
  if (at == std::string::npos || at > to) return std::nullopt;
  std::size_t p = at + needle.size();
  if (p >= json.size() || json[p] < '0' || json[p] > '9') return std::nullopt;
  std::uint64_t v = 0;
  for (; p < json.size() && json[p] >= '0' && json[p] <= '9'; ++p) v = v * 10 + static_cast<std::uint64_t>(json[p] - '0');
  return v;
}

}  // namespace postbox::test
