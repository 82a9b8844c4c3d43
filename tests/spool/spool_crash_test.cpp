// Crash tests for the spool (docs/spool-format.md, "Durability", "Recovery"):
// a child appending with fsync_policy::always is killed with SIGKILL at
// random moments; every position it reported durable must read back intact.
#include <postbox/spool.hpp>

#include "support/support.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <csignal>
#include <map>
#include <random>
#include <sstream>
#include <vector>

namespace {

// The same function as tests/spool/child/spool_child.cpp.
std::string spool_child_payload(std::uint64_t id) {
  std::string p = "id=" + std::to_string(id) + ";";
  const std::size_t extra = (id * 2654435761u) % 300;
  for (std::size_t i = 0; i < extra; ++i) p += static_cast<char>('a' + (id + i) % 26);
  return p;
}

void parse_durable(const std::string& line, std::map<std::uint64_t, std::uint64_t>& durable) {
  std::istringstream in(line);
  std::uint64_t pos = 0, id = 0;
  if (in >> pos >> id) durable[pos] = id;
}

}  // namespace

TEST_CASE("spool crash: after kill -9 at random moments, every position reported durable reads "
          "back intact",
          "[spool][crash]") {
  postbox::test::temp_dir dir;
  const auto spool_dir = dir.path() / "q";
  const auto seed = std::random_device{}();
  INFO("seed " << seed);
  std::mt19937 rng(seed);
  std::map<std::uint64_t, std::uint64_t> durable;  // position -> id
  // 54 rounds kill the child while it appends, 6 while it may still be
  // opening; which rounds are which is shuffled.
  constexpr int kills_while_appending = 54;
  constexpr int kills_while_opening = 6;
  static_assert(kills_while_appending >= 50);
  std::vector<bool> kill_while_opening(kills_while_appending + kills_while_opening, false);
  std::fill_n(kill_while_opening.begin(), kills_while_opening, true);
  std::shuffle(kill_while_opening.begin(), kill_while_opening.end(), rng);
  for (std::size_t round = 0; round < kill_while_opening.size(); ++round) {
    INFO("round " << round);
    postbox::test::child c({POSTBOX_SPOOL_CHILD, spool_dir.string(),
                            std::to_string((round + 1) * 1000000000ull), "3"});
    const int wait_for = static_cast<int>(rng() % 150);  // durable records before the kill
    std::string line;
    if (!kill_while_opening[round]) {
      REQUIRE(c.read_line(line));
      CHECK(line.rfind("recovered ", 0) == 0);
      CHECK(line.find(" corrupt 0 ") != std::string::npos);
      for (int i = 0; i < wait_for; ++i) {
        REQUIRE(c.read_line(line));
        parse_durable(line, durable);
      }
    }
    c.kill(SIGKILL);
    CHECK(c.wait() == 128 + SIGKILL);
    while (c.read_line(line, std::chrono::seconds(5))) parse_durable(line, durable);

    postbox::spool s(spool_dir);
    CHECK(s.recovery().corrupt.empty());
    std::map<std::uint64_t, std::string> on_disk;
    auto cur = s.read_from();
    postbox::spool_record r;
    while (true) {
      const auto st = cur.next(r);
      if (st == postbox::read_status::end) break;
      REQUIRE(st == postbox::read_status::ok);
      on_disk[r.pos.to_u64()] = r.data;
    }
    for (const auto& [pos, id] : durable) {
      INFO("position " << postbox::position::from_u64(pos).to_string() << " id " << id);
      const auto it = on_disk.find(pos);
      REQUIRE(it != on_disk.end());
      REQUIRE(it->second == spool_child_payload(id));
    }
  }
  CHECK(durable.size() > 1000);
}
