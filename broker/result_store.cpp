#include "result_store.hpp"

#include <algorithm>
#include <utility>

namespace zfarm::broker {

Frames share_frames(Frames& frames, Frames storage, std::size_t first, std::size_t room) {
  Frames copy = std::move(storage);
  copy.reserve(frames.size() - first + room);
  for (std::size_t i = first; i < frames.size(); ++i) {
    copy.emplace_back();
    copy.back().copy(frames[i]);
  }
  return copy;
}

namespace {

// A frame whose bytes live inside the zmq message object itself (libzmq's
// inline storage for small messages) holds no shared buffer.
bool held_inline(const zmq::message_t& f) {
  const auto* data = static_cast<const char*>(f.data());
  const auto* self = reinterpret_cast<const char*>(&f);
  return data >= self && data < self + sizeof(zmq::message_t);
}

}  // namespace

template <ResultStore::Entry* ResultStore::Entry::*Prev, ResultStore::Entry* ResultStore::Entry::*Next>
void ResultStore::List<Prev, Next>::push_back(Entry* e) {
  e->*Prev = tail;
  e->*Next = nullptr;
  if (tail != nullptr) {
    tail->*Next = e;
  } else {
    head = e;
  }
  tail = e;
  ++size;
}

template <ResultStore::Entry* ResultStore::Entry::*Prev, ResultStore::Entry* ResultStore::Entry::*Next>
void ResultStore::List<Prev, Next>::remove(Entry* e) {
  if (e->*Prev != nullptr) {
    (e->*Prev)->*Next = e->*Next;
  } else {
    head = e->*Next;
  }
  if (e->*Next != nullptr) {
    (e->*Next)->*Prev = e->*Prev;
  } else {
    tail = e->*Prev;
  }
  e->*Prev = e->*Next = nullptr;
  --size;
}

Frames ResultStore::add(const std::string& session, std::uint64_t task_id, Frames message, Frames storage,
                        std::size_t first) {
  std::size_t bytes = kEntryOverhead;
  for (auto& f : message) {
    const std::size_t size = f.size();
    bytes += size;
    if (size <= kOwnCopyMaxBytes && !held_inline(f)) f = zmq::message_t(f.data(), size);
  }
  Frames now = share_frames(message, std::move(storage), first);
  auto it = entries_.find(task_id);
  if (it != entries_.end()) {
    detach(&it->second);  // an older result for the same id: replaced in place
  } else if (!spare_entries_.empty()) {
    auto node = std::move(spare_entries_.back());
    spare_entries_.pop_back();
    node.key() = task_id;
    it = entries_.insert(std::move(node)).position;
  } else {
    it = entries_.try_emplace(task_id).first;
  }
  Entry& e = it->second;
  e.id = task_id;
  e.bytes = bytes;
  e.message = std::move(message);
  e.owner = &session_list(session);
  e.owner->entries.push_back(&e);
  unacked_.push_back(&e);
  unacked_bytes_ += e.bytes;
  trim_unacked();
  return now;
}

void ResultStore::ack(const std::string& session, const std::vector<std::uint64_t>& ids) {
  auto s = by_session_.find(session);
  if (s == by_session_.end()) return;  // nothing of it unacknowledged
  const SessionList* owner = &s->second;
  for (std::uint64_t id : ids) {
    auto it = entries_.find(id);
    if (it == entries_.end() || it->second.owner != owner) continue;
    // The session's node goes with its last entry: nothing more to acknowledge.
    const bool last = owner->entries.size == 1;
    to_cache(&it->second);
    if (last) break;
  }
  trim_cache();
}

std::size_t ResultStore::forget_session(const std::string& session) {
  auto s = by_session_.find(session);
  if (s == by_session_.end()) return 0;
  std::size_t n = 0;
  // Erasing the last entry erases the session's node too, so stop there.
  for (std::size_t left = s->second.entries.size; left > 0; --left, ++n) erase(s->second.entries.head);
  return n;
}

std::vector<Frames> ResultStore::unacked(const std::string& session) {
  std::vector<Frames> r;
  auto s = by_session_.find(session);
  if (s == by_session_.end()) return r;
  std::vector<Entry*> kept;
  kept.reserve(s->second.entries.size);
  for (Entry* e = s->second.entries.head; e != nullptr; e = e->session_next) kept.push_back(e);
  // The session list is in order of arrival; a reconnecting client gets them by task id.
  std::sort(kept.begin(), kept.end(), [](const Entry* a, const Entry* b) { return a->id < b->id; });
  r.reserve(kept.size());
  for (Entry* e : kept) r.push_back(share_frames(e->message));
  return r;
}

std::optional<Frames> ResultStore::find(std::uint64_t task_id) {
  auto it = entries_.find(task_id);
  if (it == entries_.end()) return std::nullopt;
  Entry& e = it->second;
  if (e.owner == nullptr) {  // acknowledged: most recently used now
    cache_.remove(&e);
    cache_.push_back(&e);
  }
  return share_frames(e.message);
}

void ResultStore::watch(std::uint64_t task_id, const std::string& session) {
  auto& w = watchers_[task_id];
  if (std::find(w.begin(), w.end(), session) == w.end()) w.push_back(session);
}

std::vector<std::string> ResultStore::take_watchers(std::uint64_t task_id) {
  auto node = watchers_.extract(task_id);
  if (node.empty()) return {};
  return std::move(node.mapped());
}

ResultStore::Stats ResultStore::stats() const {
  Stats s;
  s.stored_results = unacked_.size;
  s.stored_bytes = unacked_bytes_;
  s.cached_results = cache_.size;
  s.cached_bytes = cached_bytes_;
  s.evicted = evicted_;
  return s;
}

// ---- private ------------------------------------------------------------------

ResultStore::SessionList& ResultStore::session_list(const std::string& session) {
  if (last_session_ != nullptr && *last_session_->name == session) return *last_session_;
  auto s = by_session_.try_emplace(session).first;
  s->second.name = &s->first;
  last_session_ = &s->second;
  return s->second;
}

void ResultStore::unlink_owner(Entry* e) {
  SessionList* owner = e->owner;
  owner->entries.remove(e);
  e->owner = nullptr;
  if (owner->entries.size == 0) {
    if (owner == last_session_) last_session_ = nullptr;
    by_session_.erase(*owner->name);
  }
}

void ResultStore::erase(Entry* e) { erase(entries_.find(e->id)); }

void ResultStore::erase(std::unordered_map<std::uint64_t, Entry>::iterator it) {
  detach(&it->second);
  if (spare_frames_ != nullptr) spare_frames_->give(std::move(it->second.message));
  if (spare_entries_.size() < kSpareEntries) {
    auto node = entries_.extract(it);
    node.mapped() = Entry{};  // lets its frames go
    spare_entries_.push_back(std::move(node));
  } else {
    entries_.erase(it);
  }
}

void ResultStore::detach(Entry* e) {
  if (e->owner != nullptr) {
    unlink_owner(e);
    unacked_.remove(e);
    unacked_bytes_ -= e->bytes;
  } else {
    cache_.remove(e);
    cached_bytes_ -= e->bytes;
  }
}

void ResultStore::to_cache(Entry* e) {
  unlink_owner(e);
  unacked_.remove(e);
  unacked_bytes_ -= e->bytes;
  cache_.push_back(e);
  cached_bytes_ += e->bytes;
}

void ResultStore::trim_unacked() {
  while (unacked_bytes_ > limits_.max_unacked_bytes && unacked_.head != nullptr) {
    erase(unacked_.head);
    ++evicted_;
  }
}

void ResultStore::trim_cache() {
  while (cached_bytes_ > limits_.cache_bytes && cache_.head != nullptr) erase(cache_.head);
}

}  // namespace zfarm::broker
