// OutputPipe: streams what the running task prints to the broker as Output
// messages while the task runs (docs/protocol.rst, "Output").
//
//   thread         call        what it does
//   ------------   ---------   ------------------------------------------------
//   main           begin       a task starts: offsets to 0, nothing pending
//   any (GIL)      write       the task printed: keep the text; send at once
//                              when kSendAtBytes are pending
//   owner          on_tick     send what has waited flush_after or longer
//   main           end         the task ended: drop what was not sent (its
//                              Result carries the whole output)
//   owner          set_enabled the broker announced (or not) that it forwards
//                              Output
//
// Sends happen under the pipe's lock and go through one FIFO (EngineIo::send),
// so chunks leave in the order they were taken, and none of a task leaves
// after end() (the main thread sends the task's Result after end()).
//
// A task that prints nothing costs begin() and end() (a lock each) and a
// flag read per tick: no message.  No Python here: the engine's _zfarm_engine
// module calls write() with the UTF-8 text; units drive it with a fake send.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>

#include "io_thread.hpp"
#include "protocol.hpp"

namespace zfarm::engine {

class OutputPipe {
 public:
  using Clock = std::chrono::steady_clock;
  using SendFn = std::function<void(Frames)>;

  // Text waits at most about this long (plus one I/O tick) before it is sent:
  // prompt enough to watch, and a task printing in a tight loop still makes
  // at most ~10 messages a second.
  static constexpr std::chrono::milliseconds kFlushAfter{100};
  // ... or is sent at once from the writer when this much is pending, so a
  // fast printer needs no large buffer.
  static constexpr std::size_t kSendAtBytes = 64 * 1024;

  explicit OutputPipe(SendFn send, std::chrono::milliseconds flush_after = kFlushAfter);

  // The socket's owner (EngineIo: the main thread between tasks, the watch
  // thread during a long one).
  void set_enabled(bool enabled) { enabled_.store(enabled, std::memory_order_relaxed); }
  void on_tick(Clock::time_point now);

  // Main thread.
  void begin(std::uint64_t task_id, std::int64_t engine_id);
  void end();

  // Whoever holds the GIL while a task runs.  stream 0 is stdout, 1 stderr;
  // `text` is whole UTF-8 characters.  `capped`: the task reached its limit
  // for this stream (no more of it follows).  Ignored outside a task.
  void write(int stream, std::string_view text, bool capped, Clock::time_point now);

  std::uint64_t messages_sent() const { return messages_sent_.load(std::memory_order_relaxed); }
  bool enabled() const { return enabled_.load(std::memory_order_relaxed); }

 private:
  // Sends everything pending, in messages of at most kMaxOutputChunk bytes
  // per stream.  Requires mu_.
  void send_pending_locked();

  SendFn send_;
  const std::chrono::milliseconds flush_after_;
  std::atomic<bool> enabled_{false};
  std::atomic<bool> has_pending_{false};  // read by on_tick without the lock
  std::atomic<std::uint64_t> messages_sent_{0};

  std::mutex mu_;
  bool active_ = false;       // a task is running and streaming is enabled for it
  std::uint64_t task_id_ = 0;
  std::int64_t engine_id_ = -1;
  std::string pending_[2];
  std::uint64_t sent_[2] = {0, 0};  // bytes of each stream sent for this task
  std::uint32_t flags_ = 0;         // OutputFlags reached so far
  bool flags_sent_ = true;          // the last message carried flags_
  Clock::time_point pending_since_{};
};

// The longest prefix of `text` of at most `max_bytes` bytes that does not
// split a UTF-8 character (a malformed sequence is cut where it is).
std::size_t utf8_prefix(std::string_view text, std::size_t max_bytes);

}  // namespace zfarm::engine
