// ResultStore: the results the broker keeps so that none is lost.
//
// Every Result the broker sends to a client is first put here, as the whole
// encoded message (signature, header, payload).  It stays "unacknowledged",
// filed under the session it belongs to, until that session sends Ack; a
// client that reconnects gets every unacknowledged result of its session
// again.  Acknowledged results move to a cache that other clients may Fetch
// from, bounded by bytes and dropping the least recently used first.
// Unacknowledged results are bounded too; beyond the bound the oldest are
// dropped and counted (results_evicted), so a client that never acknowledges
// cannot exhaust the broker's memory.
//
// Frames are never copied byte by byte when they are sent, resent or
// fetched: what the store hands out are shared copies (zmq_msg_copy, a
// reference count on the same buffer).  The one exception is made once, on
// the way in, for small frames (see kOwnCopyMaxBytes).
//
// The store also remembers who asked (Fetch) for a task still running, so the
// Scheduler can send them the result when the task ends.
//
// No sockets; not thread-safe.  docs/architecture.rst explains the choices.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "frames_pool.hpp"
#include "io_thread.hpp"  // Frames

namespace zfarm::broker {

// Shares frames[first..] without copying their bytes: zmq's copy() bumps a
// reference count (frames under 33 bytes are copied inline, which costs
// nothing).  `storage`: an empty vector to fill; `room`: spare capacity
// left in it, so that encode() can put the signature and header in front
// without a new vector.
Frames share_frames(Frames& frames, Frames storage = {}, std::size_t first = 0, std::size_t room = 0);

class ResultStore {
 public:
  struct Limits {
    // Acknowledged results kept for Fetch.  64 MiB holds thousands of
    // ordinary results and costs little next to what engines hold.
    std::size_t cache_bytes = std::size_t{64} << 20;
    // Results sent but not yet acknowledged.  Large, because dropping one
    // loses it for a client that reconnects; bounded, because a client that
    // never acknowledges must not take all memory.
    std::size_t max_unacked_bytes = std::size_t{1} << 30;
  };

  // What one kept result costs besides its frames' bytes: the zmq message
  // objects, the hash node with its list links, the vector of frames.  Counted
  // in every size below, so a flood of tiny results meets the bounds too
  // instead of using several times the memory the bounds name.
  static constexpr std::size_t kEntryOverhead = 512;

  // Frames up to this size are copied into their own buffer when stored.
  // libzmq receives small messages as slices of a shared 8 KiB read buffer
  // (ZMQ_IN_BATCH_SIZE) that stays allocated while any slice lives; a kept
  // 100-byte result could otherwise hold a whole 8 KiB buffer for as long as
  // it is kept.  Larger frames always have a buffer of their own and are
  // shared, never copied.
  static constexpr std::size_t kOwnCopyMaxBytes = 8192;

  struct Stats {
    std::size_t stored_results = 0;  // unacknowledged
    std::size_t stored_bytes = 0;    // frame bytes + kEntryOverhead per result
    std::size_t cached_results = 0;  // acknowledged, kept for Fetch
    std::size_t cached_bytes = 0;
    std::uint64_t evicted = 0;       // unacknowledged results dropped over the bound
  };

  ResultStore() : ResultStore(Limits()) {}
  explicit ResultStore(Limits limits) : limits_(limits) {}

  // Keeps `message` (a whole encoded Result for task `task_id`) as
  // unacknowledged for `session` and returns a shared copy of it to send now
  // (in `storage`, an empty vector, when given): its frames from `first` on
  // (2: the payload alone, for a sender that writes the header itself).  An
  // older result with the same task id, acknowledged or not, is replaced.
  Frames add(const std::string& session, std::uint64_t task_id, Frames message, Frames storage = {},
             std::size_t first = 0);

  // Moves the results of `session` named in `ids` to the cache.  Ids that are
  // unknown, already acknowledged or of another session are ignored.
  void ack(const std::string& session, const std::vector<std::uint64_t>& ids);

  // Frees every unacknowledged result of `session` (its session expired:
  // nobody will acknowledge or be resent them); returns how many.
  std::size_t forget_session(const std::string& session);

  // Shared copies of every unacknowledged result of `session`, in task-id order.
  std::vector<Frames> unacked(const std::string& session);

