#include "result_store.hpp"

#include <algorithm>
#include <utility>

namespace zfarm::broker {

Frames share_frames(Frames& frames) {
  Frames copy;
  copy.reserve(frames.size());
  for (auto& f : frames) {
    copy.emplace_back();
    copy.back().copy(f);
  }
  return copy;
}

namespace {

std::size_t size_of(const Frames& frames) {
  std::size_t n = 0;
  for (const auto& f : frames) n += f.size();
  return n;
}

}  // namespace

Frames ResultStore::add(const std::string& session, std::uint64_t task_id, Frames message) {
  if (auto old = entries_.find(task_id); old != entries_.end()) erase(old);
  for (auto& f : message) {
    if (f.size() <= kOwnCopyMaxBytes) f = zmq::message_t(f.data(), f.size());
  }
  Frames now = share_frames(message);
  Entry& e = entries_[task_id];
  e.session = session;
  e.bytes = size_of(message) + kEntryOverhead;
  e.message = std::move(message);
  e.seq = next_seq_++;
  unacked_order_.emplace(e.seq, task_id);
  by_session_[session].insert(task_id);
  unacked_bytes_ += e.bytes;
  trim_unacked();
  return now;
}

void ResultStore::ack(const std::string& session, const std::vector<std::uint64_t>& ids) {
  for (std::uint64_t id : ids) {
    auto it = entries_.find(id);
    if (it == entries_.end() || it->second.acked || it->second.session != session) continue;
    to_cache(it);
  }
  trim_cache();
}

std::vector<Frames> ResultStore::unacked(const std::string& session) {
  std::vector<Frames> r;
  auto s = by_session_.find(session);
  if (s == by_session_.end()) return r;
  r.reserve(s->second.size());
  for (std::uint64_t id : s->second) r.push_back(share_frames(entries_.at(id).message));
  return r;
}

std::optional<Frames> ResultStore::find(std::uint64_t task_id) {
  auto it = entries_.find(task_id);
  if (it == entries_.end()) return std::nullopt;
  Entry& e = it->second;
  if (e.acked) {  // most recently used now
    cache_order_.erase(e.seq);
    e.seq = next_seq_++;
    cache_order_.emplace(e.seq, task_id);
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
  s.stored_results = unacked_order_.size();
  s.stored_bytes = unacked_bytes_;
  s.cached_results = cache_order_.size();
  s.cached_bytes = cached_bytes_;
  s.evicted = evicted_;
  return s;
}

// ---- private ------------------------------------------------------------------

void ResultStore::erase(std::unordered_map<std::uint64_t, Entry>::iterator it) {
  Entry& e = it->second;
  if (e.acked) {
    cache_order_.erase(e.seq);
    cached_bytes_ -= e.bytes;
  } else {
    unacked_order_.erase(e.seq);
    unacked_bytes_ -= e.bytes;
    auto s = by_session_.find(e.session);
    if (s != by_session_.end()) {
      s->second.erase(it->first);
      if (s->second.empty()) by_session_.erase(s);
    }
  }
  entries_.erase(it);
}

void ResultStore::to_cache(std::unordered_map<std::uint64_t, Entry>::iterator it) {
  Entry& e = it->second;
  const std::uint64_t id = it->first;
  unacked_order_.erase(e.seq);
  unacked_bytes_ -= e.bytes;
  auto s = by_session_.find(e.session);
  if (s != by_session_.end()) {
    s->second.erase(id);
    if (s->second.empty()) by_session_.erase(s);
  }
  e.acked = true;
  e.session.clear();
  e.seq = next_seq_++;
  cache_order_.emplace(e.seq, id);
  cached_bytes_ += e.bytes;
}

void ResultStore::trim_unacked() {
  while (unacked_bytes_ > limits_.max_unacked_bytes && !unacked_order_.empty()) {
    erase(entries_.find(unacked_order_.begin()->second));
    ++evicted_;
  }
}

void ResultStore::trim_cache() {
  while (cached_bytes_ > limits_.cache_bytes && !cache_order_.empty()) {
    erase(entries_.find(cache_order_.begin()->second));
  }
}

}  // namespace zfarm::broker
