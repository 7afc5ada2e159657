// The broker's start-up decisions about security, kept out of main.cpp and
// free of sockets so doctest can check them: is CURVE on, which keys, which
// endpoints (--reuse), who is admitted.  docs/security.rst is the prose.
//
//   loopback/ipc endpoints, no flags   plain text (only this machine connects)
//   --curve                            CURVE + ZAP
//   any other address                  CURVE + ZAP, turned on by itself
//   other address + --allow-insecure   plain text, with a loud warning
//
// CURVE needs --connection-file: the keys are handed out only through it.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <zmq.hpp>

#include "curve.hpp"

namespace zfarm::broker {

struct SecurityOptions {
  bool curve = false;           // --curve
  bool allow_insecure = false;  // --allow-insecure
  bool reuse = false;           // --reuse
  std::string authorized_keys;  // --authorized-keys FILE
  std::string connection_file;  // --connection-file
  // Whether --client-endpoint / --engine-endpoint were given: explicit
  // endpoints win over the ones --reuse reads.
  bool client_endpoint_given = false;
  bool engine_endpoint_given = false;
};

struct SecurityPlan {
  bool curve = false;
  CurveKeys keys;  // when curve
  KeyRing ring;    // when curve: who the ZAP handler admits
  // Lines for stderr (warnings and notes), in order.
  std::vector<std::string> messages;
};

// Decides everything above.  May replace *client_endpoint and
// *engine_endpoint (--reuse).  Returns an empty string on success, else why
// the broker must not start (exit code 2).
std::string plan_security(const SecurityOptions& options, std::string* client_endpoint,
                          std::string* engine_endpoint, SecurityPlan* plan);

// Makes `socket` a CURVE server with the plan's server key, asking the ZAP
// handler with `domain` (kClientDomain or kEngineDomain).  Before bind.
void make_curve_server(zmq::socket_t& socket, const SecurityPlan& plan, const char* domain);

// ---- failed handshakes ----------------------------------------------------
//
// A peer whose handshake fails (no CURVE keys, the wrong server key, a key
// the ZAP handler refuses, a connection dropped half way) never reaches the
// socket: libzmq drops it and tells only a socket monitor.  The broker
// monitors both ROUTERs for these events alone, so a monitor costs nothing
// per message, and counts them (handshake_failed_client/_engine in the queue
// status).  ZAP refusals are among them; auth_refused counts those alone.

// The events a HandshakeMonitor asks for.
inline constexpr int kHandshakeFailureEvents =
    ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH;

// The first frame of a monitor event: event number and value.
struct MonitorEvent {
  std::uint16_t event = 0;
  std::uint32_t value = 0;  // errno, ZMQ_PROTOCOL_ERROR_* or ZAP status code, by event
};
// Reads the 6-byte first frame (u16 event, u32 value, host byte order);
// false if it is not 6 bytes.
bool parse_monitor_event(const void* data, std::size_t size, MonitorEvent* out);
// Why a handshake failed, in words for the log; names the likely cause.
std::string describe_handshake_failure(const MonitorEvent& event);

// At most `burst` log lines per `window`; the rest are only counted, and
// the next line allowed says how many were left out.  A client with wrong
// keys retries every reconnect interval for as long as it runs.
class LogLimiter {
 public:
  using Clock = std::chrono::steady_clock;
  LogLimiter(std::size_t burst, Clock::duration window) : burst_(burst), window_(window) {}
  // Whether to write a line at `now`; when true, *left_out = lines not
  // written since the last one that was.
  bool allow(Clock::time_point now, std::uint64_t* left_out);

 private:
  std::size_t burst_;
  Clock::duration window_;
  Clock::time_point window_start_{};
  bool started_ = false;
  std::size_t written_ = 0;       // in the current window
  std::uint64_t left_out_ = 0;    // since the last line written
};

// Watches one socket's handshakes through zmq_socket_monitor on an inproc
// endpoint.  The broker's loop polls fd() with its sockets and calls drain()
// when it is readable (and at every tick, so nothing waits long if the loop
// is busy): reading an event is all the work, and there are none unless
// handshakes fail.  Construct before binding the socket; destroy before it.
class HandshakeMonitor {
 public:
  // `side` ("client" or "engine") names the socket in the log and in the
  // inproc endpoint.  Throws zmq::error_t if the monitor cannot start.
  HandshakeMonitor(zmq::context_t& ctx, zmq::socket_t& socket, const char* side);
  HandshakeMonitor(const HandshakeMonitor&) = delete;
  HandshakeMonitor& operator=(const HandshakeMonitor&) = delete;

  // ZMQ_FD of the reading socket: readable when events may be waiting.
  int fd() const { return fd_; }
  // Reads every waiting event without blocking; counts the failures and
  // logs them (rate-limited).  Returns whether any was new.
  bool drain(LogLimiter::Clock::time_point now);
  std::uint64_t failed() const { return failed_; }

 private:
  std::string side_;
  zmq::socket_t reader_;
  int fd_ = -1;
  std::uint64_t failed_ = 0;
  LogLimiter log_;
};

}  // namespace zfarm::broker
