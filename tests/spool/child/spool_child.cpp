// postbox_spool_child: the process the spool crash test kills with SIGKILL.
// Opens a spool with fsync_policy::always, prints its recovery report, then
// appends from several threads forever, printing "<position> <id>" for each
// record once it is reported durable. The payload of record `id` is
// spool_child_payload(id), which the test recomputes.
//
// usage: postbox_spool_child <dir> <first-id> [threads]
#include <postbox/spool.hpp>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

namespace {

std::string spool_child_payload(std::uint64_t id) {
  std::string p = "id=" + std::to_string(id) + ";";
  const std::size_t extra = (id * 2654435761u) % 300;
  for (std::size_t i = 0; i < extra; ++i) p += static_cast<char>('a' + (id + i) % 26);
  return p;
}

void say(const std::string& line) {
  // One write per line, under PIPE_BUF: lines never interleave.
  const ssize_t n = ::write(STDOUT_FILENO, line.data(), line.size());
  if (n != static_cast<ssize_t>(line.size())) std::_Exit(3);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: postbox_spool_child <dir> <first-id> [threads]\n");
    return 2;
  }
  try {
    postbox::spool s(argv[1], {.segment_size = 16 * 1024});
    const auto& r = s.recovery();
    say("recovered " + std::to_string(r.records) + " corrupt " + std::to_string(r.corrupt.size()) +
        " truncated " + std::to_string(r.truncated_bytes) + "\n");
    std::atomic<std::uint64_t> next{std::strtoull(argv[2], nullptr, 10)};
    const int threads = argc > 3 ? std::atoi(argv[3]) : 3;
    std::vector<std::thread> ts;
    for (int t = 0; t < threads; ++t)
      ts.emplace_back([&] {
        while (true) {
          const std::uint64_t id = next++;
          std::atomic<bool> done{false};
          const auto st = s.append(spool_child_payload(id), [id, &done](const postbox::append_outcome& o) {
            if (o.error) std::_Exit(4);
            say(std::to_string(o.pos.to_u64()) + " " + std::to_string(id) + "\n");
            done = true;
            done.notify_one();
          });
          if (st != postbox::append_status::queued) std::_Exit(5);
          done.wait(false);
        }
      });
    for (auto& t : ts) t.join();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "postbox_spool_child: %s\n", e.what());
    return 1;
  }
}
