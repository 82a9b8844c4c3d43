// The queue device's de-duplication window: producer message ids, each with
// whether its message is durable yet. (When an id leaves the window is the
// device's business: it keeps the ids in the order they came.)
//
// Every accepted message passes through it, so it is built for the ids
// postbox makes (message_id.hpp): read as two big-endian halves a and b,
// the ids one generator makes within a millisecond count up by one in
// both. So a - b stays the same while b counts up, and up to 64 such ids
// share a bucket named by (a - b, b / 64), each one a bit (b mod 64). A
// producer's burst then touches a bucket per 32 to 64 ids, and a million
// ids fit in 1-2 MiB that stay in the CPU's caches. (A table with a slot
// per id cost the device a quarter of its time: a cache miss, and on a
// fresh table a page's first touch, for every id.) Ids made any other way,
// or by a producer sending less than one a millisecond, take a bucket of
// 32 bytes each.
//
// Where a bucket lives comes from a hash keyed with random numbers drawn
// when the table is made: a producer that chooses its ids cannot make them
// pile up in one run of slots, which would make every insert slow.
//
// The buckets live in a flat table (linear probing, deletion by backward
// shift, no tombstones), split by hash into 64 shards that grow and shrink
// on their own, so that no insert rebuilds (or has the kernel zero) more
// than a 64th of the whole. A bucket with no bits set is an empty slot. The
// nil id is never held.
#pragma once

#include <postbox/message_id.hpp>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <random>
#include <type_traits>
#include <utility>

namespace postbox::devices {

class dedup_table {
  struct bucket {
    std::uint64_t diff = 0;     // a - b of its ids
    std::uint64_t group = 0;    // b / 64 of its ids
    std::uint64_t present = 0;  // bit b mod 64: that id is held
    std::uint64_t durable = 0;  // bit b mod 64: that id's message is durable
  };
  static_assert(std::is_trivially_copyable_v<bucket>, "buckets live in calloc'd memory");

 public:
  /// A held id: its durable flag. Valid until the next insert or erase; a
  /// default one (false) stands for "not held".
  class entry {
   public:
    entry() = default;
    explicit operator bool() const noexcept { return b_ != nullptr; }
    [[nodiscard]] bool durable() const noexcept { return (b_->durable & bit_) != 0; }
    void set_durable() const noexcept { b_->durable |= bit_; }

   private:
    friend class dedup_table;
    entry(bucket* b, std::uint64_t bit) noexcept : b_(b), bit_(bit) {}
    bucket* b_ = nullptr;
    std::uint64_t bit_ = 0;
  };

  dedup_table() {
    std::random_device rd;
    for (auto& k : hash_key_) k = (std::uint64_t{rd()} << 32) | rd();
    for (auto& s : shards_) s.hash_key = &hash_key_;
  }
  dedup_table(const dedup_table&) = delete;
  dedup_table& operator=(const dedup_table&) = delete;

  /// The entry for `id`, or a false one.
  [[nodiscard]] entry find(const message_id& id) noexcept {
    if (id.is_nil()) return {};  // never held
    const key k = key_of(id);
    bucket* b = shard_of(k).find(k);
    if (b == nullptr || (b->present & k.bit) == 0) return {};
    return {b, k.bit};
  }

  /// Inserts `id`; returns its entry and true, or the entry already holding
  /// it and false. The nil id is refused: a false entry and false. Throws
  /// std::bad_alloc (changing nothing) when the table cannot grow.
  std::pair<entry, bool> insert(const message_id& id, bool durable) {
    if (id.is_nil()) return {{}, false};
    const key k = key_of(id);
    bucket* b = shard_of(k).find_or_add(k);
    if ((b->present & k.bit) != 0) return {{b, k.bit}, false};
    b->present |= k.bit;
    if (durable) b->durable |= k.bit;
    ++size_;
    return {{b, k.bit}, true};
  }

  /// Removes `id`; false when it was not there.
  bool erase(const message_id& id) noexcept {
    if (id.is_nil()) return false;
    const key k = key_of(id);
    if (!shard_of(k).erase(k)) return false;
    --size_;
    return true;
  }

  /// Gives memory back after a spike: halves each shard until it is at
  /// least 1/8 full (or down to 64 buckets). Best effort: a shard without
  /// memory for its smaller array keeps the old one.
  void shrink_to_fit() noexcept {
    for (auto& s : shards_) s.shrink();
  }

  /// Ids held.
  [[nodiscard]] std::size_t size() const noexcept { return size_; }
  /// Room, in buckets of up to 64 ids.
  [[nodiscard]] std::size_t capacity() const noexcept {
    std::size_t n = 0;
    for (const auto& s : shards_) n += s.capacity();
    return n;
  }
  /// Buckets in use.
  [[nodiscard]] std::size_t buckets() const noexcept {
    std::size_t n = 0;
    for (const auto& s : shards_) n += s.used();
    return n;
  }
  /// The longest run of occupied slots in any shard: what a lookup of an
  /// absent id may have to read, at worst. For tests and diagnostics (it
  /// reads the whole table).
  [[nodiscard]] std::size_t longest_run() const noexcept {
    std::size_t n = 0;
    for (const auto& s : shards_) n = std::max(n, s.longest_run());
    return n;
  }

 private:
  static constexpr unsigned shard_bits = 6;

  struct key {
    std::uint64_t diff, group, bit, hash;
  };
  using hash_key_t = std::array<std::uint64_t, 2>;

