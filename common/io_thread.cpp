#include "io_thread.hpp"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <stdexcept>

namespace zfarm {

bool send_frames(zmq::socket_t& socket, Frames& frames, bool dontwait) {
  try {
    for (std::size_t i = 0; i < frames.size(); ++i) {
      auto flags = zmq::send_flags::none;
      if (i + 1 < frames.size()) flags = flags | zmq::send_flags::sndmore;
      if (dontwait) flags = flags | zmq::send_flags::dontwait;
      if (!socket.send(frames[i], flags)) return false;
    }
  } catch (const zmq::error_t&) {
    return false;
  }
  return true;
}

bool recv_frames(zmq::socket_t& socket, Frames& out) {
  out.clear();
  try {
    while (true) {
      zmq::message_t msg;
      auto got = socket.recv(msg, out.empty() ? zmq::recv_flags::dontwait : zmq::recv_flags::none);
      if (!got) return false;
      const bool more = msg.more();
      out.push_back(std::move(msg));
      if (!more) return true;
    }
  } catch (const zmq::error_t&) {
    return false;
  }
}

IoThread::IoThread(zmq::socket_t socket, int tick_ms, IncomingFn on_incoming, TickFn on_tick)
    : socket_(std::move(socket)),
      tick_ms_(tick_ms),
      on_incoming_(std::move(on_incoming)),
      on_tick_(std::move(on_tick)) {
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake_fd_ < 0) throw std::runtime_error("eventfd failed");
}

IoThread::~IoThread() {
  stop();
  if (wake_fd_ >= 0) ::close(wake_fd_);
}

void IoThread::start() {
  running_ = true;
  thread_ = std::thread([this] { run(); });
}

void IoThread::stop() {
  if (!thread_.joinable()) return;
  stopping_ = true;
  signal();
  thread_.join();
  running_ = false;
  wake_receivers();
}

void IoThread::signal() {
  std::uint64_t one = 1;
  [[maybe_unused]] auto n = ::write(wake_fd_, &one, sizeof one);
}

// Only the send that finds the queue empty writes the eventfd: the I/O
// thread reads the eventfd before it takes the queue, so every message
// queued behind that one leaves with the same wake-up (a burst of submits
// costs one system call and one wake-up, not one each).
void IoThread::send(Frames frames) {
  bool was_empty;
  {
    std::lock_guard lock(out_mu_);
    was_empty = outgoing_.empty();
    outgoing_.push_back(std::move(frames));
  }
  if (was_empty) signal();
}

void IoThread::send_many(std::vector<Frames> batch) {
  if (batch.empty()) return;
  bool was_empty;
  {
    std::lock_guard lock(out_mu_);
    was_empty = outgoing_.empty();
    for (auto& f : batch) outgoing_.push_back(std::move(f));
  }
  if (was_empty) signal();
}

void IoThread::send_now(Frames& frames) {
  if (!send_frames(socket_, frames, /*dontwait=*/true)) ++dropped_sends_;
}

// Called after the eventfd was read (see send): what is queued from here on
// signals again.
bool IoThread::flush_outgoing() {
  {
    std::lock_guard lock(out_mu_);
    if (blocked_.empty()) {
      blocked_.swap(outgoing_);
    } else {
      for (auto& f : outgoing_) blocked_.push_back(std::move(f));
      outgoing_.clear();
    }
  }
  // Never a blocking send: a socket with no peer (a handshake that failed
  // for good, e.g. wrong CURVE keys) would block this thread forever, and
  // with it receiving and stop().  What would block waits for POLLOUT.
  while (!blocked_.empty()) {
    Frames& frames = blocked_.front();
    if (frames.empty()) {
      blocked_.pop_front();
      continue;
    }
    try {
      if (!socket_.send(frames[0], frames.size() > 1 ? zmq::send_flags::sndmore | zmq::send_flags::dontwait
                                                     : zmq::send_flags::dontwait)) {
        return false;  // EAGAIN: nothing of this message went out
      }
      // The first part went: libzmq takes the rest of a multipart message.
      for (std::size_t i = 1; i < frames.size(); ++i) {
        socket_.send(frames[i], i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
      }
    } catch (const zmq::error_t&) {
      ++dropped_sends_;  // the context is closing
    }
    blocked_.pop_front();
  }
  return true;
}

std::size_t IoThread::recv(std::vector<Frames>& out, int timeout_ms, std::size_t max_batch) {
  std::unique_lock lock(in_mu_);
  const std::uint64_t generation = wake_generation_;
  auto ready = [&] { return !incoming_.empty() || wake_generation_ != generation || !running_; };
  if (timeout_ms < 0) {
    in_cv_.wait(lock, ready);
  } else {
    in_cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms), ready);
  }
  std::size_t n = 0;
  while (!incoming_.empty() && n < max_batch) {
    out.push_back(std::move(incoming_.front()));
    incoming_.pop_front();
    ++n;
  }
  return n;
}

void IoThread::wake_receivers() {
  {
    std::lock_guard lock(in_mu_);
    ++wake_generation_;
  }
  in_cv_.notify_all();
}

void IoThread::run() {
  using clock = std::chrono::steady_clock;
  auto next_tick = clock::now() + std::chrono::milliseconds(tick_ms_);
  std::vector<Frames> arrived;
  while (!stopping_) {
    const short want = blocked_.empty() ? ZMQ_POLLIN : ZMQ_POLLIN | ZMQ_POLLOUT;
    zmq::pollitem_t items[] = {
        {static_cast<void*>(socket_), 0, want, 0},
        {nullptr, wake_fd_, ZMQ_POLLIN, 0},
    };
    auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(next_tick - clock::now());
    if (wait.count() < 0) wait = std::chrono::milliseconds(0);
    try {
      zmq::poll(items, 2, wait);
    } catch (const zmq::error_t& e) {
      if (e.num() == EINTR) continue;
      break;
    }
    if (items[1].revents & ZMQ_POLLIN) {
      std::uint64_t v;
      [[maybe_unused]] auto n = ::read(wake_fd_, &v, sizeof v);
      flush_outgoing();
    } else if (items[0].revents & ZMQ_POLLOUT) {
      flush_outgoing();
    }
    if (items[0].revents & ZMQ_POLLIN) {
      Frames frames;
      // Drain what is there now, so one wake-up hands Python a batch.
      while (recv_frames(socket_, frames)) {
        if (on_incoming_ && on_incoming_(frames)) continue;
        arrived.push_back(std::move(frames));
        frames = Frames{};
      }
      if (!arrived.empty()) {
        {
          std::lock_guard lock(in_mu_);
          for (auto& f : arrived) incoming_.push_back(std::move(f));
        }
        arrived.clear();
        in_cv_.notify_all();
      }
    }
    if (clock::now() >= next_tick) {
      if (on_tick_) on_tick_();
      next_tick = clock::now() + std::chrono::milliseconds(tick_ms_);
    }
  }
  if (!flush_outgoing()) dropped_sends_ += blocked_.size();  // no peer to take them
  blocked_.clear();
  socket_.set(zmq::sockopt::linger, 1000);
  socket_.close();
}

}  // namespace zfarm
