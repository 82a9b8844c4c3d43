// Disk-full test for the spool on a small ext4 image mounted through a loop
// device (tmpfs ignores fsync): an append that hits ENOSPC fails cleanly,
// leaves no partial record, and appends work again once space is freed,
// without reopening. Needs root; without it the test says it was skipped.
#include <postbox/detail/spool_format.hpp>
#include <postbox/spool.hpp>

#include "support/support.hpp"

#include <catch2/catch.hpp>

#include <cstdlib>
#include <fstream>
#include <iterator>
#include <unistd.h>

namespace {

int run(const std::string& cmd) {
  const int rc = std::system(cmd.c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

std::string slurp(const std::filesystem::path& p) {
  std::ifstream f(p);
  std::string s{std::istreambuf_iterator<char>(f), {}};
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

// Unmounts on scope exit, whatever happened.
struct mounted {
  std::filesystem::path point;
  bool active = false;
  ~mounted() {
    if (active) (void)run("umount '" + point.string() + "' 2>/dev/null || umount -l '" +
                          point.string() + "' 2>/dev/null");
  }
};

}  // namespace

TEST_CASE("spool disk full: an append that hits ENOSPC fails cleanly and appends work again "
          "once space is freed, without reopening",
          "[spool][diskfull]") {
  postbox::test::temp_dir dir;
  const auto img = dir.path() / "fs.img";
  const auto mnt = dir.path() / "mnt";
  const auto err = dir.path() / "err.txt";
  std::filesystem::create_directory(mnt);
  std::string reason;
  if (::geteuid() != 0) {
    reason = "not running as root";
  } else if (run("truncate -s 8M '" + img.string() + "' && mkfs.ext4 -q -F -m 0 '" + img.string() +
                 "' >'" + err.string() + "' 2>&1") != 0) {
    reason = "mkfs.ext4 failed: " + slurp(err);
  }
  mounted guard{mnt};
  if (reason.empty()) {
    if (run("mount -o loop '" + img.string() + "' '" + mnt.string() + "' >'" + err.string() +
            "' 2>&1") != 0)
      reason = slurp(err);
    else
      guard.active = true;
  }
  if (!reason.empty()) {
    WARN("spool disk-full test skipped: cannot mount a loop device: " << reason);
    std::fprintf(stderr, "SKIPPED: spool disk-full test: cannot mount a loop device: %s\n",
                 reason.c_str());
    return;
  }

  const auto qdir = mnt / "q";
  const auto ballast = mnt / "ballast";
  REQUIRE(run("dd if=/dev/zero of='" + ballast.string() +
              "' bs=1M count=1 conv=fsync status=none") == 0);
  std::uint64_t ok = 0;
  std::error_code failure;
  {
    postbox::spool s(qdir, {.segment_size = 1024 * 1024});
    const std::string record(60 * 1024, 'f');
    for (int i = 0; i < 1000 && !failure; ++i) {
      const auto o = s.append_and_wait(record);
      if (o.error)
        failure = o.error;
      else
        ++ok;
    }
    INFO("appended " << ok << " records before: " << failure.message());
    REQUIRE(failure == std::errc::no_space_on_device);
    CHECK(ok > 10);
    CHECK(!s.fault());  // a full disk is not fatal
    // No partial record: every segment file ends at its last durable record.
    std::uint64_t on_disk = 0;
    for (const auto n : s.segments())
      on_disk += std::filesystem::file_size(qdir / postbox::detail::spool_format::segment_file_name(n));
    CHECK(on_disk == s.stats().bytes);

    // Still full: fails again, cleanly.
    CHECK(s.append_and_wait(record).error == std::errc::no_space_on_device);
    std::filesystem::remove(ballast);
    ::sync();
    const auto again = s.append_and_wait(record);
    CHECK(!again.error);
    if (!again.error) ++ok;
  }
  postbox::spool s(qdir, {.segment_size = 1024 * 1024});
  CHECK(s.recovery().records == ok);
  CHECK(s.recovery().corrupt.empty());
  CHECK(s.recovery().truncated_bytes == 0);
}
