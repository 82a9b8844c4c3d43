// The queue device's de-duplication table (devices/src/dedup_table.hpp),
// checked against std::unordered_map through growth, erasures (backward
// shifts across runs) and shrinking.
#include "../../devices/src/dedup_table.hpp"

#include <catch2/catch.hpp>

#include <cstring>
#include <random>
#include <unordered_map>
#include <vector>

using postbox::message_id;
using postbox::devices::dedup_table;

namespace {

message_id id_of(std::uint64_t n) {
  // Time-ordered ids share their first bytes; so do these.
  message_id id;
  const std::uint64_t ms = 1'700'000'000'000ull + n / 4096;
  std::memcpy(id.bytes.data(), &ms, 8);
  const std::uint64_t tail = n + 1;  // never nil
  std::memcpy(id.bytes.data() + 8, &tail, 8);
  return id;
}

struct expected {
  std::uint64_t expires;
  bool durable;
};

void check_same(dedup_table& t, const std::unordered_map<std::uint64_t, expected>& ref,
                std::uint64_t universe) {
  REQUIRE(t.size() == ref.size());
  for (std::uint64_t n = 0; n < universe; ++n) {
    const auto* s = t.find(id_of(n));
    const auto it = ref.find(n);
    INFO("id " << n);
    REQUIRE((s != nullptr) == (it != ref.end()));
    if (s != nullptr) {
      CHECK(s->expires_ms() == it->second.expires);
      CHECK(s->durable() == it->second.durable);
    }
  }
}

}  // namespace

TEST_CASE("dedup table: insert, find, mark durable and erase", "[dedup]") {
  dedup_table t;
  CHECK(t.find(id_of(1)) == nullptr);
  CHECK_FALSE(t.erase(id_of(1)));
  auto [s, fresh] = t.insert(id_of(1), 5000, false);
  REQUIRE(fresh);
  CHECK(s->expires_ms() == 5000);
  CHECK_FALSE(s->durable());
  s->set_durable();
  auto [again, fresh2] = t.insert(id_of(1), 9999, false);
  CHECK_FALSE(fresh2);
  CHECK(again->durable());
  CHECK(again->expires_ms() == 5000);  // the first insert's expiry stands
  CHECK(t.size() == 1);
  CHECK(t.erase(id_of(1)));
  CHECK(t.find(id_of(1)) == nullptr);
  CHECK(t.size() == 0);
}

TEST_CASE("dedup table: the nil id, which marks empty slots, is never found, held or erased",
          "[dedup]") {
  dedup_table t;
  const message_id nil;
  REQUIRE(nil.is_nil());
  CHECK(t.find(nil) == nullptr);  // empty table
  for (std::uint64_t n = 0; n < 10; ++n) REQUIRE(t.insert(id_of(n), 1000 + n, false).second);
  // With slots allocated, most of them empty: still not found.
  CHECK(t.find(nil) == nullptr);
  const auto [s, fresh] = t.insert(nil, 5000, true);
  CHECK(s == nullptr);
  CHECK_FALSE(fresh);
  CHECK(t.size() == 10);
  CHECK_FALSE(t.erase(nil));
  CHECK(t.size() == 10);
  for (std::uint64_t n = 0; n < 10; ++n) {
    const auto* e = t.find(id_of(n));
    REQUIRE(e != nullptr);
    CHECK(e->expires_ms() == 1000 + n);
  }
}

TEST_CASE("dedup table: agrees with a map through growth, erasures and shrinking",
          "[dedup]") {
  constexpr std::uint64_t universe = 40'000;
  std::mt19937_64 rng(GENERATE(1u, 2u, 3u));
  dedup_table t;
  std::unordered_map<std::uint64_t, expected> ref;
  std::uint64_t clock = 0;
  auto random_op = [&](int insert_percent) {
    const std::uint64_t n = rng() % universe;
    const int op = static_cast<int>(rng() % 100);
    if (op < insert_percent) {
      const bool durable = (rng() & 1) != 0;
      auto [s, fresh] = t.insert(id_of(n), ++clock, durable);
      const auto [it, ref_fresh] = ref.try_emplace(n, expected{clock, durable});
      REQUIRE(fresh == ref_fresh);
      REQUIRE(s->expires_ms() == it->second.expires);
    } else if (op < insert_percent + 10) {
      if (auto* s = t.find(id_of(n))) {
        s->set_durable();
        ref.at(n).durable = true;
      } else {
        REQUIRE(ref.count(n) == 0);
      }
    } else {
      REQUIRE(t.erase(id_of(n)) == (ref.erase(n) == 1));
    }
  };
  // Grow, with erasures among the inserts ...
  for (int i = 0; i < 60'000; ++i) random_op(75);
  check_same(t, ref, universe);
  const std::size_t grown = t.capacity();
  CHECK(grown * 3 >= ref.size() * 4);  // at most 3/4 full
  // ... then mostly erase, shrinking as it goes ...
  for (int i = 0; i < 120'000; ++i) {
    random_op(5);
    if (i % 1000 == 0) t.shrink_to_fit();
  }
  for (int i = 0; i < 20; ++i) t.shrink_to_fit();  // as far as it goes
  check_same(t, ref, universe);
  CHECK(t.capacity() < grown);
  CHECK(t.capacity() >= ref.size() * 2);  // shrinks only while under 1/8 full, by half
  // ... and grow again.
  for (int i = 0; i < 60'000; ++i) random_op(80);
  check_same(t, ref, universe);
}

TEST_CASE("dedup table: one shrink after a spike drains gives the memory back at once",
          "[dedup]") {
  dedup_table t;
  constexpr std::uint64_t spike = 100'000;
  for (std::uint64_t n = 1; n <= spike; ++n) REQUIRE(t.insert(id_of(n), n, true).second);
  const std::size_t grown = t.capacity();
  for (std::uint64_t n = 1; n <= spike; ++n)
    if (n % 200 != 0) REQUIRE(t.erase(id_of(n)));
  REQUIRE(t.size() == spike / 200);
  t.shrink_to_fit();
  // Each shard is now at least 1/8 full or at its 64 slots.
  CHECK(t.capacity() <= 64 * 64 + 8 * t.size());
  CHECK(t.capacity() < grown / 16);
  for (std::uint64_t n = 200; n <= spike; n += 200) {
    REQUIRE(t.find(id_of(n)) != nullptr);
    CHECK(t.find(id_of(n))->expires_ms() == n);
  }
}
