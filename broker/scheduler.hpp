// Scheduler: the broker's whole logic, with no sockets in it.
//
// The socket loop (main.cpp) hands every message it reads to on_client_frames
// or on_engine_frames, calls tick() about every heartbeat/4, and sends what the
// Scheduler appended to the Outbox.  Tests drive the same calls message by
// message.  docs/protocol.rst describes the behaviour; docs/architecture.rst
// the structure.
//
// Invariants:
//   - every task the Scheduler accepted ends in exactly one Result to its
//     client: forwarded from an engine, or made here (Rejected, EngineDied,
//     Aborted, TimedOut, Impossible);
//   - a task is in exactly one place: waiting for dependencies, the shared
//     queue, the queues of the engines it may run on (restricted tasks sit in
//     several, the first to take it wins), or one engine's in-flight list;
//   - an engine never holds more than `credit` tasks in flight (except just
//     after it lowered its credit: the tasks it kept then run out);
//   - payload frames are moved or shared (zmq refcounted copy), never copied
//     byte by byte.
//
// Not thread-safe: one thread owns a Scheduler.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "fair_queue.hpp"
#include "finished_record.hpp"
#include "frames_pool.hpp"
#include "io_thread.hpp"  // Frames
#include "protocol.hpp"
#include "result_store.hpp"
#include "sessions.hpp"

