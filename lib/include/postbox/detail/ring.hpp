// postbox/detail/ring.hpp: a double-ended queue in one power-of-two array,
// for the per-message queues of the queue device and its clients.
//
// std::deque allocates a 512-byte block for every few elements when they
// are a couple of hundred bytes (a ticket, a delivery), so a queue that
// elements pass through at 300,000 a second mallocs and frees all the time.
// A ring reuses its slots: it allocates only to grow (doubling) or when its
// owner asks it to shrink, and a popped slot is reset to T() at once, so
// that it holds on to nothing. Shrinking is left to the owner (say once a
// second) because these queues fill and drain many times a second: halving
// as they drain would copy them back and forth each time. For the same
// reason a shrink goes by the most the ring held since the last one, not by
// what it holds at that moment: a ring that is busy, but happens to be
// empty when asked, keeps its room (growing again means new pages, which on
// a virtual machine cost microseconds each to touch).
#pragma once

#include <cstddef>
#include <new>
#include <type_traits>
#include <utility>
#include <vector>

namespace postbox::detail {

template <class T>
class ring {
 public:
  [[nodiscard]] bool empty() const noexcept { return size_ == 0; }
  [[nodiscard]] std::size_t size() const noexcept { return size_; }
  [[nodiscard]] std::size_t capacity() const noexcept { return slots_.size(); }

  /// Element `i` from the front (i < size()).
  T& operator[](std::size_t i) noexcept { return slots_[(head_ + i) & mask()]; }
  const T& operator[](std::size_t i) const noexcept { return slots_[(head_ + i) & mask()]; }
  T& front() noexcept { return slots_[head_]; }
  const T& front() const noexcept { return slots_[head_]; }
  T& back() noexcept { return (*this)[size_ - 1]; }

  void push_back(T v) {
    if (size_ == slots_.size()) resize(slots_.empty() ? min_capacity : slots_.size() * 2);
    slots_[(head_ + size_) & mask()] = std::move(v);
    if (++size_ > peak_) peak_ = size_;
  }
  void push_front(T v) {
    if (size_ == slots_.size()) resize(slots_.empty() ? min_capacity : slots_.size() * 2);
    head_ = (head_ + slots_.size() - 1) & mask();
    slots_[head_] = std::move(v);
    if (++size_ > peak_) peak_ = size_;
  }
  void pop_front() {
    slots_[head_] = T();
    head_ = (head_ + 1) & mask();
    --size_;
  }
  /// Halves the array while the most it held since the last shrink()
  /// would fill under a quarter of it (down to 16 slots); then starts
  /// counting that most again from the present size. Best effort: without
  /// memory for the smaller array it keeps the old one.
  void shrink() noexcept {
    std::size_t capacity = slots_.size();
    while (capacity > min_capacity && peak_ * 4 < capacity) capacity /= 2;
    peak_ = size_;
    if (capacity == slots_.size()) return;
    try {
      resize(capacity);
    } catch (const std::bad_alloc&) {
    }
  }
  void clear() {
    slots_.clear();
    head_ = size_ = peak_ = 0;
  }

 private:
  static constexpr std::size_t min_capacity = 16;

  [[nodiscard]] std::size_t mask() const noexcept { return slots_.size() - 1; }

  // Throws only before it touches the elements (moving them cannot throw),
  // so a failed resize leaves the ring as it was.
  void resize(std::size_t capacity) {
    static_assert(std::is_nothrow_move_assignable_v<T>, "a ring moves its elements when it grows");
    std::vector<T> fresh(capacity);
    for (std::size_t i = 0; i < size_; ++i) fresh[i] = std::move((*this)[i]);
    slots_.swap(fresh);
    head_ = 0;
  }

  std::vector<T> slots_;
  std::size_t head_ = 0;
  std::size_t size_ = 0;
  std::size_t peak_ = 0;  // the largest size_ since the last shrink()
};

}  // namespace postbox::detail