  // A shared copy of the result of `task_id`, acknowledged or not; nothing if
  // the store does not hold it.  A cache hit counts as a use for LRU.
  std::optional<Frames> find(std::uint64_t task_id);
  bool contains(std::uint64_t task_id) const { return entries_.count(task_id) != 0; }

  // Watchers: sessions waiting for the result of a task that is still
  // pending.  take_watchers() returns and forgets them (each session once).
  void watch(std::uint64_t task_id, const std::string& session);
  std::vector<std::string> take_watchers(std::uint64_t task_id);
  // The sessions watching `task_id` without forgetting them, or nullptr.
  const std::vector<std::string>* watchers(std::uint64_t task_id) const {
    auto it = watchers_.find(task_id);
    return it == watchers_.end() ? nullptr : &it->second;
  }
  std::size_t watched_tasks() const { return watchers_.size(); }

  Stats stats() const;
  const Limits& limits() const { return limits_; }

  // Where the frame vectors of dropped results go (frames_pool.hpp); none
  // when null.  The pool must outlive the store's use of it.
  void give_frames_to(FramesPool* pool) { spare_frames_ = pool; }

 private:
  struct SessionList;
  // One kept result.  It is linked into two lists at once: the store-wide
  // order (unacked_ oldest first, or cache_ least recently used first) and,
  // while unacknowledged, its session's list.  Intrusive lists instead of
  // ordered maps: filing, acknowledging and dropping a result are O(1) and
  // allocate nothing besides the entry's own hash node (nodes of an
  // unordered_map never move, so the links stay valid).
  struct Entry {
    std::uint64_t id = 0;
    SessionList* owner = nullptr;  // while unacknowledged; nullptr once acknowledged
    Frames message;
    std::size_t bytes = 0;
    Entry* prev = nullptr;  // in unacked_ or cache_
    Entry* next = nullptr;
    Entry* session_prev = nullptr;  // in owner->entries
    Entry* session_next = nullptr;
  };
  // A doubly linked list through one pair of Entry links.
  template <Entry* Entry::*Prev, Entry* Entry::*Next>
  struct List {
    Entry* head = nullptr;
    Entry* tail = nullptr;
    std::size_t size = 0;
    void push_back(Entry* e);
    void remove(Entry* e);
  };
  using OrderList = List<&Entry::prev, &Entry::next>;
  using SessionEntries = List<&Entry::session_prev, &Entry::session_next>;
  // The unacknowledged results of one session (removed when it has none).
  struct SessionList {
    const std::string* name = nullptr;  // the key of its node in by_session_
    SessionEntries entries;
  };

  // The unacknowledged list of `session`, made if it has none.
  SessionList& session_list(const std::string& session);
  void erase(std::unordered_map<std::uint64_t, Entry>::iterator it);
  void erase(Entry* e);
  // Takes an unacknowledged entry out of its session's list.
  void unlink_owner(Entry* e);
  // Takes e out of its list (unacknowledged or cache) and its byte total.
  void detach(Entry* e);
  void to_cache(Entry* e);
  void trim_unacked();
  void trim_cache();

  Limits limits_;
  std::unordered_map<std::uint64_t, Entry> entries_;  // by task id
  OrderList unacked_;                                 // oldest first
  OrderList cache_;                                   // least recently used first
  std::unordered_map<std::string, SessionList> by_session_;
  // The list add() filed under last: the results of a run of tasks mostly
  // belong to one session, so its name is compared, not hashed.  Cleared
  // when that list goes.
  SessionList* last_session_ = nullptr;
  // Nodes of erased entries kept for add(): a result per task otherwise
  // costs a hash node allocated and freed.  A few suffice: results are
  // stored and dropped at about the same rate.
  // (An Ack names up to a few hundred results, and the cache drops as many.)
  static constexpr std::size_t kSpareEntries = 1024;
  std::vector<std::unordered_map<std::uint64_t, Entry>::node_type> spare_entries_;
  FramesPool* spare_frames_ = nullptr;
  std::unordered_map<std::uint64_t, std::vector<std::string>> watchers_;
  std::size_t unacked_bytes_ = 0;
  std::size_t cached_bytes_ = 0;
  std::uint64_t evicted_ = 0;
};

}  // namespace zfarm::broker