namespace zfarm::broker {

using Clock = std::chrono::steady_clock;

// One message for the socket loop to send: to a client or to an engine,
// through the ROUTER of that side, to `identity`.
struct Outgoing {
  enum Side { kClient, kEngine };
  Side side;
  std::string identity;
  Frames frames;  // signature, header, payload (no routing envelope)
  // It may go into a Batch (batcher.hpp): a small Task or Result to a peer
  // that announced revision 4.  Set by the Scheduler, which knows the peer.
  bool batchable = false;
  // Its share of a Batch body (proto::batch_record_bytes), when the
  // Scheduler counted it along with `batchable`; 0: not counted.
  std::uint32_t batch_bytes = 0;
  // The messages it carries: more than 1 for a Batch (counted as that many
  // when it cannot be delivered).
  std::uint32_t records = 1;
  // A batchable Task has its header written here rather than made into two
  // frames (a signature and a header) that the Batcher would only copy into
  // a Batch body and let go: header_size != 0, and `frames` holds the
  // payload alone.  frame_header() makes it a whole message (the Batcher
  // does when the Task goes alone).
  std::uint8_t header_size = 0;
  std::array<unsigned char, proto::kSmallHeaderBytes> header{};
};
using Outbox = std::vector<Outgoing>;

// Puts the signature and the header of `o` in front of its frames when its
// header was written inline (header_size != 0); else nothing.
void frame_header(Outgoing& o);

struct SchedulerOptions {
  // Engines heartbeat at this interval (it is sent to them in RegisterReply).
  // One second finds a dead engine within a few seconds without traffic that
  // matters next to task messages.
  std::chrono::milliseconds heartbeat{1000};
  // An engine silent for liveness * heartbeat is dead.  Three intervals ride
  // out one late or lost heartbeat and a short stall of the network.
  int liveness = 3;
  // The most credit an engine may announce.  Larger values are clamped: an
  // engine asking for a million tasks would only starve the others.
  std::int64_t max_credit = 1 << 16;
  // Decoder limits for every incoming message.
  proto::Limits limits;
  // Results kept after they were sent (see result_store.hpp for the reasons
  // behind the defaults): acknowledged ones for Fetch, unacknowledged ones
  // for a client that reconnects.
  std::size_t result_cache_bytes = ResultStore::Limits{}.cache_bytes;
  std::size_t max_unacked_bytes = ResultStore::Limits{}.max_unacked_bytes;
  // Names this run of the broker in every Welcome, so clients notice a
  // restart.  Empty: random hex made at construction (tests may set one).
  std::string incarnation;
  // Finished tasks remembered (id -> status, engine) so opts.after and
  // opts.follow may name tasks that already ended.  About 32 bytes each
  // (finished_record.hpp).
  std::size_t finished_record = 1000000;
  // A client session (sessions.hpp) is forgotten once its identity has been
  // silent this long and it has no pending task; its unacknowledged results
  // go with it.  Clients heartbeat every second or so, so only a client that
  // is gone (or cut off) that long loses anything.  0: never.
  std::chrono::milliseconds session_timeout{std::chrono::hours(1)};
};

// What the broker has counted since it started.
struct Counters {
  std::uint64_t done = 0;             // Results sent to clients, of any status
  std::uint64_t failed = 0;           // ... of them with a status other than kOk
  std::uint64_t bad_messages = 0;     // undecodable or unexpected for the side
  std::uint64_t dropped_results = 0;  // Results for a task the engine did not hold
  std::uint64_t engines_lost = 0;     // engines removed (heartbeats or Shutdown)
  std::uint64_t retried = 0;          // tasks put back in the shared queue
  std::uint64_t unroutable = 0;       // sends the socket loop could not deliver
  std::uint64_t errors_received = 0;  // Error messages peers sent us
  std::uint64_t timed_out = 0;        // tasks ended TimedOut
  std::uint64_t aborted = 0;          // tasks ended Aborted by the broker (Abort, shutdown)
  std::uint64_t impossible = 0;       // tasks ended Impossible
  std::uint64_t interrupts_sent = 0;  // Interrupt messages sent to engines
  std::uint64_t events_sent = 0;      // Event messages sent to clients
  std::uint64_t auth_refused = 0;     // connections the ZAP handler refused (set_auth_refused)
  std::uint64_t outputs_forwarded = 0;  // Output messages passed on to clients
  std::uint64_t outputs_dropped = 0;    // ... not passed on: task not running there, no client
  std::uint64_t outputs_malformed = 0;  // ... that did not decode (also in bad_messages)
  // Handshakes that failed on each socket (set_handshake_failed; security.hpp).
  std::uint64_t handshake_failed_client = 0;
  std::uint64_t handshake_failed_engine = 0;
  std::uint64_t sessions_expired = 0;  // sessions forgotten after options.session_timeout
  std::uint64_t results_expired = 0;   // unacknowledged results freed with them
  std::uint64_t credits = 0;            // Credit messages applied
  std::uint64_t credits_ignored = 0;    // ... ignored whole: unknown engine or an earlier registration
  std::uint64_t given_back = 0;         // tasks an engine gave back, queued again
  std::uint64_t give_back_ignored = 0;  // given-back ids not in flight on that engine
  std::uint64_t bad_timing = 0;         // Results whose timing was malformed (sent on without it)
  // Batches (revision 4): received and decoded, and their records; made by
  // the socket loop (set_batches_out) and the messages in them.
  std::uint64_t batches_in = 0;
  std::uint64_t batch_records_in = 0;
  std::uint64_t batches_out = 0;
  std::uint64_t batch_records_out = 0;
};

class Scheduler {
 public:
  explicit Scheduler(SchedulerOptions options = {});
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // A whole multipart message as read from a ROUTER: frames[0] is the peer's
  // identity, the rest is a zfarm message.  Anything that does not decode is
  // counted and, when the sender is known, answered with Error.
  void on_client_frames(Frames& frames, Clock::time_point now, Outbox& out);
  void on_engine_frames(Frames& frames, Clock::time_point now, Outbox& out);

  // The same after decoding.
  void on_client(const std::string& identity, proto::Message&& msg, Clock::time_point now,
                 Outbox& out);
  void on_engine(const std::string& identity, proto::Message&& msg, Clock::time_point now,
                 Outbox& out);

  // Ends tasks whose timeout passed and removes engines that missed their
  // heartbeats.
  void tick(Clock::time_point now, Outbox& out);
  // The earliest task deadline, or Clock::time_point::max() when none: the
  // socket loop calls tick() by then.
  Clock::time_point next_deadline() const;

