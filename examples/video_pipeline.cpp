// Video pipeline on the queue device: an upload API produces transcoding
// jobs into a postbox-queue process, and three worker processes consume
// them. Workers fail now and then (the queue retries with backoff), one
// upload is corrupt (it fails every attempt and ends in the dead-letter
// queue), and one worker is killed with SIGKILL while it holds a job (the
// queue gives that job to another worker). At the end the program asks the
// device's control endpoint for its counters and dead letters, and checks
// that every job was either processed or dead-lettered: lost = 0.
//
// Everything is real: the device is the postbox-queue executable with a
// temporary data directory, the workers are this program started again
// with --worker, and the kill is kill -9.
#include <postbox/devices/daemon.hpp>
#include <postbox/postbox.hpp>
#include <postbox/queue_client.hpp>

#include "example_args.hpp"

#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

using namespace std::chrono_literals;
namespace fs = std::filesystem;
using steady = std::chrono::steady_clock;

namespace {

constexpr std::uint32_t job_count = 40;
constexpr int worker_count = 3;
constexpr std::uint32_t max_attempts = 4;    // the device's --max-attempts
constexpr std::uint32_t corrupt_video = 23;  // a truncated upload: fails every time
constexpr std::uint32_t long_video = 9;      // a 4K master: the job the killed worker holds
constexpr auto story_deadline = 25s;

struct transcode_job {
  std::uint32_t video_id = 0;
  std::string source;
  int height = 0;
  MSGPACK_DEFINE(video_id, source, height)
};

// What a worker tells the story teller: "up", "started", "failed" or "done".
struct worker_event {
  std::string kind;
  int worker = 0;
  int pid = 0;
  std::uint32_t video_id = 0;
  std::uint32_t attempt = 0;  // earlier deliveries of this job (0 on the first)
  std::string detail;
  MSGPACK_DEFINE(kind, worker, pid, video_id, attempt, detail)
};

// ---------------------------------------------------------------- the worker

// Transient trouble a real transcoder meets: about one job in seven fails its
// first try, and some of those their second; never a third time, so only the
// corrupt upload runs out of attempts. A hash, so every run tells the same story.
std::optional<std::string> transient_failure(std::uint32_t video, std::uint32_t attempt) {
  static const char* const reasons[] = {"GPU busy", "scratch disk full",
                                        "timeout fetching the source from storage"};
  if (attempt >= 2) return std::nullopt;
  std::uint32_t h = video * 0x9E3779B1u + attempt * 0x85EBCA6Bu;
  h = (h ^ (h >> 15)) * 0x2C1B3C6Du;
  h = (h ^ (h >> 12)) * 0x297A2D39u;
  h ^= h >> 15;
  if (h % 100 >= (attempt == 0 ? 15u : 30u)) return std::nullopt;
  return reasons[(h >> 8) % 3];
}

int run_worker(int number, const std::string& clients, const std::string& events_endpoint) {
  std::atomic<bool> stop{false};
  postbox::devices::stop_on_signals(stop);  // SIGTERM: finish the job in hand, then leave
  postbox::context ctx;
  postbox::sender events(ctx, events_endpoint);
  // Prefetch 1: a worker holds one job at a time, so a crash strands at most one.
  postbox::consumer_options opts;
  opts.prefetch = 1;
  postbox::consumer jobs(ctx, clients, {"jobs"}, opts);
  const int pid = static_cast<int>(::getpid());
  events.send_packed("worker", worker_event{"up", number, pid, 0, 0, {}});

  while (!stop) {
    jobs.process_one(
        [&](const postbox::delivery& d) {
          const auto job = d.msg.as<transcode_job>();
          worker_event ev{"started", number, pid, job.video_id, d.attempt, {}};
          events.send_packed("worker", ev);
          std::this_thread::sleep_for(job.height >= 2160   ? 2500ms
                                      : job.height >= 1080 ? 250ms
                                                           : 150ms);
          std::optional<std::string> why;
          if (job.source.ends_with(".part")) {
            why = "ffmpeg: moov atom not found (truncated upload)";
          } else {
            why = transient_failure(job.video_id, d.attempt);
          }
          ev.kind = why ? "failed" : "done";
          ev.detail = why.value_or("");
          // Reported before the ack: a crash in between makes a duplicate, never a loss.
          events.send_packed("worker", ev);
          // A retry uses the queue's backoff; after max attempts it dead-letters.
          return why ? postbox::verdict::retry(*why) : postbox::verdict::success();
        },
        100ms);  // a timeout, so a stop request is noticed between jobs
  }
  return 0;
}

// ---------------------------------------------------------------- the story teller

const steady::time_point started_at = steady::now();
std::mutex print_mu;

__attribute__((format(printf, 1, 2))) void say(const char* format, ...) {
  std::lock_guard lk(print_mu);
  const double t = std::chrono::duration<double>(steady::now() - started_at).count();
  std::printf("%5.1fs  ", t);
  va_list args;
  va_start(args, format);
  std::vprintf(format, args);
  va_end(args);
  std::putchar('\n');
  std::fflush(stdout);
}

// Starts `args` as a child that dies with us; `err_fd` (if >= 0) becomes its stderr.
pid_t spawn(const std::vector<std::string>& args, int err_fd) {
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid == 0) {  // only async-signal-safe calls until exec
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);
    if (err_fd >= 0) ::dup2(err_fd, STDERR_FILENO);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  return pid;
}

