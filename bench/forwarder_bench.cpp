// postbox-bench-forwarder: throughput through postbox's forwarder beside
// libzmq's own zmq_proxy in the same run: the same PUB and SUB sockets, the
// same 100-byte messages (postbox envelopes), over tcp, and once more with
// the last-value cache on.
//
// usage: postbox-bench-forwarder [--quick]
#include <postbox/devices/forwarder.hpp>
#include <postbox/postbox.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

#include <zmq.hpp>

namespace {

using clock_type = std::chrono::steady_clock;

// Publishes `count` copies of `frame` through a device at (frontend,
// backend) and returns messages/s as the subscriber saw them.
double pump(const std::string& frontend, const std::string& backend, const std::string& frame,
            int count) {
  zmq::context_t pctx(1), sctx(1);
  zmq::socket_t pub(pctx, zmq::socket_type::xpub), sub(sctx, zmq::socket_type::sub);
  for (auto* s : {&pub, &sub}) {
    s->set(zmq::sockopt::sndhwm, 0);
    s->set(zmq::sockopt::rcvhwm, 0);
    s->set(zmq::sockopt::linger, 0);
  }
  sub.set(zmq::sockopt::subscribe, "");
  pub.connect(frontend);
  sub.connect(backend);
  zmq::message_t subscription;
  (void)pub.recv(subscription);  // the subscription crossed the device: start
  double seconds = 0;
  std::thread receiver([&] {
    zmq::message_t m;
    (void)sub.recv(m);
    const auto start = clock_type::now();
    for (int i = 1; i < count; ++i) (void)sub.recv(m);
    seconds = std::chrono::duration<double>(clock_type::now() - start).count();
  });
  for (int i = 0; i < count; ++i) pub.send(zmq::buffer(frame), zmq::send_flags::none);
  receiver.join();
  return (count - 1) / seconds;
}

double with_zmq_proxy(const std::string& frame, int count) {
  zmq::context_t ctx(1);
  zmq::socket_t front(ctx, zmq::socket_type::xsub), back(ctx, zmq::socket_type::xpub),
      control(ctx, zmq::socket_type::pair), steer(ctx, zmq::socket_type::pair);
  for (auto* s : {&front, &back}) {
    s->set(zmq::sockopt::sndhwm, 0);
    s->set(zmq::sockopt::rcvhwm, 0);
    s->set(zmq::sockopt::linger, 0);
  }
  front.bind("tcp://127.0.0.1:*");
  back.bind("tcp://127.0.0.1:*");
  control.bind("inproc://proxy-control");
  steer.connect("inproc://proxy-control");
  std::thread proxy([&] {
    zmq::proxy_steerable(zmq::socket_ref(front), zmq::socket_ref(back), zmq::socket_ref(),
                         zmq::socket_ref(control));
  });
  const double rate = pump(front.get(zmq::sockopt::last_endpoint),
                           back.get(zmq::sockopt::last_endpoint), frame, count);
  steer.send(zmq::str_buffer("TERMINATE"), zmq::send_flags::none);
  proxy.join();
  return rate;
}

double with_forwarder(const std::string& frame, int count, bool lvc) {
  postbox::context ctx;
  postbox::devices::forwarder_config cfg;
  cfg.frontend = "@tcp://127.0.0.1:*";
  cfg.backend = "@tcp://127.0.0.1:*";
  cfg.hwm = 0;
  cfg.last_value_cache = lvc;
  cfg.log = postbox::devices::log_level::error;
  postbox::devices::forwarder fwd(ctx, cfg);
  std::atomic<bool> stop{false};
  std::thread device([&] { fwd.run(stop); });
  const double rate =
      pump(fwd.frontend_endpoints().front(), fwd.backend_endpoints().front(), frame, count);
  stop = true;
  device.join();
  return rate;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  int rounds = 5, count = 1'000'000;
  if (argc == 2 && std::strcmp(argv[1], "--quick") == 0) {
    rounds = 3;
    count = 200'000;
  } else if (argc != 1) {
    std::fprintf(stderr, "usage: postbox-bench-forwarder [--quick]\n");
    return 2;
  }
#ifndef NDEBUG
  std::printf("WARNING: built without optimisation (NDEBUG unset); figures are not comparable\n");
#endif
  // The same bytes in every run: a postbox envelope with a 100-byte payload
  // on one of 100 topics would need a cache per topic; one topic keeps the
  // cache's work per message the same as in steady state.
  postbox::encoded enc;
  postbox::message_view v;
  const std::string payload(100, 'x');
  v.topic = "prices.acme";
  v.payload = payload;
  v.origin = 1;
  v.sequence = 1;
  postbox::encode(v, enc);
  const std::string frame(static_cast<const char*>(enc.first.data()), enc.first.size());

  std::vector<double> proxy, fwd, lvc;
  for (int r = 0; r < rounds; ++r) {
    proxy.push_back(with_zmq_proxy(frame, count));
    fwd.push_back(with_forwarder(frame, count, false));
    lvc.push_back(with_forwarder(frame, count, true));
  }
  const double p = median(proxy), f = median(fwd), l = median(lvc);
  const double mb = static_cast<double>(frame.size()) / 1e6;
  std::printf("forwarder throughput, %zu-byte frames (100-byte payload), tcp, median of %d rounds\n",
              frame.size(), rounds);
  std::printf("  zmq_proxy (XSUB/XPUB)        %10.0f msg/s %8.1f MB/s\n", p, p * mb);
  std::printf("  postbox-forwarder            %10.0f msg/s %8.1f MB/s   ratio %.2f (target >= 0.90)\n",
              f, f * mb, f / p);
  std::printf("  postbox-forwarder + LVC      %10.0f msg/s %8.1f MB/s   ratio %.2f (target >= 0.80)\n",
              l, l * mb, l / p);
  return 0;
}
