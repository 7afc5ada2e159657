// FramesPool: empty Frames vectors kept with their storage, so that the
// broker's per-task vectors are taken from here and given back once done
// with, instead of each being allocated and freed.  With a thousand tasks
// in flight the allocator's small caches overflow, and an allocation and a
// free cost several hundred instructions together.
//
// The Scheduler keeps two: one for messages it makes and receives per task
// (the shared copy of a Task it sends, the copy of a Result it sends, a
// Result's payload as it is decoded; given back once sent or packed), and
// one for the payload of a Submit (a vector of its own size, as it may wait
// in a queue for long; given back when its task ends).
//
// Bounded: at most kMaxKept vectors, each of a capacity within the pool's
// bounds (at most kMaxCapacity frames: about 4 MiB in all).
//
// No sockets; not thread-safe.
#pragma once

#include <cstddef>
#include <utility>
#include <vector>

#include "io_thread.hpp"  // Frames

namespace zfarm::broker {

class FramesPool {
 public:
  static constexpr std::size_t kMaxKept = 4096;
  static constexpr std::size_t kMaxCapacity = 16;

  // Keeps vectors of `min_capacity` to `max_capacity` frames (at most
  // kMaxCapacity).  The default: messages of signature, header and payload.
  explicit FramesPool(std::size_t min_capacity = 3, std::size_t max_capacity = kMaxCapacity)
      : min_capacity_(min_capacity), max_capacity_(max_capacity < kMaxCapacity ? max_capacity : kMaxCapacity) {}

  // An empty vector with room for at least `capacity` frames.
  Frames take(std::size_t capacity) {
    Frames f;
    if (!spare_.empty()) {
      f = std::move(spare_.back());
      spare_.pop_back();
    }
    f.reserve(capacity);
    return f;
  }

  // Keeps `f`'s storage (its frames are let go), if it is worth keeping.
  void give(Frames f) {
    if (f.capacity() < min_capacity_ || f.capacity() > max_capacity_ || spare_.size() >= kMaxKept) return;
    f.clear();
    spare_.push_back(std::move(f));
  }

  std::size_t kept() const { return spare_.size(); }

 private:
  std::size_t min_capacity_;
  std::size_t max_capacity_;
  std::vector<Frames> spare_;
};

}  // namespace zfarm::broker
