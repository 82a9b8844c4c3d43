// postbox_test_peer: a small program multi-process and interop tests start as
// the other side of a channel. It prints "READY <endpoint>" once its socket
// is set up, then one JSON line per message received (bytes as hex), so a
// test in any language can check every field.
//
//   postbox_test_peer send    ENDPOINTS COUNT
//   postbox_test_peer recv    ENDPOINTS COUNT TIMEOUT_MS
//   postbox_test_peer pub     ENDPOINTS COUNT SUBSCRIBERS
//   postbox_test_peer sub     ENDPOINTS COUNT TIMEOUT_MS FILTER...   (patterns contain * or >)
//   postbox_test_peer reply   ENDPOINTS COUNT
#include <postbox/postbox.hpp>

#include <cstdio>
#include <cstdlib>
#include <string>

namespace {

std::string hex(std::string_view bytes) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) {
    out.push_back(digits[c >> 4]);
    out.push_back(digits[c & 0xF]);
  }
  return out;
}

void print_message(const postbox::message& m) {
  std::string line = "{\"topic\":\"" + hex(m.topic()) + "\",\"payload\":\"" + hex(m.payload()) +
                     "\",\"id\":\"" + m.id().to_hex() + "\",\"timestamp_us\":" +
                     std::to_string(m.timestamp_us()) + ",\"origin\":" +
                     std::to_string(m.origin()) + ",\"sequence\":" +
                     std::to_string(m.sequence()) + ",\"attempt\":" + std::to_string(m.attempt()) +
                     ",\"key\":" + (m.key() ? "\"" + hex(*m.key()) + "\"" : "null") +
                     ",\"correlation\":" +
                     (m.correlation() ? "\"" + m.correlation()->to_hex() + "\"" : "null") +
                     ",\"headers\":[";
  for (std::size_t i = 0; i < m.headers().size(); ++i) {
    if (i) line += ",";
    line += "[\"" + hex(m.headers()[i].name) + "\",\"" + hex(m.headers()[i].value) + "\"]";
  }
  line += "]}";
  std::printf("%s\n", line.c_str());
  std::fflush(stdout);
}

void print_done(const postbox::channel_stats& s) {
  std::string line = "{\"done\":true,\"received\":" + std::to_string(s.received) +
                     ",\"gaps\":" + std::to_string(s.gaps) + ",\"missed\":" +
                     std::to_string(s.missed) + ",\"rejected\":{";
  for (std::size_t i = 0; i < postbox::reject_reason_count; ++i) {
    if (i) line += ",";
    line += "\"" + std::string(to_string(static_cast<postbox::reject_reason>(i))) +
            "\":" + std::to_string(s.rejected.by_reason[i]);
  }
  line += "}}";
  std::printf("%s\n", line.c_str());
  std::fflush(stdout);
}

void ready(const std::vector<std::string>& endpoints) {
  std::printf("READY %s\n", endpoints.empty() ? "" : endpoints.front().c_str());
  std::fflush(stdout);
}

// Message i of a test stream: varied topics, keys and headers.
postbox::message make(int i) {
  static const char* topics[] = {"orders.eu.created", "orders.us.created",
                                 "orders.eu.cancelled", "billing.invoice"};
  postbox::message m(topics[i % 4], "payload-" + std::to_string(i));
  if (i % 2 == 0) m.set_key("customer-" + std::to_string(i % 5));
  if (i % 3 == 0) m.add_header("trace", "t" + std::to_string(i));
  m.set_attempt(static_cast<std::uint32_t>(i % 2));
  return m;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: postbox_test_peer send|recv|pub|sub|reply ENDPOINTS COUNT ...\n");
    return 2;
  }
  const std::string cmd = argv[1];
  const std::string endpoints = argv[2];
  const int count = std::atoi(argv[3]);
  try {
    postbox::context ctx;
    if (cmd == "send") {
      postbox::sender tx(ctx, endpoints);
      ready(tx.endpoints());
      for (int i = 0; i < count; ++i) tx.send(make(i));
      return 0;
    }
    if (cmd == "recv" && argc >= 5) {
      postbox::receiver rx(ctx, endpoints);
      ready(rx.endpoints());
      const std::chrono::milliseconds timeout(std::atoi(argv[4]));
      for (int i = 0; i < count; ++i) {
        auto m = rx.receive(timeout);
        if (!m) break;
        print_message(*m);
      }
      print_done(rx.stats());
      return 0;
    }
    if (cmd == "pub" && argc >= 5) {
      postbox::publisher pub(ctx, endpoints);
      ready(pub.endpoints());
      if (!pub.wait_for_subscribers(static_cast<std::size_t>(std::atoi(argv[4])),
                                    std::chrono::seconds(20))) {
        std::fprintf(stderr, "postbox_test_peer: subscribers did not arrive\n");
        return 1;
      }
      for (int i = 0; i < count; ++i) pub.publish(make(i));
      return 0;
    }
    if (cmd == "sub" && argc >= 6) {
      postbox::subscriber sub(ctx, endpoints);
      for (int i = 5; i < argc; ++i) {
        const std::string_view f = argv[i];
        if (f.find('*') != f.npos || f.find('>') != f.npos) {
          sub.subscribe_pattern(f);
        } else {
          sub.subscribe(f);
        }
      }
      ready(sub.endpoints());
      const std::chrono::milliseconds timeout(std::atoi(argv[4]));
      for (int i = 0; i < count; ++i) {
        auto m = sub.receive(timeout);
        if (!m) break;
        print_message(*m);
      }
      print_done(sub.stats());
      return 0;
    }
    if (cmd == "reply") {
      postbox::replier rep(ctx, endpoints);
      ready(rep.endpoints());
      for (int i = 0; i < count; ++i) {
        auto req = rep.receive();
        if (!req) break;
        (void)rep.reply(*req, "reply:" + std::string(req->msg.payload()));
      }
      return 0;
    }
    std::fprintf(stderr, "postbox_test_peer: unknown command or missing arguments\n");
    return 2;
  } catch (const postbox::error& e) {
    std::fprintf(stderr, "postbox_test_peer: %s\n", e.what());
    return 1;
  }
}
