// FairQueue: the broker's shared queue of load-balanced work, shared fairly
// between clients.
//
// Order of the front:
//   - a higher priority first, whoever submitted it;
//   - among the entries of the top priority, the clients (sessions) that have
//     some take turns: round-robin, one entry each;
//   - FIFO within one client and priority, except that an entry pushed with
//     `front` (a retry) goes ahead of that client's others.
//
// A client enters the rotation of a priority at the back when it queues its
// first entry there, and leaves it when its last entry there is taken or
// found stale, so nothing is kept for clients with nothing queued.  Clients
// are named by session, so one that reconnects with a new identity keeps its
// place.  A client is given as a pointer to its session name, interned by
// Sessions (one address per session for the broker's life): the queue hashes
// and compares the pointer, never the name.
//
// live() counts the entries pushed and not yet forgotten: the owner calls
// forget() once for every task that leaves the queue, whether taken with
// pop_front() or another way (abort, timeout).  An entry whose task left
// another way stays, stale, until it reaches the front or the next
// compact().  Whether an
// entry is live is the owner's to say: front() and compact() take a
// predicate `live(const QueueEntry&) -> bool`.
//
// Cost: push, pop_front and forget are O(1) amortised plus one hash of the
// client name; front is O(1) amortised (stale entries are each dropped once);
// compact is O(entries + clients).  Per queued entry the memory is that of a
// deque element (32 bytes), as in a plain FIFO.
//
// No sockets; not thread-safe.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <iterator>
#include <map>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace zfarm::broker {

// An entry of a task queue: the task's id and the ticket that names this
// entry (a task whose ticket changed has left the queue), its order of
// becoming ready and its priority.
struct QueueEntry {
  std::uint64_t id;
  std::uint64_t ticket;
  std::uint64_t seq;
  std::int64_t priority;
};

class FairQueue {
 public:
  FairQueue() = default;
  // The turns point into the maps' nodes: a copy would point into the
  // original, so there is none.  Moves keep the nodes.
  FairQueue(const FairQueue&) = delete;
  FairQueue& operator=(const FairQueue&) = delete;
  FairQueue(FairQueue&&) = default;
  FairQueue& operator=(FairQueue&&) = default;

  // Queues `e` for `client`: behind that client's entries of the same
  // priority, or ahead of them when `front` (a retry).
  // `client` must stay valid while it has entries here (interned names do).
  void push(const std::string* client, const QueueEntry& e, bool front);

  // The next entry to dispatch, or nullptr when no live one is left.  Stale
  // entries met on the way are dropped.  The pointer is valid until the
  // queue is next changed.
  template <class Live>
  const QueueEntry* front(Live&& live);

  // Takes the entry front() just returned; that client's turn passes to the
  // next client of the same priority.  Precondition: front() returned an
  // entry and the queue did not change since.
  void pop_front();

  // A task left the queue: popped, or gone another way (its entry, if still
  // here, is stale now).  Called once per task pushed.
  void forget() { --live_; }

  // Drops the stale entries when they are more than twice the live ones plus
  // `slack`, so memory stays bounded however many tasks leave early.
  template <class Live>
  void compact(Live&& live, std::size_t slack);

  std::size_t live() const { return live_; }
  std::size_t entries() const { return entries_; }
  // Clients with entries (live or stale) queued at priority `priority`.
  std::size_t clients_at(std::int64_t priority) const;

 private:
  using ClientEntries = std::unordered_map<const std::string*, std::deque<QueueEntry>>;
  // One priority: each client's entries, and the clients in turn order (the
  // front's turn is now).  The turn holds pointers to the map's nodes, which
  // stay put while other nodes come and go.
  struct Level {
    ClientEntries by_client;
    std::deque<ClientEntries::value_type*> turn;
  };

  // Removes the client at the front of `level`'s turn (its entries are gone).
  static void drop_turn(Level& level);

  std::map<std::int64_t, Level, std::greater<>> levels_;
  std::size_t entries_ = 0;
  std::size_t live_ = 0;
};

template <class Live>
const QueueEntry* FairQueue::front(Live&& live) {
  while (!levels_.empty()) {
    Level& level = levels_.begin()->second;
    while (!level.turn.empty()) {
      auto& entries = level.turn.front()->second;
      while (!entries.empty() && !live(entries.front())) {
        entries.pop_front();
        --entries_;
      }
      if (!entries.empty()) return &entries.front();
      drop_turn(level);
    }
    levels_.erase(levels_.begin());
  }
  return nullptr;
}

template <class Live>
void FairQueue::compact(Live&& live, std::size_t slack) {
  if (entries_ <= 2 * live_ + slack) return;
  std::size_t kept = 0;
  for (auto l = levels_.begin(); l != levels_.end();) {
    Level& level = l->second;
    std::erase_if(level.turn, [&](ClientEntries::value_type* client) {
      std::erase_if(client->second, [&](const QueueEntry& e) { return !live(e); });
      kept += client->second.size();
      if (!client->second.empty()) return false;
      level.by_client.erase(level.by_client.find(client->first));
      return true;
    });
    l = level.turn.empty() ? levels_.erase(l) : std::next(l);
  }
  entries_ = kept;
}

}  // namespace zfarm::broker
