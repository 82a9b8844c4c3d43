// The queue device's de-duplication window: producer message ids, each with
// the time it leaves the window and whether its message is durable yet.
//
// A flat open-addressing table (linear probing, deletion by backward shift,
// so no tombstones): one 24-byte slot per id and no allocation per id. Every
// accepted message passes through it, and a node-based map spent more time in
// malloc and cache misses than the rest of the device's bookkeeping.
// The nil id marks an empty slot; the device never remembers it.
#pragma once

#include <postbox/message_id.hpp>

#include <cstdint>
#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

namespace postbox::devices {

class dedup_table {
 public:
  struct slot {
    message_id id;
    std::uint64_t word = 0;  // bit 63: durable; the rest: expiry, ms since the epoch

    [[nodiscard]] std::uint64_t expires_ms() const noexcept { return word & ~durable_bit; }
    [[nodiscard]] bool durable() const noexcept { return (word & durable_bit) != 0; }
    void set_durable() noexcept { word |= durable_bit; }
  };

  /// The entry for `id`, or null. Valid until the next insert or erase.
  [[nodiscard]] slot* find(const message_id& id) noexcept {
    if (size_ == 0) return nullptr;
    if (slot* s = probe(slots_, id)) return s;
    return find_old(id);
  }

  /// Inserts `id`; returns its slot and true, or the slot already holding it
  /// and false. The slot is valid until the next insert or erase.
  std::pair<slot*, bool> insert(const message_id& id, std::uint64_t expires_ms, bool durable) {
    if (slot* s = find(id)) return {s, false};
    if ((size_ + 1) * 4 > slots_.size() * 3) {
      // (A move in progress has always ended by now; finishing it is a safety net.)
      while (!old_.empty()) move_some();
      start_move(slots_.empty() ? min_capacity : slots_.size() * 2);
    }
    move_some();
    slot& s = place(slots_, id);
    s.word = (expires_ms & ~durable_bit) | (durable ? durable_bit : 0);
    ++live_;
    ++size_;
    return {&s, true};
  }

  /// Removes `id`; false when it was not there.
  bool erase(const message_id& id) noexcept {
    if (size_ == 0) return false;
    if (slot* s = probe(slots_, id)) {
      remove(s);
      --live_;
    } else if (slot* o = find_old(id)) {
      o->word = tombstone;  // keeps the old table's probe runs intact
    } else {
      return false;
    }
    --size_;
    move_some();  // a shrink moves while ids expire
    return true;
  }

  /// Gives memory back after a spike: moves to a half-size table while the
  /// table is under 1/8 full (a little at a time, like growing).
  void shrink_to_fit() {
    if (!old_.empty()) return move_some();
    if (slots_.size() <= min_capacity || size_ * 8 >= slots_.size()) return;
    start_move(slots_.size() / 2);
    move_some();
  }

  [[nodiscard]] std::size_t size() const noexcept { return size_; }
  [[nodiscard]] std::size_t capacity() const noexcept { return slots_.size() + old_.size(); }

 private:
  static constexpr std::uint64_t durable_bit = std::uint64_t{1} << 63;
  static constexpr std::uint64_t tombstone = ~std::uint64_t{0};  // erased from the old table
  static constexpr std::size_t min_capacity = 1024;
  // Old slots moved per insert: a move ends within (old capacity)/8 inserts,
  // before the new table can pass 3/4 full (growing: at most 0.75 + 0.125 of
  // the old capacity in twice its size; shrinking: under 1/8 + 1/8 of it in half).
  static constexpr std::size_t move_step = 8;

