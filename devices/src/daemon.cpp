// Daemon conventions shared by the devices (postbox/devices/daemon.hpp).
#include <postbox/devices/daemon.hpp>

#include <postbox/error.hpp>

#include <csignal>
#include <cstdio>
#include <ctime>

namespace postbox::devices {
namespace {

std::atomic<bool>* stop_flag = nullptr;

extern "C" void on_stop_signal(int) {
  if (stop_flag != nullptr) stop_flag->store(true);
}

}  // namespace

log_level parse_log_level(std::string_view text) {
  if (text == "error") return log_level::error;
  if (text == "warn") return log_level::warn;
  if (text == "info") return log_level::info;
  if (text == "debug") return log_level::debug;
  throw config_error("log level \"" + std::string(text) + "\": use error, warn, info or debug");
}

std::string_view to_string(log_level level) noexcept {
  switch (level) {
    case log_level::error: return "error";
    case log_level::warn: return "warn";
    case log_level::info: return "info";
    case log_level::debug: return "debug";
  }
  return "?";
}

void logger::log(log_level level, std::string_view text) {
  if (!enabled(level)) return;
  char stamp[32];
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  std::strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%SZ", &tm);
  const auto lvl = to_string(level);
  std::fprintf(stderr, "%s %s %.*s: %.*s\n", stamp, program_.c_str(), static_cast<int>(lvl.size()),
               lvl.data(), static_cast<int>(text.size()), text.data());
  std::fflush(stderr);
}

void logger::fault(std::string_view key, std::string_view text) {
  if (!enabled(log_level::warn)) return;
  auto it = faults_.find(key);
  if (it == faults_.end()) it = faults_.emplace(std::string(key), fault_state{}).first;
  const auto now = std::chrono::steady_clock::now();
  auto& state = it->second;
  if (state.last != std::chrono::steady_clock::time_point{} &&
      now - state.last < std::chrono::seconds(1)) {
    ++state.suppressed;
    return;
  }
  std::string line(text);
  if (state.suppressed > 0) {
    line += " (" + std::to_string(state.suppressed) + " more like it suppressed)";
  }
  state.last = now;
  state.suppressed = 0;
  warn(line);
}

void stop_on_signals(std::atomic<bool>& stop) {
  stop_flag = &stop;
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: a blocking wait returns and sees the flag
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  std::signal(SIGPIPE, SIG_IGN);
}

}  // namespace postbox::devices
