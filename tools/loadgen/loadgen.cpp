// zfarm-loadgen: drives a running zfarm-broker with simulated engines and
// clients written in C++, so the broker is measured without Python in the way.
//
//   zfarm-loadgen --connection-file F --engines 100 --tasks 200000
//       N simulated engines (DEALER sockets served by a few threads) answer
//       every Task at once with a Result echoing its payload frames; K client
//       sockets submit M load-balanced tasks keeping at most --window
//       outstanding each, acknowledging results in batches as the Python
//       client does.  Prints tasks/s, the round-trip latency and the CPU
//       time per task of the broker (from /proc/<pid>/stat) and the loadgen.
//       Engines and clients speak protocol revision 4: engines take Batches
//       of Tasks and answer each with one Batch of Results, clients send
//       Submits in Batches of --submit-batch and take Batches of Results.
//       --no-batch: revision 3 as before (no Hello, no Batch either way).
//
//   zfarm-loadgen --connection-file F --queue-memory 1000000
//       No engines: submits Q tasks, waits until the broker has read them all
//       (a Status request answered after them), and reports the growth of the
//       broker's VmRSS per queued task.
//
//   zfarm-loadgen --floor
//       No broker: the same shape with bare libzmq, client DEALER -> ROUTER
//       proxy -> DEALER echo and back over tcp loopback (--floor-ipc: ipc, as
//       a local Cluster uses); the floor any broker of this design can reach
//       on this machine.  Each of the three has its own libzmq context, so
//       its own I/O thread, as the three processes of a real round trip do.
//       --floor-pin binds proxy and echo to CPUs as a pinned Cluster does.
//
// Every wait is bounded by --timeout; the program never blocks forever.
#include <pthread.h>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <msgpack.hpp>
#include <zmq.hpp>

#include "io_thread.hpp"
#include "protocol.hpp"

namespace {

using zfarm::Frames;
using zfarm::proto::Header;
using zfarm::proto::Message;
using zfarm::proto::MsgType;
using Clock = std::chrono::steady_clock;

struct Options {
  std::string connection_file;
  int engines = 2;
  int engine_threads = 1;
  int credit = 2;
  long tasks = 100000;
  int payload_bytes = 16;
  int window = 1000;
  int clients = 1;
  int ack_batch = 256;
  int submit_batch = 64;
  bool no_batch = false;
  long queue_memory = 0;
  bool floor = false;
  bool floor_ipc = false;
  bool floor_pin = false;
  double timeout_s = 120.0;
  bool json = false;
  bool shutdown_broker = false;
};

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// --- connection file --------------------------------------------------------

// The broker writes a flat JSON object; this reads one string or integer value.
bool json_field(const std::string& text, const std::string& key, std::string* value) {
  const std::string quoted = "\"" + key + "\"";
  auto pos = text.find(quoted);
  if (pos == std::string::npos) return false;
  pos = text.find(':', pos + quoted.size());
  if (pos == std::string::npos) return false;
  ++pos;
  while (pos < text.size() && (text[pos] == ' ' || text[pos] == '\t' || text[pos] == '\n')) ++pos;
  if (pos >= text.size()) return false;
  if (text[pos] == '"') {
    auto end = text.find('"', pos + 1);
    if (end == std::string::npos) return false;
    *value = text.substr(pos + 1, end - pos - 1);
  } else {
    auto end = text.find_first_of(",}\n ", pos);
    *value = text.substr(pos, end == std::string::npos ? std::string::npos : end - pos);
  }
  return true;
}

struct Connection {
  std::string client, engine;
  long pid = 0;
};

bool read_connection(const std::string& path, Connection* c) {
  std::ifstream in(path);
  if (!in) return false;
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  std::string pid;
  if (!json_field(text, "client", &c->client) || !json_field(text, "engine", &c->engine)) return false;
  if (json_field(text, "pid", &pid)) c->pid = std::strtol(pid.c_str(), nullptr, 10);
  return true;
}

long vm_rss_kib(long pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::strtol(line.c_str() + 6, nullptr, 10);
  }
  return -1;
}

