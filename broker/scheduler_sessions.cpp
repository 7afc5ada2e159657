// The Scheduler's client-session side: Hello and Welcome, Ack, Fetch, and
// results for those who fetched a task while it was pending.  The state is in
// Sessions (sessions.hpp) and ResultStore (result_store.hpp); this file only
// connects messages to them.
#include <utility>

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
  const Sessions::Bind bind = sessions_.bind(msg.header.opts.session, identity);
  send_welcome(identity, msg.header.id, out);
  if (bind != Sessions::Bind::kRebound) return;
  // A client back on a new socket: everything it has not acknowledged, in
  // task-id order.
  const std::string session = sessions_.session_of(identity);
  for (Frames& f : results_.unacked(session)) out.push_back({Outgoing::kClient, identity, std::move(f)});
}

void Scheduler::send_welcome(const std::string& identity, std::uint64_t id, Outbox& out) {
  Header h;
  h.type = MsgType::kWelcome;
  h.id = id;
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

}  // namespace zfarm::broker
