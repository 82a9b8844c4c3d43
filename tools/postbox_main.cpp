// postbox: the command-line tool for trying channels and devices by hand,
// the way kcat or the nats CLI are used.
//
//   postbox pub ENDPOINT TOPIC [TEXT...]    publish TEXT (or each stdin line)
//   postbox sub ENDPOINT [FILTER...]        print "topic<TAB>payload" lines
//   postbox send ENDPOINT TOPIC [TEXT...]   point-to-point, as pub
//   postbox recv ENDPOINT                   point-to-point, as sub
//   postbox ask ENDPOINT COMMAND            a control request (ping, stats)
#include <postbox/postbox.hpp>

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
    "  ask  ENDPOINT COMMAND           send a control request (ping, stats) to a\n"
    "                                  device and print the answer\n"
    "\n"
    "Endpoints: '@' binds, '>' connects; pub/send/sub/recv/ask connect by default.\n"
    "pub waits up to 5 s for a subscriber before it publishes; sub and recv run\n"
    "until interrupted (--count N stops after N messages).\n"
    "Exit codes: 0 done, 1 failure (e.g. no answer), 2 usage error.\n";

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
  long count = -1;
  for (std::size_t i = 1; i + 1 < args.size(); ++i) {
    if (std::strcmp(args[i], "--count") == 0) {
      char* end = nullptr;
      count = std::strtol(args[i + 1], &end, 10);
      if (count <= 0 || end == args[i + 1] || *end != '\0') {
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
  if (argc < 3) throw postbox::config_error("missing command or endpoint");
  const std::string cmd = argv[1];
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
    for (long n = 0; count < 0 || n < count; ++n) {
      auto m = sub.receive();
      if (!m) break;  // interrupted
      print(*m);
    }
    return 0;
  }
  if (cmd == "recv") {
    postbox::receiver rx(ctx, endpoint);
    for (long n = 0; count < 0 || n < count; ++n) {
      auto m = rx.receive();
      if (!m) break;
      print(*m);
    }
    return 0;
  }
  if (cmd == "ask") {
    if (argc < 4) throw postbox::config_error("ask: missing COMMAND");
    const auto ep = postbox::parse_endpoint(endpoint, postbox::endpoint_mode::connect);
    zmq::socket_t req(ctx.native(), zmq::socket_type::req);
    req.set(zmq::sockopt::linger, 0);
    req.set(zmq::sockopt::rcvtimeo, 5000);
    req.connect(ep.address);
    req.send(zmq::buffer(std::string(argv[3])), zmq::send_flags::none);
    zmq::message_t answer;
    if (!req.recv(answer)) {
      std::fprintf(stderr, "postbox: no answer from %s within 5 s\n", ep.address.c_str());
      return 1;
    }
    std::printf("%s\n", answer.to_string().c_str());
    return 0;
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