// CPU seconds (user + system) the process has used so far; -1 if unreadable.
double cpu_seconds(long pid) {
  if (pid <= 0) return -1;
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto close = text.rfind(')');  // the command name may hold spaces
  if (close == std::string::npos) return -1;
  std::istringstream rest(text.substr(close + 2));
  std::string field;
  unsigned long long utime = 0, stime = 0;
  // Fields after the name start at 3 (state); utime and stime are 14 and 15.
  for (int i = 3; i <= 15 && rest >> field; ++i) {
    if (i == 14) utime = std::strtoull(field.c_str(), nullptr, 10);
    if (i == 15) stime = std::strtoull(field.c_str(), nullptr, 10);
  }
  return static_cast<double>(utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

// CPU seconds (user + system, all threads) this process has used so far.
double self_cpu_seconds() {
  rusage ru{};
  ::getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

// --- helpers ----------------------------------------------------------------

Frames make_msg(MsgType type, std::uint64_t id, std::vector<std::int64_t> targets = {}, std::uint32_t status = 0,
                std::int64_t aux = 0, std::string text = {}) {
  Header h;
  h.type = type;
  h.id = id;
  h.targets = std::move(targets);
  h.status = status;
  h.aux = aux;
  h.text = std::move(text);
  return zfarm::proto::encode(h);
}

zmq::socket_t make_dealer(zmq::context_t& ctx, const std::string& endpoint) {
  zmq::socket_t s(ctx, zmq::socket_type::dealer);
  s.set(zmq::sockopt::sndhwm, 0);
  s.set(zmq::sockopt::rcvhwm, 0);
  s.set(zmq::sockopt::linger, 200);
  s.connect(endpoint);
  return s;
}

// Blocking send bounded by the socket's send timeout.
bool send_blocking(zmq::socket_t& s, Frames& frames) { return zfarm::send_frames(s, frames, false); }

double percentile(std::vector<double>& v, double p) {
  if (v.empty()) return 0.0;
  const std::size_t k = std::min(v.size() - 1, static_cast<std::size_t>(p * static_cast<double>(v.size())));
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
  return v[k];
}

// --- simulated engines ----------------------------------------------------------

struct EngineStats {
  std::atomic<int> registered{0};
  std::atomic<long> tasks{0};
  std::atomic<long> errors{0};
  std::atomic<long> batches_in{0};  // Batches of Tasks received (each answered with one of Results)
};

// The Result a simulated engine sends for a Task: its payload echoed,
// timed as a real engine times its tasks (revision 3): a start and a run
// time, here nil.
Frames make_result(Message& task, std::int64_t engine_id) {
  Header result{MsgType::kResult, task.header.id, {}, 0, engine_id, {}, {}};
  zfarm::proto::put_timing({std::chrono::duration_cast<std::chrono::microseconds>(
                                std::chrono::system_clock::now().time_since_epoch())
                                .count(),
                            0},
                           &result);
  return zfarm::proto::encode(result, std::move(task.payload));
}

struct SimEngine {
  zmq::socket_t socket;
  std::int64_t id = -1;
  Clock::time_point next_heartbeat{};
  std::chrono::milliseconds heartbeat{1000};
};

// Serves `count` engines on one thread until `stop` is set.
//
// The thread waits with epoll on each socket's ZMQ_FD instead of zmq::poll
// over all of them: zmq::poll asks every socket for its fd and events on
// every call, which with 1,000 engines cost the loadgen more than the broker
// it measures.  ZMQ_FD only says "look at this socket"; a socket is read until
// it would block, and checked again (ZMQ_EVENTS) after anything is sent on it,
// since a send may consume the fd's signal for messages already queued.
void engine_thread(zmq::context_t& ctx, const std::string& endpoint, int count, int credit, bool batches,
                   std::atomic<bool>& stop, EngineStats& stats) {
  std::vector<SimEngine> engines(count);
  const std::string host = "loadgen:" + std::to_string(::getpid());
  const int ep = ::epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) {
    std::fprintf(stderr, "zfarm-loadgen: epoll_create1 failed\n");
    stats.errors.fetch_add(1);
    return;
  }
  // Sockets to read now; `queued` keeps each in it once.
  std::vector<int> ready;
  std::vector<char> queued(static_cast<std::size_t>(count), 1);
  // Register names revision 4 (send me Batches) unless --no-batch.
  auto make_register = [&] {
    Header h{MsgType::kRegister, 0, {}, 0, credit, host, {}};
    if (batches) h.opts.revision = zfarm::proto::kRevision;
    return zfarm::proto::encode(h);
  };
  for (int i = 0; i < count; ++i) {
    engines[i].socket = make_dealer(ctx, endpoint);
    Frames reg = make_register();
    zfarm::send_frames(engines[i].socket, reg, true);
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u32 = static_cast<std::uint32_t>(i);
    ::epoll_ctl(ep, EPOLL_CTL_ADD, engines[i].socket.get(zmq::sockopt::fd), &ev);
    ready.push_back(i);
  }
  auto has_input = [&](int i) { return (engines[i].socket.get(zmq::sockopt::events) & ZMQ_POLLIN) != 0; };
  auto mark = [&](int i) {
    if (!queued[static_cast<std::size_t>(i)]) {
      queued[static_cast<std::size_t>(i)] = 1;
      ready.push_back(i);
    }
  };
  Frames frames;
  Message msg;
  std::vector<Message> records;
  std::vector<Frames> results;
  std::vector<const Frames*> result_ptrs;
  std::vector<int> serving;
  std::vector<epoll_event> events(256);
  auto next_heartbeat_scan = Clock::now();
  while (!stop.load(std::memory_order_relaxed)) {
    const int n = ::epoll_wait(ep, events.data(), static_cast<int>(events.size()), ready.empty() ? 20 : 0);
    for (int k = 0; k < n; ++k) mark(static_cast<int>(events[static_cast<std::size_t>(k)].data.u32));
    serving.swap(ready);
    ready.clear();
    for (int i : serving) queued[static_cast<std::size_t>(i)] = 0;
    const auto now = Clock::now();
    for (int i : serving) {
      SimEngine& e = engines[i];
      int got = 0;
      for (; got < 256 && zfarm::recv_frames(e.socket, frames); ++got) {
        if (!zfarm::proto::decode(frames, 0, &msg).ok()) {
          stats.errors.fetch_add(1, std::memory_order_relaxed);
          continue;
        }
        switch (msg.header.type) {
          case MsgType::kTask: {
            Frames out = make_result(msg, e.id);
            zfarm::send_frames(e.socket, out, true);
            stats.tasks.fetch_add(1, std::memory_order_relaxed);
            break;
          }
          case MsgType::kBatch: {
            // Tasks in a Batch: their Results in one Batch, in order.
            if (!zfarm::proto::decode_batch(msg, records).ok()) {
              stats.errors.fetch_add(1, std::memory_order_relaxed);
              break;
            }
            results.clear();
            for (Message& task : records) {
              if (task.header.type == MsgType::kTask) {
                results.push_back(make_result(task, e.id));
              } else {
                stats.errors.fetch_add(1, std::memory_order_relaxed);
              }
            }
            if (results.size() == 1) {
              zfarm::send_frames(e.socket, results[0], true);
            } else if (!results.empty()) {
              result_ptrs.clear();
              for (const Frames& r : results) result_ptrs.push_back(&r);
              Frames out = zfarm::proto::pack_batch(result_ptrs);
              zfarm::send_frames(e.socket, out, true);
            }
            stats.tasks.fetch_add(static_cast<long>(results.size()), std::memory_order_relaxed);
            stats.batches_in.fetch_add(1, std::memory_order_relaxed);
            break;
          }
          case MsgType::kRegisterReply:
            if (e.id < 0) stats.registered.fetch_add(1);
            e.id = msg.header.aux;
            if (msg.header.status > 0) e.heartbeat = std::chrono::milliseconds(msg.header.status);
            e.next_heartbeat = now + e.heartbeat;
            break;
          case MsgType::kError: {
            stats.errors.fetch_add(1, std::memory_order_relaxed);
            // "unknown engine: register again"
            Frames reg = make_register();
            zfarm::send_frames(e.socket, reg, true);
            break;
          }
          default:  // Heartbeat answers, Shutdown
            break;
        }
      }
      // Stopped at the batch limit: more is waiting.  Otherwise the last
      // read found nothing, but a send after it may have hidden new input.
      if (got == 256 || has_input(i)) mark(i);
    }
    // Heartbeats are due once a second: a scan of every engine every 50 ms
    // is enough and costs nothing per message.
    if (now >= next_heartbeat_scan) {
      next_heartbeat_scan = now + std::chrono::milliseconds(50);
      for (int i = 0; i < count; ++i) {
        SimEngine& e = engines[i];
        if (e.id < 0 || now < e.next_heartbeat) continue;
        Frames hb = make_msg(MsgType::kHeartbeat, 0, {}, 0, e.id);
        zfarm::send_frames(e.socket, hb, true);
        e.next_heartbeat = now + e.heartbeat;
        if (has_input(i)) mark(i);
      }
    }
  }
  ::close(ep);
  // Leave cleanly, so a broker reused for another run does not keep us.
  for (SimEngine& e : engines) {
    if (e.id < 0) continue;
    Frames bye = make_msg(MsgType::kShutdown, 0, {}, 0, e.id);
    zfarm::send_frames(e.socket, bye, true);
  }
}

// --- clients ----------------------------------------------------------------------

struct ClientResult {
  long done = 0;
  long failed = 0;
  std::vector<double> latency_us;
  bool timed_out = false;
};

// Acknowledges results as the Python client does (batches of `ack_batch`;
// 0: never), so the broker's result store does the work it does in real use:
// unacknowledged results move to the cache and leave it again.
//
// `submit_batch` > 0: the client says Hello naming revision 4 first, and
// when the broker's Welcome names 4 too, sends its Submits in Batches of up
// to that many (as many as the window allows at the time).  0: no Hello and
// one message per Submit, as a revision 3 client.
void client_thread(zmq::context_t& ctx, const std::string& endpoint, int index, long tasks, int window,
                   int payload_bytes, int ack_batch, int submit_batch, Clock::time_point deadline,
                   std::atomic<bool>& go, ClientResult& r) {
  zmq::socket_t s = make_dealer(ctx, endpoint);
  s.set(zmq::sockopt::sndtimeo, 1000);
  const std::uint64_t base = (static_cast<std::uint64_t>(index) + 1) << 40;
  std::vector<Clock::time_point> sent(static_cast<std::size_t>(tasks));
  r.latency_us.reserve(static_cast<std::size_t>(tasks));
  const std::string payload(static_cast<std::size_t>(payload_bytes), 'x');
  Frames frames;
  Message msg;
  zmq::pollitem_t item{s.handle(), 0, ZMQ_POLLIN, 0};
  std::size_t per_message = 1;  // Submits per message
  if (submit_batch > 0) {
    Header hello{MsgType::kHello, 1, {}, 0, 0, {}, {}};
    hello.opts.revision = zfarm::proto::kRevision;
    Frames m = zfarm::proto::encode(hello);
    bool welcomed = send_blocking(s, m);
    while (welcomed && Clock::now() < deadline) {
      zmq::poll(&item, 1, std::chrono::milliseconds(100));
      if (zfarm::recv_frames(s, frames) && zfarm::proto::decode(frames, 0, &msg).ok() &&
          msg.header.type == MsgType::kWelcome) {
        if (msg.header.opts.revision >= 4) per_message = static_cast<std::size_t>(submit_batch);
        break;
      }
    }
  }
  while (!go.load()) std::this_thread::sleep_for(std::chrono::microseconds(100));
  long next = 0, outstanding = 0;
  std::vector<Message> records;
  std::vector<Frames> submits;
  std::vector<const Frames*> submit_ptrs;
  Header ack;
  ack.type = MsgType::kAck;
  auto send_acks = [&] {
    Frames m = zfarm::proto::encode(ack);
    send_blocking(s, m);
    ack.opts.ids.clear();
  };
  auto on_result = [&](const Message& res) {
    const std::uint64_t seq = res.header.id - base;
    if (seq >= static_cast<std::uint64_t>(tasks)) return;
    const auto now = Clock::now();
    r.latency_us.push_back(std::chrono::duration<double, std::micro>(now - sent[seq]).count());
    ++r.done;
    --outstanding;
    if (res.header.status != 0) ++r.failed;
    if (ack_batch > 0) {
      ack.opts.ids.push_back(res.header.id);
      if (ack.opts.ids.size() >= static_cast<std::size_t>(ack_batch)) send_acks();
    }
  };
  while (r.done < tasks) {
    while (next < tasks && outstanding < window) {
      // As many Submits as the window lets out now, up to per_message in
      // one message: a Batch when there are two or more.
      const long k = std::min<long>({static_cast<long>(per_message), window - outstanding, tasks - next});
      submits.clear();
      for (long j = 0; j < k; ++j) {
        Frames m = make_msg(MsgType::kSubmit, base + static_cast<std::uint64_t>(next + j), {zfarm::proto::kLoadBalanced});
        m.emplace_back(payload.data(), payload.size());
        submits.push_back(std::move(m));
        sent[static_cast<std::size_t>(next + j)] = Clock::now();
      }
      bool ok = false;
      if (k == 1) {
        ok = send_blocking(s, submits[0]);
      } else {
        submit_ptrs.clear();
        for (const Frames& m : submits) submit_ptrs.push_back(&m);
        Frames m = zfarm::proto::pack_batch(submit_ptrs);
        ok = send_blocking(s, m);
      }
      if (!ok) break;
      next += k;
      outstanding += k;
    }
    if (Clock::now() > deadline) {
      r.timed_out = true;
      break;
    }
    zmq::poll(&item, 1, std::chrono::milliseconds(100));
    for (int n = 0; n < 4096 && zfarm::recv_frames(s, frames); ++n) {
      if (!zfarm::proto::decode(frames, 0, &msg).ok()) continue;
      if (msg.header.type == MsgType::kResult) {
        on_result(msg);
      } else if (msg.header.type == MsgType::kBatch && zfarm::proto::decode_batch(msg, records).ok()) {
        for (const Message& res : records) {
          if (res.header.type == MsgType::kResult) on_result(res);
        }
      }
    }
  }
  if (!ack.opts.ids.empty()) send_acks();
}

void print_latency(const char* what, std::vector<double>& lat, bool json_style) {
  const double p50 = percentile(lat, 0.50), p99 = percentile(lat, 0.99);
  if (json_style) {
    std::printf("\"%s_p50_us\": %.1f, \"%s_p99_us\": %.1f", what, p50, what, p99);
  } else {
    std::printf("%s latency: median %.1f us, p99 %.1f us\n", what, p50, p99);
  }
}

int run_throughput(const Options& o, const Connection& c) {
  zmq::context_t ctx(2);
  ctx.set(zmq::ctxopt::max_sockets, o.engines + o.clients + 64);
  EngineStats stats;
  std::atomic<bool> stop_engines{false}, go{false};
  const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                           std::chrono::duration<double>(o.timeout_s));
  std::vector<std::thread> ethreads;
  const int nthreads = std::max(1, std::min(o.engine_threads, o.engines));
  for (int t = 0; t < nthreads; ++t) {
    const int count = o.engines / nthreads + (t < o.engines % nthreads ? 1 : 0);
    if (count == 0) continue;
    ethreads.emplace_back(engine_thread, std::ref(ctx), c.engine, count, o.credit, !o.no_batch,
                          std::ref(stop_engines), std::ref(stats));
  }
  const auto reg0 = Clock::now();
  while (stats.registered.load() < o.engines && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  const double register_s = seconds_since(reg0);
  int rc = 0;
  std::vector<ClientResult> results(static_cast<std::size_t>(o.clients));
  double elapsed = 0;
  double broker_cpu_pct = -1;  // share of one core the broker used during the run
  double self_cpu_pct = -1;    // ... and this load generator (all its threads)
  double broker_cpu_s = -1;    // CPU seconds the broker used during the run
  double self_cpu_s = -1;
  if (stats.registered.load() < o.engines) {
    std::fprintf(stderr, "zfarm-loadgen: only %d of %d engines registered before the timeout\n",
                 stats.registered.load(), o.engines);
    rc = 1;
  } else {
    std::vector<std::thread> cthreads;
    for (int k = 0; k < o.clients; ++k) {
      const long share = o.tasks / o.clients + (k < o.tasks % o.clients ? 1 : 0);
      cthreads.emplace_back(client_thread, std::ref(ctx), c.client, k, share, o.window, o.payload_bytes, o.ack_batch,
                            o.no_batch ? 0 : o.submit_batch, deadline, std::ref(go),
                            std::ref(results[static_cast<std::size_t>(k)]));
    }
    // Let the client sockets connect before the clock starts.
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    const double cpu0 = cpu_seconds(c.pid);
    const double self0 = self_cpu_seconds();
    const auto t0 = Clock::now();
    go.store(true);
    for (auto& t : cthreads) t.join();
    elapsed = seconds_since(t0);
    const double cpu1 = cpu_seconds(c.pid);
    if (cpu0 >= 0 && cpu1 >= 0) broker_cpu_s = cpu1 - cpu0;
    self_cpu_s = self_cpu_seconds() - self0;
    if (broker_cpu_s >= 0 && elapsed > 0) broker_cpu_pct = 100.0 * broker_cpu_s / elapsed;
    if (elapsed > 0) self_cpu_pct = 100.0 * self_cpu_s / elapsed;
  }
  stop_engines.store(true);
  for (auto& t : ethreads) t.join();

  long done = 0, failed = 0;
  bool timed_out = false;
  std::vector<double> lat;
  for (auto& r : results) {
    done += r.done;
    failed += r.failed;
    timed_out = timed_out || r.timed_out;
    lat.insert(lat.end(), r.latency_us.begin(), r.latency_us.end());
  }
  if (timed_out) rc = 1;
  const double rate = elapsed > 0 ? static_cast<double>(done) / elapsed : 0.0;
  // CPU per task: what a broker core can carry (1e6 / broker_cpu_us_per_task
  // tasks/s) whatever the loadgen and the rest of the machine take.
  // /proc counts in clock ticks (10 ms): a run of a few seconds at least.
  const double broker_us = done > 0 && broker_cpu_s >= 0 ? 1e6 * broker_cpu_s / static_cast<double>(done) : -1;
  const double self_us = done > 0 && self_cpu_s >= 0 ? 1e6 * self_cpu_s / static_cast<double>(done) : -1;
  if (o.json) {
    std::printf("{\"mode\": \"throughput\", \"engines\": %d, \"clients\": %d, \"window\": %d, \"payload_bytes\": %d, "
                "\"tasks\": %ld, \"done\": %ld, \"failed\": %ld, \"timed_out\": %s, \"seconds\": %.4f, "
                "\"tasks_per_s\": %.1f, \"register_s\": %.3f, \"broker_cpu_pct\": %.1f, \"loadgen_cpu_pct\": %.1f, "
                "\"broker_cpu_us_per_task\": %.2f, \"loadgen_cpu_us_per_task\": %.2f, \"ack_batch\": %d, "
                "\"credit\": %d, \"batched\": %s, \"submit_batch\": %d, \"engine_batches_in\": %ld, ",
                o.engines, o.clients, o.window, o.payload_bytes, o.tasks, done, failed, timed_out ? "true" : "false",
                elapsed, rate, register_s, broker_cpu_pct, self_cpu_pct, broker_us, self_us, o.ack_batch, o.credit,
                o.no_batch ? "false" : "true", o.no_batch ? 1 : o.submit_batch, stats.batches_in.load());
    print_latency("latency", lat, true);
    std::printf("}\n");
  } else {
    std::printf("engines %d with credit %d (registered in %.3f s), clients %d, window %d, payload %d B, %s\n",
                o.engines, o.credit, register_s, o.clients, o.window, o.payload_bytes,
                o.no_batch ? "no batches" : ("batches (submit " + std::to_string(o.submit_batch) + ", engines got " +
                                             std::to_string(stats.batches_in.load()) + " Batches of Tasks)")
                                                .c_str());
    std::printf("%ld of %ld tasks done (%ld failed)%s in %.3f s: %.0f tasks/s; broker used %.0f%% of a core, "
                "loadgen %.0f%%\n",
                done, o.tasks, failed, timed_out ? ", TIMED OUT" : "", elapsed, rate, broker_cpu_pct, self_cpu_pct);
    std::printf("CPU per task: broker %.2f us (%.0f tasks/s per broker core), loadgen %.2f us\n", broker_us,
                broker_us > 0 ? 1e6 / broker_us : 0.0, self_us);
    print_latency("round-trip", lat, false);
  }
  if (failed > 0) rc = 1;
  return rc;
}

// --- memory per queued task --------------------------------------------------------

// Reads the "queued" entry of a StatusReply map; -1 if absent.
long status_queued(const zmq::message_t& frame) {
  try {
    auto handle = msgpack::unpack(static_cast<const char*>(frame.data()), frame.size());
    const msgpack::object& o = handle.get();
    if (o.type != msgpack::type::MAP) return -1;
    for (std::uint32_t i = 0; i < o.via.map.size; ++i) {
      const auto& kv = o.via.map.ptr[i];
      if (kv.key.type == msgpack::type::STR && kv.key.as<std::string>() == "queued") return kv.val.as<long>();
    }
  } catch (const std::exception&) {
  }
  return -1;
}

int run_queue_memory(const Options& o, const Connection& c) {
  if (c.pid <= 0 || vm_rss_kib(c.pid) < 0) {
    std::fprintf(stderr, "zfarm-loadgen: cannot read VmRSS of broker pid %ld\n", c.pid);
    return 1;
  }
  zmq::context_t ctx(1);
  zmq::socket_t s = make_dealer(ctx, c.client);
  s.set(zmq::sockopt::sndtimeo, 1000);
  s.set(zmq::sockopt::linger, 0);
  const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                           std::chrono::duration<double>(o.timeout_s));
  Frames frames;
  Message msg;
  // A first Status round trip: the connection is up and the broker idle.
  auto status_roundtrip = [&](std::uint64_t req, long* queued) -> bool {
    Frames m = make_msg(MsgType::kStatus, req);
    if (!send_blocking(s, m)) return false;
    zmq::pollitem_t item{s.handle(), 0, ZMQ_POLLIN, 0};
    while (Clock::now() < deadline) {
      zmq::poll(&item, 1, std::chrono::milliseconds(100));
      while (zfarm::recv_frames(s, frames)) {
        if (!zfarm::proto::decode(frames, 0, &msg).ok()) continue;
        if (msg.header.type == MsgType::kStatusReply && msg.header.id == req) {
          *queued = msg.payload.empty() ? -1 : status_queued(msg.payload[0]);
          return true;
        }
      }
    }
    return false;
  };
  long queued_before = 0, queued_after = 0;
  if (!status_roundtrip(1, &queued_before)) {
    std::fprintf(stderr, "zfarm-loadgen: the broker did not answer Status\n");
    return 1;
  }
  const long rss_before = vm_rss_kib(c.pid);
  const std::string payload(static_cast<std::size_t>(o.payload_bytes), 'x');
  const std::uint64_t base = std::uint64_t{7} << 40;
  const auto t0 = Clock::now();
  long sent = 0;
  for (; sent < o.queue_memory && Clock::now() < deadline; ++sent) {
    Frames m = make_msg(MsgType::kSubmit, base + static_cast<std::uint64_t>(sent), {zfarm::proto::kLoadBalanced});
    m.emplace_back(payload.data(), payload.size());
    if (!send_blocking(s, m)) break;
  }
  // The Status request is read after every Submit before it on this socket.
  const bool answered = status_roundtrip(2, &queued_after);
  const double elapsed = seconds_since(t0);
  const long rss_after = vm_rss_kib(c.pid);
  const double per_task = sent > 0 ? static_cast<double>(rss_after - rss_before) * 1024.0 / static_cast<double>(sent) : 0;
  if (o.json) {
    std::printf("{\"mode\": \"queue_memory\", \"submitted\": %ld, \"queued_before\": %ld, \"queued_after\": %ld, "
                "\"payload_bytes\": %d, \"rss_before_kib\": %ld, \"rss_after_kib\": %ld, \"bytes_per_task\": %.1f, "
                "\"seconds\": %.3f, \"submits_per_s\": %.1f, \"answered\": %s}\n",
                sent, queued_before, queued_after, o.payload_bytes, rss_before, rss_after, per_task, elapsed,
                elapsed > 0 ? static_cast<double>(sent) / elapsed : 0.0, answered ? "true" : "false");
  } else {
    std::printf("queued %ld tasks of %d B payload (broker reports %ld queued) in %.2f s\n", sent, o.payload_bytes,
                queued_after, elapsed);
    std::printf("broker VmRSS %ld KiB -> %ld KiB: %.0f bytes per queued task\n", rss_before, rss_after, per_task);
  }
  if (o.shutdown_broker) {
    Frames m = make_msg(MsgType::kShutdown, 0);
    zfarm::send_frames(s, m, true);
  }
  return answered && sent == o.queue_memory ? 0 : 1;
}

// --- libzmq floor ------------------------------------------------------------------

// client DEALER -> [ROUTER proxy ROUTER] -> echo DEALER, and back, over tcp
// (or ipc).  One context each: a message between two of them crosses
// libzmq's I/O threads as it does between the client, broker and engine
// processes (a shared context would let one I/O thread serve all three and
// give a floor no real cluster can reach).
//
// --floor-pin places the parties as a pinned local Cluster does: the proxy
// (the broker) with its I/O thread on the last usable CPU, the echo (an
// engine) with its I/O thread on the first; the client is left free.
int run_floor(const Options& o) {
  zmq::context_t proxy_ctx(1), echo_ctx(1), client_ctx(1);
  int proxy_cpu = -1, echo_cpu = -1;
  if (o.floor_pin) {
    cpu_set_t usable;
    CPU_ZERO(&usable);
    if (::sched_getaffinity(0, sizeof usable, &usable) == 0 && CPU_COUNT(&usable) >= 2) {
      for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
        if (!CPU_ISSET(cpu, &usable)) continue;
        if (echo_cpu < 0) echo_cpu = cpu;
        proxy_cpu = cpu;
      }
      // Before the first socket: libzmq starts its I/O threads then.
      proxy_ctx.set(zmq::ctxopt::thread_affinity_cpu_add, proxy_cpu);
      echo_ctx.set(zmq::ctxopt::thread_affinity_cpu_add, echo_cpu);
    } else {
      std::fprintf(stderr, "zfarm-loadgen: --floor-pin needs two usable CPUs; running unpinned\n");
    }
  }
  const auto pin_this_thread = [](int cpu) {
    if (cpu < 0) return;
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    ::pthread_setaffinity_np(::pthread_self(), sizeof one, &one);
  };
  std::string ipc_dir;
  if (o.floor_ipc) {
    char tmpl[] = "/tmp/zfarm-floor-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) {
      std::fprintf(stderr, "zfarm-loadgen: cannot create a folder for the ipc endpoints\n");
      return 2;
    }
    ipc_dir = tmpl;
  }
  zmq::socket_t front(proxy_ctx, zmq::socket_type::router), back(proxy_ctx, zmq::socket_type::router);
  for (auto* s : {&front, &back}) {
    s->set(zmq::sockopt::sndhwm, 0);
    s->set(zmq::sockopt::rcvhwm, 0);
    s->set(zmq::sockopt::linger, 0);
    s->set(zmq::sockopt::router_mandatory, 1);
    s->bind(ipc_dir.empty() ? std::string("tcp://127.0.0.1:*")
                            : "ipc://" + ipc_dir + (s == &front ? "/front" : "/back"));
  }
  const std::string front_ep = front.get(zmq::sockopt::last_endpoint);
  const std::string back_ep = back.get(zmq::sockopt::last_endpoint);
  std::atomic<bool> stop{false};
  const std::string echo_id = "echo";

  std::thread proxy([&] {
    pin_this_thread(proxy_cpu);
    zmq::pollitem_t items[] = {{front.handle(), 0, ZMQ_POLLIN, 0}, {back.handle(), 0, ZMQ_POLLIN, 0}};
    Frames f;
    while (!stop.load(std::memory_order_relaxed)) {
      zmq::poll(items, 2, std::chrono::milliseconds(50));
      if (items[0].revents & ZMQ_POLLIN) {
        for (int n = 0; n < 1024 && zfarm::recv_frames(front, f); ++n) {
          Frames out;
          out.reserve(f.size() + 1);
          out.emplace_back(echo_id.data(), echo_id.size());
          for (auto& m : f) out.push_back(std::move(m));
          zfarm::send_frames(back, out, true);
        }
      }
      if (items[1].revents & ZMQ_POLLIN) {
        for (int n = 0; n < 1024 && zfarm::recv_frames(back, f); ++n) {
          Frames out(std::make_move_iterator(f.begin() + 1), std::make_move_iterator(f.end()));
          zfarm::send_frames(front, out, true);
        }
      }
    }
  });
  std::thread echo([&] {
    pin_this_thread(echo_cpu);
    zmq::socket_t s(echo_ctx, zmq::socket_type::dealer);
    s.set(zmq::sockopt::routing_id, echo_id);
    s.set(zmq::sockopt::sndhwm, 0);
    s.set(zmq::sockopt::rcvhwm, 0);
    s.set(zmq::sockopt::linger, 0);
    s.connect(back_ep);
    zmq::pollitem_t item{s.handle(), 0, ZMQ_POLLIN, 0};
    Frames f;
    while (!stop.load(std::memory_order_relaxed)) {
      zmq::poll(&item, 1, std::chrono::milliseconds(50));
      for (int n = 0; n < 1024 && zfarm::recv_frames(s, f); ++n) zfarm::send_frames(s, f, true);
    }
  });

  zmq::socket_t c = make_dealer(client_ctx, front_ep);
  c.set(zmq::sockopt::linger, 0);
  c.set(zmq::sockopt::sndtimeo, 1000);
  const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                           std::chrono::duration<double>(o.timeout_s));
  const std::string payload(static_cast<std::size_t>(std::max(o.payload_bytes, 8)), 'x');
  zmq::pollitem_t item{c.handle(), 0, ZMQ_POLLIN, 0};
  Frames f;
  int rc = 0;
  // Wait until the echo is reachable (the proxy drops to an unknown peer).
  bool up = false;
  while (!up && Clock::now() < deadline) {
    Frames m;
    m.emplace_back(payload.data(), payload.size());
    send_blocking(c, m);
    zmq::poll(&item, 1, std::chrono::milliseconds(50));
    while (zfarm::recv_frames(c, f)) up = true;
  }
  // (a) latency: one message at a time.
  const long lat_n = std::min<long>(o.tasks, 20000);
  std::vector<double> lat;
  lat.reserve(static_cast<std::size_t>(lat_n));
  for (long i = 0; i < lat_n && Clock::now() < deadline; ++i) {
    Frames m;
    m.emplace_back(payload.data(), payload.size());
    const auto t = Clock::now();
    send_blocking(c, m);
    bool got = false;
    while (!got && Clock::now() < deadline) {
      zmq::poll(&item, 1, std::chrono::milliseconds(100));
      got = zfarm::recv_frames(c, f);
    }
    lat.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t).count());
  }
  // (b) throughput with the same window as the broker runs.
  long done = 0, next = 0;
  const auto t0 = Clock::now();
  while (done < o.tasks && Clock::now() < deadline) {
    while (next < o.tasks && next - done < o.window) {
      Frames m;
      m.emplace_back(payload.data(), payload.size());
      if (!send_blocking(c, m)) break;
      ++next;
    }
    zmq::poll(&item, 1, std::chrono::milliseconds(100));
    for (int n = 0; n < 4096 && zfarm::recv_frames(c, f); ++n) ++done;
  }
  const double elapsed = seconds_since(t0);
  if (done < o.tasks) rc = 1;
  stop.store(true);
  proxy.join();
  echo.join();
  if (!ipc_dir.empty()) {
    front.close();
    back.close();
    ::unlink((ipc_dir + "/front").c_str());
    ::unlink((ipc_dir + "/back").c_str());
    ::rmdir(ipc_dir.c_str());
  }
  const double rate = elapsed > 0 ? static_cast<double>(done) / elapsed : 0.0;
  if (o.json) {
    std::printf("{\"mode\": \"floor\", \"pinned\": %s, \"transport\": \"%s\", \"messages\": %ld, \"window\": %d, "
                "\"payload_bytes\": %zu, \"seconds\": %.4f, \"msgs_per_s\": %.1f, ",
                proxy_cpu >= 0 ? "true" : "false", ipc_dir.empty() ? "tcp" : "ipc", done, o.window,
                payload.size(), elapsed, rate);
    print_latency("latency", lat, true);
    std::printf("}\n");
  } else {
    std::printf("libzmq floor (DEALER -> ROUTER proxy -> DEALER echo, %s, a context each%s), payload %zu B\n",
                ipc_dir.empty() ? "tcp loopback" : "ipc", proxy_cpu >= 0 ? ", proxy and echo pinned" : "",
                payload.size());
    print_latency("round-trip", lat, false);
    std::printf("%ld round trips with window %d in %.3f s: %.0f msgs/s\n", done, o.window, elapsed, rate);
  }
  return rc;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"zfarm-loadgen: measures a zfarm-broker with simulated engines and clients"};
  Options o;
  app.add_option("--connection-file", o.connection_file, "the broker's connection file");
  app.add_option("--engines", o.engines, "simulated engines")->capture_default_str()->check(CLI::Range(0, 100000));
  app.add_option("--engine-threads", o.engine_threads, "threads serving the simulated engines")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  app.add_option("--credit", o.credit, "credit each simulated engine announces")
      ->capture_default_str()
      ->check(CLI::Range(1, 65536));
  app.add_option("--tasks", o.tasks, "tasks to run (or floor round trips)")->capture_default_str()->check(
      CLI::Range(1L, 1000000000L));
  app.add_option("--payload-bytes", o.payload_bytes, "bytes of the one payload frame of each task")
      ->capture_default_str()
      ->check(CLI::Range(0, 1 << 30));
  app.add_option("--window", o.window, "tasks each client keeps outstanding at most")
      ->capture_default_str()
      ->check(CLI::Range(1, 10000000));
  app.add_option("--ack-batch", o.ack_batch, "results acknowledged per Ack, as the client does (0: never)")
      ->capture_default_str()
      ->check(CLI::Range(0, 1 << 16));
  app.add_option("--submit-batch", o.submit_batch,
                 "Submits a client puts in one Batch at most (1: one message each, but Batches of Results are "
                 "taken)")
      ->capture_default_str()
      ->check(CLI::Range(1, static_cast<int>(zfarm::proto::kBatchMaxRecords)));
  app.add_flag("--no-batch", o.no_batch,
               "speak revision 3 as before: no Batches either way (engines and client do not announce revision 4)");
  app.add_option("--clients", o.clients, "client sockets (one thread each)")->capture_default_str()->check(
      CLI::Range(1, 256));
  app.add_option("--queue-memory", o.queue_memory,
                 "queue this many tasks with no engines and report the broker's VmRSS per queued task")
      ->check(CLI::Range(1L, 100000000L));
  app.add_flag("--floor", o.floor, "measure the bare libzmq two-hop round trip instead (no broker)");
  app.add_flag("--floor-ipc", o.floor_ipc, "the floor over ipc:// endpoints instead of tcp loopback");
  app.add_flag("--floor-pin", o.floor_pin,
               "pin the floor's proxy and echo (threads and I/O threads) as a pinned local Cluster pins "
               "its broker and an engine");
  app.add_option("--timeout", o.timeout_s, "give up after this many seconds")->capture_default_str()->check(
      CLI::Range(0.1, 86400.0));
  app.add_flag("--json", o.json, "print one JSON object");
  app.add_flag("--shutdown-broker", o.shutdown_broker, "send Shutdown to the broker at the end");
  CLI11_PARSE(app, argc, argv);

  try {
    if (o.floor) return run_floor(o);
    if (o.connection_file.empty()) {
      std::fprintf(stderr, "zfarm-loadgen: --connection-file is needed (or --floor)\n");
      return 2;
    }
    Connection c;
    if (!read_connection(o.connection_file, &c)) {
      std::fprintf(stderr, "zfarm-loadgen: cannot read %s\n", o.connection_file.c_str());
      return 2;
    }
    if (o.queue_memory > 0) return run_queue_memory(o, c);
    int rc = run_throughput(o, c);
    if (o.shutdown_broker) {
      zmq::context_t ctx(1);
      zmq::socket_t s = make_dealer(ctx, c.client);
      Frames m = make_msg(MsgType::kShutdown, 0);
      zfarm::send_frames(s, m, true);
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return rc;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "zfarm-loadgen: %s\n", e.what());
    return 1;
  }
}
