// FairQueue on its own: priority first, clients in turn within a priority,
// FIFO within a client, retries at the front, stale entries and compaction.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <cstdint>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "fair_queue.hpp"

using zfarm::broker::FairQueue;
using zfarm::broker::QueueEntry;

namespace {

// A queue and the set of ids that went stale, like the Scheduler's tickets.
struct Fixture {
  // The interned session names (as Sessions keeps them): one address each.
  std::set<std::string> names;
  FairQueue q;
  std::set<std::uint64_t> stale;
  std::uint64_t seq = 1;

  void push(const std::string& client, std::uint64_t id, std::int64_t priority = 0, bool front = false) {
    q.push(&*names.insert(client).first, QueueEntry{id, id, seq++, priority}, front);
  }
  void drop(std::uint64_t id) {
    stale.insert(id);
    q.forget();
  }
  auto live() {
    return [this](const QueueEntry& e) { return stale.count(e.id) == 0; };
  }
  // Pops everything, returns the ids in order.
  std::vector<std::uint64_t> drain() {
    std::vector<std::uint64_t> ids;
    while (const QueueEntry* e = q.front(live())) {
      ids.push_back(e->id);
      q.pop_front();
      q.forget();  // as the Scheduler does when the task leaves for an engine
    }
    return ids;
  }
  std::vector<std::uint64_t> take(std::size_t n) {
    std::vector<std::uint64_t> ids;
    for (std::size_t i = 0; i < n; ++i) {
      const QueueEntry* e = q.front(live());
      REQUIRE(e != nullptr);
      ids.push_back(e->id);
      q.pop_front();
      q.forget();  // as the Scheduler does when the task leaves for an engine
    }
    return ids;
  }
};

using Ids = std::vector<std::uint64_t>;

}  // namespace

TEST_CASE("empty queue has no front") {
  Fixture f;
  CHECK(f.q.front(f.live()) == nullptr);
  CHECK(f.q.live() == 0);
  CHECK(f.q.entries() == 0);
}

TEST_CASE("one client: FIFO, like a plain queue") {
  Fixture f;
  for (std::uint64_t id = 1; id <= 5; ++id) f.push("a", id);
  CHECK(f.q.live() == 5);
  CHECK(f.drain() == Ids{1, 2, 3, 4, 5});
  CHECK(f.q.entries() == 0);
}

TEST_CASE("two clients take turns, each in FIFO order") {
  Fixture f;
  for (std::uint64_t id = 1; id <= 4; ++id) f.push("a", id);
  for (std::uint64_t id = 11; id <= 12; ++id) f.push("b", id);
  CHECK(f.drain() == Ids{1, 11, 2, 12, 3, 4});
}

TEST_CASE("a client arriving late joins the rotation at the back, not after the other's backlog") {
  Fixture f;
  for (std::uint64_t id = 1; id <= 100; ++id) f.push("a", id);
  CHECK(f.take(3) == Ids{1, 2, 3});
  f.push("b", 1001);
  f.push("b", 1002);
  f.push("c", 2001);
  CHECK(f.take(7) == Ids{4, 1001, 2001, 5, 1002, 6, 7});
}

TEST_CASE("three clients get equal shares while all have work") {
  Fixture f;
  for (std::uint64_t i = 0; i < 30; ++i) {
    f.push("a", 100 + i);
    f.push("b", 200 + i);
    f.push("c", 300 + i);
  }
  std::size_t n[3] = {0, 0, 0};
  for (std::uint64_t id : f.take(30)) ++n[id / 100 - 1];
  CHECK(n[0] == 10);
  CHECK(n[1] == 10);
  CHECK(n[2] == 10);
}

TEST_CASE("priority comes before turns") {
  Fixture f;
  f.push("a", 1, 0);
  f.push("a", 2, 0);
  f.push("b", 11, 0);
  f.push("b", 12, 5);
  f.push("a", 3, 5);
  // Priority 5 first (b, then a in turn), then priority 0 with its own turns.
  CHECK(f.drain() == Ids{12, 3, 1, 11, 2});
}

TEST_CASE("a higher priority arriving later goes first, then turns resume") {
  Fixture f;
  for (std::uint64_t id = 1; id <= 3; ++id) f.push("a", id);
  f.push("b", 11);
  CHECK(f.take(1) == Ids{1});
  f.push("a", 9, 10);
  CHECK(f.drain() == Ids{9, 11, 2, 3});
}

TEST_CASE("a retry goes to the front of its client's queue, not ahead of the other client's turn") {
  Fixture f;
  f.push("a", 1);
  f.push("a", 2);
  f.push("b", 11);
  f.push("b", 12);
  CHECK(f.take(1) == Ids{1});  // b's turn next
  f.push("a", 1, 0, /*front=*/true);
  CHECK(f.drain() == Ids{11, 1, 12, 2});
}

