// zfarm-engine: connects to a broker, registers, and runs the tasks it is
// given in an embedded Python interpreter.
//
// Two threads share the DEALER socket (EngineIo).  The main thread holds the
// interpreter: with the GIL released it serves the socket itself while it
// waits for a Task (and between tasks), then runs the tasks one at a time, in
// arrival order, and sends each Result at once, or, when the next task is
// already here and the broker takes Batches, holds it briefly to send a run
// of Results as one Batch (EngineIo::hold).  A Batch of Tasks from the
// broker is taken record by record, each as a Task of its own.  A task that
// runs longer than a moment hands the socket to the watch thread, which
// keeps the Session (registration, heartbeats) and Interrupts going in
// plain C++, never needing the GIL, so a task computing in Python for an
// hour does not make the engine look dead.  The Session is only touched by the socket's owner.
//
// The tasks the engine holds live on a TaskBoard shared by both threads.
// An Interrupt from the broker is handled by the socket's owner (the watch
// thread, since a task is running): for the running
// task it raises KeyboardInterrupt in the main thread as Ctrl-C would
// (PyErr_SetInterruptEx) and sends the main thread a no-op SIGURG so a
// blocking call (time.sleep, a socket read) returns EINTR and Python notices
// at once; a prefetched task is dropped and answered there and then.
//
// The engine's credit (how many tasks the broker may send it ahead) adapts
// (CreditPolicy): it grows while tasks are short, and falls back to
// --prefetch, then to 1, while one runs long; the watch thread, holding the
// socket then, gives back the prefetched tasks beyond it in a Credit
// message, so they do not wait behind the long one.
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <optional>
#include <random>
#include <string>
#include <thread>

#include <CLI/CLI.hpp>
#include <pybind11/pybind11.h>

#include "connection_file.hpp"
#include "credit_policy.hpp"
#include "engine_io.hpp"
#include "executor.hpp"
#include "log.hpp"
#include "output_pipe.hpp"
#include "protocol.hpp"
#include "python_env.hpp"
#include "session.hpp"
#include "task_board.hpp"

namespace py = pybind11;
using namespace zfarm;
using namespace zfarm::engine;
using Clock = std::chrono::steady_clock;

