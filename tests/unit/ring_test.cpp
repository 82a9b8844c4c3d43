// postbox/detail/ring.hpp against std::deque: wrap-around, growth, shrinking,
// and popped slots letting go of what they held.
#include <postbox/detail/ring.hpp>

#include <catch2/catch.hpp>

#include <deque>
#include <memory>
#include <random>
#include <string>

using postbox::detail::ring;

TEST_CASE("ring: agrees with std::deque through pushes at both ends, pops, growth and shrinking",
          "[unit][ring]") {
  std::mt19937 rng(GENERATE(7u, 8u));
  ring<std::string> r;
  std::deque<std::string> ref;
  std::size_t largest = 0, peak = 0;  // peak: the most held since the last shrink
  for (int step = 0; step < 200'000; ++step) {
    // Phases that mostly grow, then mostly drain, so that both resizes happen.
    const bool growing = (step / 20'000) % 2 == 0;
    const auto op = rng() % 10;
    if (op < (growing ? 6u : 2u)) {
      const std::string v = "value " + std::to_string(step) + std::string(rng() % 40, 'x');
      if (op == 0) {
        r.push_front(v);
        ref.push_front(v);
      } else {
        r.push_back(v);
        ref.push_back(v);
      }
    } else if (!ref.empty()) {
      REQUIRE(r.front() == ref.front());
      r.pop_front();
      ref.pop_front();
    }
    REQUIRE(r.size() == ref.size());
    REQUIRE(r.empty() == ref.empty());
    largest = std::max(largest, ref.size());
    peak = std::max(peak, ref.size());
    if (step % 997 == 0) {
      for (std::size_t i = 0; i < ref.size(); ++i) REQUIRE(r[i] == ref[i]);
      if (!ref.empty()) CHECK(r.back() == ref.back());
    }
    CHECK(r.capacity() >= r.size());
    if (step % 5000 == 0) {
      const std::size_t before = r.capacity();
      r.shrink();
      // Halved only while the interval's peak would fill under a quarter.
      CHECK((r.capacity() <= 16 || peak * 4 >= r.capacity()));
      CHECK(r.capacity() >= peak);  // and never below it
      if (before > 16 && peak * 4 < before) CHECK(r.capacity() < before);
      peak = ref.size();
      for (std::size_t i = 0; i < ref.size(); ++i) REQUIRE(r[i] == ref[i]);
    }
  }
  CHECK(largest > 1000);
  // Drained, it keeps its room until asked to shrink.
  for (int i = 0; i < 5000; ++i) {
    r.push_back("more");
    ref.push_back("more");
  }
  while (!ref.empty()) {
    r.pop_front();
    ref.pop_front();
  }
  CHECK(r.capacity() > 1000);
  // Asked while empty but after an interval that used the room: it keeps it.
  const std::size_t busy = r.capacity();
  r.shrink();
  CHECK(r.capacity() == busy);
  // After an interval that used none of it, it gives it back.
  r.shrink();
  CHECK(r.capacity() == 16);
  // A peak of 100 grows it to 128 slots, which the next shrink keeps.
  for (int i = 0; i < 100; ++i) r.push_back("again");
  for (int i = 0; i < 100; ++i) r.pop_front();
  const std::size_t grown = r.capacity();
  CHECK(grown == 128);
  r.shrink();
  CHECK(r.capacity() == 128);
  r.shrink();
  CHECK(r.capacity() == 16);
}

TEST_CASE("ring: a popped slot holds nothing", "[unit][ring]") {
  auto shared = std::make_shared<int>(42);
  ring<std::shared_ptr<int>> r;
  r.push_back(shared);
  r.push_back(shared);
  CHECK(shared.use_count() == 3);
  r.pop_front();
  CHECK(shared.use_count() == 2);
  r.clear();
  CHECK(shared.use_count() == 1);
  CHECK(r.empty());
}
