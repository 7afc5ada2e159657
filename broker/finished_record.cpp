// FinishedRecord: see finished_record.hpp.
#include "finished_record.hpp"

#include <algorithm>

namespace zfarm::broker {

namespace {

// Task ids are often consecutive: mixed, so that neighbours do not crowd
// one run of the index.
std::size_t mix(std::uint64_t id) {
  id ^= id >> 33;
  id *= 0xff51afd7ed558ccdULL;
  id ^= id >> 33;
  return static_cast<std::size_t>(id);
}

}  // namespace

FinishedRecord::FinishedRecord(std::size_t capacity)
    // Ring positions are 32-bit, kEmpty excepted.
    : capacity_(std::min<std::size_t>(capacity, kEmpty - 1)) {}

void FinishedRecord::record(std::uint64_t id, std::uint32_t status, std::int64_t engine) {
  if (capacity_ == 0) return;
  if ((live_ + 1) * 2 > index_.size()) grow_index();
  std::uint32_t position;
  if (ring_.size() < capacity_) {
    position = static_cast<std::uint32_t>(ring_.size());
    ring_.emplace_back();
  } else {
    position = static_cast<std::uint32_t>(next_);
    next_ = (next_ + 1) % capacity_;
    const Entry& oldest = ring_[position];
    if (oldest.live) {
      index_erase(oldest.id);
      --live_;
    }
  }
  const std::size_t slot = slot_of(id);
  if (index_[slot] != kEmpty) {  // recorded before: only the newest counts
    ring_[index_[slot]].live = false;
    --live_;
  }
  index_[slot] = position;
  ring_[position] = Entry{id, engine, status, true};
  ++live_;
}

const FinishedRecord::Entry* FinishedRecord::find(std::uint64_t id) const {
  if (index_.empty()) return nullptr;
  const std::uint32_t position = index_[slot_of(id)];
  return position == kEmpty ? nullptr : &ring_[position];
}

std::size_t FinishedRecord::slot_of(std::uint64_t id) const {
  const std::size_t mask = index_.size() - 1;
  std::size_t i = mix(id) & mask;
  while (index_[i] != kEmpty && ring_[index_[i]].id != id) i = (i + 1) & mask;
  return i;
}

void FinishedRecord::index_erase(std::uint64_t id) {
  const std::size_t mask = index_.size() - 1;
  std::size_t hole = slot_of(id);
  if (index_[hole] == kEmpty) return;
  // Backward shift: entries after the hole move into it unless their home
  // slot lies between the hole and where they are (then they are reachable
  // already), so lookups never need tombstones.
  for (std::size_t j = (hole + 1) & mask; index_[j] != kEmpty; j = (j + 1) & mask) {
    const std::size_t home = mix(ring_[index_[j]].id) & mask;
    const bool reachable = hole <= j ? (hole < home && home <= j) : (hole < home || home <= j);
    if (reachable) continue;
    index_[hole] = index_[j];
    hole = j;
  }
  index_[hole] = kEmpty;
}

void FinishedRecord::grow_index() {
  std::size_t size = std::max<std::size_t>(16, index_.size());
  while ((live_ + 1) * 2 > size) size *= 2;
  index_.assign(size, kEmpty);
  for (std::size_t p = 0; p < ring_.size(); ++p) {
    if (ring_[p].live) index_[slot_of(ring_[p].id)] = static_cast<std::uint32_t>(p);
  }
}

}  // namespace zfarm::broker
