// CreditPolicy: how many tasks the engine asks the broker for at once (its
// credit), from how long its tasks run.  No clock and no socket: the caller
// reports running times, and sends a Credit message (giving back the queued
// tasks beyond keep()) when a call says the credit changed.
//
// Why adapt: credit hides the round trip to the broker.  With credit c the
// engine holds c tasks; while they are short (a no-op runs ~30 us, a round
// trip 100-300 us) a small c leaves the engine idle between them, and a
// larger one keeps it busy (prefetch 8 instead of 2: ~+35 % async
// throughput).  But tasks queued here wait behind a long one while another
// engine may be idle.  So the credit grows while tasks are short, and a task
// that runs long first brings it back to the base, then, once clearly long,
// to 1: the engine then holds nothing behind it.
//
//   event                              credit afterwards
//   --------------------------------   --------------------------------------
//   task ended, ran < kShortTask       unchanged; after kRaiseAfter such in a
//                                      row: doubled, up to the ceiling
//   task ended, ran >= kShortTask      the base (the streak starts again)
//   the running task has run           the base, keeping base - 1 queued: a
//   kShortTask (EngineIo's watch       task this long hides the round trip
//   thread took the socket)            by itself, more are not needed
//   the running task has run           1, keeping nothing queued: a round
//   kLongTask                          trip is now <= 3 % of the task, while
//                                      a task queued behind it waits at least
//                                      as long as the rest of it
//   engine registers (again), or       the base (what Register announced)
//   cannot send Credit
//
// One Credit message per change, and a raise needs kRaiseAfter short tasks
// in a row: at most two Credit messages per kRaiseAfter + 1 tasks whatever
// the mix of short and long tasks (and two or three per task of kLongTask
// or more, nothing next to its running time).
//
// Not thread-safe: used by whichever thread holds the engine's socket
// (EngineIo's lock orders the two threads' use).
#pragma once

#include <chrono>
#include <cstdint>

namespace zfarm::engine {

class CreditPolicy {
 public:
  // Shorter than this is short: the same bound as EngineIo::kTakeoverAfter,
  // so "short" means the same thing at a task's end as while it runs.
  static constexpr std::chrono::microseconds kShortTask{1000};
  // From this running time on a task is long: nothing waits behind it.
  static constexpr std::chrono::milliseconds kLongTask{10};
  // Short tasks in a row before the credit doubles.  Enough that Credit
  // messages cost nothing next to the tasks (one per 16 or more), few
  // enough that the ceiling is reached within ~50 tasks of a burst.
  static constexpr int kRaiseAfter = 16;

  // base: the credit the engine registers with (--prefetch); ceiling: the
  // most it asks for (--prefetch-max).  A ceiling at or below the base
  // turns the adaptation off: the credit stays the base.
  CreditPolicy(std::int64_t base, std::int64_t ceiling);

  std::int64_t credit() const { return credit_; }
  std::int64_t base() const { return base_; }
  bool adaptive() const { return ceiling_ > base_; }
  // The running task has run kShortTask or longer (on_long_task) and has
  // not ended yet.
  bool long_task() const { return long_task_; }
  // Queued tasks the engine may keep at the current credit: the credit less
  // the running task, if one runs.
  std::int64_t keep(bool running) const { return credit_ - (running ? 1 : 0); }

  // A task ended after running `ran`.  True when the credit changed.
  bool on_task_end(std::chrono::nanoseconds ran);
  // The running task has run `ran` (kShortTask or more) and still runs.
  // True when the credit changed.
  bool on_long_task(std::chrono::nanoseconds ran);
  // Back to the base, forgetting the streak and any long task: the engine
  // sends Register (the broker takes the base from it), or cannot send
  // Credit now (not registered, or an older broker).
  void reset();

 private:
  // Sets the credit and restarts the streak; true when it changed.
  bool set(std::int64_t credit);

  std::int64_t base_;
  std::int64_t ceiling_;
  std::int64_t credit_;
  int streak_ = 0;
  bool long_task_ = false;
};

}  // namespace zfarm::engine
