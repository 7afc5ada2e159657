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

// ---- Results held for a Batch (revision 4) ----------------------------------

namespace {

Frames result_of(std::uint64_t id) {
  proto::Header h;
  h.type = proto::MsgType::kResult;
  h.id = id;
  Frames payload;
  payload.emplace_back(std::string("value ") + std::to_string(id));
  return proto::encode(h, std::move(payload));
}

// The next message the engine sent, decoded; a Batch into *records.
// Fails the test after kWait.
proto::Message next_message(Pair& p, std::vector<proto::Message>* records) {
  proto::Message msg;
  zmq::pollitem_t item{static_cast<void*>(p.router), 0, ZMQ_POLLIN, 0};
  REQUIRE(zmq::poll(&item, 1, std::chrono::duration_cast<milliseconds>(kWait)) == 1);
  Frames frames;
  REQUIRE(recv_frames(p.router, frames));
  REQUIRE(proto::decode(frames, 1, &msg).ok());
  records->clear();
  if (msg.header.type == proto::MsgType::kBatch) REQUIRE(proto::decode_batch(msg, *records).ok());
  return msg;
}

std::vector<std::uint64_t> ids_of(const std::vector<proto::Message>& records) {
  std::vector<std::uint64_t> ids;
  for (const auto& r : records) {
    CHECK(r.header.type == proto::MsgType::kResult);
    REQUIRE(r.payload.size() == 1);
    CHECK(r.payload[0].to_string() == "value " + std::to_string(r.header.id));
    ids.push_back(r.header.id);
  }
  return ids;
}

}  // namespace

TEST_CASE("engine io: held results leave as one batch once the main thread waits for work") {
  Pair p("eio-hold-serve");
  p.io->hold(result_of(1));
  p.io->service();  // a task runs next: they stay
  p.io->hold(result_of(2));
  p.io->hold(result_of(3));
  CHECK(p.io->batches_sent() == 0);
  p.io->serve(milliseconds(0), [] { return true; });  // no task next
  std::vector<proto::Message> records;
  const proto::Message m = next_message(p, &records);
  CHECK(m.header.type == proto::MsgType::kBatch);
  CHECK(ids_of(records) == std::vector<std::uint64_t>{1, 2, 3});
  CHECK(p.io->batches_sent() == 1);
  CHECK(p.io->results_batched() == 3);
  p.io->stop();
}

TEST_CASE("engine io: a lone held result leaves as a result of its own") {
  Pair p("eio-hold-one");
  p.io->hold(result_of(7));
  p.io->serve(milliseconds(0), [] { return true; });
  std::vector<proto::Message> records;
  const proto::Message m = next_message(p, &records);
  CHECK(m.header.type == proto::MsgType::kResult);
  CHECK(m.header.id == 7);
  CHECK(p.io->batches_sent() == 0);
  p.io->stop();
}

TEST_CASE("engine io: nothing sent after held results overtakes them") {
  Pair p("eio-hold-order");
  p.io->hold(result_of(1));
  p.io->hold(result_of(2));
  p.io->send(result_of(3));  // too large to batch, say, or the last one
  std::vector<proto::Message> records;
  proto::Message m = next_message(p, &records);
  CHECK(ids_of(records) == std::vector<std::uint64_t>{1, 2});
  m = next_message(p, &records);
  CHECK(m.header.type == proto::MsgType::kResult);
  CHECK(m.header.id == 3);
  p.io->stop();
}

TEST_CASE("engine io: the results held reach kMaxHeld and leave at once") {
  Pair p("eio-hold-full");
  std::vector<std::uint64_t> want;
  for (std::uint64_t id = 1; id <= EngineIo::kMaxHeld; ++id) {
    CHECK(p.io->batches_sent() == 0);
    p.io->hold(result_of(id));
    want.push_back(id);
  }
  CHECK(p.io->batches_sent() == 1);  // no wait, no serve
  std::vector<proto::Message> records;
  next_message(p, &records);
  CHECK(ids_of(records) == want);
  p.io->stop();
}

TEST_CASE("engine io: the watch thread sends held results when it takes over a long task") {
  Pair p("eio-hold-long");
  p.io->hold(result_of(1));
  p.io->hold(result_of(2));
  p.io->task_started();  // runs on until the batch has arrived
  std::vector<proto::Message> records;
  next_message(p, &records);
  CHECK(ids_of(records) == std::vector<std::uint64_t>{1, 2});
  CHECK(p.io->takeovers() == 1);
  p.io->task_ended();
  p.io->stop();
}

TEST_CASE("engine io: held results a new epoch made stale are dropped, and stop sends the rest") {
  Pair p("eio-hold-drop");
  p.io->hold(result_of(1));
  p.io->hold(result_of(2));
  CHECK(p.io->drop_held() == 2);
  p.io->hold(result_of(3));
  p.io->stop();
  std::vector<proto::Message> records;
  const proto::Message m = next_message(p, &records);
  CHECK(m.header.type == proto::MsgType::kResult);
  CHECK(m.header.id == 3);
}

TEST_CASE("engine io: what another thread queued before a result was held leaves before it") {
  Pair p("eio-hold-queued");
  proto::Header output;
  output.type = proto::MsgType::kOutput;  // the task's last Output, say
  output.targets = {0, 0};
  std::thread printer([&] {
    Frames text;
    text.emplace_back(std::string("printed"));
    text.emplace_back();
    p.io->send(proto::encode(output, std::move(text)));  // the main thread owns the socket: queued
  });
  printer.join();
  p.io->hold(result_of(1));
  p.io->hold(result_of(2));
  p.io->serve(milliseconds(0), [] { return true; });
  std::vector<proto::Message> records;
  CHECK(next_message(p, &records).header.type == proto::MsgType::kOutput);
  next_message(p, &records);
  CHECK(ids_of(records) == std::vector<std::uint64_t>{1, 2});
  p.io->stop();
}
