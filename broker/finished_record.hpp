// FinishedRecord: how the last N finished tasks ended (status, engine), so
// that opts.after and opts.follow may name tasks that already ended.
//
// A ring of N entries in order of finishing, the oldest overwritten first,
// and an open-addressing index (linear probing, 32-bit ring positions) from
// task id to the newest entry of that id.  About 32 bytes per remembered task
// (a 24-byte entry and two index slots at most half full), with no
// allocation per task: a hash map node plus a deque slot per task were about
// 70 bytes and an allocation each, for every task the broker ever ran.
//
// An id recorded again (a client may reuse an id once its task ended) keeps
// only its newest entry; the older one stays in the ring, dead, until it is
// overwritten.
//
// No sockets; not thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace zfarm::broker {

class FinishedRecord {
 public:
  struct Entry {
    std::uint64_t id = 0;
    std::int64_t engine = -1;  // where it ran; -1 never ran
    std::uint32_t status = 0;
    bool live = false;         // false: overwritten by a newer entry of the id
  };

  // Remembers at most `capacity` tasks (up to 2^32 - 2); 0 remembers none.
  explicit FinishedRecord(std::size_t capacity);

  // Records how task `id` ended, forgetting the oldest beyond the capacity.
  void record(std::uint64_t id, std::uint32_t status, std::int64_t engine);

  // The newest entry of `id`, or nullptr.  Valid until the next record().
  const Entry* find(std::uint64_t id) const;

  std::size_t size() const { return live_; }
  std::size_t capacity() const { return capacity_; }

 private:
  static constexpr std::uint32_t kEmpty = 0xffffffffu;  // an unused index slot

  std::size_t slot_of(std::uint64_t id) const;  // index slot holding id, or where it would go
  void index_insert(std::uint64_t id, std::uint32_t position);
  void index_erase(std::uint64_t id);
  void grow_index();

  std::size_t capacity_;
  std::vector<Entry> ring_;             // grows to capacity_, then wraps
  std::size_t next_ = 0;                // position of the next entry once full
  std::vector<std::uint32_t> index_;    // ring positions; size a power of two
  std::size_t live_ = 0;
};

}  // namespace zfarm::broker