namespace {

// How long the main thread waits for a task before looking at the stop
// flags again: the worst-case delay of an idle engine reacting to SIGTERM.
constexpr int kIdleWaitMs = 100;
// How long to wait for the broker's connection file to appear, for an engine
// started together with its broker.
constexpr auto kConnectionFileWait = std::chrono::seconds(10);
// Linger-free close would lose a final Result or our Shutdown; EngineIo
// closes with a 1 s linger.

// Result text is a protocol field with a size limit; keep the end of a long
// traceback, where the interrupted line is.
constexpr std::size_t kMaxResultText = 8 * 1024;

std::atomic<int> g_signal{0};
std::atomic<bool> g_in_task{false};

void on_signal(int sig) {
  g_signal = sig;
  // A task is running: interrupt it as Ctrl-C would (KeyboardInterrupt in the
  // task, which ends as a remote error), so the engine leaves promptly.
  // PyErr_SetInterruptEx is async-signal-safe.
  if (g_in_task) PyErr_SetInterruptEx(SIGINT);
}

// SIGURG only wakes the main thread out of a blocking system call (EINTR,
// no SA_RESTART); its default action is to be ignored, so a stray one is
// harmless even before this handler is installed.
void on_wake_signal(int) {}

std::string random_identity() {
  std::random_device rd;
  std::uniform_int_distribution<unsigned> byte(0, 255);
  static const char* hex = "0123456789abcdef";
  std::string id = "engine-";
  for (int i = 0; i < 8; ++i) {
    const unsigned b = byte(rd);
    id.push_back(hex[b >> 4]);
    id.push_back(hex[b & 15]);
  }
  return id;
}

std::string host_pid() {
  char host[256] = {0};
  if (::gethostname(host, sizeof host - 1) != 0) std::snprintf(host, sizeof host, "unknown");
  return std::string(host) + ":" + std::to_string(static_cast<long>(::getpid()));
}

bool resolve_connection(const std::string& connection_file, ConnectionInfo* info) {
  const auto deadline = Clock::now() + kConnectionFileWait;
  std::string why;
  while (true) {
    if (read_connection_file(connection_file, info, &why)) return true;
    if (::access(connection_file.c_str(), F_OK) == 0 || Clock::now() >= deadline || g_signal != 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  log_error("%s", why.c_str());
  return false;
}

// "interrupted" and the end of the traceback, within kMaxResultText.
std::string interrupted_text(const std::string& traceback) {
  std::string text = "interrupted";
  if (traceback.empty()) return text;
  text += "\n";
  const std::size_t room = kMaxResultText - text.size();
  if (traceback.size() <= room) return text + traceback;
  return text + "..." + traceback.substr(traceback.size() - (room - 3));
}

// Microseconds since the Unix epoch (CLOCK_REALTIME; a vDSO call, no
// system call).
std::int64_t wall_clock_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Counts malformed or unexpected input; logs the first one only, so a
// misbehaving peer cannot flood the log.
struct BadInput {
  std::atomic<std::uint64_t> count{0};
  void note(const std::string& what) {
    if (count++ == 0) log_error("dropped a bad message (%s); further ones are only counted", what.c_str());
  }
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"zfarm-engine: runs zfarm tasks in an embedded Python interpreter"};
  std::string connection_file;
  std::string url;
  int prefetch = 2;
  int prefetch_max = 16;
  int heartbeat_ms = 1000;
  int liveness = 3;
  double broker_timeout_s = 0;
  bool quiet = false;
  auto* file_opt = app.add_option("--connection-file", connection_file,
                                  "the broker's connection file (JSON); its \"engine\" endpoint is used");
  app.add_option("--url", url, "the broker's engine endpoint, e.g. tcp://127.0.0.1:5555")->excludes(file_opt);
  app.add_option("--prefetch", prefetch, "tasks the engine may hold at once (its base credit)")
      ->capture_default_str()
      ->check(CLI::Range(1, 65536));
  app.add_option("--prefetch-max", prefetch_max,
                 "the most tasks it asks for while its tasks run short (--prefetch or less: a fixed credit)")
      ->capture_default_str()
      ->check(CLI::Range(1, 65536));
  app.add_option("--heartbeat-ms", heartbeat_ms, "heartbeat interval until the broker announces its own")
      ->capture_default_str()
      ->check(CLI::Range(1, 3600 * 1000));
  app.add_option("--liveness", liveness, "silent broker heartbeat intervals before registering again")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  app.add_option("--broker-timeout", broker_timeout_s,
                 "exit after hearing nothing from the broker for this many seconds (0: wait forever)")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1e7));
  app.add_flag("--quiet", quiet, "log only errors");
  CLI11_PARSE(app, argc, argv);
  g_quiet = quiet;