TEST_CASE("a retry of a client with nothing queued joins at the back of the rotation") {
  Fixture f;
  f.push("a", 1);
  f.push("b", 11);
  f.push("b", 12);
  CHECK(f.take(1) == Ids{1});
  CHECK(f.q.clients_at(0) == 1);  // a left the rotation
  f.push("a", 1, 0, /*front=*/true);
  CHECK(f.drain() == Ids{11, 1, 12});
}

TEST_CASE("stale entries are skipped without costing the client its turn") {
  Fixture f;
  for (std::uint64_t id = 1; id <= 3; ++id) f.push("a", id);
  for (std::uint64_t id = 11; id <= 13; ++id) f.push("b", id);
  f.drop(1);
  f.drop(12);
  CHECK(f.q.live() == 4);
  CHECK(f.drain() == Ids{2, 11, 3, 13});
  CHECK(f.q.live() == 0);
  CHECK(f.q.entries() == 0);
}

TEST_CASE("a client whose entries are all stale leaves the rotation") {
  Fixture f;
  f.push("a", 1);
  f.push("a", 2);
  f.push("b", 11);
  f.drop(1);
  f.drop(2);
  CHECK(f.q.clients_at(0) == 2);
  const QueueEntry* e = f.q.front(f.live());
  REQUIRE(e != nullptr);
  CHECK(e->id == 11);
  CHECK(f.q.clients_at(0) == 1);
  f.q.pop_front();
  CHECK(f.q.front(f.live()) == nullptr);
  CHECK(f.q.clients_at(0) == 0);
}

TEST_CASE("front is stable until the queue changes") {
  Fixture f;
  f.push("a", 1);
  f.push("b", 11);
  const QueueEntry* x = f.q.front(f.live());
  const QueueEntry* y = f.q.front(f.live());
  REQUIRE(x != nullptr);
  CHECK(x == y);
  CHECK(x->id == 1);
}

TEST_CASE("compact drops stale entries and empty clients once they outnumber the live ones") {
  Fixture f;
  for (std::uint64_t id = 1; id <= 100; ++id) f.push("a", id);
  for (std::uint64_t id = 1001; id <= 1010; ++id) f.push("b", id);
  for (std::uint64_t id = 1; id <= 100; ++id) f.drop(id);
  CHECK(f.q.live() == 10);
  f.q.compact(f.live(), 1000);  // within the slack: nothing done
  CHECK(f.q.entries() == 110);
  f.q.compact(f.live(), 0);
  CHECK(f.q.entries() == 10);
  CHECK(f.q.clients_at(0) == 1);
  std::vector<std::uint64_t> want;
  for (std::uint64_t id = 1001; id <= 1010; ++id) want.push_back(id);
  CHECK(f.drain() == want);
}

TEST_CASE("compact keeps the turn order of the clients left") {
  Fixture f;
  f.push("a", 1);
  for (std::uint64_t id = 11; id <= 15; ++id) f.push("b", id);
  f.push("c", 21);
  f.push("a", 2);
  f.push("c", 22);
  CHECK(f.take(1) == Ids{1});  // turn: b, c, a
  for (std::uint64_t id = 11; id <= 15; ++id) f.drop(id);
  f.q.compact(f.live(), 0);
  CHECK(f.q.entries() == 3);
  CHECK(f.q.clients_at(0) == 2);
  CHECK(f.drain() == Ids{21, 2, 22});
}

TEST_CASE("many clients and priorities: every entry comes out once") {
  Fixture f;
  std::set<std::uint64_t> want;
  std::uint64_t id = 1;
  for (int round = 0; round < 50; ++round) {
    for (int c = 0; c < 7; ++c) {
      f.push("client" + std::to_string(c), id, static_cast<std::int64_t>(id % 3) - 1);
      want.insert(id++);
    }
  }
  for (std::uint64_t x = 1; x < id; x += 5) {
    f.drop(x);
    want.erase(x);
  }
  f.q.compact(f.live(), 0);
  Ids got = f.drain();
  CHECK(got.size() == want.size());
  CHECK(std::set<std::uint64_t>(got.begin(), got.end()) == want);
  CHECK(f.q.live() == 0);
  CHECK(f.q.entries() == 0);
}

TEST_CASE("moving the queue keeps its turns") {
  Fixture f;
  f.push("a", 1);
  f.push("a", 2);
  f.push("b", 11);
  FairQueue moved = std::move(f.q);
  Ids got;
  while (const QueueEntry* e = moved.front(f.live())) {
    got.push_back(e->id);
    moved.pop_front();
    moved.forget();
  }
  CHECK(moved.live() == 0);
  CHECK(got == Ids{1, 11, 2});
}
