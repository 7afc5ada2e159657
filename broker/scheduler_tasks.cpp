// The Scheduler's task options: priorities, dependencies (after, follow),
// engine restrictions, timeouts, Abort, Interrupt and engine Events.
//
// Queues hold entries (id, ticket); a task leaving a queue another way than
// from its front (abort, timeout, taken from another engine's queue) only
// clears its ticket, and the stale entry is skipped when it reaches the front
// or dropped when the queue is compacted.  So every operation is O(log n) or
// amortised O(1) in the number of queued tasks.
#include <algorithm>
#include <map>
#include <utility>

#include "scheduler.hpp"

namespace zfarm::broker {

namespace {

using proto::Header;
using proto::Message;
using proto::MsgType;
using proto::ResultStatus;

// Longest timeout honoured; larger ones are clamped so deadlines cannot
// overflow the clock (about 30 years).
constexpr std::int64_t kMaxTimeoutMs = std::int64_t{1} << 40;
// A queue is compacted when it holds more than twice its live entries plus
// this many: rare enough to be cheap, soon enough to bound the memory.
constexpr std::size_t kCompactSlack = 1024;

std::string status_name(std::uint32_t status) {
  return proto::to_string(static_cast<ResultStatus>(status));
}

}  // namespace

// ---- queues -------------------------------------------------------------------

bool Scheduler::ahead(const QueueEntry& a, const QueueEntry& b) {
  return a.priority > b.priority || (a.priority == b.priority && a.seq < b.seq);
}

void Scheduler::enqueue(TaskQueue& q, Task& t, bool front) {
  QueueEntry e{t.id, t.ticket, t.seq, t.priority};
  auto& level = q.levels[t.priority];
  if (front) {
    level.push_front(e);
  } else {
    level.push_back(e);
  }
  ++q.entries;
  ++q.live;
}

const Scheduler::QueueEntry* Scheduler::front_of(TaskQueue& q) {
  while (!q.levels.empty()) {
    auto level = q.levels.begin();
    auto& entries = level->second;
    while (!entries.empty()) {
      const QueueEntry& e = entries.front();
      auto it = tasks_.find(e.id);
      if (it != tasks_.end() && it->second.ticket == e.ticket) return &e;
      entries.pop_front();
      --q.entries;
    }
    q.levels.erase(level);
  }
  return nullptr;
}

void Scheduler::enqueue(FairQueue& q, Task& t, bool front) {
  q.push(t.client, QueueEntry{t.id, t.ticket, t.seq, t.priority}, front);
}

const Scheduler::QueueEntry* Scheduler::front_of(FairQueue& q) {
  return q.front([&](const QueueEntry& e) {
    auto it = tasks_.find(e.id);
    return it != tasks_.end() && it->second.ticket == e.ticket;
  });
}

void Scheduler::compact(FairQueue& q) {
  q.compact(
      [&](const QueueEntry& e) {
        auto it = tasks_.find(e.id);
        return it != tasks_.end() && it->second.ticket == e.ticket;
      },
      kCompactSlack);
}

void Scheduler::pop_front(TaskQueue& q) {
  auto level = q.levels.begin();
  level->second.pop_front();
  --q.entries;
  if (level->second.empty()) q.levels.erase(level);
}

void Scheduler::compact(TaskQueue& q) {
  if (q.entries <= 2 * q.live + kCompactSlack) return;
  std::size_t kept = 0;
  for (auto level = q.levels.begin(); level != q.levels.end();) {
    auto& entries = level->second;
    std::erase_if(entries, [&](const QueueEntry& e) {
      auto it = tasks_.find(e.id);
      return it == tasks_.end() || it->second.ticket != e.ticket;
    });
    kept += entries.size();
    level = entries.empty() ? q.levels.erase(level) : std::next(level);
  }
  q.entries = kept;
}

void Scheduler::unqueue(Task& t) {
  if (t.ticket == 0) return;
  switch (t.state) {
    case State::kBlocked:
      --blocked_;
      break;
    case State::kShared:
      shared_.forget();
      t.ticket = 0;
      compact(shared_);
      break;
    case State::kEngineQueued: {
      t.ticket = 0;
      auto drop = [&](std::int64_t id) {
        auto e = engines_.find(id);
        if (e == engines_.end()) return;
        --e->second.queue.live;
        compact(e->second.queue);
      };
      if (t.pin >= 0) {
        drop(t.pin);
      } else {
        for (std::int64_t id : t.ext().allowed) drop(id);
      }
      break;
    }
    case State::kRunning:
      break;
  }
  t.ticket = 0;
}

// ---- admission and dependencies ---------------------------------------------------

void Scheduler::admit(Task& t, const proto::Options& opts, Clock::time_point now, Outbox& out) {
  t.priority = opts.priority;
  if (opts.timeout_ms > 0) {
    TaskExtras& x = t.ext();
    x.timeout_ms = std::min(opts.timeout_ms, kMaxTimeoutMs);
    x.timer = timers_.emplace(now + std::chrono::milliseconds(x.timeout_ms), t.id);
    t.has_timer = true;
  }
  t.state = State::kBlocked;
  t.ticket = next_ticket_++;
  ++blocked_;
  if (t.balanced && !opts.engines.empty()) {
    t.restricted = true;
    auto& allowed = t.ext().allowed;
    for (std::int64_t id : opts.engines) {
      if (engines_.count(id) != 0 && std::find(allowed.begin(), allowed.end(), id) == allowed.end()) {
        allowed.push_back(id);
      }
    }
    if (allowed.empty()) {
      std::string list;
      for (std::size_t i = 0; i < opts.engines.size() && i < 16; ++i) {
        if (i != 0) list += ", ";
        list += std::to_string(opts.engines[i]);
      }
      if (opts.engines.size() > 16) list += ", ...";
      finish(t.id, ResultStatus::kImpossible, -1,
             "task " + std::to_string(t.id) + " may run only on engines [" + list + "], and none of them is registered",
             {}, out);
      return;
    }
  }
  // Each dependency once, with what it is for.
  std::map<std::uint64_t, std::uint8_t> deps;
  for (std::uint64_t d : opts.after) deps[d] |= kAfterDep;
  for (std::uint64_t d : opts.follow) deps[d] |= kFollowDep;
  for (const auto& [dep, flags] : deps) {
    if (dep == t.id) {
      finish(t.id, ResultStatus::kImpossible, -1, "task " + std::to_string(t.id) + " depends on itself", {}, out);
      return;
    }
    if (tasks_.count(dep) != 0) {
      waiters_[dep].push_back({t.id, t.ticket, flags});
      ++t.ext().waiting;
      continue;
    }
    const FinishedRecord::Entry* known = finished_.find(dep);
    if (known == nullptr) continue;  // never heard of it: counts as ended Ok
    std::string why = check_dependency(t, dep, flags, known->status, known->engine);
    if (!why.empty()) {
      finish(t.id, ResultStatus::kImpossible, -1, std::move(why), {}, out);
      return;
    }
  }
  if (!t.extras || t.extras->waiting == 0) make_ready(t, /*front=*/false, out);
}

std::string Scheduler::check_dependency(Task& t, std::uint64_t dep, std::uint8_t flags, std::uint32_t status,
                                        std::int64_t engine) {
  const std::string who = "task " + std::to_string(t.id);
  const std::string what = "task " + std::to_string(dep);
  if ((flags & kAfterDep) && status != static_cast<std::uint32_t>(ResultStatus::kOk)) {
    return who + " depends on " + what + ", which ended " + status_name(status);
  }
  if (flags & kFollowDep) {
    if (engine < 0) {
      return who + " must follow " + what + ", which never ran on an engine (it ended " + status_name(status) + ")";
    }
    const std::int64_t before = t.follow_engine();
    if (before >= 0 && before != engine) {
      return who + " must follow tasks that ran on different engines (" + std::to_string(before) + " and " +
             std::to_string(engine) + ")";
    }
    t.ext().follow_engine = engine;
  }
  return {};
}

void Scheduler::make_ready(Task& t, bool front, Outbox& out) {
  // The reasons below are spelled out only when a task cannot run: building
  // them for every task would cost an allocation each.
  auto who = [&] { return "task " + std::to_string(t.id); };
  const std::int64_t follow = t.follow_engine();
  if (follow >= 0) {
    const std::string where = std::to_string(follow);
    std::string why;
    if (!t.balanced && t.pin != follow) {
      why = who() + " targets engine " + std::to_string(t.pin) + " but follows tasks that ran on engine " + where;
    } else if (t.restricted && std::find(t.extras->allowed.begin(), t.extras->allowed.end(), follow) ==
                                   t.extras->allowed.end()) {
      why = who() + " follows tasks that ran on engine " + where + ", which is not among its engines";
    } else if (engines_.count(follow) == 0) {
      why = who() + " follows tasks that ran on engine " + where + ", which is gone";
    }
    if (!why.empty()) {
      finish(t.id, ResultStatus::kImpossible, -1, std::move(why), {}, out);
      return;
    }
    if (t.balanced) t.pin = follow;
  }
  if (!t.balanced && engines_.count(t.pin) == 0) {
    finish(t.id, ResultStatus::kEngineDied, t.pin,
           who() + ": engine " + std::to_string(t.pin) + " left while the task waited for its dependencies", {}, out);
    return;
  }
  if (t.pin < 0 && t.restricted) {
    std::erase_if(t.extras->allowed, [&](std::int64_t id) { return engines_.count(id) == 0; });
    if (t.extras->allowed.empty()) {
      finish(t.id, ResultStatus::kImpossible, -1, who() + ": none of its engines is registered any more", {}, out);
      return;
    }
  }
  unqueue(t);
  t.interrupted = false;  // meant for where it was in flight (a retry)
  if (t.seq == 0) t.seq = next_seq_++;
  t.ticket = next_ticket_++;
  if (t.pin >= 0) {
    t.state = State::kEngineQueued;
    t.engine = t.pin;
    Engine& e = engines_.at(t.pin);
    enqueue(e.queue, t, front);
    refile(e);
  } else if (t.restricted) {
    t.state = State::kEngineQueued;
    t.engine = -1;
    for (std::int64_t id : t.extras->allowed) {
      Engine& e = engines_.at(id);
      enqueue(e.queue, t, front);
      refile(e);
    }
  } else {
    t.state = State::kShared;
    t.engine = -1;
    enqueue(shared_, t, front);
  }
}

void Scheduler::retire(Task& t, ResultStatus status) {
  unqueue(t);
  if (t.has_timer) {
    timers_.erase(t.extras->timer);
    t.has_timer = false;
  }
  switch (status) {
    case ResultStatus::kTimedOut: ++counters_.timed_out; break;
    case ResultStatus::kAborted: ++counters_.aborted; break;
    case ResultStatus::kImpossible: ++counters_.impossible; break;
    default: break;
  }
  const std::int64_t ran = t.state == State::kRunning ? t.engine : -1;
  const auto code = static_cast<std::uint32_t>(status);
  remember(t.id, code, ran);
  if (waiters_.count(t.id) != 0) released_.push_back({t.id, code, ran});
}

void Scheduler::remember(std::uint64_t id, std::uint32_t status, std::int64_t engine) {
  finished_.record(id, status, engine);
}

void Scheduler::release_waiters(Outbox& out) {
  // finish() may append to released_ while this runs (a chain of dependent
  // tasks): a loop over a growing list instead of recursion.
  for (std::size_t i = 0; i < released_.size(); ++i) {
    const Released r = released_[i];
    auto node = waiters_.extract(r.id);
    if (node.empty()) continue;
    for (const Waiter& w : node.mapped()) {
      auto it = tasks_.find(w.id);
      if (it == tasks_.end() || it->second.ticket != w.ticket || it->second.state != State::kBlocked) continue;
      Task& t = it->second;
      std::string why = check_dependency(t, r.id, w.flags, r.status, r.engine);
      if (!why.empty()) {
        finish(t.id, ResultStatus::kImpossible, -1, std::move(why), {}, out);
      } else if (--t.ext().waiting == 0) {
        make_ready(t, /*front=*/false, out);
      }
    }
  }
  released_.clear();
}

// ---- timeouts -------------------------------------------------------------------

Clock::time_point Scheduler::next_deadline() const {
  return timers_.empty() ? Clock::time_point::max() : timers_.begin()->first;
}

void Scheduler::expire(Clock::time_point now, Outbox& out) {
  while (!timers_.empty() && timers_.begin()->first <= now) {
    const std::uint64_t id = timers_.begin()->second;
    timers_.erase(timers_.begin());
    Task& t = tasks_.at(id);  // retire() removes the timer of every task that ends
    t.has_timer = false;
    std::string text =
        "task " + std::to_string(id) + " timed out after " + std::to_string(t.extras->timeout_ms) + " ms";
    std::int64_t aux = -1;
    if (t.state == State::kRunning) {
      aux = t.engine;
      auto e = engines_.find(t.engine);
      if (e != engines_.end()) {
        // The engine keeps the slot until it answers; its answer is dropped.
        abandoned_[id] = t.engine;
        ++e->second.abandoned;
        send_interrupt(e->second, id, out);
        text += " while running on engine " + std::to_string(t.engine) + " (interrupted)";
      }
    }
    finish(id, ResultStatus::kTimedOut, aux, std::move(text), {}, out);
  }
}

// ---- abort and interrupt ----------------------------------------------------------

void Scheduler::handle_abort(const Message& msg, Outbox& out) {
  for (std::uint64_t id : msg.header.opts.ids) {
    auto it = tasks_.find(id);
    if (it == tasks_.end() || it->second.state == State::kRunning) continue;
    const std::int64_t aux = it->second.balanced ? -1 : it->second.engine;
    finish(id, ResultStatus::kAborted, aux, "aborted", {}, out);
  }
  dispatch(out);
}

void Scheduler::handle_interrupt(const Message& msg, Outbox& out) {
  for (std::uint64_t id : msg.header.opts.ids) {
    auto it = tasks_.find(id);
    if (it == tasks_.end() || it->second.state != State::kRunning) continue;  // queued: use Abort
    auto e = engines_.find(it->second.engine);
    if (e == engines_.end()) continue;
    // Noted, in case the engine gives the task back before it reads this
    // (handle_credit ends such a task Aborted).
    it->second.interrupted = true;
    send_interrupt(e->second, id, out);
  }
  for (std::int64_t target : msg.header.targets) {
    auto e = engines_.find(target);
    if (e == engines_.end()) continue;
    for (std::uint64_t id : e->second.inflight) {
      if (abandoned_.count(id) != 0) continue;
      tasks_.at(id).interrupted = true;
      send_interrupt(e->second, id, out);
    }
  }
}

void Scheduler::send_interrupt(Engine& engine, std::uint64_t task_id, Outbox& out) {
  Header h;
  h.type = MsgType::kInterrupt;
  h.id = task_id;
  h.aux = engine.id;
  ++counters_.interrupts_sent;
  out.push_back({Outgoing::kEngine, engine.identity, proto::encode(h)});
}

// ---- events ---------------------------------------------------------------------

void Scheduler::notify_clients(proto::EventKind kind, std::int64_t engine_id, const std::string& text,
                               Outbox& out) {
  Header h;
  h.type = MsgType::kEvent;
  h.status = static_cast<std::uint32_t>(kind);
  h.aux = engine_id;
  h.text = text.substr(0, 1024);  // within every peer's decoder limit
  for (const std::string& identity : sessions_.identities()) {  // each session's current socket
    ++counters_.events_sent;
    out.push_back({Outgoing::kClient, identity, proto::encode(h)});
  }
}

}  // namespace zfarm::broker
