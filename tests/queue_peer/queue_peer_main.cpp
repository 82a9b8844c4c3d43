// postbox_queue_peer: a reliable consumer in its own process, for the queue
// device's crash tests (tests/queue/queue_crash_test.cpp). It takes
// deliveries from one queue with a given prefetch, prints each one as
// "got PAYLOAD ATTEMPT" on stdout, and never acks: it holds what it got until
// it is killed.
//
// usage: postbox_queue_peer ENDPOINT QUEUE PREFETCH HEARTBEAT_MS
#include <postbox/queue_client.hpp>

#include <cstdio>
#include <cstdlib>
#include <string>

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: postbox_queue_peer ENDPOINT QUEUE PREFETCH HEARTBEAT_MS\n");
    return 2;
  }
  try {
    postbox::context ctx;
    postbox::consumer_options opts;
    opts.prefetch = static_cast<std::uint32_t>(std::strtoul(argv[3], nullptr, 10));
    opts.heartbeat = std::chrono::milliseconds(std::strtol(argv[4], nullptr, 10));
    opts.socket.reconnect_interval_max = std::chrono::milliseconds(200);
    postbox::consumer c(ctx, argv[1], {argv[2]}, opts);
    std::printf("started\n");
    std::fflush(stdout);
    while (true) {
      auto d = c.receive(std::chrono::milliseconds(-1));
      if (!d) continue;
      std::printf("got %s %u\n", std::string(d->msg.payload()).c_str(), d->attempt);
      std::fflush(stdout);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "postbox_queue_peer: %s\n", e.what());
    return 1;
  }
}
