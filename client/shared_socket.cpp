#include "shared_socket.hpp"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <chrono>
#include <stdexcept>

namespace zfarm {

SharedSocket::SharedSocket(zmq::socket_t socket) : socket_(std::move(socket)) {
  zmq_fd_ = socket_.get(zmq::sockopt::fd);
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake_fd_ < 0) throw std::runtime_error("eventfd failed");
}

SharedSocket::~SharedSocket() {
  close();
  ::close(wake_fd_);
}

bool SharedSocket::send_one(Frames& frames) { return try_send_frames(socket_, frames, &dropped_sends_); }

void SharedSocket::flush_kept() {
  while (!kept_.empty()) {
    if (!send_one(kept_.front())) return;
    kept_.pop_front();
  }
}

// A send may have taken the ZMQ_FD signal of input (or of the socket
// becoming writable) that a sleeping receiver waits for: look, and pass it
// on.  Costs a system call, so only while a receiver sleeps.
void SharedSocket::after_send() {
  if (!receiver_asleep_.load(std::memory_order_relaxed)) return;
  int events = 0;
  try {
    events = socket_.get(zmq::sockopt::events);
  } catch (const zmq::error_t&) {
    return;
  }
  if ((events & ZMQ_POLLOUT) && !kept_.empty()) flush_kept();
  if (events & ZMQ_POLLIN) {
    receiver_asleep_ = false;  // one wake-up is enough
    std::uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(wake_fd_, &one, sizeof one);
  }
}

void SharedSocket::send(Frames frames) {
  std::lock_guard lock(mu_);
  if (closed_) {
    ++dropped_sends_;
    return;
  }
  if (!kept_.empty() || !send_one(frames)) kept_.push_back(std::move(frames));
  after_send();
}

void SharedSocket::send_many(std::vector<Frames>& batch) {
  std::lock_guard lock(mu_);
  if (closed_) {
    dropped_sends_ += batch.size();
    return;
  }
  for (auto& frames : batch) {
    if (!kept_.empty() || !send_one(frames)) kept_.push_back(std::move(frames));
  }
  after_send();
}

std::size_t SharedSocket::recv(std::vector<Frames>& out, int timeout_ms, std::size_t max_batch) {
  using clock = std::chrono::steady_clock;
  std::lock_guard receiving(recv_mu_);
  const auto start = clock::now();
  const std::uint64_t generation = wake_generation_.load();
  std::size_t n = 0;
  Frames frames;
  while (true) {
    {
      std::lock_guard lock(mu_);
      receiver_asleep_ = false;
      if (closed_) return n;
      if (!kept_.empty()) flush_kept();
      // A receive that finds nothing has taken every pending command, so
      // ZMQ_FD signals again on the next message.
      while (n < max_batch && recv_frames(socket_, frames)) {
        out.push_back(std::move(frames));
        frames = Frames{};
        ++n;
      }
      if (n > 0 || wake_generation_.load() != generation) return n;
      receiver_asleep_ = true;
    }
    int wait_ms = -1;
    if (timeout_ms >= 0) {
      const auto spent = std::chrono::duration_cast<std::chrono::milliseconds>(clock::now() - start).count();
      if (spent >= timeout_ms) {
        receiver_asleep_ = false;
        return 0;
      }
      wait_ms = static_cast<int>(timeout_ms - spent);
    }
    pollfd fds[2] = {{zmq_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    const int ready = ::poll(fds, 2, wait_ms);
    if (ready > 0 && (fds[1].revents & POLLIN)) {
      std::uint64_t v;
      [[maybe_unused]] auto r = ::read(wake_fd_, &v, sizeof v);
    }
  }
}

void SharedSocket::wake_receivers() {
  ++wake_generation_;
  std::uint64_t one = 1;
  [[maybe_unused]] auto n = ::write(wake_fd_, &one, sizeof one);
}

void SharedSocket::close() {
  {
    std::lock_guard lock(mu_);
    if (closed_) return;
    closed_ = true;
  }
  wake_receivers();
  std::lock_guard receiving(recv_mu_);  // the receiver has left the descriptors
  std::lock_guard lock(mu_);
  flush_kept();
  dropped_sends_ += kept_.size();  // no peer to take them
  kept_.clear();
  socket_.set(zmq::sockopt::linger, 1000);
  socket_.close();
}

}  // namespace zfarm
