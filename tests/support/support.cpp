// Test support implementation (support.hpp).
#include "support/support.hpp"

#include <postbox/detail/spool_state.hpp>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <poll.h>
#include <spawn.h>
#include <stdexcept>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

extern char** environ;

namespace postbox::test {

temp_dir::temp_dir() {
  std::string tmpl = (std::filesystem::temp_directory_path() / "postbox-test-XXXXXX").string();
  if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  path_ = tmpl;
}

temp_dir::~temp_dir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

const char* name(transport_kind t) {
  switch (t) {
    case transport_kind::tcp: return "tcp";
    case transport_kind::ipc: return "ipc";
    case transport_kind::inproc: return "inproc";
  }
  return "?";
}

std::string bind_address(transport_kind t, const temp_dir& dir) {
  static std::atomic<int> counter{0};
  const int n = ++counter;
  switch (t) {
    case transport_kind::tcp: return "tcp://127.0.0.1:*";
    case transport_kind::ipc: return "ipc://" + (dir.path() / ("s" + std::to_string(n))).string();
    case transport_kind::inproc:
      return "inproc://test-" + std::to_string(::getpid()) + "-" + std::to_string(n);
  }
  return {};
}

bool wait_until(const std::function<bool()>& pred, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!pred()) {
    if (std::chrono::steady_clock::now() >= deadline) return pred();
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return true;
}

child::child(const std::vector<std::string>& argv, bool merge_stderr) {
  int fds[2];
  if (::pipe(fds) != 0) throw std::runtime_error("pipe failed");
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
  if (merge_stderr) posix_spawn_file_actions_adddup2(&actions, fds[1], STDERR_FILENO);
  posix_spawn_file_actions_addclose(&actions, fds[0]);
  posix_spawn_file_actions_addclose(&actions, fds[1]);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const int rc = ::posix_spawn(&pid_, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  ::close(fds[1]);
  if (rc != 0) {
    ::close(fds[0]);
    throw std::runtime_error("cannot start " + argv[0] + ": " + std::strerror(rc));
  }
  out_fd_ = fds[0];
}

child::~child() {
  if (status_ < 0 && pid_ > 0) {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }
  if (out_fd_ >= 0) ::close(out_fd_);
}

bool child::read_line(std::string& line, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    const auto nl = buffer_.find('\n');
    if (nl != std::string::npos) {
      line = buffer_.substr(0, nl);
      buffer_.erase(0, nl + 1);
      return true;
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    pollfd p{out_fd_, POLLIN, 0};
    const int ready = ::poll(&p, 1, static_cast<int>(left.count()));
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) return false;
    char chunk[4096];
    const auto n = ::read(out_fd_, chunk, sizeof chunk);
    if (n <= 0) return false;
    buffer_.append(chunk, static_cast<std::size_t>(n));
  }
}

void child::kill(int signal) {
  if (pid_ > 0 && status_ < 0) ::kill(pid_, signal);
}

int child::wait(std::chrono::milliseconds timeout) {
  if (status_ >= 0) return status_;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    int st = 0;
    const pid_t r = ::waitpid(pid_, &st, WNOHANG);
    if (r == pid_) {
      status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      return status_;
    }
    if (std::chrono::steady_clock::now() >= deadline) return -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

std::string peer_path() { return POSTBOX_TEST_PEER; }
std::string forwarder_path() { return POSTBOX_FORWARDER; }

std::string queue_path() { return POSTBOX_QUEUE; }

std::string cli_path() { return POSTBOX_CLI; }

std::atomic<bool> gate_closed{false};
std::atomic<int> held_syncs{0};

namespace {
int gated_fdatasync(int fd) {
  if (gate_closed.load()) {
    ++held_syncs;
    while (gate_closed.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return ::fdatasync(fd);
}
}  // namespace

void use_gated_syncs() {
  gate_closed = false;
  held_syncs = 0;
  postbox::detail::spool_io_calls().fdatasync = &gated_fdatasync;
}

}  // namespace postbox::test