  // SIGTERM from now on; Python installs its SIGINT handler itself.
  struct sigaction sa{};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGTERM, &sa, nullptr);
  struct sigaction wake{};
  wake.sa_handler = on_wake_signal;
  sigemptyset(&wake.sa_mask);
  wake.sa_flags = 0;  // no SA_RESTART: interrupt the blocking call
  ::sigaction(SIGURG, &wake, nullptr);
  const pthread_t main_thread = pthread_self();

  ConnectionInfo conn;
  conn.engine = url;
  if (conn.engine.empty()) {
    if (connection_file.empty()) {
      log_error("give --connection-file PATH or --url ENDPOINT (see --help)");
      return 2;
    }
    if (!resolve_connection(connection_file, &conn)) return 2;
  }
  const std::string endpoint = conn.engine;

  const std::string program = find_sibling_python(argv[0]);
  std::string why;
  if (!start_python(program, argv[0], &why)) {
    log_error("cannot start Python%s%s: %s", program.empty() ? "" : " as ", program.c_str(), why.c_str());
    return 1;
  }

  int exit_code = 0;
  {
    zmq::context_t ctx(1);
    zmq::socket_t socket(ctx, zmq::socket_type::dealer);
    const std::string identity = random_identity();
    socket.set(zmq::sockopt::routing_id, identity);
    socket.set(zmq::sockopt::sndhwm, 0);
    socket.set(zmq::sockopt::rcvhwm, 0);
    socket.set(zmq::sockopt::linger, 1000);
    try {
      if (conn.curve) {
        // The broker is the CURVE server; these keys must be set before
        // connect.  libzmq takes 40-character keys as Z85 text.
        socket.set(zmq::sockopt::curve_serverkey, conn.server_public);
        socket.set(zmq::sockopt::curve_publickey, conn.engine_public);
        socket.set(zmq::sockopt::curve_secretkey, conn.engine_secret);
      }
    } catch (const zmq::error_t& e) {
      log_error("cannot use the CURVE keys of %s: %s", connection_file.c_str(), e.what());
      stop_python();
      return 2;
    }
    try {
      socket.connect(endpoint);
    } catch (const zmq::error_t& e) {
      log_error("cannot connect to %s: %s", endpoint.c_str(), e.what());
      stop_python();
      return 2;
    }

    Executor executor;
    if (!executor.import_error().empty()) log_error("%s", executor.import_error().c_str());

    CreditPolicy credit(prefetch, prefetch_max);
    SessionOptions options;
    options.credit = prefetch;
    // Always the current revision, a fixed credit too: revision 4 is what
    // gets the engine its Tasks in Batches.  The price for a fixed-credit
    // engine, which never gives tasks back, is that the broker keeps a
    // shared copy of each task's payload while it runs here (a reference,
    // not the bytes; docs/protocol.rst, Revisions).
    options.revision = proto::kRevision;
    options.heartbeat = std::chrono::milliseconds(heartbeat_ms);
    options.liveness = liveness;
    options.host_pid = host_pid();
    options.broker_timeout = std::chrono::milliseconds(static_cast<std::int64_t>(broker_timeout_s * 1000));
    Session session(options);
    BadInput bad;
    std::atomic<bool> shutdown_requested{false};
    std::atomic<bool> gave_up{false};
    std::atomic<std::uint64_t> stale_tasks{0};
    std::atomic<std::uint64_t> stale_results{0};
    std::uint64_t batches_received = 0;  // the socket's owner
    std::atomic<std::uint64_t> aborted_queued{0};
    EngineIo* io_ptr = nullptr;
    // Runs on the watch thread (the socket's owner while a task runs), under
    // the board's lock, while the task to interrupt is running.  Both calls are async-signal-safe and need no GIL.
    TaskBoard board([main_thread] {
      PyErr_SetInterruptEx(SIGINT);
      pthread_kill(main_thread, SIGURG);
    });
    // What a running task prints, streamed to its client (io_ptr is set
    // before the first task runs).
    OutputPipe output([&](Frames frames) { io_ptr->send(std::move(frames)); });

    // Both callbacks run on the socket's owner, the only one touching session.
    auto send_headers = [&](std::vector<proto::Header>& headers) {
      for (auto& h : headers) {
        if (h.type == proto::MsgType::kRegister) credit.reset();  // the broker takes the base from it
        Frames frames = proto::encode(h);
        io_ptr->send_now(frames);
      }
      headers.clear();
    };
    auto report_change = [&](Session::State before, const char* reason) {
      const Session::State now = session.state();
      if (now == before) return;
      if (now == Session::State::kRegistered) {
        log_info("registered as engine %lld (heartbeat %lld ms)", static_cast<long long>(session.engine_id()),
                 static_cast<long long>(session.heartbeat().count()));
      } else if (now == Session::State::kRegistering) {
        log_info("%s; registering again", reason);
      }
    };
    // The credit may change only while registered with a broker that takes
    // Credit; otherwise it stays at the base the Register announced.
    auto credit_adapts = [&] {
      return credit.adaptive() && session.state() == Session::State::kRegistered && session.broker_revision() >= 2;
    };
    // Gives back the queued tasks beyond the credit and announces both, if
    // either changed.  Socket owner only; `running`: a task runs now.
    auto announce_credit = [&](bool changed, bool running) {
      proto::Header h;
      h.opts.ids = board.give_back(static_cast<std::size_t>(credit.keep(running)));
      if (!changed && h.opts.ids.empty()) return;
      h.type = proto::MsgType::kCredit;
      h.targets = {session.engine_id()};  // the registration these tasks came under
      h.aux = credit.credit();
      // Through the queue, not send_now: a Credit the socket would not take
      // yet waits and leaves later, since the tasks it names are no longer
      // held here.
      io_ptr->send(proto::encode(h));
    };
    // One message from the broker, alone or a record of a Batch.
    auto on_message = [&](proto::Message& msg) {
      std::vector<proto::Header> replies;
      const Session::State before = session.state();
      const std::uint64_t epoch_before = session.epoch();
      const auto verdict = session.on_message(msg.header, Clock::now(), &replies);
      if (session.epoch() != epoch_before) {
        // The broker forgot what we hold: results could not be routed.
        const std::size_t dropped = board.new_epoch();
        stale_tasks += dropped;
        stale_results += io_ptr->drop_held();
        if (dropped > 0 || board.running()) {
          log_info("the broker no longer knows this engine's tasks: dropped %zu queued%s", dropped,
                   board.running() ? ", the running one's result will not be sent" : "");
        }
      }
      board.set_paused(session.state() != Session::State::kRegistered);
      output.set_enabled(session.broker_revision() >= 1);
      send_headers(replies);
      report_change(before, "the broker does not know this engine");
      switch (verdict) {
        case Session::Verdict::kRunTask:
          if (msg.header.aux != session.engine_id()) {
            // Sent to an earlier registration of this engine: the broker has
            // already given that task to another engine or ended it.
            ++stale_tasks;
            return;
          }
          board.add(std::move(msg));
          // Sent before the broker read our lower credit: back it goes.
          if (credit.long_task() && credit_adapts()) announce_credit(false, /*running=*/true);
          return;
        case Session::Verdict::kInterrupt:
          if (board.interrupt(msg.header.id) == TaskBoard::Interrupted::kQueued) {
            ++aborted_queued;
            proto::Header h;
            h.type = proto::MsgType::kResult;
            h.id = msg.header.id;
            h.status = static_cast<std::uint32_t>(proto::ResultStatus::kAborted);
            h.aux = session.engine_id();
            h.text = "aborted before it started";
            Frames out = proto::encode(h);
            io_ptr->send_now(out);
          }
          return;
        case Session::Verdict::kShutdown:
          log_info("the broker asked this engine to shut down");
          shutdown_requested = true;
          board.wake();
          return;
        case Session::Verdict::kUnexpected:
          bad.note(std::string("unexpected ") + proto::to_string(msg.header.type) + " message");
          return;
        case Session::Verdict::kDone:
          if (msg.header.type == proto::MsgType::kError && msg.header.text.rfind("unknown engine", 0) != 0) {
            log_error("the broker reports an error: %s", msg.header.text.c_str());
          }
          return;
      }
      return;
    };
    // The records of a Batch, reused (their header vectors keep their storage).
    std::vector<proto::Message> records;
    auto on_incoming = [&](Frames& frames) {
      proto::Message msg;
      const proto::Status st = proto::decode(frames, 0, &msg);
      if (!st.ok()) {
        bad.note(st.detail);
        return;
      }
      if (msg.header.type != proto::MsgType::kBatch) {
        on_message(msg);
        return;
      }
      // Each record as if it had come alone, in order; a bad Batch is
      // dropped whole (decode_batch is all or nothing).
      const proto::Status bst = proto::decode_batch(msg, records);
      if (!bst.ok()) {
        bad.note(bst.detail);
        return;
      }
      ++batches_received;
      for (auto& record : records) on_message(record);
    };
    auto on_tick = [&] {
      std::vector<proto::Header> out;
      const Session::State before = session.state();
      const auto now = Clock::now();
      session.on_tick(now, &out);
      board.set_paused(session.state() != Session::State::kRegistered);
      send_headers(out);
      output.on_tick(now);
      report_change(before, "no word from the broker");
      if (session.gave_up() && !gave_up.exchange(true)) {
        log_error("no word from the broker for %g s (--broker-timeout); exiting", broker_timeout_s);
        board.wake();
      }
    };

    const int tick_ms = std::clamp(heartbeat_ms / 4, 10, 100);
    // A task runs long (the watch thread holds the socket): the credit
    // falls, and the tasks queued behind the task go to other engines.
    static_assert(EngineIo::kTakeoverAfter >= CreditPolicy::kShortTask);
    static_assert(EngineIo::kLookAgainAfter >= CreditPolicy::kLongTask);
    auto on_long_task = [&](Clock::duration ran) {
      if (credit_adapts()) announce_credit(credit.on_long_task(ran), /*running=*/true);
    };
    EngineIo io(std::move(socket), std::chrono::milliseconds(tick_ms), on_incoming, on_tick, on_long_task);
    io_ptr = &io;
    set_output_pipe(&output);
    // Signals go to the main thread: block them while the watch thread is
    // created so it inherits the blocked mask.
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGINT);
    sigaddset(&block, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &block, &old);
    io.start();
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    log_info("connecting to %s as %s", endpoint.c_str(), identity.c_str());

    // The header of every Result, reused: its targets (the timing) keep
    // their storage, where a fresh header would allocate them per task.
    proto::Header result;
    result.type = proto::MsgType::kResult;
    std::uint64_t tasks_run = 0;
    std::uint64_t interrupted = 0;
    bool by_signal = false;
    while (true) {
      if (shutdown_requested || gave_up) break;
      if (g_signal != 0) {
        by_signal = true;
        break;
      }
      std::optional<proto::Message> task;
      {
        py::gil_scoped_release nogil;
        task = board.try_take();
        if (task) {
          // Prefetched: still read what came meanwhile (Interrupts, more
          // tasks) and keep heartbeats going between tasks.
          io.service();
        } else {
          io.serve(std::chrono::milliseconds(kIdleWaitMs),
                   [&] { return board.ready() || shutdown_requested || gave_up || g_signal != 0; });
          task = board.try_take();
        }
      }
      if (!task) {
        // Idle: run Python-level signal handlers; Ctrl-C stops the engine.
        // Only here, with no task marked running, can a KeyboardInterrupt
        // not be the broker's (that one trips only while a task runs, and
        // is consumed when it ends).  With a task taken, a Ctrl-C hits it.
        if (PyErr_CheckSignals() != 0) {
          const bool ctrl_c = PyErr_ExceptionMatches(PyExc_KeyboardInterrupt) != 0;
          if (!ctrl_c) PyErr_Print();
          PyErr_Clear();
          if (ctrl_c) {
            by_signal = true;
            break;
          }
        }
        continue;
      }
      if (shutdown_requested || gave_up || g_signal != 0) {
        // A task that arrived together with Shutdown is not started: the
        // broker ends queued tasks itself when it shuts down.
        board.finish();
        continue;
      }
      g_in_task = true;
      output.begin(task->header.id, task->header.aux);
      // The Result's timing: this wall-clock start, and the run time by the
      // monotonic clock that task_started() and task_ended() read anyway.
      const std::int64_t started_us = wall_clock_us();
      io.task_started();
      Outcome outcome = executor.run(task->header.id, std::move(task->payload));
      const auto ran = io.task_ended();
      output.end();  // before the Result: no Output of this task follows it
      if (!credit_adapts()) {
        credit.reset();  // what the broker has: the Register's credit
      } else if (credit.on_task_end(ran)) {
        announce_credit(/*changed=*/true, /*running=*/false);
      }
      g_in_task = false;
      const TaskBoard::Finished fin = board.finish();
      if (fin.interrupted) {
        // The broker's KeyboardInterrupt may still be pending (it landed as
        // the task was ending): consume it here, so it neither escapes into
        // the idle loop (which would stop the engine) nor hits the next task.
        if (PyErr_CheckSignals() != 0) PyErr_Clear();
      } else if (PyErr_CheckSignals() != 0) {
        // Ctrl-C or SIGTERM just after the task: leave, as when idle.
        if (PyErr_ExceptionMatches(PyExc_KeyboardInterrupt) != 0) by_signal = true;
        PyErr_Clear();
      }
      ++tasks_run;
      if (fin.stale) {
        // The broker restarted or gave this task to another engine meanwhile.
        ++stale_results;
        log_info("not sending the result of task %llu: the broker no longer knows it",
                 static_cast<unsigned long long>(fin.id));
        if (by_signal) break;
        continue;
      }
      proto::Header& h = result;
      h.id = task->header.id;
      h.aux = task->header.aux;
      h.text.clear();
      proto::put_timing({started_us, std::chrono::duration_cast<std::chrono::nanoseconds>(ran).count()}, &h);
      if (fin.interrupted && outcome.keyboard_interrupt) {
        // The payload (the pickled KeyboardInterrupt, with the output printed
        // so far) is kept for clients that want it.
        ++interrupted;
        h.status = static_cast<std::uint32_t>(proto::ResultStatus::kAborted);
        h.text = interrupted_text(outcome.traceback);
      } else {
        // Not interrupted, or it finished (or failed otherwise) before the
        // interrupt could land: its own result is the truth.
        h.status = outcome.status;
        if (!outcome.error.empty()) h.text = outcome.error.substr(0, 1024);
      }
      Frames out = proto::encode(h, std::move(outcome.frames));
      // The next task is already here: this Result may wait for its end and
      // leave with it in one Batch (EngineIo::hold bounds the wait).  Never
      // when nothing runs next, so a lone task's Result leaves at once.
      if (!by_signal && session.broker_revision() >= 4 && session.state() == Session::State::kRegistered &&
          board.ready() && proto::batchable(proto::MsgType::kResult, out)) {
        io.hold(std::move(out));
      } else {
        io.send(std::move(out));
      }
      if (by_signal) break;
    }

    if (by_signal && session.engine_id() >= 0) {
      // Tell the broker now rather than let it wait for missed heartbeats.
      io.send(proto::encode(session.leave_message()));
    }
    io.stop();  // sends what is queued, then closes the socket
    set_output_pipe(nullptr);
    log_info("exiting%s: %llu tasks run, %llu interrupted, %llu dropped before they started, %llu stale tasks "
             "skipped, %llu stale results dropped, %llu bad messages, %llu batches received, %llu results in "
             "%llu batches sent",
             by_signal ? " on a signal" : "", static_cast<unsigned long long>(tasks_run),
             static_cast<unsigned long long>(interrupted), static_cast<unsigned long long>(aborted_queued.load()),
             static_cast<unsigned long long>(stale_tasks.load()), static_cast<unsigned long long>(stale_results.load()),
             static_cast<unsigned long long>(bad.count.load()), static_cast<unsigned long long>(batches_received),
             static_cast<unsigned long long>(io.results_batched()), static_cast<unsigned long long>(io.batches_sent()));
    if (gave_up) exit_code = 1;
  }
  if (!stop_python()) exit_code = exit_code == 0 ? 1 : exit_code;
  return exit_code;
}
