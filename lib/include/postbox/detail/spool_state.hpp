// postbox/detail/spool_state.hpp: the in-memory index the spool's writer and
// its cursors share (docs/spool-format.md, "Done marks"), and the I/O calls
// the writer makes, replaceable by tests to inject faults. Not for users.
#pragma once

#include <postbox/spool.hpp>

#include <sys/types.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>
#include <vector>

namespace postbox::detail {

/// One live segment: offsets of its visible data records (durable ones; with
/// visible_before_sync, written ones) (4 bytes each) and a done bit per
/// record. No payload bytes.
struct segment_index {
  std::vector<std::uint32_t> offsets;  // ascending
  std::vector<std::uint64_t> done_bits;
  std::uint64_t done = 0;
  std::uint64_t bytes = 0;           // visible bytes in the file, header included
  std::int64_t last_write_ms = 0;    // system_clock, for retention_time

  [[nodiscard]] std::size_t find(std::uint32_t offset) const noexcept {
    const auto it = std::lower_bound(offsets.begin(), offsets.end(), offset);
    return static_cast<std::size_t>(it - offsets.begin());
  }
  [[nodiscard]] bool is_done(std::size_t i) const noexcept {
    return (done_bits[i / 64] >> (i % 64)) & 1u;
  }
  void set_done(std::size_t i) noexcept { done_bits[i / 64] |= std::uint64_t{1} << (i % 64); }
  void add(std::uint32_t offset) {
    if (offsets.size() % 64 == 0) done_bits.push_back(0);
    offsets.push_back(offset);
  }
  [[nodiscard]] bool fully_done() const noexcept { return done == offsets.size(); }
};

struct spool_state {
  std::filesystem::path dir;
  mutable std::mutex mu;
  std::map<std::uint32_t, segment_index> segments;  // guarded by mu
  std::uint32_t head = 0;                           // guarded by mu
};

/// The system calls the writer makes; tests swap them to inject EIO/ENOSPC.
struct spool_io {
  ssize_t (*pwrite)(int fd, const void* buf, std::size_t n, off_t offset);
  int (*fdatasync)(int fd);
};
/// The calls in use (default: the real ones). Set before opening a spool.
spool_io& spool_io_calls() noexcept;

}  // namespace postbox::detail
