// EngineIo: the engine's DEALER socket, used by whichever of the engine's
// two threads needs it, so that a short task costs no hand-off between them.
//
//   main thread            socket   what happens
//   --------------------   ------   -------------------------------------------
//   waiting for a task     main     serve(): poll(2), on_incoming, on_tick
//   between two tasks      main     service(): what arrived meanwhile, ticks due
//   running a task         nobody   for its first kTakeoverAfter; then the
//                                   watch thread (which looks every
//                                   kLookWhileBusy) takes the socket
//                                   (heartbeats, Interrupts, Output) until
//                                   the task ends
//   task ended             main     task_ended() takes it back (waking the watch
//                                   thread if it holds it); the Result leaves
//                                   at once
//
// The earlier design gave the socket to an I/O thread for good: every task
// then crossed threads twice (Task in, Result out), four futex or eventfd
// wake-ups per round trip inside the engine besides libzmq's own.  Now a
// task shorter than kTakeoverAfter crosses none.  (libzmq allows a socket to
// move between threads given a full memory barrier: the mutex is one.)
//
// Whoever holds mu_ may use the socket.  Messages queued by a thread that
// does not hold it (a task's Output, printed from Python) wait in outgoing_
// and leave, in order, with the owner's next flush; every send flushes that
// queue first, so a task's Output always leaves before its Result.
//
// Results held for a Batch (revision 4): the main thread may hold() the
// Result of a task that ended while the next task is already queued here,
// so that a run of short tasks answers in one message instead of one each.
// Held Results leave, packed into one Batch (a lone one as it is), before
// anything sent after them, and at the latest when
//   - kMaxHeld are held, or the oldest has waited kMaxHoldAge (checked at
//     each hold, i.e. as each task ends),
//   - the main thread runs out of tasks and waits (serve),
//   - the watch thread takes the socket from a long task (so a Result
//     waits behind a long next task at most about kTakeoverAfter +
//     kLookWhileBusy),
//   - any other message is sent through the queue, or stop().
// Only the socket's owner touches them (mu_).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "io_thread.hpp"  // Frames, send_frames, recv_frames
#include "protocol.hpp"

namespace zfarm::engine {

class EngineIo {
 public:
  using Clock = std::chrono::steady_clock;
  // Run by the socket's owner: each message read, and about every tick.
  using IncomingFn = std::function<void(Frames&)>;
  using TickFn = std::function<void()>;
  // Run by the watch thread, owning the socket, with how long the task has
  // run: when it takes the socket from a long task (before it serves
  // anything), and again once that task has run kLookAgainAfter.
  using LongTaskFn = std::function<void(Clock::duration ran)>;

  // A task running this long is long enough for its socket to go to the
  // watch thread: two wake-ups are nothing beside it.
  static constexpr std::chrono::milliseconds kTakeoverAfter{1};
  // How often the watch thread looks while tasks run (a task started within
  // the last tick); idle, it looks every tick and the first task wakes it.
  // So a long task's Interrupt or heartbeat waits at most about this plus
  // kTakeoverAfter.
  static constexpr std::chrono::milliseconds kLookWhileBusy{2};
  // When a long task is reported to LongTaskFn a second time.
  static constexpr std::chrono::milliseconds kLookAgainAfter{10};
  // How soon a message the socket would not take (no peer connected yet) is
  // tried again.
  static constexpr std::chrono::milliseconds kRetryBlocked{10};
  // Held Results (see above): at most this many, the oldest at most this
  // old.  16: the engine's default --prefetch-max, so a full credit of
  // short tasks answers in one message; 300 us: about ten no-op tasks, and
  // nothing beside a round trip to the client (~150 us or more).
  static constexpr std::size_t kMaxHeld = 16;
  static constexpr std::chrono::microseconds kMaxHoldAge{300};

