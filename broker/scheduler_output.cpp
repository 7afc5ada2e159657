// The Scheduler's forwarding of Output: text a running task printed, from
// its engine to the current identity of the session that submitted it, and
// of every session that fetched the task while it runs (ResultStore
// watchers): whoever waits for a task's result sees its output as well.
//
// Best effort by design: nothing is stored or acknowledged, and a chunk
// that cannot go where it belongs is dropped and counted.  The task's Result
// carries its whole output, so nothing depends on a chunk arriving; a
// fetcher that starts watching half way sees the output from there on.
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
  const std::vector<std::string>* watchers = results_.watchers(msg.header.id);
  if (identity == nullptr && watchers == nullptr) {
    ++counters_.outputs_dropped;
    return;
  }
  proto::Header h = std::move(msg.header);
  h.aux = engine.id;  // the broker's word, not the engine's
  h.opts = proto::Options{};
  Frames frames = proto::encode(h, std::move(msg.payload));
  bool sent = false;
  if (watchers != nullptr) {
    for (const std::string& session : *watchers) {
      const std::string* to = sessions_.identity_of(session);
      // The owner's identity gets it once, below (a session may watch its own task).
      if (to == nullptr || (identity != nullptr && *to == *identity)) continue;
      ++counters_.outputs_forwarded;
      out.push_back({Outgoing::kClient, *to, share_frames(frames)});  // shared, not copied
      sent = true;
    }
  }
  if (identity != nullptr) {
    ++counters_.outputs_forwarded;
    out.push_back({Outgoing::kClient, *identity, std::move(frames)});
  } else if (!sent) {
    ++counters_.outputs_dropped;
  }
}

}  // namespace zfarm::broker
