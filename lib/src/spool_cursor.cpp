// Spool cursors: read records in position order from the segment files,
// through a small read buffer, using the shared index to find record starts
// and skip corrupt ranges. Implements docs/spool-format.md ("Positions").
#include <postbox/spool.hpp>

#include <postbox/crc32c.hpp>
#include <postbox/detail/spool_format.hpp>
#include <postbox/detail/spool_state.hpp>

#include <cerrno>
#include <fcntl.h>
#include <unistd.h>
#include <utility>

namespace postbox {

namespace fmt = detail::spool_format;

namespace {
constexpr std::size_t read_chunk = 64 * 1024;
}

cursor::cursor(std::shared_ptr<detail::spool_state> state, position from, bool only_pending)
    : state_(std::move(state)), pos_(from), only_pending_(only_pending) {}

cursor::cursor(cursor&& o) noexcept
    : state_(std::move(o.state_)),
      pos_(o.pos_),
      only_pending_(o.only_pending_),
      fd_(std::exchange(o.fd_, -1)),
      fd_segment_(o.fd_segment_),
      buf_(std::move(o.buf_)),
      buf_offset_(o.buf_offset_),
      buf_len_(std::exchange(o.buf_len_, 0)) {}

cursor& cursor::operator=(cursor&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    state_ = std::move(o.state_);
    pos_ = o.pos_;
    only_pending_ = o.only_pending_;
    fd_ = std::exchange(o.fd_, -1);
    fd_segment_ = o.fd_segment_;
    buf_ = std::move(o.buf_);
    buf_offset_ = o.buf_offset_;
    buf_len_ = std::exchange(o.buf_len_, 0);
  }
  return *this;
}

cursor::~cursor() {
  if (fd_ >= 0) ::close(fd_);
}

// Makes bytes [offset, offset+n) of segment fd_segment_ available in buf_,
// reading ahead no further than `published` (the segment's visible end):
// bytes beyond it may be a batch still being written, which a failed write
// truncates and the next batch overwrites.
bool cursor::fill(std::uint32_t offset, std::size_t n, std::uint64_t published) noexcept {
  if (offset >= buf_offset_ && offset + std::uint64_t{n} <= buf_offset_ + buf_len_) return true;
  try {
    if (buf_.size() < std::max(n, read_chunk)) buf_.resize(std::max(n, read_chunk));
  } catch (...) {
    return false;
  }
  buf_offset_ = offset;
  buf_len_ = 0;
  if (offset + std::uint64_t{n} > published) return false;
  const auto room = static_cast<std::size_t>(std::min<std::uint64_t>(buf_.size(), published - offset));
  while (buf_len_ < n) {
    const ssize_t r = ::pread(fd_, buf_.data() + buf_len_, room - buf_len_,
                              static_cast<off_t>(offset + buf_len_));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    buf_len_ += static_cast<std::size_t>(r);
  }
  return true;
}

read_status cursor::next(spool_record& out) noexcept {
  while (true) {
    std::uint32_t offset = 0;
    std::uint64_t published = 0;  // the segment's visible end
    {
      std::lock_guard lk(state_->mu);
      auto it = state_->segments.lower_bound(pos_.segment);
      if (it == state_->segments.end()) return read_status::end;
      if (it->first != pos_.segment) pos_ = {it->first, 0};
      const detail::segment_index& s = it->second;
      std::size_t k = s.find(pos_.offset);
      if (only_pending_)
        while (k < s.offsets.size() && s.is_done(k)) ++k;
      if (k == s.offsets.size()) {
        const auto after = std::next(it);
        if (after == state_->segments.end()) {
          if (k > 0) pos_.offset = std::max(pos_.offset, s.offsets[k - 1] + 1);
          return read_status::end;
        }
        pos_ = {after->first, 0};
        continue;
      }
      offset = s.offsets[k];
      published = s.bytes;
    }
    if (fd_ < 0 || fd_segment_ != pos_.segment) {
      if (fd_ >= 0) ::close(fd_);
      buf_len_ = 0;
      fd_segment_ = pos_.segment;
      const auto path = state_->dir / fmt::segment_file_name(pos_.segment);
      fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd_ < 0) {
        // Out of descriptors, memory, permission: nothing is readable right
        // now, but nothing is gone either. Say "end" and try again next call.
        if (errno != ENOENT) return read_status::end;
        // Deleted since we looked (all of it was done); move on.
        pos_ = {pos_.segment + 1, 0};
        if (pos_.segment == 0) return read_status::end;
        continue;
      }
    }
    out.pos = {pos_.segment, offset};
    pos_.offset = offset + 1;  // past this record's start, whatever happens below
    if (!fill(offset, fmt::record_header_size, published)) return read_status::corrupt;
    const unsigned char* h = reinterpret_cast<const unsigned char*>(buf_.data()) +
                             (offset - buf_offset_);
    const std::uint32_t length = fmt::load_u32(h + 4);
    if (length > (1u << 30) || !fill(offset, fmt::record_header_size + std::size_t{length}, published))
      return read_status::corrupt;
    h = reinterpret_cast<const unsigned char*>(buf_.data()) + (offset - buf_offset_);
    if (crc32c_mask(crc32c(h + 4, fmt::record_header_size - 4 + length)) != fmt::load_u32(h) ||
        h[8] != fmt::type_data)
      return read_status::corrupt;
    try {
      out.data.assign(reinterpret_cast<const char*>(h + fmt::record_header_size), length);
    } catch (...) {
      return read_status::corrupt;
    }
    pos_.offset = offset + static_cast<std::uint32_t>(fmt::record_header_size) + length;
    return read_status::ok;
  }
}

}  // namespace postbox
