// SharedSocket: the client's socket, used directly by whichever thread needs
// it (one at a time, under a mutex), with no thread of its own.
//
// The client used an IoThread (common/io_thread.hpp) before: a submit woke
// the I/O thread (eventfd) and each reply went I/O thread -> Python
// receiver thread (condition variable) -> the waiting user thread.  Every
// such hand-off wakes a thread, often on an idle vCPU.  Here the submitting
// thread sends itself, and the receiver thread waits on the socket's own
// file descriptor (ZMQ_FD) without the mutex, so a send never waits for the
// receiver and a reply wakes the receiver straight from libzmq's I/O thread.
//
// ZMQ_FD only signals a change (new commands in the socket's mailbox), and
// any call on the socket, a send too, may consume that signal.  So the
// receiver, before it sleeps, drains the socket under the mutex and marks
// itself asleep; a sender that finds it asleep reads ZMQ_EVENTS after its
// send and wakes it (wake_fd) if input is waiting.
//
// A thread that waits for a result may read the socket itself meanwhile
// (claim, recv_claimed, release), so the reply wakes it straight from
// libzmq's I/O thread instead of going through the receiver thread (one
// wake-up less per round trip).  The receiver thread sleeps in epoll; a
// claim takes the socket's descriptors out of its set (epoll_ctl, which
// needs no wake-up of the sleeper) and release puts them back, so the
// receiver is not woken to step aside nor to take over.  Messages are
// handled in the order they were read: whoever reads a batch holds the
// read token until it has handled it (the receiver until its next recv(),
// a claimant until release()), and the other waits for the token.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <vector>

#include <zmq.hpp>

#include "io_thread.hpp"  // Frames, recv_frames

namespace zfarm {

class SharedSocket {
 public:
  explicit SharedSocket(zmq::socket_t socket);
  ~SharedSocket();
  SharedSocket(const SharedSocket&) = delete;
  SharedSocket& operator=(const SharedSocket&) = delete;

  // Sends now, or keeps in order what the socket will not take yet (no
  // peer: a DEALER whose CURVE handshake failed has no pipe); the receiver
  // sends that once the socket is writable.  Never blocks on the network.
  // Thread-safe.  After close() the message is dropped (counted).
  void send(Frames frames);
  void send_many(std::vector<Frames>& batch);

  // Waits up to timeout_ms (negative: forever) for incoming messages and
  // moves up to max_batch of them into out; returns how many.  One receiver
  // at a time (another waits for the first).  Returns 0 at once after
  // close().
  std::size_t recv(std::vector<Frames>& out, int timeout_ms, std::size_t max_batch);
  // Makes a thread blocked in recv() or recv_claimed() return (0 messages).
  void wake_receivers();

  // Another thread than the receiver's takes the socket's reading over:
  // false at once if another thread has it; otherwise waits until the
  // receiver has handled what it read (its next recv()) and returns true.
  // A waiting claim gives up after timeout_ms (then false; no claim).
  bool claim(int timeout_ms);
  // The claimant reads, as recv() does (waiting on the socket itself).
  std::size_t recv_claimed(std::vector<Frames>& out, int timeout_ms, std::size_t max_batch);
  // The claimant gives the socket back to the receiver thread.
  void release();

  // Waits for a receiver to leave recv(), sends what was kept back if the
  // socket takes it (what it does not take is dropped), and closes the
  // socket (libzmq gets up to a second to deliver what it holds).
  void close();

  std::uint64_t dropped_sends() const { return dropped_sends_.load(); }

 private:
  // The following run with mu_ held.
  bool send_one(Frames& frames);
  void flush_kept();
  void after_send();

  zmq::socket_t socket_;
  int zmq_fd_ = -1;
  int wake_fd_ = -1;
  std::mutex mu_;  // the socket, kept_, closed_
  std::deque<Frames> kept_;
  bool closed_ = false;
  // Set by a receiver (under mu_) just before it sleeps on the descriptors.
  std::atomic<bool> receiver_asleep_{false};
  std::atomic<std::uint64_t> wake_generation_{0};
  std::atomic<std::uint64_t> dropped_sends_{0};
  std::mutex recv_mu_;      // the receiver thread in recv(); close() waits for it
  std::mutex claimant_mu_;  // a claimant in recv_claimed(); close() waits for it

  // The read token (see the top): who may read the socket.
  enum class Reader { kNone, kReceiver, kClaimant };
  std::mutex token_mu_;  // reader_, claimed_ and the epoll set's contents
  std::condition_variable token_cv_;
  Reader reader_ = Reader::kNone;
  bool claimed_ = false;
  int epoll_fd_ = -1;  // the receiver's: zmq_fd_ and wake_fd_ unless claimed_, park_fd_ always
  int park_fd_ = -1;   // wakes the receiver thread alone (close)
  // Requires token_mu_: adds or removes zmq_fd_ and wake_fd_.
  void watch_socket(bool on);
  // The receiver gives the token back (it has handled its last batch).
  void drop_token(std::unique_lock<std::mutex>& lock);
  std::size_t read_locked(std::vector<Frames>& out, std::size_t max_batch);
};

}  // namespace zfarm
