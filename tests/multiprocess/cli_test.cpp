// The postbox command-line tool (tools/postbox_main.cpp) as a user runs it:
// a usage error is one line on stderr and exit 2, and a message sent with
// `postbox send` arrives at `postbox recv`.
#include <catch2/catch.hpp>

#include "support/support.hpp"

#include <algorithm>
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
      {{"send", ">tcp://127.0.0.1:5555"}, "missing TOPIC"},
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
