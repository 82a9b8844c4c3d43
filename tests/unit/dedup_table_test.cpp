// The queue device's de-duplication table (devices/src/dedup_table.hpp),
// checked against std::unordered_map through growth, erasures (backward
// shifts across runs) and shrinking, with ids made the way postbox makes
// them (many to a bucket) and with ids that share nothing (one to a bucket).
#include "../../devices/src/dedup_table.hpp"

#include <catch2/catch.hpp>

#include <random>
#include <unordered_map>
#include <vector>

using postbox::message_id;
using postbox::devices::dedup_table;

namespace {

message_id id_from(std::uint64_t a, std::uint64_t b) { return message_id::from_halves(a, b); }

// Like an id_generator's: n = 0, 1, 2 ... count up by one in both halves,
// with a new millisecond every 100 ids (which starts the sequence over).
message_id generated(std::uint64_t n) {
  const std::uint64_t ms = 1'700'000'000'000ull + n / 100;
  const std::uint64_t a = (ms << 16) | 0x7000 | (n % 100);
  const std::uint64_t b = (std::uint64_t{2} << 62) | (0x1234'5678'9abcull + n);
  return id_from(a, b);
}

// Ids that share no bucket: their halves scattered.
message_id scattered(std::uint64_t n) {
  std::uint64_t x = (n + 1) * 0x9E3779B97F4A7C15ull;
  x ^= x >> 29;
  return id_from(x, x * 0xbf58476d1ce4e5b9ull + n);
}

using id_maker = message_id (*)(std::uint64_t);

void check_same(dedup_table& t, const std::unordered_map<std::uint64_t, bool>& ref,
                std::uint64_t universe, id_maker make) {
  REQUIRE(t.size() == ref.size());
  for (std::uint64_t n = 0; n < universe; ++n) {
    const auto e = t.find(make(n));
    const auto it = ref.find(n);
    INFO("id " << n);
    REQUIRE(static_cast<bool>(e) == (it != ref.end()));
    if (e) CHECK(e.durable() == it->second);
  }
}

}  // namespace

TEST_CASE("dedup table: insert, find, mark durable and erase", "[dedup]") {
  dedup_table t;
  CHECK_FALSE(t.find(generated(1)));
  CHECK_FALSE(t.erase(generated(1)));
  auto [e, fresh] = t.insert(generated(1), false);
  REQUIRE(fresh);
  CHECK_FALSE(e.durable());
  e.set_durable();
  auto [again, fresh2] = t.insert(generated(1), false);
  CHECK_FALSE(fresh2);
  CHECK(again.durable());
  // A neighbour shares the bucket, not the flags.
  auto [next, fresh3] = t.insert(generated(2), false);
  REQUIRE(fresh3);
  CHECK_FALSE(next.durable());
  CHECK(t.size() == 2);
  CHECK(t.buckets() == 1);
  CHECK(t.erase(generated(1)));
  CHECK_FALSE(t.find(generated(1)));
  CHECK(t.find(generated(2)));
  CHECK(t.size() == 1);
  CHECK(t.erase(generated(2)));
  CHECK(t.size() == 0);
  CHECK(t.buckets() == 0);
  // Erased and inserted again: not durable any more.
  auto [back, fresh4] = t.insert(generated(1), false);
  CHECK(fresh4);
  CHECK_FALSE(back.durable());
}

TEST_CASE("dedup table: the nil id is never found, held or erased; its bucket's other ids are",
          "[dedup]") {
  dedup_table t;
  const message_id nil;
  REQUIRE(nil.is_nil());
  CHECK_FALSE(t.find(nil));
  const auto [e, fresh] = t.insert(nil, true);
  CHECK_FALSE(e);
  CHECK_FALSE(fresh);
  CHECK(t.size() == 0);
  // Ids of the nil id's bucket: a - b = 0, b < 64.
  for (std::uint64_t b = 1; b < 64; ++b) REQUIRE(t.insert(id_from(b, b), b % 2 == 0).second);
  CHECK(t.buckets() == 1);
  CHECK_FALSE(t.find(nil));
  CHECK_FALSE(t.erase(nil));
  CHECK(t.size() == 63);
  for (std::uint64_t b = 1; b < 64; ++b) {
    const auto held = t.find(id_from(b, b));
    REQUIRE(held);
    CHECK(held.durable() == (b % 2 == 0));
  }
}

