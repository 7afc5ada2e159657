// EngineIo units: who serves the socket when, over inproc with a ROUTER
// playing the broker.  No Python: "a task" is the main thread between
// task_started() and task_ended().
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "engine_io.hpp"

using namespace zfarm;
using namespace zfarm::engine;
using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

namespace {

constexpr milliseconds kTick{10};
constexpr auto kWait = std::chrono::seconds(10);

Frames one(const std::string& text) {
  Frames f;
  f.emplace_back(text.data(), text.size());
  return f;
}

// A ROUTER bound on inproc and an EngineIo whose DEALER is connected to it.
struct Pair {
  zmq::context_t ctx{1};
  zmq::socket_t router{ctx, zmq::socket_type::router};
  std::atomic<int> incoming{0};
  std::atomic<int> ticks{0};
  std::atomic<bool> incoming_off_main{false};
  std::thread::id main_id = std::this_thread::get_id();
  std::mutex looks_mu;
  std::vector<Clock::duration> looks;  // what the long-task hook was told
  std::atomic<bool> look_on_main{false};
  std::unique_ptr<EngineIo> io;

  // long_task_hook: give EngineIo a LongTaskFn that notes each call and
  // sends "credit".
  explicit Pair(const std::string& name, bool long_task_hook = false) {
    router.bind("inproc://" + name);
    zmq::socket_t dealer(ctx, zmq::socket_type::dealer);
    dealer.set(zmq::sockopt::routing_id, "e");
    dealer.connect("inproc://" + name);
    io = std::make_unique<EngineIo>(
        std::move(dealer), kTick,
        [this](Frames&) {
          if (std::this_thread::get_id() != main_id) incoming_off_main = true;
          ++incoming;
        },
        [this] { ++ticks; },
        long_task_hook ? EngineIo::LongTaskFn([this](Clock::duration ran) {
          if (std::this_thread::get_id() == main_id) look_on_main = true;
          {
            // Recorded before the send: once the test has read the message,
            // its look is there to check.
            std::lock_guard lock(looks_mu);
            looks.push_back(ran);
          }
          // The hook owns the socket: it may send at once.
          Frames f = one("credit");
          io->send_now(f);
        })
                       : EngineIo::LongTaskFn());
    io->start();
  }

  void to_engine(const std::string& text) {
    router.send(zmq::buffer(std::string("e")), zmq::send_flags::sndmore);
    router.send(zmq::buffer(text), zmq::send_flags::none);
  }

  // The next message the engine sent, "" after kWait.
  std::string from_engine() {
    zmq::pollitem_t item{static_cast<void*>(router), 0, ZMQ_POLLIN, 0};
    if (zmq::poll(&item, 1, std::chrono::duration_cast<milliseconds>(kWait)) == 0) return "";
    Frames frames;
    REQUIRE(recv_frames(router, frames));
    REQUIRE(frames.size() == 2);
    return frames[1].to_string();
  }
};

// Waits up to kWait for cond(); the wait has a timeout, the test a verdict.
template <typename Cond>
bool eventually(Cond cond) {
  const auto deadline = Clock::now() + kWait;
  while (!cond()) {
    if (Clock::now() > deadline) return false;
    std::this_thread::sleep_for(milliseconds(1));
  }
  return true;
}

}  // namespace

TEST_CASE("engine io: the main thread serves the socket while it waits and sends at once") {
  Pair p("eio-serve");
  p.to_engine("task");
  p.io->serve(std::chrono::duration_cast<milliseconds>(kWait), [&] { return p.incoming.load() > 0; });
  CHECK(p.incoming == 1);
  CHECK_FALSE(p.incoming_off_main);
  p.io->send(one("result"));
  CHECK(p.from_engine() == "result");
  CHECK(p.io->takeovers() == 0);
  p.io->stop();
}

TEST_CASE("engine io: a task that runs on hands the socket to the watch thread and gets it back") {
  Pair p("eio-takeover", /*long_task_hook=*/true);
  p.io->task_started();
  // The main thread "computes": only the watch thread can read this.
  p.to_engine("interrupt");
  CHECK(eventually([&] { return p.incoming.load() == 1; }));
  CHECK(p.incoming_off_main);
  CHECK(p.io->takeovers() == 1);
  // The long-task hook ran at the takeover and once more after kLookAgainAfter.
  CHECK(p.from_engine() == "credit");
  CHECK(p.from_engine() == "credit");
  {
    std::lock_guard lock(p.looks_mu);
    REQUIRE(p.looks.size() == 2);
    CHECK(p.looks[0] >= EngineIo::kTakeoverAfter);
    CHECK(p.looks[1] >= EngineIo::kLookAgainAfter);
  }
  CHECK_FALSE(p.look_on_main);
  const int ticks = p.ticks.load();
  CHECK(eventually([&] { return p.ticks.load() > ticks; }));  // heartbeats go on
  p.io->task_ended();
  p.io->send(one("result"));
  CHECK(p.from_engine() == "result");
  p.io->stop();
}

TEST_CASE("engine io: sends from other threads during a task leave in order, before the Result") {
  Pair p("eio-order");
  p.io->task_started();
  std::thread printer([&] {
    p.io->send(one("output 1"));  // the socket is free: sent at once
    CHECK(eventually([&] { return p.io->takeovers() == 1; }));
    p.io->send(one("output 2"));  // the watch thread holds it: queued, then sent
  });
  printer.join();
  p.io->task_ended();
  p.io->send(one("result"));
  CHECK(p.from_engine() == "output 1");
  CHECK(p.from_engine() == "output 2");
  CHECK(p.from_engine() == "result");
  p.io->stop();
}

TEST_CASE("engine io: the results of short tasks leave in order") {
  Pair p("eio-short", /*long_task_hook=*/true);
  for (int i = 0; i < 100; ++i) {
    p.io->task_started();
    p.io->task_ended();
    p.io->send(one("r" + std::to_string(i)));
    p.io->service();
  }
  for (int i = 0; i < 100; ++i) CHECK(p.from_engine() == "r" + std::to_string(i));
  std::lock_guard lock(p.looks_mu);
  CHECK(p.looks.size() <= static_cast<std::size_t>(p.io->takeovers()) * 2);  // only for a task taken over
  p.io->stop();
}

TEST_CASE("engine io: stop sends what is queued") {
  Pair p("eio-stop");
  p.io->send(one("leaving"));
  p.io->stop();
  CHECK(p.from_engine() == "leaving");
}