  EngineIo(zmq::socket_t socket, std::chrono::milliseconds tick, IncomingFn on_incoming, TickFn on_tick,
           LongTaskFn on_long_task = {});
  ~EngineIo();
  EngineIo(const EngineIo&) = delete;
  EngineIo& operator=(const EngineIo&) = delete;

  // Main thread.  start() makes it the socket's owner and starts the watch
  // thread; stop() sends what is queued, stops the watch thread and closes
  // the socket.
  void start();
  void stop();
  // Owns the socket and waits until done() (checked after every message)
  // or `timeout`; returns early on a signal (EINTR).
  void serve(std::chrono::milliseconds timeout, const std::function<bool()>& done);
  // Reads what arrived, runs a tick if one is due; never blocks.
  void service();
  // The main thread runs a task from now on: the socket is free to take.
  void task_started();
  // The task ended: the main thread owns the socket again.  Returns how
  // long it ran (since task_started).
  Clock::duration task_ended();

  // Any thread: sends at once when the socket is free (or ours), else queues
  // it for the owner.
  void send(Frames frames);
  // Only from on_incoming or on_tick.
  void send_now(Frames& frames);
  // The main thread, owning the socket (between tasks): keeps an encoded
  // Result to leave in a Batch with the next ones (see above).  The caller
  // holds only batchable Results (proto::batchable), only for a broker of
  // revision 4, and only while another task is queued to run next.
  void hold(Frames result);
  // The socket's owner: forgets the held Results (the broker no longer
  // knows their tasks) and returns how many.
  std::size_t drop_held();

  std::uint64_t dropped_sends() const { return dropped_sends_.load(); }
  std::uint64_t takeovers() const { return takeovers_.load(); }
  // Messages that left as a Batch, and the Results in them.
  std::uint64_t batches_sent() const { return batches_sent_.load(); }
  std::uint64_t results_batched() const { return results_batched_.load(); }

 private:
  void watch();
  // The main thread has been in one task for kTakeoverAfter or longer.
  bool long_task() const;
  Clock::time_point task_start() const;
  // Require mu_ (and the calling thread to be the owner).
  void serve_locked(Clock::time_point deadline, const std::function<bool()>& done);
  void drain_incoming_locked();
  void tick_if_due_locked(Clock::time_point now);
  // false: the socket would block; the rest stays queued.  release_held:
  // the held Results go too (they always do when something follows them).
  bool flush_locked(bool release_held = true);
  // Requires mu_ and out_mu_: the held Results as one message, at the end
  // of blocked_.
  void release_held_locked();
  void signal();

  zmq::socket_t socket_;
  const std::chrono::milliseconds tick_;
  IncomingFn on_incoming_;
  TickFn on_tick_;
  LongTaskFn on_long_task_;
  int wake_fd_ = -1;
  int zmq_fd_ = -1;  // the socket's ZMQ_FD
  std::thread watcher_;

  std::mutex mu_;  // the socket's ownership
  Clock::time_point next_tick_{};
  std::deque<Frames> blocked_;  // taken from outgoing_, not yet accepted by the socket (mu_)
  std::vector<Frames> held_;    // Results held for a Batch (mu_)
  Clock::time_point held_since_{};
  std::vector<const Frames*> pack_;  // pack_batch's argument, reused (mu_)

  std::mutex out_mu_;
  std::deque<Frames> outgoing_;

  std::atomic<bool> in_task_{false};
  std::atomic<std::int64_t> task_started_ns_{0};
  std::atomic<bool> stopping_{false};
  std::mutex watch_mu_;
  std::condition_variable watch_cv_;
  std::atomic<bool> dozing_{false};  // the watch thread sleeps a whole tick
  std::uint64_t kicks_ = 0;          // task_started() woke it (watch_mu_)
  std::atomic<std::uint64_t> dropped_sends_{0};
  std::atomic<std::uint64_t> takeovers_{0};
  std::atomic<std::uint64_t> batches_sent_{0};
  std::atomic<std::uint64_t> results_batched_{0};
};

}  // namespace zfarm::engine