// The child's exit status as text, waiting up to `limit` before killing it.
std::string stop_child(pid_t pid, int signal, std::chrono::milliseconds limit, bool* clean) {
  ::kill(pid, signal);
  const auto deadline = steady::now() + limit;
  int status = 0;
  while (true) {
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) break;
    if (r < 0) return "already reaped";
    if (steady::now() > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      *clean = false;
      return "did not stop in time; killed";
    }
    std::this_thread::sleep_for(10ms);
  }
  if (WIFEXITED(status)) {
    *clean = *clean && WEXITSTATUS(status) == 0;
    return "exit " + std::to_string(WEXITSTATUS(status));
  }
  *clean = false;
  return std::string("killed by ") + strsignal(WTERMSIG(status));
}

// postbox-queue: built beside the examples, or installed on PATH.
std::string find_queue_binary(const fs::path& self) {
  std::vector<fs::path> candidates;
#ifdef POSTBOX_QUEUE_BINARY
  candidates.emplace_back(POSTBOX_QUEUE_BINARY);
#endif
  candidates.push_back(self.parent_path().parent_path() / "postbox-queue");
  candidates.push_back(self.parent_path() / "postbox-queue");
  if (const char* path = std::getenv("PATH")) {
    std::string_view rest = path;
    while (!rest.empty()) {
      const auto colon = rest.find(':');
      candidates.push_back(fs::path(std::string(rest.substr(0, colon))) / "postbox-queue");
      rest = colon == std::string_view::npos ? std::string_view{} : rest.substr(colon + 1);
    }
  }
  for (const auto& c : candidates)
    if (::access(c.c_str(), X_OK) == 0) return c.string();
  return {};
}

// Lines from a child's stderr pipe.
class line_reader {
 public:
  explicit line_reader(int fd) : fd_(fd) {}
  // The next line, or nothing at end of file or when `deadline` passes.
  std::optional<std::string> next(steady::time_point deadline) {
    while (true) {
      if (const auto nl = buf_.find('\n'); nl != std::string::npos) {
        std::string line = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        return line;
      }
      const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - steady::now());
      if (left.count() <= 0) return std::nullopt;
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
      char chunk[4096];
      const ssize_t n = ::read(fd_, chunk, sizeof chunk);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        eof_ = true;
        return std::nullopt;
      }
      buf_.append(chunk, static_cast<std::size_t>(n));
    }
  }
  [[nodiscard]] bool eof() const noexcept { return eof_; }

 private:
  int fd_;
  std::string buf_;
  bool eof_ = false;
};