  // Tells every engine to shut down and ends every pending task as Aborted.
  // Called for a client's Shutdown and by the socket loop on a signal.
  void shutdown(std::string_view reason, Outbox& out);
  bool shutting_down() const { return shutting_down_; }

  // The socket loop reports a message it could not deliver.
  void count_unroutable(std::uint64_t n = 1) { counters_.unroutable += n; }
  // ... and the Batches it made of the Outbox (batcher.hpp), in total.
  void set_batches_out(std::uint64_t batches, std::uint64_t records) {
    counters_.batches_out = batches;
    counters_.batch_records_out = records;
  }
  // The socket loop reports the ZAP handler's refusal count (curve.hpp), so
  // the queue status shows it as auth_refused.
  void set_auth_refused(std::uint64_t n) { counters_.auth_refused = n; }
  // ... and its handshake monitors' counts of failed handshakes.
  void set_handshake_failed(std::uint64_t client, std::uint64_t engine) {
    counters_.handshake_failed_client = client;
    counters_.handshake_failed_engine = engine;
  }

  // How often the socket loop should call tick().
  std::chrono::milliseconds tick_interval() const;
  const SchedulerOptions& options() const { return options_; }

  // Inspection, for tests and logs.
  const Counters& counters() const { return counters_; }
  std::size_t engine_count() const { return engines_.size(); }
  std::size_t pending() const { return tasks_.size(); }
  std::size_t shared_queued() const { return shared_.live(); }
  std::size_t blocked() const { return blocked_; }
  // Running tasks that timed out and whose engine has not answered yet.
  std::size_t abandoned() const { return abandoned_.size(); }
  std::size_t client_count() const { return sessions_.peers(); }
  // -1 when `identity` is not a registered engine.
  std::int64_t engine_id(const std::string& identity) const;
  // In-flight count of engine `id`, or -1 if there is no such engine.
  std::int64_t inflight(std::int64_t id) const;

  // Client sessions and stored results (scheduler_sessions.cpp).
  const std::string& incarnation() const { return incarnation_; }
  const ResultStore& results() const { return results_; }
  // Where the socket loop gives back the frame vectors of what it sent
  // (batcher.hpp), for the Scheduler to take again.
  FramesPool& frames_pool() { return frames_pool_; }
  std::size_t session_count() const { return sessions_.size(); }
  // The current identity of every client session, each once: where a
  // message for all clients (an Event) goes.
  std::vector<std::string> client_identities() const { return sessions_.identities(); }

 private:
  // Where a task is.  Queued tasks are in the shared queue or in the queue of
  // one or more engines (targeted, follow, or restricted to a set of engines).
  enum class State : std::uint8_t { kBlocked, kShared, kEngineQueued, kRunning };

  // What only tasks with options need (engines, timeout, dependencies), out
  // of line so that a plain task stays small: a million queued tasks are a
  // million Tasks.
  struct TaskExtras {
    std::vector<std::int64_t> allowed;  // opts.engines, registered ones only
    std::int64_t timeout_ms = 0;
    std::multimap<Clock::time_point, std::uint64_t>::iterator timer;  // valid while has_timer
    std::uint32_t waiting = 0;          // dependencies not yet ended
    std::int64_t follow_engine = -1;    // where its follow dependencies ran
  };

  struct Task {
    std::uint64_t id = 0;
    const std::string* client = nullptr;  // its session, interned (Sessions::session_of)
    Frames payload;            // kept while a retry may need it
    std::int64_t engine = -1;  // engine queued at or running it; -1 in the shared queue
    std::int64_t priority = 0;
    std::uint64_t seq = 0;     // order of becoming ready: FIFO within a priority
    std::uint64_t ticket = 0;  // names the current queue or waiter entries; 0 = none
    std::int64_t pin = -1;     // the one engine it may run on (target or follow); -1 any
    std::int32_t retries = 0;  // load-balanced only (opts.retries, clamped)
    State state = State::kBlocked;
    bool balanced = false;
    bool restricted = false;   // opts.engines was given (extras->allowed holds them)
    bool has_timer = false;    // extras->timer is set
    bool interrupted = false;  // an Interrupt went to its engine since it was last queued
    std::unique_ptr<TaskExtras> extras;  // null for a task without such options

