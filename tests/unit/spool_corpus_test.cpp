// Replays tests/data/spool-corpus/* (seeds and inputs found by the fuzzer,
// tests/fuzz/) through the spool's recovery scan and through a real open.
#include <postbox/error.hpp>
#include <postbox/spool.hpp>

#include "fuzz/spool_scan_check.hpp"
#include "support/support.hpp"

#include <catch2/catch.hpp>

#include <fstream>
#include <iterator>

TEST_CASE("spool corpus: every stored segment scans with its invariants and opens or is refused "
          "with a spool_error",
          "[unit][spool]") {
  const std::filesystem::path corpus = std::filesystem::path(POSTBOX_TEST_DATA_DIR) / "spool-corpus";
  int files = 0;
  for (const auto& e : std::filesystem::directory_iterator(corpus)) {
    if (!e.is_regular_file() || e.path().extension() == ".md") continue;
    ++files;
    INFO(e.path().filename().string());
    std::ifstream f(e.path(), std::ios::binary);
    const std::string bytes{std::istreambuf_iterator<char>(f), {}};
    CHECK(postbox::test::check_spool_scan(reinterpret_cast<const unsigned char*>(bytes.data()),
                                          bytes.size()) == "");
    postbox::test::temp_dir dir;
    std::filesystem::copy_file(e.path(), dir.path() / "00000001.log");
    try {
      postbox::spool s(dir.path(), {.fsync = postbox::fsync_policy::never});
      auto c = s.read_from();
      postbox::spool_record r;
      std::uint64_t n = 0;
      while (c.next(r) == postbox::read_status::ok) ++n;
      CHECK(n == s.recovery().records);
      CHECK(!s.append_and_wait("appended after recovery").error);
    } catch (const postbox::spool_error& err) {
      CHECK_THAT(err.what(), Catch::Matchers::Contains("corrupt segment header"));
    }
  }
  CHECK(files >= 8);
}
