#include "engine_io.hpp"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <stdexcept>

namespace zfarm::engine {

namespace {
// The EngineIo whose socket this thread holds (mu_ locked by it), if any:
// a send from the owner must not try to lock mu_ again.
thread_local const EngineIo* t_owner = nullptr;
}  // namespace

EngineIo::EngineIo(zmq::socket_t socket, std::chrono::milliseconds tick, IncomingFn on_incoming, TickFn on_tick,
                   LongTaskFn on_long_task)
    : socket_(std::move(socket)),
      tick_(tick),
      on_incoming_(std::move(on_incoming)),
      on_tick_(std::move(on_tick)),
      on_long_task_(std::move(on_long_task)) {
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake_fd_ < 0) throw std::runtime_error("eventfd failed");
  zmq_fd_ = socket_.get(zmq::sockopt::fd);
}

EngineIo::~EngineIo() {
  if (watcher_.joinable()) {
    stopping_ = true;
    watch_cv_.notify_all();
    signal();
    watcher_.join();
  }
  if (wake_fd_ >= 0) ::close(wake_fd_);
}

void EngineIo::start() {
  mu_.lock();
  t_owner = this;
  next_tick_ = Clock::now();  // the first tick (Register) at once
  watcher_ = std::thread([this] { watch(); });
}

void EngineIo::stop() {
  if (!watcher_.joinable()) return;
  stopping_ = true;
  {
    std::lock_guard lock(watch_mu_);
  }
  watch_cv_.notify_all();
  signal();
  // A watch thread waiting for the socket must get it to see stopping_.
  t_owner = nullptr;
  mu_.unlock();
  watcher_.join();
  std::lock_guard lock(mu_);
  if (!flush_locked()) dropped_sends_ += blocked_.size();  // no peer to take them (held Results included)
  blocked_.clear();
  socket_.set(zmq::sockopt::linger, 1000);
  socket_.close();
}

void EngineIo::signal() {
  std::uint64_t one = 1;
  [[maybe_unused]] auto n = ::write(wake_fd_, &one, sizeof one);
}

void EngineIo::serve(std::chrono::milliseconds timeout, const std::function<bool()>& done) {
  serve_locked(Clock::now() + timeout, done);
}

void EngineIo::service() {
  tick_if_due_locked(Clock::now());
  flush_locked(/*release_held=*/false);  // a task runs next: held Results may wait for its end
  drain_incoming_locked();
}

void EngineIo::task_started() {
  task_started_ns_.store(Clock::now().time_since_epoch().count(), std::memory_order_relaxed);
  in_task_.store(true);
  if (dozing_.load()) {
    {
      std::lock_guard lock(watch_mu_);
      ++kicks_;
    }
    watch_cv_.notify_one();
  }
  t_owner = nullptr;
  mu_.unlock();
}

EngineIo::Clock::duration EngineIo::task_ended() {
  const auto ran = Clock::now() - task_start();
  in_task_.store(false);
  if (!mu_.try_lock()) {
    signal();  // the watch thread serves the socket: it lets go on this
    mu_.lock();
  }
  t_owner = this;
  return ran;
}

void EngineIo::send(Frames frames) {
  if (t_owner == this) {
    {
      std::lock_guard lock(out_mu_);
      outgoing_.push_back(std::move(frames));
    }
    flush_locked();
    return;
  }
  if (mu_.try_lock()) {
    t_owner = this;
    {
      std::lock_guard lock(out_mu_);
      outgoing_.push_back(std::move(frames));
    }
    flush_locked();
    t_owner = nullptr;
    mu_.unlock();
    return;
  }
  bool was_empty;
  {
    std::lock_guard lock(out_mu_);
    was_empty = outgoing_.empty();
    outgoing_.push_back(std::move(frames));
  }
  if (was_empty) signal();
}

void EngineIo::hold(Frames result) {
  // What other threads queued meanwhile (the task's Output, sent while the
  // watch thread held the socket) is older than this Result: it goes first,
  // so that whatever is queued from now on is newer than every held Result.
  flush_locked(/*release_held=*/false);
  const auto now = Clock::now();
  if (held_.empty()) held_since_ = now;
  held_.push_back(std::move(result));
  if (held_.size() >= kMaxHeld || now - held_since_ >= kMaxHoldAge) flush_locked();
}

std::size_t EngineIo::drop_held() {
  const std::size_t n = held_.size();
  held_.clear();
  return n;
}

void EngineIo::release_held_locked() {
  if (held_.size() == 1) {
    blocked_.push_back(std::move(held_.front()));
  } else {
    pack_.clear();
    for (const Frames& f : held_) pack_.push_back(&f);
    blocked_.push_back(proto::pack_batch(pack_));
    ++batches_sent_;
    results_batched_ += held_.size();
  }
  held_.clear();
}