TEST_CASE("dedup table: ids a generator makes one after another share buckets, 64 at most",
          "[dedup]") {
  dedup_table t;
  constexpr std::uint64_t n = 100'000;
  for (std::uint64_t i = 0; i < n; ++i) REQUIRE(t.insert(generated(i), false).second);
  CHECK(t.size() == n);
  // 100 ids a millisecond: at most three buckets each, at least two.
  CHECK(t.buckets() <= 3 * n / 100);
  CHECK(t.buckets() >= 2 * n / 100);
  // Ids two halves apart do not share: one to a bucket.
  dedup_table u;
  for (std::uint64_t i = 0; i < 1'000; ++i) REQUIRE(u.insert(scattered(i), false).second);
  CHECK(u.buckets() == 1'000);
}

TEST_CASE("dedup table: ids from an id_generator share buckets", "[dedup]") {
  // One millisecond for all: the generator moves its clock on every 4,096
  // ids (its sequence field), which starts a new run of buckets.
  postbox::id_generator gen;
  dedup_table t;
  constexpr std::size_t n = 10'000;
  for (std::size_t i = 0; i < n; ++i) REQUIRE(t.insert(gen.next(1'700'000'000'000ull), false).second);
  CHECK(t.size() == n);
  INFO("buckets: " << t.buckets());
  CHECK(t.buckets() <= n / 64 + 2 * (n / 4096 + 1));
}

TEST_CASE("dedup table: ids chosen to share an unkeyed hash do not pile up", "[dedup]") {
  // Under a fixed mix of diff ^ (group * k), every one of these would land
  // in one slot's run: 20,000 buckets in a row, each insert reading them all.
  constexpr std::uint64_t n = 20'000;
  dedup_table t;
  for (std::uint64_t group = 1; group <= n; ++group) {
    const std::uint64_t diff = 0x5eed'0000'0000'0001ull ^ (group * 0x9E3779B97F4A7C15ull);
    const std::uint64_t b = group << 6;
    REQUIRE(t.insert(id_from(diff + b, b), false).second);
  }
  REQUIRE(t.buckets() == n);
  // Ids that share nothing, for comparison.
  dedup_table u;
  for (std::uint64_t i = 0; i < n; ++i) REQUIRE(u.insert(scattered(i), false).second);
  INFO("longest run: chosen " << t.longest_run() << ", scattered " << u.longest_run());
  CHECK(t.longest_run() < 1'000);
  CHECK(t.longest_run() <= 4 * u.longest_run() + 64);
}

TEST_CASE("dedup table: agrees with a map through growth, erasures and shrinking",
          "[dedup]") {
  constexpr std::uint64_t universe = 40'000;
  const id_maker make = GENERATE(as<id_maker>{}, &generated, &scattered);
  std::mt19937_64 rng(GENERATE(1u, 2u, 3u));
  dedup_table t;
  std::unordered_map<std::uint64_t, bool> ref;
  auto random_op = [&](int insert_percent) {
    const std::uint64_t n = rng() % universe;
    const int op = static_cast<int>(rng() % 100);
    if (op < insert_percent) {
      const bool durable = (rng() & 1) != 0;
      auto [e, fresh] = t.insert(make(n), durable);
      const auto [it, ref_fresh] = ref.try_emplace(n, durable);
      REQUIRE(fresh == ref_fresh);
      REQUIRE(e.durable() == it->second);
    } else if (op < insert_percent + 10) {
      if (const auto e = t.find(make(n))) {
        e.set_durable();
        ref.at(n) = true;
      } else {
        REQUIRE(ref.count(n) == 0);
      }
    } else {
      REQUIRE(t.erase(make(n)) == (ref.erase(n) == 1));
    }
  };
  // Grow, with erasures among the inserts ...
  for (int i = 0; i < 60'000; ++i) random_op(75);
  check_same(t, ref, universe, make);
  const std::size_t grown = t.capacity();
  CHECK(grown * 3 >= t.buckets() * 4);  // at most 3/4 full
  // ... then mostly erase, shrinking as it goes ...
  for (int i = 0; i < 120'000; ++i) {
    random_op(5);
    if (i % 1000 == 0) t.shrink_to_fit();
  }
  for (int i = 0; i < 20; ++i) t.shrink_to_fit();  // as far as it goes
  check_same(t, ref, universe, make);
  CHECK(t.capacity() >= t.buckets() * 2);  // shrinks only while under 1/8 full, by half
  // Generated ids fill a few hundred buckets, which the shards' first 64
  // slots hold: there is nothing to grow or shrink.
  if (make == &scattered) CHECK(t.capacity() < grown);
  // ... and grow again.
  for (int i = 0; i < 60'000; ++i) random_op(80);
  check_same(t, ref, universe, make);
}

TEST_CASE("dedup table: one shrink after a spike drains gives the memory back at once",
          "[dedup]") {
  dedup_table t;
  constexpr std::uint64_t spike = 100'000;
  for (std::uint64_t n = 1; n <= spike; ++n) REQUIRE(t.insert(scattered(n), true).second);
  const std::size_t grown = t.capacity();
  for (std::uint64_t n = 1; n <= spike; ++n)
    if (n % 200 != 0) REQUIRE(t.erase(scattered(n)));
  REQUIRE(t.size() == spike / 200);
  t.shrink_to_fit();
  // Each shard is now at least 1/8 full or at its 64 buckets.
  CHECK(t.capacity() <= 64 * 64 + 8 * t.buckets());
  CHECK(t.capacity() < grown / 16);
  for (std::uint64_t n = 200; n <= spike; n += 200) {
    const auto e = t.find(scattered(n));
    REQUIRE(e);
    CHECK(e.durable());
  }
}
