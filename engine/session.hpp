// Session: the engine's side of the conversation with the broker, as an
// explicit state machine with no socket in it (the socket's owner feeds it
// messages and clock ticks and sends what it returns).
//
//   state        event                          action
//   ----------   ----------------------------   ---------------------------------
//   Registering  tick, retry time reached       send Register, retry in 1 s
//   Registering  RegisterReply                  take id and interval -> Registered
//   Registered   tick, heartbeat due            send Heartbeat
//   Registered   broker silent for liveness     send Register -> Registering
//                intervals
//   any          Error "unknown engine..."      send Register -> Registering,
//                                               new epoch
//   Registering  RegisterReply with another id  new epoch
//                or another broker incarnation
//   any          Task                           hand to the executor
//   any          Interrupt                      hand to the task board
//   any          Shutdown                       -> Stopped
//   any but      tick, broker silent for        -> Stopped, gave_up()
//   Stopped      broker_timeout (if set)
//
// Every message from the broker counts as a sign of life.  The engine keeps
// its Python namespace across registrations; only its id may change.
//
// The epoch counts registrations whose tasks the broker has forgotten: the
// broker restarted (a new incarnation, or it told us it does not know us),
// or it declared us dead and gave our tasks to others (a new id).  Tasks of
// an earlier epoch must not run and their results must not be sent.  A
// broker that names no incarnation (empty RegisterReply text) and gives us
// our old id back is taken to be the same broker.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "protocol.hpp"

namespace zfarm::engine {

struct SessionOptions {
  std::int64_t credit = 2;                         // tasks the engine may hold (prefetch)
  std::chrono::milliseconds heartbeat{1000};       // until the broker says otherwise
  int liveness = 3;                                // silent intervals before re-registering
  std::chrono::milliseconds register_retry{1000};  // Register resend while unanswered
  std::string host_pid;                            // Register text, "host:pid"
  // The protocol revision Register names (zfarm-engine: always
  // proto::kRevision; the broker then keeps the payload of every task it
  // sends, in case it is given back, and may send Tasks in Batches).
  std::int64_t revision = proto::kRevision;
  // Give up (state Stopped, gave_up()) after hearing nothing from the broker
  // for this long; 0 waits forever.  For remote engines with no parent to
  // take them down when the cluster is gone.
  std::chrono::milliseconds broker_timeout{0};
};

class Session {
 public:
  using Clock = std::chrono::steady_clock;
  enum class State { kRegistering, kRegistered, kStopped };
  // What the caller should do with a message after on_message.
  enum class Verdict {
    kDone,        // handled here (and replies, if any, are in *out)
    kRunTask,     // a Task: queue it for the executor
    kInterrupt,   // an Interrupt: header.id names the task to interrupt
    kShutdown,    // the broker told the engine to stop
    kUnexpected,  // a well-formed message an engine should never get
  };

  explicit Session(SessionOptions options);

  // Handles a decoded message from the broker at time `now`; appends the
  // headers to send (no payload) to *out.
  Verdict on_message(const proto::Header& h, Clock::time_point now, std::vector<proto::Header>* out);
  // Called often (every few tens of milliseconds); sends Register or
  // Heartbeat when due and notices a silent broker.
  void on_tick(Clock::time_point now, std::vector<proto::Header>* out);
  // The Shutdown an engine sends when it leaves on its own (a signal), so the
  // broker re-queues its tasks without waiting for missed heartbeats.
  proto::Header leave_message() const;

  State state() const { return state_; }
  // Readable from any thread.  -1 until the first RegisterReply.
  std::int64_t engine_id() const { return engine_id_.load(); }
  std::chrono::milliseconds heartbeat() const { return options_.heartbeat; }
  std::uint64_t registrations() const { return registrations_; }
  // Grows each time the broker forgot our tasks (see above).
  std::uint64_t epoch() const { return epoch_; }
  // True once broker_timeout ran out.
  bool gave_up() const { return gave_up_; }
  // The protocol revision the broker announced in its last RegisterReply
  // (proto::kRevision); 0 for a broker that names none.
  std::int64_t broker_revision() const { return broker_revision_; }

 private:
  void send_register(Clock::time_point now, std::vector<proto::Header>* out);

  SessionOptions options_;
  State state_ = State::kRegistering;
  std::atomic<std::int64_t> engine_id_{-1};
  Clock::time_point next_register_{};  // epoch: the first tick registers at once
  Clock::time_point next_heartbeat_{};
  Clock::time_point last_heard_{};
  std::uint64_t registrations_ = 0;
  std::uint64_t epoch_ = 0;
  std::string incarnation_;  // RegisterReply text of the broker we registered with
  bool gave_up_ = false;
  std::int64_t broker_revision_ = 0;
};

}  // namespace zfarm::engine
