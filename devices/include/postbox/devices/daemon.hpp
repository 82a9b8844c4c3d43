// postbox/devices/daemon.hpp: what every postbox daemon shares: log levels
// and a stderr logger that rate-limits repeated faults, stopping on SIGINT
// and SIGTERM, and the exit codes.
#pragma once

#include <postbox/context.hpp>
#include <postbox/error.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <cstdio>
#include <string>
#include <string_view>

namespace postbox::devices {

/// Exit codes of every postbox daemon (listed in each --help).
inline constexpr int exit_ok = 0;            ///< stopped on request
inline constexpr int exit_runtime_error = 1; ///< failed while running
inline constexpr int exit_usage_error = 2;   ///< bad option, endpoint or config file

enum class log_level { error, warn, info, debug };

/// "error", "warn", "info" or "debug"; throws config_error otherwise.
[[nodiscard]] log_level parse_log_level(std::string_view text);
[[nodiscard]] std::string_view to_string(log_level level) noexcept;

/// One line per event on stderr: "<time> <program> <level>: <text>".
/// Single-threaded, like the device loop that owns it.
class logger {
 public:
  logger(std::string program, log_level level) : program_(std::move(program)), level_(level) {}

  void log(log_level level, std::string_view text);
  void error(std::string_view text) { log(log_level::error, text); }
  void warn(std::string_view text) { log(log_level::warn, text); }
  void info(std::string_view text) { log(log_level::info, text); }
  void debug(std::string_view text) { log(log_level::debug, text); }

  /// A fault that may repeat fast (a hostile peer): logged at most once a
  /// second per `key`, with the number of repeats suppressed since.
  void fault(std::string_view key, std::string_view text);

  [[nodiscard]] bool enabled(log_level level) const noexcept { return level <= level_; }

 private:
  struct fault_state {
    std::chrono::steady_clock::time_point last{};
    std::uint64_t suppressed = 0;
  };
  std::string program_;
  log_level level_;
  std::map<std::string, fault_state, std::less<>> faults_;
};

/// Sets `stop` when SIGINT or SIGTERM arrives (and ignores SIGPIPE). The flag
/// must outlive the process's use of these handlers.
void stop_on_signals(std::atomic<bool>& stop);

/// The whole main() of a daemon: parse argv with `load` (a command with
/// `config` and `print_and_exit`), construct Device, run it until SIGINT or
/// SIGTERM, and map each failure to its exit code with a one-line message.
template <class Device, class Load>
int daemon_main(const char* program, int argc, char** argv, Load load) {
  std::atomic<bool> stop{false};
  context ctx;  // declared first: it must outlive the device's sockets
  std::optional<Device> device;
  try {
    auto cmd = load(argc, argv);
    if (cmd.print_and_exit) {
      std::fputs(cmd.print_and_exit->c_str(), stdout);
      return exit_ok;
    }
    device.emplace(ctx, std::move(cmd.config));
  } catch (const config_error& e) {
    std::fprintf(stderr, "%s: %s (see --help)\n", program, e.what());
    return exit_usage_error;
  } catch (const error& e) {  // an address in use, a locked or corrupt data directory
    std::fprintf(stderr, "%s: %s\n", program, e.what());
    return exit_usage_error;
  } catch (const std::exception& e) {  // out of sockets, memory, file handles
    std::fprintf(stderr, "%s: %s\n", program, e.what());
    return exit_runtime_error;
  }
  try {
    stop_on_signals(stop);
    device->run(stop);
    return exit_ok;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", program, e.what());
    return exit_runtime_error;
  }
}

}  // namespace postbox::devices
