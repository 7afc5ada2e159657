// TaskBoard: the tasks an engine holds (prefetched, and the one running),
// shared by its two threads under one lock.
//
// "owner" is whichever thread holds the socket (EngineIo): the main thread
// between tasks, the watch thread during a long one.
//
//   thread   call          what it does
//   ------   -----------   ----------------------------------------------------
//   owner    add           a Task arrived: queue it, tagged with the epoch
//   owner    interrupt     Interrupt(id) arrived: running -> trip (raise
//                          KeyboardInterrupt in it); queued -> drop it (the
//                          caller answers Aborted); otherwise nothing
//   owner    new_epoch     the broker no longer knows our tasks (it restarted
//                          or declared us dead): drop the queue, and mark the
//                          running task so its result is not sent
//   owner    set_paused    while the engine is not registered, hold queued
//                          tasks back: the reply to its Register may still
//                          start a new epoch that drops them
//   owner    give_back     the credit fell: remove the queued tasks beyond
//                          the first `keep` (the caller names them in a
//                          Credit message); never the running one
//   main     take          wait for the next task and mark it running
//   main     try_take      the same without waiting (the main thread waits
//                          in EngineIo::serve, which fills the board)
//   main     finish        the running task ended: was it interrupted, is it
//                          from an earlier epoch?
//
// Because interrupt() trips only while the task is marked running, and
// finish() clears that mark under the same lock, an Interrupt that arrives
// just after a task ended never trips anything; one that tripped during the
// task is reported by finish(), so the main thread can consume whatever of
// it is still pending before it starts the next task.
//
// No Python here: the trip is a callback, so the units can count calls.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <vector>

#include "protocol.hpp"

namespace zfarm::engine {

class TaskBoard {
 public:
  // Called under the board's lock, by the socket's owner, while the task to
  // interrupt is marked running.  Must not block (the engine's trips raise
  // KeyboardInterrupt asynchronously).
  using TripFn = std::function<void()>;

  enum class Interrupted {
    kRunning,  // the running task was tripped
    kQueued,   // a queued task was dropped: answer it Aborted
    kNotHeld,  // not ours (already finished, never seen, or stale): ignore
  };

  struct Finished {
    std::uint64_t id = 0;
    bool interrupted = false;  // interrupt() tripped while it ran
    bool stale = false;        // a new epoch began while it ran: drop its result
  };

  explicit TaskBoard(TripFn trip);

  // The socket's owner.
  void add(proto::Message task);
  Interrupted interrupt(std::uint64_t id);
  // Returns how many queued tasks were dropped.
  std::size_t new_epoch();
  // Removes the queued tasks after the first `keep` and returns their ids,
  // in queue order.  Once removed, a task can be neither taken nor
  // interrupted here.
  std::vector<std::uint64_t> give_back(std::size_t keep);
  void set_paused(bool paused);

  // Main thread.  Waits up to `timeout` for a task (and for the board not
  // to be paused); the one returned is marked running until finish().
  // nullopt on timeout or wake().
  std::optional<proto::Message> take(std::chrono::milliseconds timeout);
  // As take, without waiting: nullopt when nothing is ready.
  std::optional<proto::Message> try_take();
  // A task is queued and the board is not paused (try_take would get it).
  bool ready() const;
  Finished finish();

  // Makes a thread blocked in take() return (shutdown).
  void wake();

  std::size_t queued() const;
  std::optional<std::uint64_t> running() const;
  std::uint64_t epoch() const;

 private:
  struct Held {
    proto::Message msg;
    std::uint64_t epoch;
  };

  // Requires mu_ and a task ready.
  proto::Message take_locked();

  TripFn trip_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Held> queue_;
  std::uint64_t epoch_ = 0;
  std::uint64_t wake_generation_ = 0;
  bool paused_ = false;
  bool running_ = false;
  std::uint64_t running_id_ = 0;
  std::uint64_t running_epoch_ = 0;
  bool running_tripped_ = false;
};

}  // namespace zfarm::engine