// "2026-01-01T00:00:00Z postbox-queue info: text" -> "text" ("warn: text" above info).
std::string device_text(const std::string& line) {
  const auto at = line.find(" postbox-queue ");
  if (at == std::string::npos) return line;
  std::string rest = line.substr(at + 15);
  if (rest.starts_with("info: ")) return rest.substr(6);
  return rest;
}

// Text after `"name":` in `json` from `from` on: a string's contents or a number.
std::string json_value(std::string_view json, std::string_view name, std::size_t from = 0) {
  const std::string needle = "\"" + std::string(name) + "\":";
  const auto at = json.find(needle, from);
  if (at == std::string_view::npos) return {};
  std::size_t i = at + needle.size();
  std::string out;
  if (i < json.size() && json[i] == '"') {
    for (++i; i < json.size() && json[i] != '"'; ++i) {
      if (json[i] == '\\' && i + 1 < json.size()) ++i;
      out.push_back(json[i]);
    }
  } else {
    while (i < json.size() && json[i] >= '0' && json[i] <= '9') out.push_back(json[i++]);
  }
  return out;
}

// A number from the stats object of queue `queue` ("jobs" or "jobs.dlq").
std::uint64_t queue_stat(std::string_view stats, std::string_view queue, std::string_view name) {
  const auto at = stats.find("{\"name\":\"" + std::string(queue) + "\"");
  if (at == std::string_view::npos) return 0;
  return std::strtoull(json_value(stats, name, at).c_str(), nullptr, 10);
}

// One request to the device's control endpoint (what `postbox ask` does).
std::optional<std::string> ask(postbox::context& ctx, const std::string& endpoint,
                               const std::string& request) {
  zmq::socket_t req(ctx.native(), zmq::socket_type::req);
  req.set(zmq::sockopt::linger, 0);
  req.set(zmq::sockopt::rcvtimeo, 2000);
  req.connect(endpoint);
  req.send(zmq::buffer(request), zmq::send_flags::none);
  zmq::message_t answer;
  if (!req.recv(answer)) return std::nullopt;
  return answer.to_string();
}

struct dead_letter {
  std::string id, reason, attempts, last_error;
};

std::vector<dead_letter> parse_dead_letters(std::string_view list) {
  std::vector<dead_letter> out;
  for (auto at = list.find("{\"position\":"); at != std::string_view::npos;
       at = list.find("{\"position\":", at + 1)) {
    out.push_back({json_value(list, "id", at), json_value(list, "reason", at),
                   json_value(list, "attempts", at), json_value(list, "last_error", at)});
  }
  return out;
}

// Children and the data directory, cleaned up however the story ends.
struct cleanup {
  std::vector<pid_t> pids;
  fs::path dir;
  ~cleanup() {
    for (const pid_t p : pids) {
      ::kill(p, SIGKILL);
      ::waitpid(p, nullptr, 0);
    }
    std::error_code ec;
    if (!dir.empty()) fs::remove_all(dir, ec);
  }
};

