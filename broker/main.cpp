// zfarm-broker: two ROUTER sockets around a Scheduler.
//
// Everything the broker decides is in scheduler.cpp; this file binds the
// sockets, writes the connection file, and runs one poll loop that feeds
// messages to the Scheduler, calls tick() about every heartbeat/4 and at the
// earliest task deadline, and sends what the Scheduler produced.
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>

#include <CLI/CLI.hpp>
#include <zmq.hpp>

#include "batcher.hpp"
#include "endpoint.hpp"
#include "io_thread.hpp"
#include "scheduler.hpp"
#include "security.hpp"

namespace {

using zfarm::Frames;
using zfarm::broker::Clock;
using zfarm::broker::Outbox;
using zfarm::broker::Outgoing;
using zfarm::broker::Scheduler;

// At most this many messages are read from one socket before the other gets
// a turn (and before tick() gets a chance): a flood of submits must not keep
// results or heartbeats waiting.
constexpr int kReadBatch = 1024;
// How long queued outgoing messages may take to leave when the broker exits.
// Enough for loopback peers to get their Shutdown and Aborted results; short
// enough that a peer that vanished does not hold the exit up.
constexpr int kLingerMs = 500;
// Default ZMQ_MAXMSGSIZE: a peer sending a larger frame is disconnected by
// libzmq before the frame is buffered.  4 GiB lets big numpy arrays through.
constexpr std::int64_t kDefaultMaxMessageBytes = std::int64_t{1} << 32;

volatile sig_atomic_t g_signal = 0;

void on_signal(int sig) { g_signal = sig; }

void install_signal_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: zmq::poll must return with EINTR
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

zmq::socket_t make_router(zmq::context_t& ctx, std::int64_t max_message_bytes) {
  zmq::socket_t s(ctx, zmq::socket_type::router);
  // Fail loudly on a peer that is gone rather than dropping silently, so the
  // loss is counted (Scheduler::count_unroutable).
  s.set(zmq::sockopt::router_mandatory, 1);
  // Unlimited queues: flow control is the Scheduler's credit, and a full
  // queue would otherwise drop results.
  s.set(zmq::sockopt::sndhwm, 0);
  s.set(zmq::sockopt::rcvhwm, 0);
  s.set(zmq::sockopt::linger, kLingerMs);
  s.set(zmq::sockopt::maxmsgsize, max_message_bytes);
  return s;
}

// Sends identity + frames as one multipart message without building a new
// vector for it; false if the peer is gone (router_mandatory) or it failed.
bool send_to(zmq::socket_t& socket, const std::string& identity, Frames& frames) {
  constexpr auto more = zmq::send_flags::sndmore | zmq::send_flags::dontwait;
  try {
    if (!socket.send(zmq::buffer(identity), frames.empty() ? zmq::send_flags::dontwait : more)) return false;
    for (std::size_t i = 0; i < frames.size(); ++i) {
      if (!socket.send(frames[i], i + 1 < frames.size() ? more : zmq::send_flags::dontwait)) return false;
    }
  } catch (const zmq::error_t&) {
    return false;
  }
  return true;
}

// Sends the Outbox, its small Tasks and Results packed into Batches for
// peers that take them (batcher.hpp); `packed` is the caller's, so its
// storage is reused.  Says which sides were sent to (see the main loop for
// why).
struct Sent {
  bool engines = false;
  bool clients = false;
};
Sent send_all(zmq::socket_t& clients, zmq::socket_t& engines, Outbox& out, Outbox& packed,
              zfarm::broker::Batcher& batcher, Scheduler& scheduler) {
  Sent sent;
  batcher.pack(out, packed, &scheduler.frames_pool());
  for (Outgoing& o : packed) {
    const bool to_client = o.side == Outgoing::kClient;
    (to_client ? sent.clients : sent.engines) = true;
    if (!send_to(to_client ? clients : engines, o.identity, o.frames)) scheduler.count_unroutable(o.records);
    scheduler.frames_pool().give(std::move(o.frames));  // sent (or not): its vector for the next message
  }
  packed.clear();
  scheduler.set_batches_out(batcher.stats().batches, batcher.stats().records);
  return sent;
}

// Whether `socket` has a message to read now (ZMQ_EVENTS).  When the query
// fails (EINTR from a signal), yes: the next read finds out without waiting.
bool readable(zmq::socket_t& socket) {
  try {
    return (socket.get(zmq::sockopt::events) & ZMQ_POLLIN) != 0;
  } catch (const zmq::error_t&) {
    return true;
  }
}

// Reads up to kReadBatch messages from `socket` into the Scheduler; returns
// how many.  `frames` is the caller's, so its storage is reused.
int drain(zmq::socket_t& socket, bool engine_side, Scheduler& scheduler, Frames& frames, Outbox& out) {
  int n = 0;
  for (; n < kReadBatch && zfarm::recv_frames(socket, frames); ++n) {
    const auto now = Clock::now();
    if (engine_side) {
      scheduler.on_engine_frames(frames, now, out);
    } else {
      scheduler.on_client_frames(frames, now, out);
    }
  }
  return n;
}

bool bind_endpoint(zmq::socket_t& socket, const std::string& endpoint, const char* what, std::string* actual) {
  try {
    socket.bind(endpoint);
  } catch (const zmq::error_t& e) {
    std::fprintf(stderr, "zfarm-broker: cannot bind the %s endpoint %s: %s\n", what, endpoint.c_str(), e.what());
    return false;
  }
  *actual = socket.get(zmq::sockopt::last_endpoint);
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"zfarm-broker: load-balances tasks from clients to engines"};
  std::string client_endpoint = "tcp://127.0.0.1:*";
  std::string engine_endpoint = "tcp://127.0.0.1:*";
  std::string connection_file;
  int heartbeat_ms = 1000;
  int liveness = 3;
  std::int64_t max_message_bytes = kDefaultMaxMessageBytes;
  zfarm::broker::SecurityOptions security;
  zfarm::broker::SchedulerOptions options;
  app.add_option("--client-endpoint", client_endpoint, "address clients connect to")->capture_default_str();
  app.add_option("--engine-endpoint", engine_endpoint, "address engines connect to")->capture_default_str();
  app.add_option("--connection-file", connection_file,
                 "write the bound endpoints here as JSON (mode 0600) once listening");
  app.add_option("--heartbeat-ms", heartbeat_ms, "engine heartbeat interval in milliseconds")
      ->capture_default_str()
      ->check(CLI::Range(1, 3600 * 1000));
  app.add_option("--liveness", liveness, "heartbeat intervals an engine may miss before it is dead")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  app.add_option("--max-message-bytes", max_message_bytes,
                 "largest frame a peer may send (ZMQ_MAXMSGSIZE); a peer sending more is disconnected; -1: no limit")
      ->capture_default_str();
  app.add_option("--result-cache-bytes", options.result_cache_bytes,
                 "acknowledged results kept for Fetch, in bytes (least recently used dropped first)")
      ->capture_default_str();
  app.add_option("--max-unacked-bytes", options.max_unacked_bytes,
                 "results sent but not yet acknowledged kept for resending, in bytes (oldest dropped beyond it)")
      ->capture_default_str();
  double session_timeout_s = std::chrono::duration<double>(options.session_timeout).count();
  app.add_option("--session-timeout", session_timeout_s,
                 "seconds a client session may stay silent (no client heartbeat) before it is forgotten with its "
                 "unacknowledged results, once none of its tasks is pending; 0: never")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1e9));
  app.add_option("--max-frames", options.limits.max_frames,
                 "most frames in one message; more is answered with an Error")
      ->capture_default_str()
      ->check(CLI::Range(2, 1 << 20));
  app.add_option("--max-header-bytes", options.limits.max_header_bytes,
                 "largest header frame; larger is answered with an Error")
      ->capture_default_str()
      ->check(CLI::Range(64, 1 << 26));
  app.add_flag("--curve", security.curve,
               "CurveZMQ encryption and key authentication (keys go into --connection-file)");
  app.add_flag("--allow-insecure", security.allow_insecure,
               "bind addresses other than loopback WITHOUT CURVE: anyone who reaches them runs code");
  app.add_flag("--reuse", security.reuse,
               "take endpoints and keys from an existing --connection-file (a restart); the file is kept at exit");
  app.add_option("--authorized-keys", security.authorized_keys,
                 "file of further public keys to admit, one \"client <Z85>\" or \"engine <Z85>\" per line");
  CLI11_PARSE(app, argc, argv);

  security.connection_file = connection_file;
  security.client_endpoint_given = app.count("--client-endpoint") > 0;
  security.engine_endpoint_given = app.count("--engine-endpoint") > 0;
  zfarm::broker::SecurityPlan plan;
  const std::string refusal = zfarm::broker::plan_security(security, &client_endpoint, &engine_endpoint, &plan);
  for (const auto& m : plan.messages) std::fprintf(stderr, "zfarm-broker: %s\n", m.c_str());
  if (!refusal.empty()) {
    std::fprintf(stderr, "zfarm-broker: refusing to start: %s\n", refusal.c_str());
    return 2;
  }

  options.heartbeat = std::chrono::milliseconds(heartbeat_ms);
  options.session_timeout = std::chrono::milliseconds(static_cast<std::int64_t>(session_timeout_s * 1000.0));
  // Clients heartbeat every second at most (more often with a shorter
  // --heartbeat-ms); a timeout of a few intervals forgets slow clients too.
  const auto client_beat = std::chrono::milliseconds(std::min(heartbeat_ms, 1000));
  if (options.session_timeout.count() > 0 && options.session_timeout < 3 * client_beat) {
    std::fprintf(stderr,
                 "zfarm-broker: WARNING: --session-timeout %.3g s is under three client heartbeats (%lld ms each): "
                 "connected clients may lose their sessions\n",
                 session_timeout_s, static_cast<long long>(client_beat.count()));
  }
  options.liveness = liveness;
  Scheduler scheduler(options);

  zmq::context_t ctx(1);
  // Bound before the CURVE sockets and destroyed after them (declared
  // first): a CURVE socket with no ZAP handler admits anyone.
  std::optional<zfarm::broker::ZapHandler> zap;
  if (plan.curve) zap.emplace(ctx, plan.ring);
  zmq::socket_t clients = make_router(ctx, max_message_bytes);
  zmq::socket_t engines = make_router(ctx, max_message_bytes);
  if (plan.curve) {
    zfarm::broker::make_curve_server(clients, plan, zfarm::broker::kClientDomain);
    zfarm::broker::make_curve_server(engines, plan, zfarm::broker::kEngineDomain);
  }
  // Failed handshakes reach no socket; only a monitor sees them.
  std::optional<zfarm::broker::HandshakeMonitor> client_monitor, engine_monitor;
  try {
    client_monitor.emplace(ctx, clients, "client");
    engine_monitor.emplace(ctx, engines, "engine");
  } catch (const zmq::error_t& e) {
    std::fprintf(stderr, "zfarm-broker: cannot monitor handshakes: %s\n", e.what());
    return 2;
  }
  std::string client_actual, engine_actual;
  if (!bind_endpoint(clients, client_endpoint, "client", &client_actual) ||
      !bind_endpoint(engines, engine_endpoint, "engine", &engine_actual)) {
    return 2;
  }
  if (!connection_file.empty()) {
    zfarm::broker::ConnectionInfo info;
    info.client = client_actual;
    info.engine = engine_actual;
    info.pid = ::getpid();
    info.max_message_bytes = max_message_bytes;
    info.curve = plan.curve;
    info.keys = plan.keys;
    const std::string err = zfarm::broker::write_connection_file(connection_file, info);
    if (!err.empty()) {
      std::fprintf(stderr, "zfarm-broker: %s\n", err.c_str());
      return 2;
    }
  }
  install_signal_handlers();
  std::fprintf(stderr, "zfarm-broker: clients at %s, engines at %s (pid %ld)%s\n", client_actual.c_str(),
               engine_actual.c_str(), static_cast<long>(::getpid()), plan.curve ? ", CURVE on" : "");

  Outbox out, packed;
  zfarm::broker::Batcher batcher;
  Frames frames;
  const auto tick_every = scheduler.tick_interval();
  auto next_tick = Clock::now() + tick_every;
  // The loop waits in poll(2) on the sockets' ZMQ_FDs, not in zmq::poll.
  // zmq::poll that has to wait costs about ten system calls: poll(2) twice,
  // and before and after it a ZMQ_EVENTS query per socket, each a poll(2)
  // and a getpid(2) (libzmq's fork check).  With light traffic the broker
  // waits once or twice per task, so that was most of its system calls.
  //
  // A ZMQ_FD becomes readable when its socket has received commands, such as
  // "a peer's pipe has messages"; it does not stay readable while messages
  // wait.  So a socket is marked `pending` (read it without waiting) until
  // a read finds it empty; and since a send may process the commands that
  // would have woken us, a socket sent on is asked (ZMQ_EVENTS) afterwards.
  // Only when no socket is pending does the loop wait.
  //
  // The handshake monitors' fds are polled too (they are readable only
  // after a handshake failed), and read at every tick as well, so a busy
  // loop that never waits still counts them.
  pollfd fds[] = {
      {engines.get(zmq::sockopt::fd), POLLIN, 0},
      {clients.get(zmq::sockopt::fd), POLLIN, 0},
      {client_monitor->fd(), POLLIN, 0},
      {engine_monitor->fd(), POLLIN, 0},
  };
  auto read_monitors = [&](Clock::time_point now) {
    const bool c = client_monitor->drain(now);
    if (engine_monitor->drain(now) || c) {
      scheduler.set_handshake_failed(client_monitor->failed(), engine_monitor->failed());
    }
  };
  bool pending_engines = true, pending_clients = true;
  while (!scheduler.shutting_down() && g_signal == 0) {
    if (!pending_engines && !pending_clients) {
      // Wake for the next heartbeat check or the earliest task deadline,
      // whichever comes first, so timeouts fire on time.
      const auto wake = std::min(next_tick, scheduler.next_deadline());
      const auto wait = std::chrono::ceil<std::chrono::milliseconds>(wake - Clock::now());
      const int rc = ::poll(fds, 4, static_cast<int>(std::clamp<std::int64_t>(wait.count(), 0, 1 << 30)));
      if (rc < 0) {
        if (errno == EINTR) continue;
        std::fprintf(stderr, "zfarm-broker: poll failed: %s\n", std::strerror(errno));
        break;
      }
      pending_engines = (fds[0].revents & (POLLIN | POLLERR | POLLHUP)) != 0;
      pending_clients = (fds[1].revents & (POLLIN | POLLERR | POLLHUP)) != 0;
      if (((fds[2].revents | fds[3].revents) & POLLIN) != 0) read_monitors(Clock::now());
    }
    // Engines first: their results free credit for the clients' work.  A
    // read that stops at the batch limit leaves the socket pending.
    if (pending_engines) pending_engines = drain(engines, true, scheduler, frames, out) == kReadBatch;
    if (zap) scheduler.set_auth_refused(zap->refused());
    if (pending_clients) pending_clients = drain(clients, false, scheduler, frames, out) == kReadBatch;
    const auto now = Clock::now();
    if (now >= next_tick || now >= scheduler.next_deadline()) {
      read_monitors(now);
      scheduler.tick(now, out);
      if (now >= next_tick) next_tick = now + tick_every;
    }
    const Sent sent = send_all(clients, engines, out, packed, batcher, scheduler);
    if (sent.engines && !pending_engines) pending_engines = readable(engines);
    if (sent.clients && !pending_clients) pending_clients = readable(clients);
  }
  if (!scheduler.shutting_down()) {
    scheduler.shutdown("the broker was stopped by a signal", out);
    send_all(clients, engines, out, packed, batcher, scheduler);
  }
  const auto& c = scheduler.counters();
  std::fprintf(stderr,
               "zfarm-broker: exiting; %llu results (%llu failed), %llu bad messages, %llu unroutable\n",
               static_cast<unsigned long long>(c.done), static_cast<unsigned long long>(c.failed),
               static_cast<unsigned long long>(c.bad_messages), static_cast<unsigned long long>(c.unroutable));
  // With --reuse the file outlives the broker: the next start reads it.
  if (!connection_file.empty() && !security.reuse) ::unlink(connection_file.c_str());
  // Sockets close here with a short linger, so the last messages still leave.
  return 0;
}
