// FramesPool: empty Frames vectors kept with their storage, so that the
// broker's per-task vectors (the shared copy of a Task it sends, the copy of
// a Result it sends, a Result's payload as it is decoded) are taken from
// here and given back once sent, instead of each being allocated and freed.
// With a thousand tasks in flight the allocator's small caches overflow, and
// an allocation and a free cost several hundred instructions together.
//
// Bounded: at most kMaxKept vectors of at most kMaxCapacity frames (about
// 4 MiB).  Vectors smaller than kMinCapacity are not kept: no message the
// broker makes per task has fewer frames.
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
  static constexpr std::size_t kMinCapacity = 3;  // signature, header, one payload frame
  static constexpr std::size_t kMaxCapacity = 16;

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
    if (f.capacity() < kMinCapacity || f.capacity() > kMaxCapacity || spare_.size() >= kMaxKept) return;
    f.clear();
    spare_.push_back(std::move(f));
  }

  std::size_t kept() const { return spare_.size(); }

 private:
  std::vector<Frames> spare_;
};

}  // namespace zfarm::broker
