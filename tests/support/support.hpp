// Test support: temporary directories, endpoints per transport, waiting on a
// condition with a deadline (never a fixed sleep), and child processes.
#pragma once

#include <atomic>
#include <chrono>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

namespace postbox::test {

/// A fresh directory, removed with everything in it on destruction.
class temp_dir {
 public:
  temp_dir();
  ~temp_dir();
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;
  [[nodiscard]] const std::filesystem::path& path() const noexcept { return path_; }

 private:
  std::filesystem::path path_;
};

/// The transports integration tests run over, for GENERATE.
enum class transport_kind { tcp, ipc, inproc };
[[nodiscard]] const char* name(transport_kind t);

/// An endpoint to bind for `t`: tcp://127.0.0.1:* (any free port), an ipc
/// path in `dir`, or a unique inproc name. Without prefix ('@' or '>').
[[nodiscard]] std::string bind_address(transport_kind t, const temp_dir& dir);

/// Polls `pred` until it holds or `timeout` passes; returns its last value.
bool wait_until(const std::function<bool()>& pred,
                std::chrono::milliseconds timeout = std::chrono::seconds(10));

/// A child process with its stdout on a pipe; killed (SIGKILL) on destruction
/// if still running.
class child {
 public:
  /// Starts argv[0] with argv; with `merge_stderr` its stderr goes to the
  /// same pipe as its stdout (daemons log to stderr).
  explicit child(const std::vector<std::string>& argv, bool merge_stderr = false);
  ~child();
  child(const child&) = delete;
  child& operator=(const child&) = delete;

  /// Reads one line of the child's stdout (without '\n'); empty optional at
  /// EOF or when `timeout` passes.
  [[nodiscard]] bool read_line(std::string& line,
                               std::chrono::milliseconds timeout = std::chrono::seconds(10));
  void kill(int signal);
  /// Waits for exit; returns the exit status (128+signal when killed), or -1
  /// on timeout.
  int wait(std::chrono::milliseconds timeout = std::chrono::seconds(30));
  [[nodiscard]] int pid() const noexcept { return pid_; }

 private:
  int pid_ = -1;
  int out_fd_ = -1;
  std::string buffer_;
  int status_ = -1;
};

/// The peer program's path (tests/support/peer_main.cpp).
[[nodiscard]] std::string peer_path();
/// The postbox-forwarder executable's path.
[[nodiscard]] std::string forwarder_path();

/// The postbox-queue executable's path.
[[nodiscard]] std::string queue_path();

/// The postbox command-line tool's path.
[[nodiscard]] std::string cli_path();

/// Holding the spools' syncs: from use_gated_syncs() on, every fdatasync a
/// spool makes (detail::spool_io_calls) waits while gate_closed is set, and
/// held_syncs counts those that waited. Call it before the spools open, with
/// the real calls saved to be restored after they close.
extern std::atomic<bool> gate_closed;
extern std::atomic<int> held_syncs;
void use_gated_syncs();
/// Declared after the spools (or device) a test holds: opens the gate before
/// they are destroyed, whose writers would wait for a held sync, also when a
/// REQUIRE fails with the gate closed.
struct gate_opener {
  gate_opener() = default;
  gate_opener(const gate_opener&) = delete;
  gate_opener& operator=(const gate_opener&) = delete;
  ~gate_opener() { gate_closed = false; }
};

}  // namespace postbox::test