int tell_story(const fs::path& self) {
  std::printf(
      "video_pipeline: an upload API queues %u transcoding jobs in postbox-queue;\n"
      "%d worker processes take them. Workers fail now and then, one upload is\n"
      "corrupt, and one worker is killed with SIGKILL in the middle of a job.\n\n",
      job_count, worker_count);
  const std::string queue_binary = find_queue_binary(self);
  if (queue_binary.empty()) {
    std::fprintf(stderr,
                 "FAIL: cannot find the postbox-queue executable (build it, or put it on PATH)\n");
    return 1;
  }
  cleanup owned;
  std::string dir_template = (fs::temp_directory_path() / "postbox-video-XXXXXX").string();
  if (::mkdtemp(dir_template.data()) == nullptr) {
    std::fprintf(stderr, "FAIL: cannot make a temporary directory: %s\n", std::strerror(errno));
    return 1;
  }
  owned.dir = dir_template;

  // ---- the queue device: its own process, any free ports, a fresh data dir
  int err_pipe[2];
  if (::pipe2(err_pipe, O_CLOEXEC) != 0) return 1;
  const pid_t device =
      spawn({queue_binary, "--clients", "@tcp://127.0.0.1:*", "--control", "@tcp://127.0.0.1:*",
             "--plain-in", "none", "--plain-out", "none", "--data-dir",
             (owned.dir / "data").string(), "--max-attempts", std::to_string(max_attempts),
             "--retry-initial", "250", "--retry-max", "2000", "--stats-interval", "0"},
            err_pipe[1]);
  ::close(err_pipe[1]);
  if (device < 0) return 1;
  owned.pids.push_back(device);
  line_reader device_log(err_pipe[0]);
  std::string clients, control;
  while (auto line = device_log.next(steady::now() + 10s)) {
    if (line->find(" ready clients=") == std::string::npos) {
      std::fprintf(stderr, "%s\n", line->c_str());  // e.g. a bad option
      continue;
    }
    clients = line->substr(line->find("clients=") + 8);
    clients = clients.substr(0, clients.find(' '));
    control = line->substr(line->find("control=") + 8);
    control = control.substr(0, control.find(' '));
    break;
  }
  if (clients.empty() || control.empty()) {
    std::fprintf(stderr, "FAIL: %s did not report ready within 10 s\n", queue_binary.c_str());
    return 1;
  }
  say("queue: postbox-queue (pid %d) ready: clients %s, control %s", static_cast<int>(device),
      clients.c_str(), control.c_str());
  say("queue: --max-attempts %u, retry backoff 250 ms doubling (+-20%% jitter), "
      "a consumer silent 1.5 s counts as gone",
      max_attempts);
  // From here on the device's log lines join the story as they come.
  std::jthread device_lines([&device_log](std::stop_token stop) {
    while (!stop.stop_requested() && !device_log.eof()) {
      if (auto line = device_log.next(steady::now() + 100ms)) {
        say("queue: %s", device_text(*line).c_str());
      }
    }
  });

  postbox::context ctx;

  // ---- the upload API: each job is on disk before send() returns
  std::map<std::string, std::uint32_t> video_of;  // message id (hex) -> video
  std::set<std::uint32_t> sent;
  {
    postbox::producer uploads(ctx, ">" + clients, "jobs");
    for (std::uint32_t v = 1; v <= job_count; ++v) {
      transcode_job job{v, "uploads/" + std::to_string(v) + ".mov", v % 2 ? 1080 : 720};
      if (v == long_video) job.height = 2160;
      if (v == corrupt_video) job.source += ".part";
      const postbox::confirm c = uploads.send(postbox::message::packed("video.transcode", job));
      if (!c.ok) {
        say("upload API: job %u NOT queued: %s", v, c.reason.c_str());
        continue;
      }
      sent.insert(v);
      video_of[c.id.to_hex()] = v;
    }
  }
  say("upload API: %zu of %u jobs confirmed (video %u is a truncated upload, video %u a 4K master)",
      sent.size(), job_count, corrupt_video, long_video);
  if (auto stats = ask(ctx, control, "stats")) {
    say("queue: %llu jobs waiting on disk, no worker yet",
        static_cast<unsigned long long>(queue_stat(*stats, "jobs", "depth")));
  }

  // ---- the workers: this program again, one process each
  postbox::receiver events(ctx, "@tcp://127.0.0.1:*");
  std::map<int, pid_t> worker_pid;
  for (int w = 1; w <= worker_count; ++w) {
    const pid_t pid = spawn({self.string(), "--worker", std::to_string(w), ">" + clients,
                             ">" + events.endpoints().front()},
                            -1);
    if (pid < 0) return 1;
    owned.pids.push_back(pid);
    worker_pid[w] = pid;
  }

  std::set<std::uint32_t> done, dead_lettered;
  std::map<std::uint32_t, int> retried_videos;  // video -> deliveries after the first
  std::uint64_t done_reports = 0, retries = 0;
  int killed_worker = 0, up = 0;
  bool long_job_redone = false;
  auto next_dlq_check = steady::now();
  const auto deadline = steady::now() + story_deadline;
  std::vector<dead_letter> letters;

  while (steady::now() < deadline) {
    const bool all_accounted = done.size() + dead_lettered.size() >= sent.size();
    if (all_accounted && long_job_redone) break;
    if (steady::now() >= next_dlq_check) {  // the poisoned job shows up in jobs.dlq
      next_dlq_check = steady::now() + 300ms;
      if (auto list = ask(ctx, control, "list jobs 100")) {
        letters = parse_dead_letters(*list);
        for (const auto& l : letters) {
          const auto v = video_of.find(l.id);
          if (v == video_of.end() || !dead_lettered.insert(v->second).second) continue;
          say("dead letter: video %u moved to jobs.dlq (reason %s, %s attempts, last error: %s)",
              v->second, l.reason.c_str(), l.attempts.c_str(), l.last_error.c_str());
        }
      }
    }
    auto m = events.receive(100ms);
    if (!m) continue;
    const auto ev = m->as<worker_event>();
    const unsigned shown = ev.attempt + 1;
    if (ev.kind == "up") {
      if (++up == worker_count) say("workers: %d worker processes connected", worker_count);
    } else if (ev.kind == "started") {
      if (ev.attempt > 0) {
        ++retries;
        ++retried_videos[ev.video_id];
      }
      if (ev.video_id == long_video && ev.attempt == 0 && killed_worker == 0) {
        killed_worker = ev.worker;
        say("worker %d (pid %d) took video %u (4K, ~2.5 s): kill -9 it mid-job", ev.worker, ev.pid,
            ev.video_id);
        ::kill(worker_pid[ev.worker], SIGKILL);
        ::waitpid(worker_pid[ev.worker], nullptr, 0);
        std::erase(owned.pids, worker_pid[ev.worker]);
        say("worker %d is dead; video %u was never acked, so the queue still owes it", ev.worker,
            ev.video_id);
      } else if (ev.video_id == long_video && killed_worker != 0) {
        say("video %u picked up again by worker %d, attempt %u/%u", ev.video_id, ev.worker, shown,
            max_attempts);
      }
    } else if (ev.kind == "failed") {
      say("video %u failed on worker %d, attempt %u/%u: %s -> %s", ev.video_id, ev.worker, shown,
          max_attempts, ev.detail.c_str(),
          shown < max_attempts ? "retry after a backoff" : "no attempts left");
    } else if (ev.kind == "done") {
      ++done_reports;
      const bool first_time = done.insert(ev.video_id).second;
      if (ev.video_id == long_video && killed_worker != 0 && ev.worker != killed_worker) {
        long_job_redone = true;
      }
      if (ev.attempt > 0) {
        say("video %u done on worker %d at attempt %u/%u", ev.video_id, ev.worker, shown,
            max_attempts);
      }
      if (first_time && done.size() % 10 == 0)
        say("progress: %zu of %zu videos transcoded", done.size(), sent.size());
    }
  }
  std::vector<std::string> failures;
  if (done.size() + dead_lettered.size() < sent.size() || !long_job_redone) {
    failures.push_back("timed out: the story did not finish within " +
                       std::to_string(story_deadline.count()) + " s");
  }

  // ---- what the device says: wait for the last acks to land, then ask
  std::string stats, list;
  for (const auto until = steady::now() + 5s; steady::now() < until;) {
    stats = ask(ctx, control, "stats").value_or("");
    if (queue_stat(stats, "jobs", "depth") == 0 && queue_stat(stats, "jobs", "in_flight") == 0)
      break;
    std::this_thread::sleep_for(50ms);
  }
  list = ask(ctx, control, "list jobs").value_or("");
  if (stats.empty() || list.empty())
    failures.push_back("timed out: no answer from the control endpoint");
  std::printf("\n$ postbox ask %s stats\n%s\n", control.c_str(), stats.c_str());
  std::printf("\n$ postbox ask %s 'list jobs'\n%s\n\n", control.c_str(), list.c_str());

  // ---- shutdown: workers leave (SIGTERM), then the device syncs and exits
  bool children_clean = true;
  for (const auto& [w, pid] : worker_pid) {
    if (w == killed_worker) continue;
    const std::string how = stop_child(pid, SIGTERM, 5s, &children_clean);
    std::erase(owned.pids, pid);
    if (how != "exit 0") say("worker %d: %s", w, how.c_str());
  }
  // A consumer that leaves says so: the device drops it at once, holding nothing.
  std::uint64_t consumers_left = 0;
  for (const auto until = steady::now() + 1s; steady::now() < until;) {
    const std::string now_stats = ask(ctx, control, "stats").value_or("");
    consumers_left = std::strtoull(json_value(now_stats, "consumers").c_str(), nullptr, 10);
    if (consumers_left == 0) break;
    std::this_thread::sleep_for(20ms);
  }
  say("workers stopped on SIGTERM; the device counts %llu consumer(s)",
      static_cast<unsigned long long>(consumers_left));
  const std::string device_exit = stop_child(device, SIGTERM, 10s, &children_clean);
  std::erase(owned.pids, device);
  device_lines.join();
  say("postbox-queue stopped on SIGTERM: %s%s", device_exit.c_str(),
      device_exit == "exit 0" ? "" : " (expected exit 0)");

  // ---- the summary: lost is computed, not assumed
  std::set<std::uint32_t> lost = sent;
  for (const auto v : done) lost.erase(v);
  for (const auto v : dead_lettered) lost.erase(v);
  const auto device_retries = queue_stat(stats, "jobs", "redeliveries");
  std::printf("\nsummary\n");
  std::printf("  sent           %3zu  confirmed by the queue (on disk before each confirm)\n",
              sent.size());
  std::printf("  processed      %3zu  distinct videos transcoded (%llu done reports)\n",
              done.size(), static_cast<unsigned long long>(done_reports));
  std::printf(
      "  retried        %3llu  deliveries after a failure, over %zu videos (device: %llu)\n",
      static_cast<unsigned long long>(retries), retried_videos.size(),
      static_cast<unsigned long long>(device_retries));
  std::printf("  dead-lettered  %3zu  in jobs.dlq after %u attempts\n", dead_lettered.size(),
              max_attempts);
  std::printf("  lost           %3zu  = sent - processed - dead-lettered\n", lost.size());
  for (const auto v : lost) std::printf("    lost: video %u\n", v);

  if (!lost.empty()) failures.push_back(std::to_string(lost.size()) + " job(s) lost");
  if (dead_lettered != std::set<std::uint32_t>{corrupt_video}) {
    failures.push_back("the dead-letter queue should hold exactly video " +
                       std::to_string(corrupt_video));
  }
  if (killed_worker == 0) failures.push_back("no worker was killed mid-job");
  if (retries == 0) failures.push_back("nothing was retried");
  if (!children_clean) failures.push_back("a worker or postbox-queue did not exit 0 on SIGTERM");
  if (failures.empty()) {
    std::puts("every job was transcoded or dead-lettered; nothing was lost");
    return 0;
  }
  for (const auto& f : failures) std::printf("FAIL: %s\n", f.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (argc == 5 && std::string_view(argv[1]) == "--worker") {
      return run_worker(std::atoi(argv[2]), argv[3], argv[4]);
    }
    if (const int rc = example::check_args(
            argc, argv,
            "The README's demo: an upload API produces transcoding jobs into a\n"
            "postbox-queue process, and three worker processes consume them. Workers\n"
            "fail now and then (retries with backoff), one corrupt upload ends in the\n"
            "dead-letter queue, and one worker is killed with SIGKILL while it holds a\n"
            "job, which another worker then does. Ends with a summary (sent,\n"
            "processed, retried, dead-lettered, lost) and exits 0 when lost = 0.");
        rc >= 0)
      return rc;
    std::error_code ec;
    fs::path self = fs::read_symlink("/proc/self/exe", ec);
    if (ec) self = fs::absolute(argv[0]);
    return tell_story(self);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "FAIL: %s\n", e.what());
    return 1;
  }
}
