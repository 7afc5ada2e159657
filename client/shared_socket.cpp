#include "shared_socket.hpp"

#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <chrono>
#include <stdexcept>

namespace zfarm {

SharedSocket::SharedSocket(zmq::socket_t socket) : socket_(std::move(socket)) {
  zmq_fd_ = socket_.get(zmq::sockopt::fd);
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  park_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  if (wake_fd_ < 0 || park_fd_ < 0 || epoll_fd_ < 0) throw std::runtime_error("eventfd or epoll_create1 failed");
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = park_fd_;
  if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, park_fd_, &ev) != 0) throw std::runtime_error("epoll_ctl failed");
  std::lock_guard tl(token_mu_);
  watch_socket(true);
}

SharedSocket::~SharedSocket() {
  close();
  ::close(epoll_fd_);
  ::close(park_fd_);
  ::close(wake_fd_);
}

void SharedSocket::watch_socket(bool on) {
  for (int fd : {zmq_fd_, wake_fd_}) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    [[maybe_unused]] int r = epoll_ctl(epoll_fd_, on ? EPOLL_CTL_ADD : EPOLL_CTL_DEL, fd, &ev);
  }
}

void SharedSocket::drop_token(std::unique_lock<std::mutex>& lock) {
  (void)lock;  // held: token_mu_
  reader_ = Reader::kNone;
  if (claimed_) token_cv_.notify_one();
}

std::size_t SharedSocket::read_locked(std::vector<Frames>& out, std::size_t max_batch) {
  receiver_asleep_ = false;
  if (!kept_.empty()) flush_kept();
  // A receive that finds nothing has taken every pending command, so
  // ZMQ_FD signals again on the next message.
  std::size_t n = 0;
  Frames frames;
  while (n < max_batch && recv_frames(socket_, frames)) {
    out.push_back(std::move(frames));
    frames = Frames{};
    ++n;
  }
  return n;
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

namespace {

// Milliseconds left of timeout_ms since start (-1: no limit); 0 when spent.
int left_ms(int timeout_ms, std::chrono::steady_clock::time_point start) {
  if (timeout_ms < 0) return -1;
  const auto spent =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start).count();
  return spent >= timeout_ms ? 0 : static_cast<int>(timeout_ms - spent);
}

void clear_eventfd(int fd) {
  std::uint64_t v;
  [[maybe_unused]] auto r = ::read(fd, &v, sizeof v);
}

}  // namespace

std::size_t SharedSocket::recv(std::vector<Frames>& out, int timeout_ms, std::size_t max_batch) {
  const auto start = std::chrono::steady_clock::now();
  std::lock_guard receiving(recv_mu_);
  const std::uint64_t generation = wake_generation_.load();
  {
    // Back here: the batch read last time has been handled.
    std::unique_lock tl(token_mu_);
    if (reader_ == Reader::kReceiver) drop_token(tl);
  }
  while (true) {
    bool mine = false;
    {
      std::unique_lock tl(token_mu_);
      if (!claimed_ && reader_ == Reader::kNone) {
        reader_ = Reader::kReceiver;
        mine = true;
      }
    }
    if (mine) {
      std::unique_lock lock(mu_);
      const bool closed = closed_;
      const std::size_t n = closed ? 0 : read_locked(out, max_batch);
      if (n > 0) return n;  // keeps the token until it is back
      const bool woken = wake_generation_.load() != generation;
      if (!closed && !woken) receiver_asleep_ = true;
      lock.unlock();
      std::unique_lock tl(token_mu_);
      drop_token(tl);
      if (closed || woken) return 0;
    } else {
      std::lock_guard lock(mu_);
      if (closed_) return 0;
    }
    // (receiver_asleep_ stays: a claimant may be the one asleep.)
    const int wait_ms = left_ms(timeout_ms, start);
    if (wait_ms == 0) return 0;
    epoll_event events[3];
    const int ready = epoll_wait(epoll_fd_, events, 3, wait_ms);
    for (int i = 0; i < ready; ++i) {
      if (events[i].data.fd == park_fd_) {
        clear_eventfd(park_fd_);
      } else if (events[i].data.fd == wake_fd_) {
        // Only while the socket is ours: a claimant waits on wake_fd_ too.
        std::lock_guard tl(token_mu_);
        if (!claimed_) clear_eventfd(wake_fd_);
      }
    }
    if (wake_generation_.load() != generation) return 0;
  }
}

bool SharedSocket::claim(int timeout_ms) {
  std::unique_lock tl(token_mu_);
  if (claimed_) return false;
  {
    std::lock_guard lock(mu_);
    if (closed_) return false;
  }
  claimed_ = true;
  watch_socket(false);
  const auto ready = [this] { return reader_ == Reader::kNone; };
  if (!token_cv_.wait_for(tl, std::chrono::milliseconds(timeout_ms), ready)) {
    claimed_ = false;
    std::lock_guard lock(mu_);
    if (!closed_) watch_socket(true);
    return false;
  }
  reader_ = Reader::kClaimant;
  return true;
}

std::size_t SharedSocket::recv_claimed(std::vector<Frames>& out, int timeout_ms, std::size_t max_batch) {
  const auto start = std::chrono::steady_clock::now();
  std::lock_guard receiving(claimant_mu_);
  const std::uint64_t generation = wake_generation_.load();
  while (true) {
    {
      std::lock_guard lock(mu_);
      if (closed_) return 0;
      const std::size_t n = read_locked(out, max_batch);
      if (n > 0 || wake_generation_.load() != generation) return n;
      receiver_asleep_ = true;
    }
    const int wait_ms = left_ms(timeout_ms, start);
    if (wait_ms == 0) {
      receiver_asleep_ = false;
      return 0;
    }
    pollfd fds[2] = {{zmq_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    const int ready = ::poll(fds, 2, wait_ms);
    if (ready > 0 && (fds[1].revents & POLLIN)) clear_eventfd(wake_fd_);
    // A signal (EINTR): back to the caller, who looks at it.
    if (ready < 0) {
      receiver_asleep_ = false;
      return 0;
    }
  }
}

void SharedSocket::release() {
  std::unique_lock tl(token_mu_);
  if (!claimed_) return;
  {
    std::lock_guard lock(mu_);
    if (!closed_) {
      // A send since the last read may have taken the signal of a message
      // that came meanwhile: the receiver would not wake for it.
      int events = 0;
      try {
        events = socket_.get(zmq::sockopt::events);
      } catch (const zmq::error_t&) {
      }
      if (events & ZMQ_POLLIN) {
        std::uint64_t one = 1;
        [[maybe_unused]] auto n = ::write(wake_fd_, &one, sizeof one);
      }
      receiver_asleep_ = true;
      watch_socket(true);
    }
  }
  claimed_ = false;
  if (reader_ == Reader::kClaimant) reader_ = Reader::kNone;
}

void SharedSocket::wake_receivers() {
  ++wake_generation_;
  std::uint64_t one = 1;
  [[maybe_unused]] auto n = ::write(wake_fd_, &one, sizeof one);
  n = ::write(park_fd_, &one, sizeof one);
}

void SharedSocket::close() {
  {
    std::lock_guard lock(mu_);
    if (closed_) return;
    closed_ = true;
  }
  wake_receivers();
  std::lock_guard receiving(recv_mu_);  // the receiver has left the descriptors
  std::lock_guard claimant(claimant_mu_);  // and so has a claimant
  std::lock_guard lock(mu_);
  flush_kept();
  dropped_sends_ += kept_.size();  // no peer to take them
  kept_.clear();
  socket_.set(zmq::sockopt::linger, 1000);
  socket_.close();
}

}  // namespace zfarm
