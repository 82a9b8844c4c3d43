// The queue device's de-duplication window: producer message ids, each with
// the time it leaves the window and whether its message is durable yet.
//
// Every accepted message passes through it. A node-based map spent more time
// in malloc and cache misses than the rest of the device's bookkeeping, and
// rehashing a million ids at once stopped the device for tens of
// milliseconds. This is a flat table instead: 24-byte slots, linear probing,
// deletion by backward shift (no tombstones), split by hash into 64 shards
// that grow and shrink on their own, so that no insert rebuilds (or has the
// kernel zero) more than a 64th of the whole. The nil id marks an empty
// slot; the device never remembers it.
#pragma once

#include <postbox/message_id.hpp>

#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <type_traits>
#include <utility>

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
  static_assert(std::is_trivially_copyable_v<slot>, "slots live in calloc'd memory");

  /// The entry for `id`, or null. Valid until the next insert or erase.
  [[nodiscard]] slot* find(const message_id& id) noexcept {
    if (vacant(id)) return nullptr;  // the nil id marks empty slots; it is never held
    const std::uint64_t h = hash(id);
    return shard_of(h).find(id, h);
  }

  /// Inserts `id`; returns its slot and true, or the slot already holding it
  /// and false. The slot is valid until the next insert or erase. The nil
  /// id is refused: null and false.
  std::pair<slot*, bool> insert(const message_id& id, std::uint64_t expires_ms, bool durable) {
    if (vacant(id)) return {nullptr, false};
    const std::uint64_t h = hash(id);
    auto r = shard_of(h).insert(id, h);
    if (r.second) {
      r.first->word = (expires_ms & ~durable_bit) | (durable ? durable_bit : 0);
      ++size_;
    }
    return r;
  }

  /// Removes `id`; false when it was not there.
  bool erase(const message_id& id) noexcept {
    if (vacant(id)) return false;
    const std::uint64_t h = hash(id);
    if (!shard_of(h).erase(id, h)) return false;
    --size_;
    return true;
  }

  /// Gives memory back after a spike: halves each shard until it is at
  /// least 1/8 full (or down to 64 slots). Best effort: a shard without
  /// memory for its smaller array keeps the old one.
  void shrink_to_fit() noexcept {
    for (auto& s : shards_) s.shrink();
  }

  [[nodiscard]] std::size_t size() const noexcept { return size_; }
  [[nodiscard]] std::size_t capacity() const noexcept {
    std::size_t n = 0;
    for (const auto& s : shards_) n += s.capacity();
    return n;
  }

 private:
  static constexpr std::uint64_t durable_bit = std::uint64_t{1} << 63;
  static constexpr unsigned shard_bits = 6;

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
  static std::uint64_t hash(const message_id& id) noexcept {
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
    return h;
  }

  // One open-addressing table; its slots come from calloc (an empty table is
  // all zeros). The low bits of the hash place an id; the top bits choose the shard.
  class shard {
   public:
    shard() = default;
    shard(const shard&) = delete;
    shard& operator=(const shard&) = delete;
    ~shard() { std::free(slots_); }

    slot* find(const message_id& id, std::uint64_t h) noexcept {
      if (size_ == 0) return nullptr;
      for (std::size_t i = h & mask_;; i = (i + 1) & mask_) {
        slot& s = slots_[i];
        if (same(s.id, id)) return &s;
        if (vacant(s.id)) return nullptr;
      }
    }

    std::pair<slot*, bool> insert(const message_id& id, std::uint64_t h) {
      if (slot* s = find(id, h)) return {s, false};
      if ((size_ + 1) * 4 > capacity_ * 3) rehash(capacity_ == 0 ? min_capacity : capacity_ * 2);
      slot& s = place(id, h);
      ++size_;
      return {&s, true};
    }

    bool erase(const message_id& id, std::uint64_t h) noexcept {
      slot* s = find(id, h);
      if (s == nullptr) return false;
      // Backward shift: move up every later entry of the run that may sit in
      // the hole (its home is not cyclically within (hole, j]).
      std::size_t hole = static_cast<std::size_t>(s - slots_);
      for (std::size_t j = (hole + 1) & mask_;; j = (j + 1) & mask_) {
        const slot& next = slots_[j];
        if (vacant(next.id)) break;
        const std::size_t home = hash(next.id) & mask_;
        const bool stays = hole <= j ? (hole < home && home <= j) : (hole < home || home <= j);
        if (stays) continue;
        slots_[hole] = next;
        hole = j;
      }
      slots_[hole] = slot{};
      --size_;
      return true;
    }

    void shrink() noexcept {
      std::size_t capacity = capacity_;
      while (capacity > min_capacity && size_ * 8 < capacity) capacity /= 2;
      if (capacity == capacity_) return;
      try {
        rehash(capacity);
      } catch (const std::bad_alloc&) {
      }
    }

    [[nodiscard]] std::size_t capacity() const noexcept { return capacity_; }

   private:
    static constexpr std::size_t min_capacity = 64;

    // The first vacant slot of `id`'s run (the caller knows it is absent).
    slot& place(const message_id& id, std::uint64_t h) noexcept {
      std::size_t i = h & mask_;
      while (!vacant(slots_[i].id)) i = (i + 1) & mask_;
      slots_[i].id = id;
      return slots_[i];
    }

    // Throws std::bad_alloc before it changes anything.
    void rehash(std::size_t capacity) {
      auto* fresh = static_cast<slot*>(std::calloc(capacity, sizeof(slot)));
      if (fresh == nullptr) throw std::bad_alloc();
      slot* old = std::exchange(slots_, fresh);
      const std::size_t old_capacity = std::exchange(capacity_, capacity);
      mask_ = capacity - 1;
      for (std::size_t i = 0; i < old_capacity; ++i) {
        if (!vacant(old[i].id)) place(old[i].id, hash(old[i].id)).word = old[i].word;
      }
      std::free(old);
    }

    slot* slots_ = nullptr;
    std::size_t capacity_ = 0;
    std::size_t mask_ = 0;
    std::size_t size_ = 0;
  };

  shard& shard_of(std::uint64_t h) noexcept { return shards_[h >> (64 - shard_bits)]; }

  std::array<shard, std::size_t{1} << shard_bits> shards_;
  std::size_t size_ = 0;
};

}  // namespace postbox::devices
