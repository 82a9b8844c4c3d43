// The postbox command-line tool (tools/postbox_main.cpp) as a user runs it:
// a usage error is one line on stderr and exit 2, and a message sent with
// `postbox send` arrives at `postbox recv`.
#include <catch2/catch.hpp>

#include "support/support.hpp"

#include <algorithm>
#include <csignal>
#include <set>
#include <string>
#include <vector>

using namespace std::chrono_literals;
using postbox::test::child;

namespace {

// Runs the tool with `args`, stdout and stderr merged; its lines and exit code.
std::pair<std::vector<std::string>, int> run_cli(std::vector<std::string> args) {
  args.insert(args.begin(), postbox::test::cli_path());
  child p(args, true);
  std::vector<std::string> lines;
  std::string line;
  while (p.read_line(line, 10s)) lines.push_back(line);
  // Silent for 10 s: stuck (a consume that never gets its messages); end it.
  if (p.wait(5s) == -1) p.kill(SIGKILL);
  return {lines, p.wait()};
}

}  // namespace

TEST_CASE("cli: a usage error is one line naming the problem, and exit 2", "[multiprocess][cli]") {
  struct bad_case {
    std::vector<std::string> args;
    std::string says;
  };
  const std::vector<bad_case> cases = {
      {{}, "missing command or endpoint"},
      {{"shout", ">tcp://127.0.0.1:5555"}, "shout"},
      {{"sub", ">tcp://127.0.0.1:5555", "--count", "0"}, "--count must be a positive number"},
      {{"sub", ">tcp://127.0.0.1:5555", "--count", "5x"}, "--count must be a positive number, got \"5x\""},
      {{"send", ">tcp://127.0.0.1", "topic", "text"}, "tcp://127.0.0.1"},
      {{"send", "tcp://nohost", "topic", "text"}, "endpoint \"tcp://nohost\": missing \":port\""},
      {{"send", ">tcp://127.0.0.1:5555"}, "missing TOPIC"},
      {{"sub", ">tcp://127.0.0.1:5555", "--count"}, "--count needs a number"},
      {{"sub", ">tcp://127.0.0.1:5555", "--count", "99999999999999999999"}, "99999999999999999999"},
      {{"--bogus"}, "unknown option \"--bogus\""},
      {{"ask", "@tcp://127.0.0.1:5555", "ping"}, "drop the '@'"},
      {{"consume", ">tcp://127.0.0.1:5555"}, "missing QUEUE"},
  };
  for (const auto& c : cases) {
    const auto [lines, code] = run_cli(c.args);
    INFO("args: " << (c.args.empty() ? std::string("(none)") : c.args.back()));
    CHECK(code == 2);
    REQUIRE(lines.size() == 1);
    CHECK(lines[0].rfind("postbox: ", 0) == 0);
    CHECK(lines[0].find(c.says) != std::string::npos);
  }
}

TEST_CASE("cli: postbox recv --count prints what postbox send sends, then exits 0",
          "[multiprocess][cli]") {
  const auto dir = postbox::test::temp_dir();
  const std::string address = "ipc://" + (dir.path() / "cli.sock").string();
  child recv({postbox::test::cli_path(), "recv", "@" + address, "--count", "2"});
  const auto [lines, code] = run_cli({"send", ">" + address, "greetings", "hello", "world"});
  CHECK(code == 0);
  std::vector<std::string> got;
  std::string line;
  while (got.size() < 2 && recv.read_line(line, 10s)) got.push_back(line);
  CHECK(got == std::vector<std::string>{"greetings\thello", "greetings\tworld"});
  CHECK(recv.wait() == 0);
}

TEST_CASE("cli: consume --count takes that many from a queue and leaves the rest; ask exits 1 "
          "when the device answers with an error",
          "[multiprocess][cli]") {
  const auto dir = postbox::test::temp_dir();
  const auto ipc = [&](const char* name) { return "ipc://" + (dir.path() / name).string(); };
  child device({postbox::test::queue_path(), "--clients", "@" + ipc("clients"), "--plain-in",
                "@" + ipc("in"), "--plain-out", "none", "--control", "@" + ipc("control"),
                "--data-dir", (dir.path() / "data").string()},
               true);
  std::string line;
  bool ready = false;
  while (!ready && device.read_line(line, 10s)) ready = line.find("ready") != std::string::npos;
  REQUIRE(ready);

  // A plain sender's topic names the queue.
  REQUIRE(run_cli({"send", ">" + ipc("in"), "jobs", "a", "b", "c", "d", "e"}).second == 0);
  auto depth_is = [&](int n) {
    const auto [lines, code] = run_cli({"ask", ">" + ipc("control"), "stats"});
    return code == 0 && lines.size() == 1 &&
           lines[0].find("{\"name\":\"jobs\",\"depth\":" + std::to_string(n) + ",\"in_flight\":0,") !=
               std::string::npos;
  };
  REQUIRE(postbox::test::wait_until([&] { return depth_is(5); }));

  const auto first = run_cli({"consume", ">" + ipc("clients"), "jobs", "--count", "2"});
  CHECK(first.second == 0);
  REQUIRE(first.first.size() == 2);
  // Acked: gone. Anything else the device had handed over went back at goodbye.
  CHECK(postbox::test::wait_until([&] { return depth_is(3); }));
  const auto rest = run_cli({"consume", ">" + ipc("clients"), "jobs", "--count", "3"});
  CHECK(rest.second == 0);
  std::set<std::string> all(first.first.begin(), first.first.end());
  all.insert(rest.first.begin(), rest.first.end());
  CHECK(all == std::set<std::string>{"jobs\ta", "jobs\tb", "jobs\tc", "jobs\td", "jobs\te"});
  CHECK(postbox::test::wait_until([&] { return depth_is(0); }));

  // The words of a request need no quotes; an error answer is exit 1.
  const auto listed = run_cli({"ask", ">" + ipc("control"), "list", "jobs", "5"});
  CHECK(listed.second == 0);
  REQUIRE(listed.first.size() == 1);
  CHECK(listed.first[0].rfind("{\"queue\":\"jobs.dlq\",\"depth\":0,", 0) == 0);
  for (const char* request : {"bogus", "list nosuchqueue", "redrive jobs -5"}) {
    INFO(request);
    const auto [lines, code] = run_cli({"ask", ">" + ipc("control"), request});
    CHECK(code == 1);
    REQUIRE(lines.size() == 1);
    CHECK(lines[0].rfind("{\"error\":", 0) == 0);
  }
  device.kill(SIGTERM);
  CHECK(device.wait() == 0);
}
