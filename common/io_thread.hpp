// IoThread: one socket owned by one C++ thread, fed and drained through
// thread-safe queues.  The engine and the client core both use it, so that
// socket I/O and heartbeats go on while Python holds the GIL for a long task.
//
// Any thread may call send() and recv().  Only the I/O thread touches the
// socket; it wakes on socket input, on an eventfd written by send()/stop(),
// and every tick_ms to run on_tick (heartbeats, timeouts).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include <zmq.hpp>

namespace zfarm {

using Frames = std::vector<zmq::message_t>;

class IoThread {
 public:
  // Runs on the I/O thread for each message read from the socket.  Return
  // true when the message was dealt with there (a heartbeat, say); false
  // queues it for recv().
  using IncomingFn = std::function<bool(Frames&)>;
  // Runs on the I/O thread about every tick_ms.
  using TickFn = std::function<void()>;

  IoThread(zmq::socket_t socket, int tick_ms, IncomingFn on_incoming, TickFn on_tick);
  ~IoThread();
  IoThread(const IoThread&) = delete;
  IoThread& operator=(const IoThread&) = delete;

  void start();
  // Sends what is queued, then stops the thread and closes the socket.
  void stop();

  // Queues a message for the socket.  Thread-safe.
  void send(Frames frames);
  // Queues several messages with one wake-up.  Thread-safe.
  void send_many(std::vector<Frames> batch);
  // Sends at once; only from on_incoming or on_tick (the I/O thread).
  void send_now(Frames& frames);

  // Waits up to timeout_ms (negative: forever) for incoming messages and
  // moves up to max_batch of them into out.  Returns how many were moved.
  std::size_t recv(std::vector<Frames>& out, int timeout_ms, std::size_t max_batch);
  // Wakes a thread blocked in recv() without a message (it returns 0).
  void wake_receivers();

  bool running() const { return running_.load(); }
  std::uint64_t dropped_sends() const { return dropped_sends_.load(); }

 private:
  void run();
  // Sends queued messages until the socket would block; what is left stays
  // queued (in order) for the next POLLOUT.  Returns true if all went.
  bool flush_outgoing();
  void signal();

  zmq::socket_t socket_;
  int tick_ms_;
  IncomingFn on_incoming_;
  TickFn on_tick_;
  int wake_fd_ = -1;
  std::thread thread_;
  std::atomic<bool> running_{false};
  std::atomic<bool> stopping_{false};
  std::atomic<std::uint64_t> dropped_sends_{0};

  std::mutex out_mu_;
  std::deque<Frames> outgoing_;
  // Messages taken from outgoing_ that the socket would not take yet (no
  // peer connected: a DEALER whose handshake failed has no pipe).  I/O
  // thread only.
  std::deque<Frames> blocked_;

  std::mutex in_mu_;
  std::condition_variable in_cv_;
  std::deque<Frames> incoming_;
  std::uint64_t wake_generation_ = 0;
};

// Sends a multipart message; false if the socket would block or failed.
bool send_frames(zmq::socket_t& socket, Frames& frames, bool dontwait = false);
// Receives a whole multipart message without blocking; false if none waits.
bool recv_frames(zmq::socket_t& socket, Frames& out);

}  // namespace zfarm
