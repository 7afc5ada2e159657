// The Scheduler's forwarding of Output: text a running task printed, from
// its engine to the current identity of the session that submitted it.
//
// Best effort by design: nothing is stored or acknowledged, and a chunk
// that cannot go where it belongs is dropped and counted.  The task's Result
// carries its whole output, so nothing depends on a chunk arriving.
#include "scheduler.hpp"

namespace zfarm::broker {

void Scheduler::handle_output(const Engine& engine, proto::Message&& msg, Outbox& out) {
  auto it = tasks_.find(msg.header.id);
  // Only the engine running the task may speak for it: a late chunk (the
  // task timed out or was retried elsewhere) or another engine's is dropped.
  if (it == tasks_.end() || it->second.state != State::kRunning || it->second.engine != engine.id) {
    ++counters_.outputs_dropped;
    return;
  }
  const std::string* identity = sessions_.identity_of(*it->second.client);
  if (identity == nullptr) {
    ++counters_.outputs_dropped;
    return;
  }
  proto::Header h = std::move(msg.header);
  h.aux = engine.id;  // the broker's word, not the engine's
  h.opts = proto::Options{};
  ++counters_.outputs_forwarded;
  out.push_back({Outgoing::kClient, *identity, proto::encode(h, std::move(msg.payload))});
}

}  // namespace zfarm::broker
