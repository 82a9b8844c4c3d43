// libFuzzer target: the spool's recovery scan over arbitrary segment bytes
// (docs/spool-format.md, "Recovery"). Any input must scan without a crash
// and with the invariants of tests/fuzz/spool_scan_check.hpp. Inputs that
// crash join tests/data/spool-corpus/, which every test run replays.
#include "spool_scan_check.hpp"

#include <cstdio>
#include <cstdlib>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string problem = postbox::test::check_spool_scan(data, size);
  if (!problem.empty()) {
    std::fprintf(stderr, "spool scan invariant broken: %s\n", problem.c_str());
    std::abort();
  }
  return 0;
}
