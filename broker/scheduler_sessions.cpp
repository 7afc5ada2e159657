// The Scheduler's client-session side: Hello and Welcome, Ack, Fetch, and
// results for those who fetched a task while it was pending.  The state is in
// Sessions (sessions.hpp) and ResultStore (result_store.hpp); this file only
// connects messages to them.
#include <algorithm>
#include <utility>
#include <vector>

#include "scheduler.hpp"

namespace zfarm::broker {

using proto::Header;
using proto::Message;
using proto::MsgType;
using proto::ResultStatus;

void Scheduler::handle_hello(const std::string& identity, const Message& msg, Outbox& out) {
  if (msg.header.opts.session.size() > Sessions::kMaxName) {
    ++counters_.bad_messages;
    send_error(Outgoing::kClient, identity, msg.header.id,
               "hello: session name longer than " + std::to_string(Sessions::kMaxName) + " bytes", out);
    return;
  }
  const Sessions::Bind bind = sessions_.bind(msg.header.opts.session, identity, msg.header.opts.revision);
  send_welcome(identity, msg.header.id, out, bind == Sessions::Bind::kNew);
  if (bind != Sessions::Bind::kRebound) return;
  // A client back on a new socket: everything it has not acknowledged, in
  // task-id order.
  const std::string session = sessions_.session_of(identity);
  for (Frames& f : results_.unacked(session)) out.push_back({Outgoing::kClient, identity, std::move(f)});
}

void Scheduler::send_welcome(const std::string& identity, std::uint64_t id, Outbox& out, bool new_session) {
  Header h;
  h.type = MsgType::kWelcome;
  h.id = id;
  // 1: nothing of a session from before this message is kept for this
  // identity (a Hello that made its session, a Heartbeat from an identity
  // whose session was forgotten); a client that expected one knows that
  // results it still waits for will not come.
  h.aux = (new_session || sessions_.find(identity) == nullptr) ? 1 : 0;
  h.text = incarnation_;
  h.status = static_cast<std::uint32_t>(options_.heartbeat.count());
  h.targets.reserve(engines_.size());
  for (const auto& [engine_id, e] : engines_) h.targets.push_back(engine_id);
  h.opts.revision = proto::kRevision;
  out.push_back({Outgoing::kClient, identity, proto::encode(h)});
}

void Scheduler::handle_ack(const std::string& identity, const Message& msg) {
  // An identity with no session has no results to acknowledge.
  if (const std::string* session = sessions_.find(identity)) results_.ack(*session, msg.header.opts.ids);
}

void Scheduler::handle_fetch(const std::string& identity, const Message& msg, Outbox& out) {
  for (std::uint64_t id : msg.header.opts.ids) {
    // Pending first: a stored result with the id of a pending task can only
    // be the refusal of a duplicate submit, not the result asked for.
    if (tasks_.count(id) != 0) {
      results_.watch(id, sessions_.session_of(identity));
    } else if (auto frames = results_.find(id)) {
      out.push_back({Outgoing::kClient, identity, std::move(*frames)});
    } else if (finished_.find(id) != nullptr) {
      // It ran to its end, but its result is no longer kept: a named
      // failure, so a client that comes back late is not left waiting.
      Header h;
      h.type = MsgType::kResult;
      h.id = id;
      h.status = static_cast<std::uint32_t>(ResultStatus::kLost);
      h.aux = -1;
      h.text = "task " + std::to_string(id) +
               " ended, but its result is no longer kept (its session expired, or the store dropped it)";
      out.push_back({Outgoing::kClient, identity, proto::encode(h)});
    } else {
      // Not a task result: not stored and not counted in done/failed.
      Header h;
      h.type = MsgType::kResult;
      h.id = id;
      h.status = static_cast<std::uint32_t>(ResultStatus::kRejected);
      h.aux = -1;
      h.text = "no result for task " + std::to_string(id);
      out.push_back({Outgoing::kClient, identity, proto::encode(h)});
    }
  }
}

void Scheduler::notify_watchers(std::uint64_t task_id, const std::string& owner, Outbox& out) {
  const std::string* owner_identity = sessions_.identity_of(owner);
  for (const std::string& session : results_.take_watchers(task_id)) {
    const std::string* identity = sessions_.identity_of(session);
    if (identity == nullptr || (owner_identity != nullptr && *identity == *owner_identity)) continue;
    if (auto frames = results_.find(task_id)) {
      out.push_back({Outgoing::kClient, *identity, std::move(*frames)});
    } else {
      // Larger than the whole unacknowledged bound: dropped as soon as it
      // was stored.
      Header h;
      h.type = MsgType::kResult;
      h.id = task_id;
      h.status = static_cast<std::uint32_t>(ResultStatus::kRejected);
      h.aux = -1;
      h.text = "no result for task " + std::to_string(task_id) + ": evicted from the result store";
      out.push_back({Outgoing::kClient, *identity, proto::encode(h)});
    }
  }
}

void Scheduler::expire_sessions(Clock::time_point now) {
  const auto timeout = options_.session_timeout;
  if (timeout.count() <= 0 || now < next_session_sweep_) return;
  // A sweep costs a pass over the sessions (and over the pending tasks when
  // some session is idle), so it runs a few times per timeout, at most once
  // a tick and at least once a minute.
  const Clock::duration tick = tick_interval();
  const Clock::duration every =
      std::clamp<Clock::duration>(timeout / 4, tick, std::max<Clock::duration>(tick, std::chrono::minutes(1)));
  next_session_sweep_ = now + every;
  std::vector<const std::string*> idle = sessions_.idle(now, timeout);
  if (!idle.empty()) {
    // A session with a pending task stays: the task points at its name, and
    // its result has somewhere to wait for a client that comes back.
    std::sort(idle.begin(), idle.end());
    std::vector<bool> busy(idle.size(), false);
    for (const auto& [id, t] : tasks_) {
      auto it = std::lower_bound(idle.begin(), idle.end(), t.client);
      if (it != idle.end() && *it == t.client) busy[it - idle.begin()] = true;
    }
    for (std::size_t i = 0; i < idle.size(); ++i) {
      if (busy[i]) continue;
      counters_.results_expired += results_.forget_session(*idle[i]);
      ++counters_.sessions_expired;
      sessions_.forget(idle[i]);
    }
  }
  sessions_.forget_idle_peers(now, timeout);
}

}  // namespace zfarm::broker
