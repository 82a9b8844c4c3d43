// postbox: the command-line tool for trying channels and devices by hand,
// the way kcat or the nats CLI are used.
//
//   postbox pub ENDPOINT TOPIC [TEXT...]    publish TEXT (or each stdin line)
//   postbox sub ENDPOINT [FILTER...]        print "topic<TAB>payload" lines
//   postbox send ENDPOINT TOPIC [TEXT...]   point-to-point, as pub
//   postbox recv ENDPOINT                   point-to-point, as sub
//   postbox consume ENDPOINT QUEUE...       take from a postbox-queue, acking each
//   postbox ask ENDPOINT COMMAND...         a control request (ping, stats, ...)
#include <postbox/postbox.hpp>
#include <postbox/queue_client.hpp>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

namespace {

constexpr const char* usage =
    "usage: postbox COMMAND ENDPOINT [ARGS...]\n"
    "\n"
    "  pub  ENDPOINT TOPIC [TEXT...]   publish each TEXT, or each line of stdin\n"
    "  sub  ENDPOINT [FILTER...]       print \"topic<TAB>payload\" per message; a\n"
    "                                  FILTER with '*' or '>' is a pattern, else a\n"
    "                                  prefix (none: everything)\n"
    "  send ENDPOINT TOPIC [TEXT...]   as pub, point-to-point (each to one receiver)\n"
    "  recv ENDPOINT                   as sub, point-to-point\n"
    "  consume ENDPOINT QUEUE...       take messages from queues of a postbox-queue\n"
    "                                  (its clients endpoint), print each as sub\n"
    "                                  does, then ack it\n"
    "  ask  ENDPOINT COMMAND...        send a control request to a device (both:\n"
    "                                  ping, stats; postbox-queue also list QUEUE\n"
    "                                  [N], redrive QUEUE [N]) and print the answer\n"
    "\n"
    "Endpoints: '@' binds, '>' connects; every command connects by default.\n"
    "pub waits up to 5 s for a subscriber before it publishes; sub, recv and\n"
    "consume run until interrupted (--count N stops after N messages).\n"
    "recv on a postbox-queue's plain endpoint (--plain-out) loses what the\n"
    "device has already pushed to it but it has not printed when it exits;\n"
    "consume hands such messages back to the queue.\n"
    "Exit codes: 0 done, 1 failure (no answer, or the device answered with an\n"
    "error), 2 usage error.\n";

volatile std::sig_atomic_t interrupted = 0;
extern "C" void on_signal(int) { interrupted = 1; }

using namespace std::chrono_literals;

std::vector<std::string> texts(int argc, char** argv, int first) {
  std::vector<std::string> out;
  for (int i = first; i < argc; ++i) out.emplace_back(argv[i]);
  if (out.empty()) {
    for (std::string line; std::getline(std::cin, line);) out.push_back(line);
  }
  return out;
}

void print(const postbox::message& m) {
  std::printf("%.*s\t%.*s\n", static_cast<int>(m.topic().size()), m.topic().data(),
              static_cast<int>(m.payload().size()), m.payload().data());
  std::fflush(stdout);
}

int run(int argc, char** argv) {
  std::vector<char*> args(argv, argv + argc);
  long long count = -1;
  for (std::size_t i = 1; i < args.size(); ++i) {
    if (std::strcmp(args[i], "--count") == 0) {
      if (i + 1 == args.size()) throw postbox::config_error("--count needs a number");
      char* end = nullptr;
      errno = 0;
      count = std::strtoll(args[i + 1], &end, 10);
      if (count <= 0 || errno == ERANGE || end == args[i + 1] || *end != '\0') {
        throw postbox::config_error("--count must be a positive number, got \"" + std::string(args[i + 1]) + "\"");
      }
      args.erase(args.begin() + static_cast<long>(i), args.begin() + static_cast<long>(i) + 2);
      break;
    }
  }
  argc = static_cast<int>(args.size());
  argv = args.data();
  if (argc >= 2 && (std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0)) {
    std::fputs(usage, stdout);
    return 0;
  }
  if (argc >= 2 && std::strcmp(argv[1], "--version") == 0) {
    std::printf("postbox %s\n", POSTBOX_VERSION);
    return 0;
  }
  if (argc >= 2 && argv[1][0] == '-') throw postbox::config_error("unknown option \"" + std::string(argv[1]) + "\"");
  if (argc < 3) throw postbox::config_error("missing command or endpoint");
  const std::string cmd = argv[1];
  // Checked as typed, so that an error quotes the user's text.
  (void)postbox::parse_endpoints(argv[2], postbox::endpoint_mode::connect);
  // Every command connects unless told to bind: the tool visits services.
  const std::string endpoint =
      argv[2][0] == '@' || argv[2][0] == '>' ? std::string(argv[2]) : ">" + std::string(argv[2]);
  postbox::context ctx;
  if (cmd == "pub" || cmd == "send") {
    if (argc < 4) throw postbox::config_error(cmd + ": missing TOPIC");
    const std::string topic = argv[3];
    const auto lines = texts(argc, argv, 4);
    if (cmd == "pub") {
      postbox::publisher pub(ctx, endpoint);
      if (!pub.wait_for_subscriber(topic, 5s)) {
        std::fprintf(stderr, "postbox: no subscriber for \"%s\" within 5 s; publishing anyway\n",
                     topic.c_str());
      }
      for (const auto& t : lines) pub.publish(topic, t);
    } else {
      postbox::sender tx(ctx, endpoint);
      for (const auto& t : lines) {
        if (tx.send_for(topic, t, 5s) != postbox::send_result::ok) {
          std::fprintf(stderr, "postbox: no receiver took the message within 5 s\n");
          return 1;
        }
      }
    }
    return 0;
  }
  if (cmd == "sub") {
    postbox::subscriber sub(ctx, endpoint);
    if (argc == 3) sub.subscribe("");
    for (int i = 3; i < argc; ++i) {
      const std::string_view f = argv[i];
      if (f.find('*') != f.npos || f.find('>') != f.npos) {
        sub.subscribe_pattern(f);
      } else {
        sub.subscribe(f);
      }
    }
    sub.on_gap([](const postbox::gap_info& g) {
      std::fprintf(stderr, "postbox: gap on \"%.*s\": %llu message(s) missed\n",
                   static_cast<int>(g.topic.size()), g.topic.data(),
                   static_cast<unsigned long long>(g.missed()));
    });
    for (long long n = 0; count < 0 || n < count; ++n) {
      auto m = sub.receive();
      if (!m) break;  // interrupted
      print(*m);
    }
    return 0;
  }
  if (cmd == "recv") {
    postbox::receiver rx(ctx, endpoint);
    for (long long n = 0; count < 0 || n < count; ++n) {
      auto m = rx.receive();
      if (!m) break;
      print(*m);
    }
    return 0;
  }
  if (cmd == "consume") {
    if (argc < 4) throw postbox::config_error("consume: missing QUEUE");
    postbox::consumer_options o;
    // Hold about as many as will be printed (acks refill the credit, so a
    // few more may arrive): what is not printed goes back at goodbye.
    if (count > 0 && count < o.prefetch) o.prefetch = static_cast<std::uint32_t>(count);
    postbox::consumer c(ctx, endpoint, std::vector<std::string>(argv + 3, argv + argc), o);
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    for (long long n = 0; (count < 0 || n < count) && !interrupted;) {
      auto d = c.receive(100ms);
      if (!d) continue;
      print(d->msg);
      c.ack(*d);
      ++n;
    }
    return 0;  // the consumer's goodbye hands back what it still holds
  }
  if (cmd == "ask") {
    if (argc < 4) throw postbox::config_error("ask: missing COMMAND");
    if (argv[2][0] == '@') throw postbox::config_error("ask connects to a device; drop the '@'");
    const auto ep = postbox::parse_endpoint(endpoint, postbox::endpoint_mode::connect);
    std::string request = argv[3];  // "list jobs" quoted or not
    for (int i = 4; i < argc; ++i) request.append(" ").append(argv[i]);
    zmq::socket_t req(ctx.native(), zmq::socket_type::req);
    req.set(zmq::sockopt::linger, 0);
    req.set(zmq::sockopt::rcvtimeo, 5000);
    req.connect(ep.address);
    req.send(zmq::buffer(request), zmq::send_flags::none);
    zmq::message_t answer;
    if (!req.recv(answer)) {
      std::fprintf(stderr, "postbox: no answer from %s within 5 s\n", ep.address.c_str());
      return 1;
    }
    const std::string text = answer.to_string();
    std::printf("%s\n", text.c_str());
    // postbox-queue answers errors as {"error":...}, postbox-forwarder as "error: ...".
    const bool refused = text.starts_with("{\"error\"") || text.starts_with("error");
    return refused ? 1 : 0;
  }
  throw postbox::config_error("unknown command \"" + cmd + "\"");
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const postbox::config_error& e) {
    std::fprintf(stderr, "postbox: %s (see postbox --help)\n", e.what());
    return 2;
  } catch (const postbox::error& e) {
    std::fprintf(stderr, "postbox: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "postbox: %s\n", e.what());
    return 1;
  }
}
