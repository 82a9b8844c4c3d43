// Order fan-out: a shop publishes order events once, and every interested
// service gets its own copy. The e-mail service wants only new orders, from
// any region; analytics wants everything about orders.
#include <postbox/postbox.hpp>

#include "example_args.hpp"

#include <chrono>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

using namespace std::chrono_literals;

// Prints the topics `sub` took and checks there were `expected` of them.
// After the expected ones it waits 100 ms more, so an extra one shows too.
bool check(const char* who, postbox::subscriber& sub, std::size_t expected) {
  std::size_t got = 0;
  std::printf("  %s got:", who);
  while (auto m = sub.receive(got < expected ? 2000ms : 100ms)) {
    std::printf(" %s", std::string(m->topic()).c_str());
    ++got;
  }
  std::printf(" (%zu)\n", got);
  return got == expected;
}

int main(int argc, char** argv) {
  if (const int rc = example::check_args(argc, argv,
                                          "A shop publishes order events once; an e-mail subscriber takes only new\norders from any region (the pattern orders.*.created), and analytics\ntakes every order event (the prefix orders.). Exits 0 when each got\nexactly what its filter matches.");
      rc >= 0)
    return rc;
  postbox::context ctx;
  postbox::publisher shop(ctx, "tcp://127.0.0.1:*");
  const std::string& address = shop.endpoints().front();
  std::printf("order_fanout: the shop publishes order events on %s\n", address.c_str());

  postbox::subscriber email(ctx, address);
  email.subscribe_pattern("orders.*.created");  // "*" is exactly one token: the region
  postbox::subscriber analytics(ctx, address);
  analytics.subscribe("orders.");  // a plain prefix: every order event

  // ZeroMQ keeps no history: whatever is published before a subscriber's
  // connection and filter have reached the publisher is lost to it, and that
  // takes a moment even on loopback (the "slow joiner"). Waiting for both
  // subscribers turns that race into a bounded wait.
  if (!shop.wait_for_subscribers(2, 5s)) {
    std::fprintf(stderr, "FAIL: the subscribers never arrived\n");
    return 1;
  }

  const std::vector<std::pair<std::string, std::string>> events = {
      {"orders.eu.created", "order 1001"},   {"orders.us.created", "order 1002"},
      {"orders.eu.cancelled", "order 1001"}, {"orders.apac.created", "order 1003"},
      {"orders.us.cancelled", "order 1002"},
  };
  for (const auto& [topic, payload] : events) shop.publish(topic, payload);
  std::printf("  published %zu events, 3 of them new orders\n", events.size());

  // One thread reads both in turn: each subscriber queues its copies meanwhile.
  const bool email_ok = check("e-mail    (orders.*.created)", email, 3);
  const bool analytics_ok = check("analytics (orders.)         ", analytics, 5);
  const bool ok = email_ok && analytics_ok;
  std::printf("%s\n", ok ? "each service got exactly the events its filter asks for"
                         : "FAIL: a subscriber got too few or too many events");
  return ok ? 0 : 1;
}