  // The finaliser of MurmurHash3: every bit of x moves every bit of the result.
  static std::uint64_t mix(std::uint64_t x) noexcept {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
  }
  // Mixed twice, with the table's key in each round: whoever does not know
  // the key cannot tell which (diff, group) pairs share a hash.
  static std::uint64_t hash_of(std::uint64_t diff, std::uint64_t group, const hash_key_t& k) noexcept {
    return mix(mix(diff ^ k[0]) ^ (group + k[1]));
  }
  // (a - b, b / 64) and b mod 64 give back a and b: one id, one bit.
  key key_of(const message_id& id) const noexcept {
    const std::uint64_t a = id.high(), b = id.low();
    const std::uint64_t diff = a - b, group = b >> 6;
    return {diff, group, std::uint64_t{1} << (b & 63), hash_of(diff, group, hash_key_)};
  }

  // One open-addressing table of buckets; its slots come from calloc (an
  // empty table is all zeros). The low bits of the hash place a bucket; the
  // top bits choose the shard.
  class shard {
   public:
    shard() = default;
    shard(const shard&) = delete;
    shard& operator=(const shard&) = delete;
    ~shard() { std::free(slots_); }

    bucket* find(const key& k) noexcept {
      if (used_ == 0) return nullptr;
      for (std::size_t i = k.hash & mask_;; i = (i + 1) & mask_) {
        bucket& b = slots_[i];
        if (b.present == 0) return nullptr;
        if (b.diff == k.diff && b.group == k.group) return &b;
      }
    }

    // The bucket of `k`, added when there was none. An added bucket holds no
    // id yet, so it reads as vacant: the caller sets its bit at once.
    bucket* find_or_add(const key& k) {
      if (bucket* b = find(k)) return b;
      if ((used_ + 1) * 4 > capacity_ * 3) rehash(capacity_ == 0 ? min_capacity : capacity_ * 2);
      std::size_t i = k.hash & mask_;
      while (slots_[i].present != 0) i = (i + 1) & mask_;
      slots_[i] = bucket{k.diff, k.group, 0, 0};
      ++used_;
      return &slots_[i];
    }

    // Clears the id's bit; a bucket left with none leaves the table.
    bool erase(const key& k) noexcept {
      bucket* b = find(k);
      if (b == nullptr || (b->present & k.bit) == 0) return false;
      b->present &= ~k.bit;
      b->durable &= ~k.bit;
      if (b->present == 0) remove(static_cast<std::size_t>(b - slots_));
      return true;
    }

    void shrink() noexcept {
      std::size_t capacity = capacity_;
      while (capacity > min_capacity && used_ * 8 < capacity) capacity /= 2;
      if (capacity == capacity_) return;
      try {
        rehash(capacity);
      } catch (const std::bad_alloc&) {
      }
    }

    [[nodiscard]] std::size_t capacity() const noexcept { return capacity_; }
    [[nodiscard]] std::size_t used() const noexcept { return used_; }

    // The most slots in a row that hold buckets.
    [[nodiscard]] std::size_t longest_run() const noexcept {
      std::size_t longest = 0, run = 0;
      for (std::size_t i = 0; i < 2 * capacity_; ++i) {  // twice round: a run may wrap
        run = slots_[i & mask_].present != 0 ? run + 1 : 0;
        longest = std::max(longest, std::min(run, capacity_));
      }
      return longest;
    }

    const hash_key_t* hash_key = nullptr;  // the table's

   private:
    static constexpr std::size_t min_capacity = 64;

    // Backward shift: move up every later bucket of the run that may sit in
    // the hole (its home is not cyclically within (hole, j]).
    void remove(std::size_t hole) noexcept {
      for (std::size_t j = (hole + 1) & mask_;; j = (j + 1) & mask_) {
        const bucket& next = slots_[j];
        if (next.present == 0) break;
        const std::size_t home = hash_of(next.diff, next.group, *hash_key) & mask_;
        const bool stays = hole <= j ? (hole < home && home <= j) : (hole < home || home <= j);
        if (stays) continue;
        slots_[hole] = next;
        hole = j;
      }
      slots_[hole] = bucket{};
      --used_;
    }

    // Throws std::bad_alloc before it changes anything.
    void rehash(std::size_t capacity) {
      auto* fresh = static_cast<bucket*>(std::calloc(capacity, sizeof(bucket)));
      if (fresh == nullptr) throw std::bad_alloc();
      bucket* old = std::exchange(slots_, fresh);
      const std::size_t old_capacity = std::exchange(capacity_, capacity);
      mask_ = capacity - 1;
      for (std::size_t i = 0; i < old_capacity; ++i) {
        if (old[i].present == 0) continue;
        std::size_t at = hash_of(old[i].diff, old[i].group, *hash_key) & mask_;
        while (slots_[at].present != 0) at = (at + 1) & mask_;
        slots_[at] = old[i];
      }
      std::free(old);
    }

    bucket* slots_ = nullptr;
    std::size_t capacity_ = 0;
    std::size_t mask_ = 0;
    std::size_t used_ = 0;  // buckets holding at least one id
  };

  shard& shard_of(const key& k) noexcept { return shards_[k.hash >> (64 - shard_bits)]; }

  hash_key_t hash_key_{};
  std::array<shard, std::size_t{1} << shard_bits> shards_;
  std::size_t size_ = 0;
};

}  // namespace postbox::devices
