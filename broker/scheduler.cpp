#include "scheduler.hpp"

#include <algorithm>
#include <limits>
#include <utility>

namespace zfarm::broker {

namespace {

using proto::Header;
using proto::Message;
using proto::MsgType;
using proto::ResultStatus;

Header make_header(MsgType type, std::uint64_t id) {
  Header h;
  h.type = type;
  h.id = id;
  return h;
}

}  // namespace

void frame_header(Outgoing& o) {
  if (o.header_size == 0) return;
  Frames& f = o.frames;
  const std::size_t n = f.size();
  f.emplace_back();
  f.emplace_back();
  std::move_backward(f.begin(), f.begin() + static_cast<std::ptrdiff_t>(n), f.end());
  proto::write_signature(f[0]);
  f[1].rebuild(o.header.data(), o.header_size);
  o.header_size = 0;
}

Scheduler::Scheduler(SchedulerOptions options)
    : options_(std::move(options)),
      finished_(options_.finished_record),
      results_(ResultStore::Limits{options_.result_cache_bytes, options_.max_unacked_bytes}),
      incarnation_(options_.incarnation.empty() ? random_incarnation() : options_.incarnation) {
  if (options_.heartbeat.count() < 1) options_.heartbeat = std::chrono::milliseconds(1);
  if (options_.liveness < 1) options_.liveness = 1;
  if (options_.max_credit < 1) options_.max_credit = 1;
  results_.give_frames_to(&frames_pool_);
}

std::chrono::milliseconds Scheduler::tick_interval() const {
  return std::max(std::chrono::milliseconds(1), options_.heartbeat / 4);
}

std::int64_t Scheduler::engine_id(const std::string& identity) const {
  auto it = engine_by_identity_.find(identity);
  return it == engine_by_identity_.end() ? -1 : it->second;
}

std::int64_t Scheduler::inflight(std::int64_t id) const {
  auto it = engines_.find(id);
  return it == engines_.end() ? -1 : static_cast<std::int64_t>(it->second.inflight.size());
}

// ---- input from the sockets ------------------------------------------------

void Scheduler::on_client_frames(Frames& frames, Clock::time_point now, Outbox& out) {
  if (frames.empty() || frames[0].size() == 0) {
    ++counters_.bad_messages;  // nobody to answer
    return;
  }
  std::string identity = frames[0].to_string();
  Message& msg = scratch_;
  proto::Status st = proto::decode(frames, 1, &msg, options_.limits);
  if (!st.ok()) {
    ++counters_.bad_messages;
    sessions_.heard_from(identity, now);
    send_error(Outgoing::kClient, identity, 0, st.detail, out);
    if (st.code == proto::DecodeError::kTooManyFrames) reject_oversized_submit(identity, frames, st.detail, out);
    return;
  }
  on_client(identity, std::move(msg), now, out);
  msg.payload.clear();  // frames the handler did not take are not kept until the next message
}

void Scheduler::reject_oversized_submit(const std::string& identity, const Frames& frames, const std::string& why,
                                        Outbox& out) {
  // Only the frame count was wrong: if the header is a Submit, its tasks end
  // now as Rejected, else the client would wait for them forever.
  if (frames.size() < 3 || !proto::check_signature(frames[1]).ok()) return;
  Header h;
  if (!proto::decode_header(frames[2].data(), frames[2].size(), &h, options_.limits).ok()) return;
  if (h.type != MsgType::kSubmit) return;
  const bool balanced = h.targets.empty() || (h.targets.size() == 1 && h.targets[0] == proto::kLoadBalanced);
  const std::size_t k = balanced ? 1 : h.targets.size();
  if (h.id > std::numeric_limits<std::uint64_t>::max() - (k - 1)) return;
  const std::string client = sessions_.session_of(identity);
  for (std::size_t i = 0; i < k; ++i) {
    const std::uint64_t tid = h.id + i;
    if (tasks_.count(tid) != 0 || abandoned_.count(tid) != 0) continue;  // not this message's task
    reject(client, tid, balanced ? -1 : h.targets[i], "task not accepted: " + why, out);
  }
}

void Scheduler::on_engine_frames(Frames& frames, Clock::time_point now, Outbox& out) {
  if (frames.empty() || frames[0].size() == 0) {
    ++counters_.bad_messages;
    return;
  }
  std::string identity = frames[0].to_string();
  // Any message, even a bad one, shows the engine is alive.
  auto known = engine_by_identity_.find(identity);
  if (known != engine_by_identity_.end()) engines_.at(known->second).last_seen = now;
  Message& msg = scratch_;
  proto::Status st = proto::decode(frames, 1, &msg, options_.limits);
  if (!st.ok()) {
    ++counters_.bad_messages;
    if (st.code == proto::DecodeError::kBadOutput) {
      // Output is best effort: dropped and counted, not answered (a faulty
      // engine would otherwise log an Error for every chunk).
      ++counters_.outputs_malformed;
      return;
    }
    send_error(Outgoing::kEngine, identity, 0, st.detail, out);
    return;
  }
  on_engine(identity, std::move(msg), now, out);
  msg.payload.clear();
  // A Result's payload went with it (to the ResultStore): storage for the next.
  if (msg.payload.capacity() == 0) msg.payload = frames_pool_.take(0);
}

void Scheduler::on_client(const std::string& identity, Message&& msg, Clock::time_point now,
                          Outbox& out) {
  now_ = now;
  sessions_.heard_from(identity, now);
  switch (msg.header.type) {
    case MsgType::kHello:
      handle_hello(identity, msg, out);
      return;
    case MsgType::kHeartbeat:
      send_welcome(identity, msg.header.id, out);
      return;
    case MsgType::kAck:
      handle_ack(identity, msg);
      return;
    case MsgType::kFetch:
      handle_fetch(identity, msg, out);
      return;
    case MsgType::kSubmit:
      handle_submit(sessions_.session_of(identity), std::move(msg), out);
      return;
    case MsgType::kStatus:
      handle_status(identity, msg, out);
      return;
    case MsgType::kShutdown:
      if (!shutting_down_) shutdown("the cluster was shut down by a client", out);
      // Acknowledge, so the client may wait for it.
      out.push_back({Outgoing::kClient, identity, proto::encode(make_header(MsgType::kShutdown, msg.header.id))});
      return;
    case MsgType::kAbort:
      handle_abort(msg, out);
      return;
    case MsgType::kInterrupt:
      handle_interrupt(msg, out);
      return;
    case MsgType::kBatch:
      on_batch(Outgoing::kClient, identity, msg, now, out);
      return;
    case MsgType::kError:
      ++counters_.errors_received;  // never answer an Error with an Error
      return;
    default:
      ++counters_.bad_messages;
      send_error(Outgoing::kClient, identity, msg.header.id,
                 std::string("unexpected message type from a client: ") + proto::to_string(msg.header.type),
                 out);
      return;
  }
}

void Scheduler::on_engine(const std::string& identity, Message&& msg, Clock::time_point now,
                          Outbox& out) {
  now_ = now;
  if (msg.header.type == MsgType::kRegister) {
    handle_register(identity, msg, now, out);
    return;
  }
  auto known = engine_by_identity_.find(identity);
  if (known == engine_by_identity_.end()) {
    switch (msg.header.type) {
      case MsgType::kHeartbeat:
      case MsgType::kResult:
      case MsgType::kBatch:  // one Error for the lot: its Results are dropped alike
      case MsgType::kCredit:
        // Most likely an engine we declared dead; it will register again.
        // (A Credit's tasks were dealt with when it was removed.)
        if (msg.header.type == MsgType::kCredit) ++counters_.credits_ignored;
        send_error(Outgoing::kEngine, identity, msg.header.id, "unknown engine: register again", out);
        return;
      case MsgType::kShutdown:
        return;  // already gone
      case MsgType::kOutput:
        ++counters_.outputs_dropped;  // its task was given up with the engine
        return;
      case MsgType::kError:
        ++counters_.errors_received;
        return;
      default:
        ++counters_.bad_messages;
        send_error(Outgoing::kEngine, identity, msg.header.id,
                   std::string("unexpected message type from an engine: ") + proto::to_string(msg.header.type),
                   out);
        return;
    }
  }
  Engine& engine = engines_.at(known->second);
  engine.last_seen = now;
  switch (msg.header.type) {
    case MsgType::kHeartbeat:
      out.push_back({Outgoing::kEngine, identity, proto::encode(make_header(MsgType::kHeartbeat, 0))});
      return;
    case MsgType::kResult:
      handle_result(engine, std::move(msg), out);
      return;
    case MsgType::kOutput:
      handle_output(engine, std::move(msg), out);
      return;
    case MsgType::kCredit:
      handle_credit(engine, msg, out);
      return;
    case MsgType::kBatch:
      on_batch(Outgoing::kEngine, identity, msg, now, out);
      return;
    case MsgType::kShutdown:
      remove_engine(engine.id, "the engine shut down", out);
      dispatch(out);
      return;
    case MsgType::kError:
      ++counters_.errors_received;
      return;
    default:
      ++counters_.bad_messages;
      send_error(Outgoing::kEngine, identity, msg.header.id,
                 std::string("unexpected message type from an engine: ") + proto::to_string(msg.header.type),
                 out);
      return;
  }
}

void Scheduler::on_batch(Outgoing::Side side, const std::string& identity, const Message& batch,
                         Clock::time_point now, Outbox& out) {
  std::size_t records = 0;
  const proto::Status st = proto::decode_batch(batch, batch_, &records, options_.limits);
  if (!st.ok()) {
    ++counters_.bad_messages;
    send_error(side, identity, batch.header.id, st.detail, out);
    return;
  }
  ++counters_.batches_in;
  counters_.batch_records_in += records;
  // Records are never Batches (decode_batch), so batch_ is not reused below.
  for (std::size_t i = 0; i < records; ++i) {
    Message& m = batch_[i];
    if (side == Outgoing::kClient) {
      on_client(identity, std::move(m), now, out);
    } else {
      on_engine(identity, std::move(m), now, out);
    }
    m.payload.clear();  // as on_client_frames / on_engine_frames do after each message
    // As on_engine_frames does.  A client's records (Submits) take theirs
    // from payload_pool_: a Submit's payload may wait in a queue for long,
    // in a vector of about its own size.
    if (m.payload.capacity() == 0) {
      m.payload = side == Outgoing::kEngine ? frames_pool_.take(0) : payload_pool_.take(0);
    }
  }
}

// ---- engines ------------------------------------------------------------------

void Scheduler::handle_register(const std::string& identity, const Message& msg, Clock::time_point now,
                                Outbox& out) {
  std::int64_t id = engine_id(identity);
  bool joined = false;
  if (id < 0) {
    if (shutting_down_) {
      out.push_back({Outgoing::kEngine, identity, proto::encode(make_header(MsgType::kShutdown, 0))});
      return;
    }
    if (msg.header.aux < 1) {
      ++counters_.bad_messages;
      send_error(Outgoing::kEngine, identity, msg.header.id, "register: credit (aux) must be at least 1", out);
      return;
    }
    id = next_engine_id_++;
    Engine& e = engines_[id];
    e.id = id;
    e.identity = identity;
    e.host = msg.header.text;
    e.credit = std::min(msg.header.aux, options_.max_credit);
    e.gives_back = msg.header.opts.revision >= 2;
    e.batches = msg.header.opts.revision >= 4;
    e.last_seen = now;
    refile(e);
    engine_by_identity_[identity] = id;
    joined = true;
  } else if (msg.header.aux >= 1) {
    // An engine registering again starts over at the credit it names (its
    // base credit): it forgot any it announced with Credit since.
    Engine& e = engines_.at(id);
    e.credit = std::min(msg.header.aux, options_.max_credit);
    e.batches = msg.header.opts.revision >= 4;
    refile(e);
  }
  // A repeated Register (say, our reply was lost) gets the same answer.
  Header reply = make_header(MsgType::kRegisterReply, msg.header.id);
  reply.aux = id;
  reply.status = static_cast<std::uint32_t>(options_.heartbeat.count());
  reply.text = incarnation_;  // lets an engine tell a restarted broker from a lost reply
  reply.opts.revision = proto::kRevision;  // this broker forwards Output and takes Credit
  out.push_back({Outgoing::kEngine, identity, proto::encode(reply)});
  if (joined) notify_clients(proto::EventKind::kEngineJoined, id, engines_.at(id).host, out);
  dispatch(out);
}

void Scheduler::handle_result(Engine& engine, Message&& msg, Outbox& out) {
  const std::uint64_t id = msg.header.id;
  auto it = std::find(engine.inflight.begin(), engine.inflight.end(), id);
  if (it == engine.inflight.end()) {
    // Not ours (a duplicate, or the task was given up on): drop and count.
    ++counters_.dropped_results;
    return;
  }
  engine.inflight.erase(it);
  refile(engine);
  if (abandoned_.erase(id) != 0) {
    // It timed out while running: the client has its answer already.  Only
    // now is the engine's slot free again.
    --engine.abandoned;
    ++counters_.dropped_results;
    dispatch(out);
    return;
  }
  ++engine.done;
  proto::Timing timing;
  // A malformed timing costs the client its timing only, not its result.
  if (proto::read_timing(msg.header, &timing) == proto::TimingField::kMalformed) ++counters_.bad_timing;
  finish(id, static_cast<ResultStatus>(msg.header.status), engine.id, std::move(msg.header.text),
         std::move(msg.payload), out, timing);
  dispatch(out);
}

void Scheduler::handle_credit(Engine& engine, const Message& msg, Outbox& out) {
  const Header& h = msg.header;
  if (h.targets.size() != 1 || h.targets[0] != engine.id) {
    // Sent under an earlier registration of this identity: its tasks were
    // retried or ended when that one was removed.
    ++counters_.credits_ignored;
    return;
  }
  ++counters_.credits;
  if (h.aux >= 1) {
    engine.credit = std::min(h.aux, options_.max_credit);
  } else {
    // The tasks it gives back are taken all the same: the engine no longer
    // holds them, and each must still end in one result.
    ++counters_.bad_messages;
    send_error(Outgoing::kEngine, engine.identity, h.id, "credit: aux must be at least 1", out);
  }
  std::vector<std::uint64_t> back;
  for (std::uint64_t id : h.opts.ids) {
    auto it = std::find(engine.inflight.begin(), engine.inflight.end(), id);
    if (it == engine.inflight.end()) {
      ++counters_.give_back_ignored;  // not in flight here (a repeat, or a bad engine)
      continue;
    }
    engine.inflight.erase(it);
    if (abandoned_.erase(id) != 0) {
      --engine.abandoned;  // timed out meanwhile: its client has its answer
      continue;
    }
    Task& t = tasks_.at(id);
    if (t.interrupted) {
      // The Interrupt crossed the Credit: the engine no longer held the
      // task, so it answered nothing.  End it as the engine would have.
      finish(id, ResultStatus::kAborted, engine.id, "interrupted before it started", {}, out);
      continue;
    }
    if (engine.gives_back || (t.balanced && t.retries > 0)) {
      back.push_back(id);
    } else {
      // Sent without keeping its payload (send_task): the engine named no
      // revision 2 when it registered, so nothing can be sent again.
      finish(id, ResultStatus::kEngineDied, engine.id,
             "engine " + std::to_string(engine.id) + " gave the task back, and it cannot be sent again", {}, out);
    }
  }
  // Back to the front of where each came from, in their order: they were
  // sent before anything still queued there.  Not a retry: retries stay.
  for (auto r = back.rbegin(); r != back.rend(); ++r) make_ready(tasks_.at(*r), /*front=*/true, out);
  counters_.given_back += back.size();
  refile(engine);
  dispatch(out);
}

void Scheduler::tick(Clock::time_point now, Outbox& out) {
  now_ = now;
  expire(now, out);
  expire_sessions(now);
  const auto limit = options_.heartbeat * options_.liveness;
  std::vector<std::int64_t> dead;
  for (const auto& [id, e] : engines_) {
    if (now - e.last_seen > limit) dead.push_back(id);
  }
  for (std::int64_t id : dead) remove_engine(id, "the engine stopped sending heartbeats", out);
  dispatch(out);
}

void Scheduler::remove_engine(std::int64_t id, std::string_view reason, Outbox& out) {
  auto found = engines_.find(id);
  if (found == engines_.end()) return;
  unfile(found->second);
  auto node = engines_.extract(found);
  Engine& e = node.mapped();
  engine_by_identity_.erase(e.identity);
  ++counters_.engines_lost;
  const std::string text = "engine " + std::to_string(id) + " (" + e.host + ") died: " + std::string(reason);
  std::vector<std::uint64_t> retry;
  for (std::uint64_t tid : e.inflight) {
    if (abandoned_.erase(tid) != 0) continue;  // its client was answered at the timeout
    Task& t = tasks_.at(tid);
    if (t.extras) std::erase(t.extras->allowed, id);
    // A retry needs somewhere to go: not a follow task (its engine is this
    // one), nor a restricted one whose engines are all gone.
    const bool can_retry = t.balanced && t.retries > 0 && t.pin < 0 && (!t.restricted || !t.extras->allowed.empty());
    if (can_retry) {
      --t.retries;
      t.engine = -1;
      retry.push_back(tid);
    } else {
      finish(tid, ResultStatus::kEngineDied, id, text, {}, out);
    }
  }
  // Retried tasks go back to the front of their client's queue at their
  // priority, keeping their order: they were submitted before anything of
  // that client still waiting there.
  for (auto r = retry.rbegin(); r != retry.rend(); ++r) make_ready(tasks_.at(*r), /*front=*/true, out);
  counters_.retried += retry.size();
  // Work queued at this engine alone dies with it; restricted work stays in
  // the queues of its other engines, if any are left.
  for (auto& [priority, level] : e.queue.levels) {
    for (const QueueEntry& q : level) {
      auto it = tasks_.find(q.id);
      if (it == tasks_.end() || it->second.ticket != q.ticket) continue;
      Task& t = it->second;
      if (!t.balanced) {
        finish(t.id, ResultStatus::kEngineDied, id, text, {}, out);
      } else if (t.pin == id) {
        finish(t.id, ResultStatus::kImpossible, id,
               "task " + std::to_string(t.id) + " must follow tasks that ran on engine " + std::to_string(id) +
                   ", which is gone: " + text,
               {}, out);
      } else {
        std::erase(t.ext().allowed, id);
        if (t.extras->allowed.empty()) {
          finish(t.id, ResultStatus::kImpossible, id,
                 "task " + std::to_string(t.id) + ": none of its engines is left: " + text, {}, out);
        }
      }
    }
  }
  notify_clients(proto::EventKind::kEngineLeft, id, text, out);
}

// ---- clients ------------------------------------------------------------------

void Scheduler::handle_submit(const std::string& client, Message&& msg, Outbox& out) {
  const Header& h = msg.header;
  // More retries than this are as many as unlimited, and fit the Task's field.
  const auto retries = static_cast<std::int32_t>(
      std::clamp<std::int64_t>(h.opts.retries, 0, std::numeric_limits<std::int32_t>::max()));
  if (shutting_down_) {
    const std::size_t k = h.targets.empty() ? 1 : h.targets.size();
    for (std::size_t i = 0; i < k; ++i) reject(client, h.id + i, -1, "the broker is shutting down", out);
    return;
  }
  if (h.targets.empty()) {
    reject(client, h.id, -1, "submit with no targets", out);
    return;
  }
  // An id is taken while its task is pending, and also while a task that
  // timed out still runs on its engine (its Result would be ambiguous).
  auto taken = [&](std::uint64_t tid) { return tasks_.count(tid) != 0 || abandoned_.count(tid) != 0; };
  if (h.targets.size() == 1 && h.targets[0] == proto::kLoadBalanced) {
    if (taken(h.id)) {
      reject(client, h.id, -1, "task id " + std::to_string(h.id) + " is already pending", out);
      return;
    }
    Task& t = new_task(h.id);
    t.id = h.id;
    t.client = &client;
    t.payload = std::move(msg.payload);
    t.retries = retries;
    t.balanced = true;
    admit(t, h.opts, now_, out);
    dispatch(out);
    return;
  }
  const std::size_t k = h.targets.size();
  if (h.id > std::numeric_limits<std::uint64_t>::max() - (k - 1)) {
    for (std::size_t i = 0; i < k; ++i) reject(client, h.id + i, h.targets[i], "task ids overflow", out);
    return;
  }
  // Which tasks are accepted, first, so the last accepted one can take the
  // original frames instead of a shared copy.
  std::vector<std::size_t> accepted;
  for (std::size_t i = 0; i < k; ++i) {
    const std::uint64_t tid = h.id + i;
    const std::int64_t target = h.targets[i];
    if (engines_.count(target) == 0) {
      reject(client, tid, target, "no engine with id " + std::to_string(target), out);
    } else if (taken(tid)) {
      reject(client, tid, target, "task id " + std::to_string(tid) + " is already pending", out);
    } else {
      // Reserve the id now so a repeated id inside this Submit is refused too.
      Task& t = new_task(tid);
      t.id = tid;
      t.client = &client;
      t.engine = target;
      t.pin = target;
      accepted.push_back(i);
    }
  }
  for (std::size_t n = 0; n < accepted.size(); ++n) {
    const std::size_t i = accepted[n];
    Task& t = tasks_.at(h.id + i);
    t.payload = (n + 1 == accepted.size()) ? std::move(msg.payload) : share_frames(msg.payload);
    admit(t, h.opts, now_, out);
  }
  if (!accepted.empty()) dispatch(out);
}

void Scheduler::handle_status(const std::string& client, const Message& msg, Outbox& out) {
  out.push_back({Outgoing::kClient, client,
                 proto::encode(make_header(MsgType::kStatusReply, msg.header.id), status_payload())});
}

void Scheduler::shutdown(std::string_view reason, Outbox& out) {
  shutting_down_ = true;
  for (const auto& [id, e] : engines_) {
    out.push_back({Outgoing::kEngine, e.identity, proto::encode(make_header(MsgType::kShutdown, 0))});
  }
  // Abort in id order, so what clients see does not depend on hashing.
  std::vector<std::uint64_t> ids;
  ids.reserve(tasks_.size());
  for (const auto& [id, t] : tasks_) ids.push_back(id);
  std::sort(ids.begin(), ids.end());
  for (std::uint64_t id : ids) {
    auto it = tasks_.find(id);
    if (it == tasks_.end()) continue;
    finish(id, ResultStatus::kAborted, it->second.engine, std::string(reason), {}, out);
  }
  shared_ = FairQueue{};
  for (auto& [id, e] : engines_) {
    e.queue = TaskQueue{};
    e.inflight.clear();
    e.abandoned = 0;
    refile(e);
  }
  abandoned_.clear();
  waiters_.clear();
  released_.clear();
}

// ---- dispatch -----------------------------------------------------------------

Scheduler::Engine* Scheduler::least_loaded() {
  return by_load_.empty() ? nullptr : by_load_.begin()->engine;
}

void Scheduler::refile(Engine& e) {
  const std::int64_t free = e.free_credit();
  if (free <= 0) {
    unfile(e);
    return;
  }
  const LoadKey key{free, static_cast<std::int64_t>(e.inflight.size()), e.id, &e};
  if (!e.filed) {
    if (e.spare.empty()) {
      by_load_.insert(key);
    } else {
      e.spare.value() = key;
      by_load_.insert(std::move(e.spare));
      e.spare = {};
    }
    e.filed = true;
  } else if (!(e.load_key == key)) {
    auto node = by_load_.extract(e.load_key);  // reuses the node: no allocation
    node.value() = key;
    by_load_.insert(std::move(node));
  }
  e.load_key = key;
  if (!e.in_work && e.queue.entries > 0) {
    with_work_.emplace(e.id, &e);
    e.in_work = true;
  }
}

void Scheduler::unfile(Engine& e) {
  if (e.filed) {
    e.spare = by_load_.extract(e.load_key);
    e.filed = false;
  }
  if (e.in_work) {
    with_work_.erase(e.id);
    e.in_work = false;
  }
}

void Scheduler::dispatch(Outbox& out) {
  if (shutting_down_) {
    released_.clear();
    return;
  }
  release_waiters(out);
  // Each round sends the task that comes first by priority among the front
  // of the shared queue and the fronts of the queues of the engines with
  // free credit (FIFO within a priority).  Only engines with credit and work
  // of their own (with_work_) are looked at, so neither busy engines nor
  // idle ones without such work cost anything per task.
  for (;;) {
    Engine* best = nullptr;
    const QueueEntry* best_entry = nullptr;
    for (auto it = with_work_.begin(); it != with_work_.end();) {
      Engine& e = *it->second;
      const QueueEntry* f = e.free_credit() > 0 ? front_of(e.queue) : nullptr;
      if (f == nullptr) {  // its entries went stale: out until it gets more
        e.in_work = false;
        it = with_work_.erase(it);
        continue;
      }
      ++it;
      // The same restricted task heads several queues: the roomiest engine gets it.
      const bool roomier = best != nullptr && f->id == best_entry->id &&
                           (e.free_credit() > best->free_credit() ||
                            (e.free_credit() == best->free_credit() && e.inflight.size() < best->inflight.size()));
      if (best_entry == nullptr || ahead(*f, *best_entry) || roomier) {
        best = &e;
        best_entry = f;
      }
    }
    // At equal priority an engine's own queue goes first: that work can run
    // nowhere else.
    // No engine with free credit and no engine work: the shared queue's
    // front need not be looked for (most calls when the engines are busy).
    const QueueEntry* shared = (best_entry == nullptr && by_load_.empty()) ? nullptr : front_of(shared_);
    if (best_entry != nullptr && (shared == nullptr || shared->priority <= best_entry->priority)) {
      const std::uint64_t tid = best_entry->id;
      pop_front(best->queue);
      send_task(*best, tasks_.at(tid), out);
      continue;
    }
    if (shared == nullptr) break;
    Engine* e = least_loaded();
    if (e == nullptr) break;
    const std::uint64_t tid = shared->id;
    pop_front(shared_);
    send_task(*e, tasks_.at(tid), out);
  }
}

void Scheduler::send_task(Engine& engine, Task& task, Outbox& out) {
  unqueue(task);
  task.state = State::kRunning;
  task.engine = engine.id;
  Header h = make_header(MsgType::kTask, task.id);
  h.aux = engine.id;
  // Keep the frames while a retry or a give-back may need them; otherwise
  // hand them over.
  Frames payload = (engine.gives_back || (task.balanced && task.retries > 0))
                       ? share_frames(task.payload, frames_pool_.take(task.payload.size() + 2), 0, 2)
                       : std::move(task.payload);
  engine.inflight.push_back(task.id);
  refile(engine);
  if (engine.batches) {
    // Small enough for a Batch: the header is written inline, the payload
    // frames kept as they are (see Outgoing::header).
    Outgoing& o = out.emplace_back(Outgoing{Outgoing::kEngine, engine.identity, std::move(payload)});
    const std::size_t header_size = proto::encode_small_header(h, o.header.data());
    const std::size_t bytes =
        header_size == 0 ? 0 : proto::batch_record_bytes(MsgType::kTask, header_size, o.frames.data(), o.frames.size());
    if (bytes != 0) {
      o.header_size = static_cast<std::uint8_t>(header_size);
      o.batchable = true;
      o.batch_bytes = static_cast<std::uint32_t>(bytes);
    } else {
      o.frames = proto::encode(h, std::move(o.frames));
    }
    return;
  }
  out.push_back(Outgoing{Outgoing::kEngine, engine.identity, proto::encode(h, std::move(payload))});
}

// ---- results ------------------------------------------------------------------

void Scheduler::finish(std::uint64_t task_id, ResultStatus status, std::int64_t aux, std::string text,
                       Frames payload, Outbox& out, const proto::Timing& timing) {
  auto node = tasks_.extract(task_id);
  if (node.empty()) return;
  retire(node.mapped(), status);
  send_result(*node.mapped().client, task_id, static_cast<std::uint32_t>(status), aux, std::move(text),
              std::move(payload), out, timing);
  notify_watchers(task_id, *node.mapped().client, out);
  payload_pool_.give(std::move(node.mapped().payload));
  if (spare_tasks_.size() < kSpareTasks) {
    node.mapped() = Task{};  // frees what the task held (payload, extras)
    spare_tasks_.push_back(std::move(node));
  }
}

Scheduler::Task& Scheduler::new_task(std::uint64_t id) {
  if (spare_tasks_.empty()) return tasks_[id];
  auto node = std::move(spare_tasks_.back());
  spare_tasks_.pop_back();
  node.key() = id;
  return tasks_.insert(std::move(node)).position->second;
}

void Scheduler::reject(const std::string& client, std::uint64_t task_id, std::int64_t aux, std::string text,
                       Outbox& out) {
  send_result(client, task_id, static_cast<std::uint32_t>(ResultStatus::kRejected), aux, std::move(text), {},
              out);
}

void Scheduler::send_result(const std::string& client, std::uint64_t task_id, std::uint32_t status,
                            std::int64_t aux, std::string text, Frames payload, Outbox& out,
                            const proto::Timing& timing) {
  Header& h = result_header_;
  h.type = MsgType::kResult;
  h.id = task_id;
  h.status = status;
  h.aux = aux;
  h.text = std::move(text);
  proto::put_timing(timing, &h);
  ++counters_.done;
  if (status != static_cast<std::uint32_t>(ResultStatus::kOk)) ++counters_.failed;
  // `client` is a session: the store keeps the result until that session
  // acknowledges it, and a shared copy goes to the session's identity now.
  const std::size_t frames = payload.size() + 2;
  std::int64_t revision = 0;
  const std::string* identity = sessions_.identity_of(client, &revision);
  if (identity != nullptr && revision >= 4) {
    // For a Batch: the header is written once, inline, and made into the
    // frames the store keeps from there; what goes out now shares only the
    // payload (see Outgoing::header).
    Outgoing& o = out.emplace_back(Outgoing{Outgoing::kClient, *identity, {}});
    const std::size_t header_size = proto::encode_small_header(h, o.header.data());
    const std::size_t bytes = header_size == 0 ? 0
                                               : proto::batch_record_bytes(MsgType::kResult, header_size,
                                                                           payload.data(), payload.size());
    if (bytes != 0) {
      o.header_size = static_cast<std::uint8_t>(header_size);
      o.frames = std::move(payload);
      frame_header(o);
      o.frames = results_.add(client, task_id, std::move(o.frames), frames_pool_.take(frames), 2);  // room as for a whole message: the pool keeps it
      o.header_size = static_cast<std::uint8_t>(header_size);
      o.batchable = true;
      o.batch_bytes = static_cast<std::uint32_t>(bytes);
    } else {
      o.frames = results_.add(client, task_id, proto::encode(h, std::move(payload)), frames_pool_.take(frames));
    }
    return;
  }
  Frames now = results_.add(client, task_id, proto::encode(h, std::move(payload)), frames_pool_.take(frames));
  if (identity != nullptr) out.push_back(Outgoing{Outgoing::kClient, *identity, std::move(now)});
}

void Scheduler::send_error(Outgoing::Side side, const std::string& identity, std::uint64_t id, std::string text,
                           Outbox& out) {
  Header h = make_header(MsgType::kError, id);
  // Keep our reply within the peer's decoder limit whatever the detail says.
  if (text.size() > 1024) text.resize(1024);
  h.text = std::move(text);
  out.push_back({side, identity, proto::encode(h)});
}

}  // namespace zfarm::broker