  static bool vacant(const message_id& id) noexcept {
    std::uint64_t a = 0, b = 0;
    std::memcpy(&a, id.bytes.data(), 8);
    std::memcpy(&b, id.bytes.data() + 8, 8);
    return (a | b) == 0;
  }
  static bool same(const message_id& x, const message_id& y) noexcept {
    std::uint64_t a = 0, b = 0, c = 0, d = 0;
    std::memcpy(&a, x.bytes.data(), 8);
    std::memcpy(&b, x.bytes.data() + 8, 8);
    std::memcpy(&c, y.bytes.data(), 8);
    std::memcpy(&d, y.bytes.data() + 8, 8);
    return ((a ^ c) | (b ^ d)) == 0;
  }

  static std::size_t home(const message_id& id, std::size_t mask) noexcept {
    std::uint64_t a = 0, b = 0;
    std::memcpy(&a, id.bytes.data(), 8);
    std::memcpy(&b, id.bytes.data() + 8, 8);
    // The first half is mostly the timestamp, the second a counter: mix both
    // (the finaliser of MurmurHash3) so neighbouring ids spread out.
    std::uint64_t h = a ^ (b * 0x9E3779B97F4A7C15ull);
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return static_cast<std::size_t>(h) & mask;
  }

  static slot* probe(std::vector<slot>& t, const message_id& id) noexcept {
    if (t.empty()) return nullptr;
    const std::size_t mask = t.size() - 1;
    for (std::size_t i = home(id, mask);; i = (i + 1) & mask) {
      slot& s = t[i];
      if (same(s.id, id)) return &s;
      if (vacant(s.id)) return nullptr;
    }
  }

  // The first vacant slot of `id`'s run (the caller knows it is absent).
  static slot& place(std::vector<slot>& t, const message_id& id) noexcept {
    const std::size_t mask = t.size() - 1;
    std::size_t i = home(id, mask);
    while (!vacant(t[i].id)) i = (i + 1) & mask;
    t[i].id = id;
    return t[i];
  }

  // An entry still waiting in the old table: not yet moved, not erased.
  slot* find_old(const message_id& id) noexcept {
    slot* o = probe(old_, id);
    if (o == nullptr || o->word == tombstone) return nullptr;
    if (static_cast<std::size_t>(o - old_.data()) < old_next_) return nullptr;  // moved, then erased
    return o;
  }

  // Removes a slot of the current table by backward shift: moves up every
  // later entry of the run that may sit in the hole (its home is not
  // cyclically within (hole, j]).
  void remove(slot* s) noexcept {
    const std::size_t mask = slots_.size() - 1;
    std::size_t hole = static_cast<std::size_t>(s - slots_.data());
    for (std::size_t j = (hole + 1) & mask;; j = (j + 1) & mask) {
      slot& next = slots_[j];
      if (vacant(next.id)) break;
      const std::size_t h = home(next.id, mask);
      const bool stays = hole <= j ? (hole < h && h <= j) : (hole < h || h <= j);
      if (stays) continue;
      slots_[hole] = next;
      hole = j;
    }
    slots_[hole] = slot{};
  }

  // Growing or shrinking moves the entries over a little at a time, so no
  // single insert pays for the whole table (a million ids take tens of ms).
  void start_move(std::size_t capacity) {
    old_.swap(slots_);
    slots_.assign(capacity, slot{});
    old_next_ = 0;
    live_ = 0;
  }

  void move_some() {
    if (old_.empty()) return;
    const std::size_t end = std::min(old_.size(), old_next_ + move_step);
    for (; old_next_ < end; ++old_next_) {
      const slot& o = old_[old_next_];
      if (vacant(o.id) || o.word == tombstone) continue;
      place(slots_, o.id).word = o.word;
      ++live_;
    }
    if (old_next_ == old_.size()) {
      std::vector<slot>().swap(old_);
      old_next_ = 0;
    }
  }

  std::vector<slot> slots_;  // the current table
  std::vector<slot> old_;    // the table being moved from, slots [old_next_, end) still to move
  std::size_t old_next_ = 0;
  std::size_t live_ = 0;  // entries in slots_
  std::size_t size_ = 0;  // entries in all
};

}  // namespace postbox::devices