    TaskExtras& ext() {
      if (!extras) extras = std::make_unique<TaskExtras>();
      return *extras;
    }
    std::int64_t follow_engine() const { return extras ? extras->follow_engine : -1; }
  };

  // An entry of a task queue (fair_queue.hpp).  Entries are not removed when
  // a task leaves the queue another way (abort, timeout, dispatch from
  // another engine's queue): an entry whose ticket no longer matches its task
  // is skipped.
  using QueueEntry = broker::QueueEntry;
  // Higher priority first, FIFO within one priority.  live = valid entries.
  struct TaskQueue {
    std::map<std::int64_t, std::deque<QueueEntry>, std::greater<>> levels;
    std::size_t entries = 0;
    std::size_t live = 0;
  };

  // A task waiting for a dependency: the waiter's id and ticket, and whether
  // the dependency is an `after` (must end Ok) and/or a `follow` one.
  struct Waiter {
    std::uint64_t id;
    std::uint64_t ticket;
    std::uint8_t flags;
  };
  static constexpr std::uint8_t kAfterDep = 1;
  static constexpr std::uint8_t kFollowDep = 2;

  struct Engine;
  // Where an engine with free credit stands for load-balanced work: most free
  // credit first, then fewest in flight, then the lowest id.
  struct LoadKey {
    std::int64_t free;
    std::int64_t inflight;
    std::int64_t id;
    Engine* engine;  // not part of the order
    bool operator==(const LoadKey&) const = default;
  };
  struct LoadOrder {
    bool operator()(const LoadKey& a, const LoadKey& b) const {
      if (a.free != b.free) return a.free > b.free;
      if (a.inflight != b.inflight) return a.inflight < b.inflight;
      return a.id < b.id;
    }
  };

  struct Engine {
    std::int64_t id = 0;
    std::string identity;
    std::string host;             // "host:pid" from Register
    std::int64_t credit = 1;
    // It speaks revision 2 (Credit): it may give tasks back, so the payload
    // of each task sent to it is kept (a shared copy) until the task ends.
    bool gives_back = false;
    // It speaks revision 4: small Tasks to it may go out in Batches.
    bool batches = false;
    std::vector<std::uint64_t> inflight;  // in dispatch order (abandoned ones too)
    TaskQueue queue;                      // targeted, follow and restricted work not yet sent
    std::uint64_t done = 0;
    std::uint64_t abandoned = 0;          // timed-out tasks still in inflight
    Clock::time_point last_seen;
    // Its entry in by_load_ (filed: it has free credit) and in with_work_.
    bool filed = false;
    LoadKey load_key{};
    // Its by_load_ node while it is not filed, kept so that refiling an
    // engine whose credit came back (once per task when the credit is
    // small) allocates nothing.
    std::set<LoadKey, LoadOrder>::node_type spare;
    bool in_work = false;
    std::int64_t free_credit() const { return credit - static_cast<std::int64_t>(inflight.size()); }
  };

  // The records of a Batch, each handled as if it had come alone, in order
  // (a Batch that does not decode is answered with Error, and nothing in it
  // is acted on).  `side`: whom it came from.
  void on_batch(Outgoing::Side side, const std::string& identity, const proto::Message& batch,
                Clock::time_point now, Outbox& out);
  // Per message type.
  void handle_register(const std::string& identity, const proto::Message& msg, Clock::time_point now,
                       Outbox& out);
  void handle_result(Engine& engine, proto::Message&& msg, Outbox& out);
  // The engine's new credit and the tasks it gives back (protocol.hpp, Credit).
  void handle_credit(Engine& engine, const proto::Message& msg, Outbox& out);
  // `client` is the interned session name (Sessions::session_of): tasks keep its address.
  void handle_submit(const std::string& client, proto::Message&& msg, Outbox& out);
  void handle_status(const std::string& client, const proto::Message& msg, Outbox& out);
  // Output from an engine: to the session of the task it runs (scheduler_output.cpp).
  void handle_output(const Engine& engine, proto::Message&& msg, Outbox& out);

