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
//     Aborted);
//   - a task is in exactly one place: the shared queue, one engine's FIFO, or
//     one engine's in-flight list;
//   - an engine never holds more than `credit` tasks in flight;
//   - payload frames are moved or shared (zmq refcounted copy), never copied
//     byte by byte.
//
// Not thread-safe: one thread owns a Scheduler.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "io_thread.hpp"  // Frames
#include "protocol.hpp"

namespace zfarm::broker {

using Clock = std::chrono::steady_clock;

// One message for the socket loop to send: to a client or to an engine,
// through the ROUTER of that side, to `identity`.
struct Outgoing {
  enum Side { kClient, kEngine };
  Side side;
  std::string identity;
  Frames frames;  // signature, header, payload (no routing envelope)
};
using Outbox = std::vector<Outgoing>;

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
  std::uint64_t auth_refused = 0;     // connections the ZAP handler refused (set_auth_refused)
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

  // Finds engines that missed their heartbeats and removes them.
  void tick(Clock::time_point now, Outbox& out);

  // Tells every engine to shut down and ends every pending task as Aborted.
  // Called for a client's Shutdown and by the socket loop on a signal.
  void shutdown(std::string_view reason, Outbox& out);
  bool shutting_down() const { return shutting_down_; }

  // The socket loop reports a message it could not deliver.
  void count_unroutable() { ++counters_.unroutable; }
  // The socket loop reports the ZAP handler's refusal count (curve.hpp), so
  // the queue status shows it as auth_refused.
  void set_auth_refused(std::uint64_t n) { counters_.auth_refused = n; }

  // How often the socket loop should call tick().
  std::chrono::milliseconds tick_interval() const;
  const SchedulerOptions& options() const { return options_; }

  // Inspection, for tests and logs.
  const Counters& counters() const { return counters_; }
  std::size_t engine_count() const { return engines_.size(); }
  std::size_t pending() const { return tasks_.size(); }
  std::size_t shared_queued() const { return shared_.size(); }
  std::size_t client_count() const { return clients_.size(); }
  // -1 when `identity` is not a registered engine.
  std::int64_t engine_id(const std::string& identity) const;
  // In-flight count of engine `id`, or -1 if there is no such engine.
  std::int64_t inflight(std::int64_t id) const;

 private:
  struct Task {
    std::uint64_t id = 0;
    std::string client;       // identity of the submitting client
    Frames payload;           // kept while a retry may need it
    std::int64_t retries = 0; // load-balanced only
    bool balanced = false;
    std::int64_t engine = -1; // engine queued at or running it; -1 in the shared queue
  };

  struct Engine {
    std::int64_t id = 0;
    std::string identity;
    std::string host;             // "host:pid" from Register
    std::int64_t credit = 1;
    std::vector<std::uint64_t> inflight;  // in dispatch order
    std::deque<std::uint64_t> queue;      // targeted work not yet sent
    std::uint64_t done = 0;
    Clock::time_point last_seen;
    std::int64_t free_credit() const { return credit - static_cast<std::int64_t>(inflight.size()); }
  };

  // Per message type.
  void handle_register(const std::string& identity, const proto::Message& msg, Clock::time_point now,
                       Outbox& out);
  void handle_result(Engine& engine, proto::Message&& msg, Outbox& out);
  void handle_submit(const std::string& client, proto::Message&& msg, Outbox& out);
  void handle_status(const std::string& client, const proto::Message& msg, Outbox& out);

  // Sends queued work to engines with free credit.
  void dispatch(Outbox& out);
  void send_task(Engine& engine, Task& task, Outbox& out);
  Engine* least_loaded();
  // Removes an engine; its tasks are retried or end as EngineDied.
  void remove_engine(std::int64_t id, std::string_view reason, Outbox& out);

  // Ends a task: one Result to its client, then forgets it.
  void finish(std::uint64_t task_id, proto::ResultStatus status, std::int64_t aux, std::string text,
              Frames payload, Outbox& out);
  // A Result for a task that never entered the table (rejected on submit).
  void reject(const std::string& client, std::uint64_t task_id, std::int64_t aux, std::string text,
              Outbox& out);
  void send_result(const std::string& client, std::uint64_t task_id, std::uint32_t status,
                   std::int64_t aux, std::string text, Frames payload, Outbox& out);
  void send_error(Outgoing::Side side, const std::string& identity, std::uint64_t id, std::string text,
                  Outbox& out);

  Frames status_payload() const;

  SchedulerOptions options_;
  std::map<std::int64_t, Engine> engines_;  // by engine id, ascending
  std::unordered_map<std::string, std::int64_t> engine_by_identity_;
  std::int64_t next_engine_id_ = 0;
  std::unordered_map<std::uint64_t, Task> tasks_;  // every task not yet finished
  std::deque<std::uint64_t> shared_;               // load-balanced work not yet sent
  std::set<std::string> clients_;                  // identities seen on the client side
  Counters counters_;
  bool shutting_down_ = false;
};

}  // namespace zfarm::broker
