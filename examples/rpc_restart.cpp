// RPC across a restart: a price-quote service is stopped and started again on
// the same address, and a request made while it is down is retried until the
// new instance answers it. The client needs no reconnect logic of its own.
#include <postbox/postbox.hpp>

#include "example_args.hpp"

#include <chrono>
#include <cstdio>
#include <stop_token>
#include <string>
#include <thread>

using namespace std::chrono_literals;

// Answers quote requests until asked to stop; `version` tells the instances apart.
void serve_quotes(std::stop_token stop, postbox::replier service, const std::string& version) {
  while (!stop.stop_requested()) {
    // A timeout, so a stop request is noticed between requests.
    service.serve_one(
        [&](const postbox::message& req) {
          return version + " quotes " + std::string(req.payload()) + " at 187.50 USD";
        },
        100ms);
  }
}

int main(int argc, char** argv) {
  if (const int rc = example::check_args(argc, argv,
                                          "A price-quote service is stopped and started again on the same address;\na request made while it is down is retried until the new instance\nanswers it. Exits 0 when every request got its answer.");
      rc >= 0)
    return rc;
  postbox::context ctx;
  postbox::replier first(ctx, "tcp://127.0.0.1:*");
  // The restarted service binds the port the first one got, so clients keep one address.
  const std::string address = first.endpoints().front();
  std::printf("rpc_restart: a quote service on %s restarts under its client\n", address.c_str());
  std::jthread service(serve_quotes, std::move(first), "v1");

  // Each attempt waits 300 ms; ten retries ride out an outage of about three seconds.
  postbox::requester client(ctx, address, {.timeout = 300ms, .retries = 10});
  auto reply = client.request("quote", "100 ACME");
  if (!reply) {
    std::fprintf(stderr, "FAIL: no quote before the restart\n");
    return 1;
  }
  std::printf("  before the restart: %s\n", std::string(reply->payload()).c_str());

  service.request_stop();
  service.join();
  std::printf("  v1 stopped; v2 comes up in 600 ms\n");
  service = std::jthread([&ctx, address](std::stop_token stop) {
    std::this_thread::sleep_for(600ms);  // the outage a deploy causes
    serve_quotes(stop, postbox::replier(ctx, address), "v2");
  });

  reply = client.request("quote", "100 ACME");  // made while no service is listening
  if (!reply) {
    std::fprintf(stderr, "FAIL: no quote after the restart\n");
    return 1;
  }
  std::printf("  asked during the outage: %s, after %llu retries\n",
              std::string(reply->payload()).c_str(),
              static_cast<unsigned long long>(client.stats().retries));
  if (client.stats().retries == 0) {
    std::fprintf(stderr, "FAIL: the request during the outage was answered without a retry\n");
    return 1;
  }
  std::printf("the client rode out the restart by retrying\n");
  return 0;
}