  // Sends queued work to engines with free credit.
  void dispatch(Outbox& out);
  void send_task(Engine& engine, Task& task, Outbox& out);
  Engine* least_loaded();
  // Files an engine in by_load_ and with_work_ after its credit, in-flight
  // count or queue changed; unfile() takes it out of both.
  void refile(Engine& e);
  void unfile(Engine& e);
  // Removes an engine; its tasks are retried or end as EngineDied.
  void remove_engine(std::int64_t id, std::string_view reason, Outbox& out);

  // A default Task filed under `id` (not in tasks_ yet), in a node of a
  // finished task when one is spare: a task per message otherwise costs a
  // node allocated and freed.
  Task& new_task(std::uint64_t id);
  // Ends a task: one Result to its client, then forgets it.  `timing`:
  // when it ran, as its engine said (absent for the broker's own Results).
  void finish(std::uint64_t task_id, proto::ResultStatus status, std::int64_t aux, std::string text,
              Frames payload, Outbox& out, const proto::Timing& timing = {});
  // Rejected results for the tasks of a Submit that had too many frames to
  // decode (the header alone still names them).
  void reject_oversized_submit(const std::string& identity, const Frames& frames, const std::string& why,
                               Outbox& out);
  // A Result for a task that never entered the table (rejected on submit).
  void reject(const std::string& client, std::uint64_t task_id, std::int64_t aux, std::string text,
              Outbox& out);
  void send_result(const std::string& client, std::uint64_t task_id, std::uint32_t status,
                   std::int64_t aux, std::string text, Frames payload, Outbox& out,
                   const proto::Timing& timing = {});
  void send_error(Outgoing::Side side, const std::string& identity, std::uint64_t id, std::string text,
                  Outbox& out);

  Frames status_payload() const;

  // Client sessions and stored results (scheduler_sessions.cpp).
  void handle_hello(const std::string& identity, const proto::Message& msg, Outbox& out);
  void handle_ack(const std::string& identity, const proto::Message& msg);
  void handle_fetch(const std::string& identity, const proto::Message& msg, Outbox& out);
  // `new_session`: this Hello made the identity's session (Welcome aux = 1).
  void send_welcome(const std::string& identity, std::uint64_t id, Outbox& out, bool new_session = false);
  // Sends a finished task's result to the sessions that fetched it while it was pending.
  void notify_watchers(std::uint64_t task_id, const std::string& owner, Outbox& out);
  // Forgets sessions silent for options_.session_timeout with nothing
  // pending, and their unacknowledged results (called by tick()).
  void expire_sessions(Clock::time_point now);
  // Task options, abort, interrupt, timeouts and events (scheduler_tasks.cpp).
  void handle_abort(const proto::Message& msg, Outbox& out);
  void handle_interrupt(const proto::Message& msg, Outbox& out);
  void send_interrupt(Engine& engine, std::uint64_t task_id, Outbox& out);
  // A new task (already in tasks_): checks its dependencies and blocks it or
  // makes it ready.
  void admit(Task& t, const proto::Options& opts, Clock::time_point now, Outbox& out);
  // A task whose dependencies all ended: queue it where it may run, or end it
  // Impossible.  `front`: a retry, ahead of its priority level.
  void make_ready(Task& t, bool front, Outbox& out);
  void enqueue(TaskQueue& q, Task& t, bool front);
  void enqueue(FairQueue& q, Task& t, bool front);
  // The first valid entry of q (stale ones are dropped), or nullptr.
  const QueueEntry* front_of(TaskQueue& q);
  const QueueEntry* front_of(FairQueue& q);
  void compact(TaskQueue& q);
  void compact(FairQueue& q);
  // Takes a task out of whatever queue, waiting set or timer holds it.
  void unqueue(Task& t);
  // Called by finish(): forgets the task's places, records how it ended and
  // notes its waiters for release_waiters().
  void retire(Task& t, proto::ResultStatus status);
  void remember(std::uint64_t id, std::uint32_t status, std::int64_t engine);
  // Why dependency `dep` (ended with status, on engine) makes t impossible,
  // or "" when it does not; notes where follow dependencies ran.
  std::string check_dependency(Task& t, std::uint64_t dep, std::uint8_t flags, std::uint32_t status,
                               std::int64_t engine);
  static bool ahead(const QueueEntry& a, const QueueEntry& b);
  static void pop_front(TaskQueue& q);
  static void pop_front(FairQueue& q) { q.pop_front(); }
  // Decides the fate of tasks whose dependencies ended (called by dispatch).
  void release_waiters(Outbox& out);
  // Ends tasks whose deadline is at or before now.
  void expire(Clock::time_point now, Outbox& out);
  // An Event to every known client.
  void notify_clients(proto::EventKind kind, std::int64_t engine_id, const std::string& text, Outbox& out);