void EngineIo::send_now(Frames& frames) {
  if (!send_frames(socket_, frames, /*dontwait=*/true)) ++dropped_sends_;
}

EngineIo::Clock::time_point EngineIo::task_start() const {
  return Clock::time_point(Clock::duration(task_started_ns_.load(std::memory_order_relaxed)));
}

bool EngineIo::long_task() const {
  return in_task_.load() && Clock::now() - task_start() >= kTakeoverAfter;
}

void EngineIo::watch() {
  std::uint64_t seen = 0;
  while (!stopping_) {
    {
      // Busy (a task started within the last tick): look often, so a long
      // task is taken over within a few milliseconds.  Idle: look every
      // tick, and let the next task_started() wake us (one wake-up per
      // burst of tasks, not one per task).
      std::unique_lock lock(watch_mu_);
      const auto last = Clock::time_point(Clock::duration(task_started_ns_.load(std::memory_order_relaxed)));
      const bool busy = in_task_.load() || Clock::now() - last < tick_;
      dozing_ = !busy;
      watch_cv_.wait_for(lock, busy ? kLookWhileBusy : tick_, [&] { return stopping_.load() || kicks_ != seen; });
      seen = kicks_;
      dozing_ = false;
    }
    if (stopping_) break;
    if (!long_task()) continue;  // the main thread serves the socket itself
    std::lock_guard lock(mu_);
    // Waiting for mu_ may have taken a while: the task seen may have ended
    // and a new, short one begun.
    if (!long_task() || stopping_) continue;
    t_owner = this;
    ++takeovers_;
    auto done = [&] { return !in_task_.load() || stopping_.load(); };
    if (on_long_task_) {
      on_long_task_(Clock::now() - task_start());
      serve_locked(task_start() + kLookAgainAfter, done);
      if (!done()) on_long_task_(Clock::now() - task_start());
    }
    serve_locked(Clock::time_point::max(), done);
    t_owner = nullptr;
  }
}

// Polls the socket's own file descriptor (ZMQ_FD) with ::poll instead of
// zmq::poll: libzmq's poll asks the socket for its events before and after
// waiting, each time a poll(2) of its mailbox and a getpid (its fork check),
// ~8 poll(2) per round trip in all.  ZMQ_FD only says "look again": it is
// safe to wait on once a receive has failed, since that failure made the
// socket process all its pending commands, so each round ends with
// drain_incoming_locked, after any send.
void EngineIo::serve_locked(Clock::time_point deadline, const std::function<bool()>& done) {
  while (true) {
    auto now = Clock::now();
    tick_if_due_locked(now);
    flush_locked();
    drain_incoming_locked();
    if (done()) return;
    now = Clock::now();
    if (now >= deadline) return;
    auto until = std::min(deadline, next_tick_);
    // A message the socket would not take (no peer yet) is retried soon.
    if (!blocked_.empty()) until = std::min(until, now + kRetryBlocked);
    auto wait = std::chrono::ceil<std::chrono::milliseconds>(until - now);
    if (wait.count() < 0) wait = std::chrono::milliseconds(0);
    pollfd fds[2] = {{zmq_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    if (::poll(fds, 2, static_cast<int>(wait.count())) < 0) return;  // EINTR: a signal, let the caller look
    if (fds[1].revents & POLLIN) {
      std::uint64_t v;
      [[maybe_unused]] auto n = ::read(wake_fd_, &v, sizeof v);
    }
  }
}

void EngineIo::drain_incoming_locked() {
  Frames frames;
  while (recv_frames(socket_, frames)) {
    if (on_incoming_) on_incoming_(frames);
  }
}

void EngineIo::tick_if_due_locked(Clock::time_point now) {
  if (now < next_tick_) return;
  if (on_tick_) on_tick_();
  next_tick_ = Clock::now() + tick_;
}

bool EngineIo::flush_locked(bool release_held) {
  {
    std::lock_guard lock(out_mu_);
    // Nothing overtakes a held Result: whatever is queued goes after it.
    if (!held_.empty() && (release_held || !outgoing_.empty())) release_held_locked();
    if (outgoing_.empty() && blocked_.empty()) return true;
    if (blocked_.empty()) {
      blocked_.swap(outgoing_);
    } else {
      for (auto& f : outgoing_) blocked_.push_back(std::move(f));
      outgoing_.clear();
    }
  }
  // Never a blocking send: a socket with no peer would block the owner, and
  // with it the engine, for good.  What would block waits for POLLOUT.
  while (!blocked_.empty()) {
    Frames& frames = blocked_.front();
    if (frames.empty()) {
      blocked_.pop_front();
      continue;
    }
    if (!try_send_frames(socket_, frames, &dropped_sends_)) return false;  // EAGAIN: it waits
    blocked_.pop_front();
  }
  return true;
}

}  // namespace zfarm::engine
