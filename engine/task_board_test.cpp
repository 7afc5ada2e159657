// TaskBoard units: the interrupt and epoch decisions, one case each.  The
// trip callback only counts, so no Python is needed.
#include <doctest/doctest.h>

#include <chrono>
#include <vector>

#include "task_board.hpp"

using namespace zfarm;
using namespace zfarm::engine;
using std::chrono::milliseconds;

namespace {

proto::Message task(std::uint64_t id) {
  proto::Message m;
  m.header.type = proto::MsgType::kTask;
  m.header.id = id;
  return m;
}

struct Board {
  int trips = 0;
  TaskBoard board{[this] { ++trips; }};
};

}  // namespace

TEST_CASE("board: tasks are taken in arrival order and marked running") {
  Board b;
  b.board.add(task(1));
  b.board.add(task(2));
  CHECK(b.board.queued() == 2);
  auto t = b.board.take(milliseconds(0));
  REQUIRE(t);
  CHECK(t->header.id == 1);
  CHECK(b.board.running() == 1u);
  auto f = b.board.finish();
  CHECK(f.id == 1);
  CHECK_FALSE(f.interrupted);
  CHECK_FALSE(f.stale);
  CHECK_FALSE(b.board.running());
  CHECK(b.board.take(milliseconds(0))->header.id == 2);
}

TEST_CASE("board: take times out empty, and wake ends the wait") {
  Board b;
  CHECK_FALSE(b.board.take(milliseconds(1)));
  b.board.wake();  // a wake before the wait does not count for it
  CHECK_FALSE(b.board.take(milliseconds(1)));
}

TEST_CASE("board: interrupt of the running task trips it once per request") {
  Board b;
  b.board.add(task(7));
  b.board.take(milliseconds(0));
  CHECK(b.board.interrupt(7) == TaskBoard::Interrupted::kRunning);
  CHECK(b.trips == 1);
  CHECK(b.board.interrupt(7) == TaskBoard::Interrupted::kRunning);  // asked twice: tripped twice
  CHECK(b.trips == 2);
  auto f = b.board.finish();
  CHECK(f.interrupted);
}

TEST_CASE("board: interrupt of a queued task drops it without a trip") {
  Board b;
  b.board.add(task(1));
  b.board.add(task(2));
  b.board.add(task(3));
  CHECK(b.board.interrupt(2) == TaskBoard::Interrupted::kQueued);
  CHECK(b.trips == 0);
  CHECK(b.board.queued() == 2);
  CHECK(b.board.take(milliseconds(0))->header.id == 1);
  b.board.finish();
  CHECK(b.board.take(milliseconds(0))->header.id == 3);
}

TEST_CASE("board: interrupt just after the task ended trips nothing") {
  Board b;
  b.board.add(task(5));
  b.board.take(milliseconds(0));
  b.board.finish();
  CHECK(b.board.interrupt(5) == TaskBoard::Interrupted::kNotHeld);
  CHECK(b.trips == 0);
  // ... and does not reach the next task either.
  b.board.add(task(6));
  b.board.take(milliseconds(0));
  CHECK_FALSE(b.board.finish().interrupted);
}

TEST_CASE("board: interrupt of an unknown task is ignored") {
  Board b;
  CHECK(b.board.interrupt(99) == TaskBoard::Interrupted::kNotHeld);
  b.board.add(task(1));
  b.board.take(milliseconds(0));
  CHECK(b.board.interrupt(2) == TaskBoard::Interrupted::kNotHeld);
  CHECK(b.trips == 0);
  CHECK_FALSE(b.board.finish().interrupted);
}

TEST_CASE("board: a new epoch drops queued tasks and marks the running one stale") {
  Board b;
  b.board.add(task(1));
  b.board.add(task(2));
  b.board.add(task(3));
  b.board.take(milliseconds(0));  // 1 runs
  CHECK(b.board.new_epoch() == 2);
  CHECK(b.board.queued() == 0);
  // An old broker's task id means nothing to the new one: no trip.
  CHECK(b.board.interrupt(1) == TaskBoard::Interrupted::kNotHeld);
  CHECK(b.trips == 0);
  auto f = b.board.finish();
  CHECK(f.stale);
  // Tasks of the new epoch run normally.
  b.board.add(task(1));
  b.board.take(milliseconds(0));
  CHECK_FALSE(b.board.finish().stale);
}

TEST_CASE("board: a paused board holds its tasks back until resumed") {
  Board b;
  b.board.add(task(1));
  b.board.set_paused(true);
  CHECK_FALSE(b.board.take(milliseconds(1)));
  CHECK(b.board.queued() == 1);
  // Paused while the engine registers again; the new broker's reply
  // starts a new epoch, so the held task never runs.
  CHECK(b.board.new_epoch() == 1);
  b.board.set_paused(false);
  CHECK_FALSE(b.board.take(milliseconds(1)));
  b.board.add(task(2));
  CHECK(b.board.take(milliseconds(0))->header.id == 2);
}

TEST_CASE("board: give_back removes the queued tasks after the first `keep`, in order") {
  TaskBoard board([] {});
  for (std::uint64_t id = 1; id <= 6; ++id) board.add(task(id));
  auto running = board.try_take();
  REQUIRE(running);
  CHECK(running->header.id == 1);
  CHECK(board.give_back(5).empty());  // holds 5 queued: nothing beyond
  CHECK(board.give_back(2) == std::vector<std::uint64_t>{4, 5, 6});
  CHECK(board.queued() == 2);
  // Given back: neither interruptible nor taken here any more.
  CHECK(board.interrupt(5) == TaskBoard::Interrupted::kNotHeld);
  CHECK(board.interrupt(1) == TaskBoard::Interrupted::kRunning);  // the running one stays
  board.finish();
  CHECK(board.try_take()->header.id == 2);
  board.finish();
  CHECK(board.give_back(0) == std::vector<std::uint64_t>{3});
  CHECK_FALSE(board.try_take());
}