  SchedulerOptions options_;
  std::map<std::int64_t, Engine> engines_;  // by engine id, ascending
  std::unordered_map<std::string, std::int64_t> engine_by_identity_;
  // Engines with free credit in least_loaded() order, so choosing one for
  // load-balanced work costs O(1) and filing O(log engines), not a scan.
  std::set<LoadKey, LoadOrder> by_load_;
  // Engines with free credit that have entries in their own queue, by id
  // (may also hold engines whose entries all went stale; dispatch drops
  // them).  dispatch() looks only at these, not at every engine.
  std::map<std::int64_t, Engine*> with_work_;
  std::int64_t next_engine_id_ = 0;
  std::unordered_map<std::uint64_t, Task> tasks_;  // every task not yet finished
  // Nodes of finished tasks kept for new_task().  A few suffice: tasks
  // finish and arrive at about the same rate.
  static constexpr std::size_t kSpareTasks = 64;
  std::vector<std::unordered_map<std::uint64_t, Task>::node_type> spare_tasks_;
  // The decoded message being handled: reused, so that the vectors and
  // strings of its header keep their storage from one message to the next.
  proto::Message scratch_;
  // The records of the Batch being handled, reused likewise.
  std::vector<proto::Message> batch_;
  // The header of every Result sent to a client, reused for the same reason
  // (its targets carry the timing).
  proto::Header result_header_;
  // Frame vectors for the messages made per task, and for Submit payloads
  // (frames_pool.hpp): a Submit's payload has one or two frames, mostly.
  FramesPool frames_pool_;
  FramesPool payload_pool_{1, 2};
  FairQueue shared_;                               // load-balanced work not yet sent, by client session
  std::size_t blocked_ = 0;                        // tasks waiting for dependencies
  std::uint64_t next_seq_ = 1;
  std::uint64_t next_ticket_ = 1;
  std::unordered_map<std::uint64_t, std::vector<Waiter>> waiters_;  // by dependency id
  struct Released {
    std::uint64_t id;
    std::uint32_t status;
    std::int64_t engine;
  };
  std::vector<Released> released_;                 // ended tasks that have waiters
  std::multimap<Clock::time_point, std::uint64_t> timers_;  // deadline -> task id
  std::unordered_map<std::uint64_t, std::int64_t> abandoned_;  // timed out, running: id -> engine
  FinishedRecord finished_;  // recent finished tasks (options_.finished_record of them)
  Clock::time_point now_{};                        // time of the message being handled
  Counters counters_;
  bool shutting_down_ = false;
  // Client sessions and stored results.
  Sessions sessions_;  // also every client identity heard from
  ResultStore results_;
  Clock::time_point next_session_sweep_{};
  std::string incarnation_;
};

}  // namespace zfarm::broker
