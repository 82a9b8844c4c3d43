// Task distribution: an upload API hands video transcoding jobs to three
// workers, each job to exactly one of them, and a collector gathers what the
// workers report back. Threads in one process here; over tcp:// the same
// roles run as separate processes.
#include <postbox/postbox.hpp>

#include "example_args.hpp"

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <set>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

struct transcode_job {
  std::uint32_t video_id = 0;
  std::string source;
  int height = 0;  // target resolution: 1080p, 720p
  std::string codec;
  MSGPACK_DEFINE(video_id, source, height, codec)
};

struct transcode_done {
  std::uint32_t video_id = 0;
  int worker = 0;
  MSGPACK_DEFINE(video_id, worker)
};

int main(int argc, char** argv) {
  if (const int rc = example::check_args(argc, argv,
                                          "An upload API hands 30 video transcoding jobs to three workers over\nloopback tcp, each job to exactly one of them, and a collector gathers\nwhat the workers report back (point-to-point channels). Exits 0 when\nevery job was done exactly once.");
      rc >= 0)
    return rc;
  constexpr int worker_count = 3;
  constexpr std::uint32_t job_count = 30;
  std::printf("task_distribution: an upload API sends %u transcoding jobs to %d workers\n",
              job_count, worker_count);
  postbox::context ctx;  // one per process, shared by every thread; outlives all channels
  postbox::sender uploads(ctx, "@inproc://transcode.jobs");
  postbox::receiver results(ctx, "inproc://transcode.results");

  std::vector<std::jthread> workers;  // declared after the context: joined before it goes
  for (int w = 0; w < worker_count; ++w) {
    workers.emplace_back([&ctx, w](std::stop_token stop) {
      // Each worker makes its own channels: a channel belongs to one thread.
      postbox::receiver jobs(ctx, ">inproc://transcode.jobs");
      postbox::sender done(ctx, "inproc://transcode.results");
      done.send_packed("worker.ready", w);
      while (!stop.stop_requested()) {
        auto m = jobs.receive(100ms);  // a timeout, so a stop request is noticed
        if (!m) continue;
        const auto job = m->as<transcode_job>();
        done.send_packed("transcode.done", transcode_done{job.video_id, w});
      }
    });
  }

  // A sender deals round-robin over the receivers connected at the moment it
  // sends: a worker that connects late misses the early jobs. So wait until
  // every worker has reported in. Over inproc that proves its job connection
  // is up, since an inproc connect is complete when it returns; over tcp,
  // connections complete in the background and it proves less.
  for (int w = 0; w < worker_count; ++w) {
    if (!results.receive(5s)) {
      std::fprintf(stderr, "FAIL: a worker never reported in\n");
      return 1;
    }
  }

  for (std::uint32_t id = 1; id <= job_count; ++id) {
    const transcode_job job{id, "uploads/" + std::to_string(id) + ".mov", id % 2 ? 1080 : 720,
                            "h264"};
    uploads.send_packed("transcode.requested", job);
  }

  std::vector<int> per_worker(worker_count);
  std::set<std::uint32_t> seen;
  while (seen.size() < job_count) {
    const auto m = results.receive(5s);  // bounded, so a lost job fails instead of hanging
    if (!m) break;
    const auto done = m->as<transcode_done>();
    ++per_worker.at(done.worker);
    if (!seen.insert(done.video_id).second) break;  // a duplicate
  }

  bool ok = seen.size() == job_count;
  for (int w = 0; w < worker_count; ++w) {
    std::printf("  worker %d transcoded %d videos\n", w, per_worker[w]);
    ok = ok && per_worker[w] > 0;
  }
  std::puts(ok ? "all jobs came back exactly once, spread over every worker"
               : "FAIL: a job was lost or duplicated, or a worker got none");
  return ok ? 0 : 1;
}
