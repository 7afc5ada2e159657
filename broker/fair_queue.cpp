// FairQueue: see fair_queue.hpp.
#include "fair_queue.hpp"

namespace zfarm::broker {

void FairQueue::push(const std::string* client, const QueueEntry& e, bool front) {
  Level& level = levels_[e.priority];
  auto [it, added] = level.by_client.try_emplace(client);
  // A client new to this priority waits for its turn behind the others.
  if (added) level.turn.push_back(&*it);
  if (front) {
    it->second.push_front(e);
  } else {
    it->second.push_back(e);
  }
  ++entries_;
  ++live_;
}

void FairQueue::pop_front() {
  auto level = levels_.begin();
  Level& l = level->second;
  ClientEntries::value_type* client = l.turn.front();
  client->second.pop_front();
  --entries_;
  if (client->second.empty()) {
    drop_turn(l);
    if (l.turn.empty()) levels_.erase(level);
  } else if (l.turn.size() > 1) {
    // Its turn is over: to the back of the rotation.
    l.turn.pop_front();
    l.turn.push_back(client);
  }
}

void FairQueue::drop_turn(Level& level) {
  ClientEntries::value_type* client = level.turn.front();
  level.turn.pop_front();
  // By iterator: the key lives in the node being erased.
  level.by_client.erase(level.by_client.find(client->first));
}

std::size_t FairQueue::clients_at(std::int64_t priority) const {
  auto it = levels_.find(priority);
  return it == levels_.end() ? 0 : it->second.by_client.size();
}

}  // namespace zfarm::broker
