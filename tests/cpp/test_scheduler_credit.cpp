// The Scheduler's handling of Credit (protocol revision 2), message by
// message: an engine's credit changes, and the tasks it gives back are
// queued again where they came from, each still ending in one result.
#include <doctest/doctest.h>

#include <map>
#include <random>
#include <string>
#include <vector>

#include <msgpack.hpp>

#include "scheduler_feed.hpp"

using namespace zfarm;
using proto::MsgType;
using proto::ResultStatus;

namespace {

using test::Got;

constexpr std::uint32_t st(ResultStatus s) { return static_cast<std::uint32_t>(s); }
const std::vector<std::int64_t> kBalanced = {proto::kLoadBalanced};

struct Broker : test::FedScheduler {
  using FedScheduler::FedScheduler;

  std::vector<Got> credit(const std::string& engine, std::int64_t engine_id, std::int64_t credit,
                          std::vector<std::uint64_t> ids = {}) {
    proto::Header h;
    h.type = MsgType::kCredit;
    h.targets = {engine_id};
    h.aux = credit;
    h.opts.ids = std::move(ids);
    return feed(true, engine, h);
  }
  std::vector<Got> submit(std::uint64_t id, std::vector<std::int64_t> targets = kBalanced, proto::Options opts = {},
                          const std::string& client = "cl") {
    proto::Header h;
    h.type = MsgType::kSubmit;
    h.id = id;
    h.targets = std::move(targets);
    h.opts = std::move(opts);
    return feed(false, client, h, {"payload-" + std::to_string(id)});
  }
  std::vector<Got> result(const std::string& engine, std::uint64_t id) {
    proto::Header h;
    h.type = MsgType::kResult;
    h.id = id;
    return feed(true, engine, h, {"value-" + std::to_string(id)});
  }
  std::vector<Got> client(MsgType type, std::vector<std::uint64_t> ids, std::vector<std::int64_t> targets = {}) {
    proto::Header h;
    h.type = type;
    h.opts.ids = std::move(ids);
    h.targets = std::move(targets);
    return feed(false, "cl", h);
  }

  std::int64_t credit_of(std::int64_t engine_id) {
    proto::Header h;
    h.type = MsgType::kStatus;
    auto got = feed(false, "cl", h);
    REQUIRE(got.size() == 1);
    auto handle = msgpack::unpack(got[0].payload[0].data(), got[0].payload[0].size());
    auto status = handle.get().as<std::map<std::string, msgpack::object>>();
    for (const auto& e : status.at("engines").as<std::vector<std::map<std::string, msgpack::object>>>()) {
      if (e.at("id").as<std::int64_t>() == engine_id) return e.at("credit").as<std::int64_t>();
    }
    return -1;
  }
};

std::vector<Got> of_type(const std::vector<Got>& got, MsgType type) {
  std::vector<Got> r;
  for (const auto& g : got) {
    if (g.header.type == type) r.push_back(g);
  }
  return r;
}

// The ids of the Tasks in `got`, in order (for `engine` only, if given).
std::vector<std::uint64_t> tasks(const std::vector<Got>& got, const std::string& engine = "") {
  std::vector<std::uint64_t> r;
  for (const auto& g : got) {
    if (g.header.type == MsgType::kTask && (engine.empty() || g.identity == engine)) r.push_back(g.header.id);
  }
  return r;
}

using Ids = std::vector<std::uint64_t>;

}  // namespace

TEST_CASE("credit: a raised credit sends more tasks at once; the status shows it") {
  Broker b;
  const auto a = b.reg("a", 2);
  Ids sent;
  for (std::uint64_t id = 1; id <= 6; ++id) {
    for (auto t : tasks(b.submit(id))) sent.push_back(t);
  }
  CHECK(sent == Ids{1, 2});
  CHECK(tasks(b.credit("a", a, 5)) == Ids{3, 4, 5});
  CHECK(b.credit_of(a) == 5);
  CHECK(b.s.inflight(a) == 5);
  CHECK(b.s.counters().credits == 1);
}

TEST_CASE("credit: above max_credit it is clamped; below 1 it is refused, the tasks given back are taken") {
  broker::SchedulerOptions o;
  o.max_credit = 3;
  Broker b(o);
  const auto a = b.reg("a", 1);
  for (std::uint64_t id = 1; id <= 6; ++id) b.submit(id);
  CHECK(tasks(b.credit("a", a, 1000)) == Ids{2, 3});
  CHECK(b.credit_of(a) == 3);
  auto got = b.credit("a", a, 0, {3});
  REQUIRE(of_type(got, MsgType::kError).size() == 1);
  CHECK(b.s.counters().bad_messages == 1);
  CHECK(b.credit_of(a) == 3);  // unchanged
  // Task 3 came back, and as the credit is unchanged it went out again.
  CHECK(tasks(got) == Ids{3});
  CHECK(b.s.counters().given_back == 1);
}

TEST_CASE("credit: given-back tasks go to the front of the shared queue in their order, payload intact") {
  Broker b;
  const auto a = b.reg("a", 4);
  for (std::uint64_t id = 1; id <= 6; ++id) b.submit(id);
  CHECK(b.s.inflight(a) == 4);
  auto got = b.credit("a", a, 2, {3, 4});
  CHECK(tasks(got).empty());  // a holds 2 at credit 2
  CHECK(b.s.inflight(a) == 2);
  CHECK(b.s.shared_queued() == 4);
  got = b.feed(true, "b", [] {
    proto::Header h;
    h.type = MsgType::kRegister;
    h.aux = 4;
    return h;
  }());
  const auto sent = of_type(got, MsgType::kTask);
  REQUIRE(sent.size() == 4);
  for (std::size_t i = 0; i < 4; ++i) {
    CHECK(sent[i].header.id == 3 + i);
    REQUIRE(sent[i].payload.size() == 1);
    CHECK(sent[i].payload[0] == "payload-" + std::to_string(3 + i));
  }
  CHECK(b.s.counters().given_back == 2);
  CHECK(b.s.counters().retried == 0);  // not a retry
}

TEST_CASE("credit: targeted tasks given back return to their engine's queue, ahead of the later ones") {
  Broker b;
  const auto a = b.reg("a", 4);
  for (std::uint64_t id = 1; id <= 6; ++id) b.submit(id, {a});
  CHECK(b.s.inflight(a) == 4);
  CHECK(tasks(b.credit("a", a, 2, {3, 4})).empty());
  Ids order;
  for (std::uint64_t done = 1; done <= 6; ++done) {
    for (auto t : tasks(b.result("a", done))) order.push_back(t);
  }
  CHECK(order == Ids{3, 4, 5, 6});
}

TEST_CASE("credit: a given-back task goes ahead of its priority level only") {
  Broker b;
  const auto a = b.reg("a", 3);
  proto::Options high;
  high.priority = 5;
  b.submit(1);
  b.submit(2);
  b.submit(3);
  b.submit(4, kBalanced, high);  // queued: a is full
  b.submit(5);
  CHECK(tasks(b.credit("a", a, 1, {2, 3})).empty());
  Ids order;
  for (std::uint64_t done : {1, 4, 2, 3}) {
    for (auto t : tasks(b.result("a", done))) order.push_back(t);
  }
  CHECK(order == Ids{4, 2, 3, 5});
}

TEST_CASE("credit: ids not in flight on this engine are ignored and counted") {
  Broker b;
  const auto a = b.reg("a", 2);
  const auto c = b.reg("c", 1);
  b.submit(1);  // a (most free credit)
  b.submit(2);  // a or c: a has 1 free, c 1 free, fewer in flight: c
  b.submit(3);  // a
  REQUIRE(b.s.inflight(a) == 2);
  REQUIRE(b.s.inflight(c) == 1);
  // 2 runs on c, 99 is unknown, 3 is named twice.
  b.credit("a", a, 2, {2, 99, 3, 3});
  CHECK(b.s.counters().give_back_ignored == 3);
  CHECK(b.s.counters().given_back == 1);
  CHECK(b.s.inflight(c) == 1);  // c's task is untouched
  // Task 3 went straight back to a (its credit has room again).
  CHECK(b.s.inflight(a) == 2);
}

TEST_CASE("credit: from an unknown engine it is answered register again; from an earlier registration ignored") {
  Broker b;
  auto got = b.credit("ghost", 0, 4, {1});
  REQUIRE(got.size() == 1);
  CHECK(got[0].header.type == MsgType::kError);
  CHECK(got[0].header.text.rfind("unknown engine", 0) == 0);
  CHECK(b.s.counters().credits_ignored == 1);
  const auto a = b.reg("a", 2);
  b.submit(1);
  got = b.credit("a", a + 7, 8, {1});  // names another registration
  CHECK(got.empty());
  CHECK(b.s.counters().credits_ignored == 2);
  CHECK(b.credit_of(a) == 2);
  CHECK(b.s.inflight(a) == 1);
}

TEST_CASE("credit: an Interrupt crossing the give-back ends the task Aborted, once") {
  Broker b;
  const auto a = b.reg("a", 3);
  for (std::uint64_t id = 1; id <= 3; ++id) b.submit(id);
  auto got = b.client(MsgType::kInterrupt, {3});
  REQUIRE(of_type(got, MsgType::kInterrupt).size() == 1);
  // The engine gave 2 and 3 back before it read the Interrupt.
  got = b.credit("a", a, 1, {2, 3});
  const auto results = of_type(got, MsgType::kResult);
  REQUIRE(results.size() == 1);
  CHECK(results[0].header.id == 3);
  CHECK(results[0].header.status == st(ResultStatus::kAborted));
  CHECK(b.s.shared_queued() == 1);  // task 2 waits again
  // Interrupting a whole engine marks what it holds in flight the same way.
  b.client(MsgType::kInterrupt, {}, {a});
  got = b.credit("a", a, 1, {1});
  REQUIRE(of_type(got, MsgType::kResult).size() == 1);
  CHECK(of_type(got, MsgType::kResult)[0].header.id == 1);
  // Task 2 was queued, not in flight, when the engine was interrupted: it
  // gives back as a plain task.
  CHECK(tasks(got) == Ids{2});
  got = b.credit("a", a, 1, {2});
  CHECK(of_type(got, MsgType::kResult).empty());
  CHECK(tasks(got) == Ids{2});
}

TEST_CASE("credit: a task given back can be aborted; one aborted while in flight is not") {
  Broker b;
  const auto a = b.reg("a", 2);
  b.submit(1);
  b.submit(2);
  // In flight (prefetched): Abort leaves it alone.
  CHECK(of_type(b.client(MsgType::kAbort, {2}), MsgType::kResult).empty());
  b.credit("a", a, 1, {2});
  auto got = b.client(MsgType::kAbort, {2});
  const auto results = of_type(got, MsgType::kResult);
  REQUIRE(results.size() == 1);
  CHECK(results[0].header.status == st(ResultStatus::kAborted));
  CHECK(tasks(b.result("a", 1)).empty());
  CHECK(b.s.pending() == 0);
}

TEST_CASE("credit: engine death after a give-back: the given-back tasks wait for another engine") {
  Broker b;
  const auto a = b.reg("a", 4);
  for (std::uint64_t id = 1; id <= 4; ++id) b.submit(id);
  b.credit("a", a, 2, {3, 4});
  proto::Header bye;
  bye.type = MsgType::kShutdown;
  auto got = b.feed(true, "a", bye);
  const auto died = of_type(got, MsgType::kResult);
  REQUIRE(died.size() == 2);  // 1 and 2 ran there, with no retries
  CHECK(died[0].header.status == st(ResultStatus::kEngineDied));
  CHECK(died[1].header.status == st(ResultStatus::kEngineDied));
  CHECK(b.s.shared_queued() == 2);
  b.reg("c", 4);
  CHECK(b.s.pending() == 2);
  CHECK(b.s.inflight(1) == 2);
}

TEST_CASE("credit: a give-back uses no retry: the task is still retried when its next engine dies") {
  Broker b;
  const auto a = b.reg("a", 2);
  proto::Options once;
  once.retries = 1;
  b.submit(1, kBalanced, once);
  b.submit(2, kBalanced, once);
  b.credit("a", a, 1, {2});  // a is full at credit 1: task 2 waits
  CHECK(b.s.shared_queued() == 1);
  const auto c = b.reg("c", 1);
  CHECK(b.s.inflight(c) == 1);
  proto::Header bye;
  bye.type = MsgType::kShutdown;
  b.feed(true, "c", bye);  // task 2 retried (its one retry)
  CHECK(b.s.counters().retried == 1);
  auto got = b.result("a", 1);
  CHECK(tasks(got) == Ids{2});
  CHECK(of_type(b.result("a", 2), MsgType::kResult).size() == 1);
  CHECK(b.s.pending() == 0);
}

TEST_CASE("credit: a task that timed out in flight and is given back frees the slot and does not run again") {
  Broker b;
  const auto a = b.reg("a", 2);
  proto::Options soon;
  soon.timeout_ms = 10;
  b.submit(1);
  b.submit(2, kBalanced, soon);
  b.now += std::chrono::milliseconds(20);
  b.s.tick(b.now, b.out);
  auto got = b.take();
  REQUIRE(of_type(got, MsgType::kResult).size() == 1);
  CHECK(of_type(got, MsgType::kResult)[0].header.status == st(ResultStatus::kTimedOut));
  CHECK(b.s.abandoned() == 1);
  got = b.credit("a", a, 2, {2});
  CHECK(of_type(got, MsgType::kResult).empty());
  CHECK(b.s.abandoned() == 0);
  CHECK(b.s.inflight(a) == 1);
  CHECK(b.s.counters().given_back == 0);
}

TEST_CASE("credit: without revision 2 the payload is not kept: a task given back ends EngineDied") {
  Broker b;
  const auto a = b.reg("a", 2, /*revision=*/1);
  b.submit(1);
  b.submit(2);
  auto got = b.credit("a", a, 1, {2});
  const auto results = of_type(got, MsgType::kResult);
  REQUIRE(results.size() == 1);
  CHECK(results[0].header.id == 2);
  CHECK(results[0].header.status == st(ResultStatus::kEngineDied));
  CHECK(b.s.pending() == 1);
}

TEST_CASE("credit: a repeated Register sets the credit back to the one it names") {
  Broker b;
  const auto a = b.reg("a", 2);
  b.credit("a", a, 16);
  CHECK(b.credit_of(a) == 16);
  CHECK(b.reg("a", 2) == a);
  CHECK(b.credit_of(a) == 2);
}

TEST_CASE("credit: after shutdown a Credit changes nothing and gives no task back") {
  Broker b;
  const auto a = b.reg("a", 2);
  b.submit(1);
  b.s.shutdown("test", b.out);
  b.take();
  auto got = b.credit("a", a, 4, {1});
  CHECK(tasks(got).empty());
  CHECK(of_type(got, MsgType::kResult).empty());
  CHECK(b.s.counters().give_back_ignored == 1);
  CHECK(b.s.pending() == 0);
}

TEST_CASE("credit: every task ends in exactly one result while engines raise, lower and give back at random") {
  Broker b;
  std::mt19937 rng(20261129);
  const std::vector<std::string> names = {"e0", "e1", "e2"};
  std::map<std::string, std::int64_t> id_of;
  for (const auto& n : names) id_of[n] = b.reg(n, 2);
  std::map<std::string, Ids> held;  // what each engine holds, in arrival order
  std::map<std::uint64_t, int> results;
  auto note = [&](const std::vector<Got>& got) {
    for (const auto& g : got) {
      if (g.header.type == MsgType::kTask) held[g.identity].push_back(g.header.id);
      if (g.header.type == MsgType::kResult) ++results[g.header.id];
    }
  };
  const std::uint64_t n = 400;
  std::uint64_t next = 1;
  for (int step = 0; step < 3000 && (next <= n || b.s.pending() > 0); ++step) {
    const int what = static_cast<int>(rng() % 10);
    const std::string& e = names[rng() % names.size()];
    Ids& h = held[e];
    if (what < 3 && next <= n) {
      proto::Options o;
      if (rng() % 4 == 0) o.priority = static_cast<std::int64_t>(rng() % 3);
      note(b.submit(next, rng() % 5 == 0 ? std::vector<std::int64_t>{id_of[e]} : kBalanced, o));
      ++next;
    } else if (what < 6 && !h.empty()) {
      const std::uint64_t id = h.front();
      h.erase(h.begin());
      note(b.result(e, id));
    } else if (what < 8) {
      // Lower or raise; give back the tail beyond the new credit less one running.
      const std::int64_t credit = 1 + static_cast<std::int64_t>(rng() % 8);
      Ids back;
      const std::size_t keep = static_cast<std::size_t>(credit);
      while (h.size() > keep) {
        back.insert(back.begin(), h.back());
        h.pop_back();
      }
      note(b.credit(e, id_of[e], credit, back));
    } else if (what == 8 && !h.empty()) {
      note(b.client(MsgType::kInterrupt, {h[rng() % h.size()]}));
    } else {
      note(b.client(MsgType::kAbort, {1 + rng() % next}));
    }
  }
  // Drain: every engine runs what it holds.
  for (int round = 0; round < 1000 && b.s.pending() > 0; ++round) {
    for (const auto& e : names) {
      Ids& h = held[e];
      if (h.empty()) continue;
      const std::uint64_t id = h.front();
      h.erase(h.begin());
      note(b.result(e, id));
    }
  }
  CHECK(b.s.pending() == 0);
  CHECK(results.size() == n);
  for (const auto& [id, count] : results) CHECK_MESSAGE(count == 1, "task ", id);
  CHECK(b.s.counters().given_back > 0);
}

TEST_CASE("credit: output of the running task is still forwarded after a Credit") {
  Broker b;
  const auto a = b.reg("a", 2);
  proto::Header hello;
  hello.type = MsgType::kHello;
  hello.opts.session = "s";
  b.feed(false, "cl", hello);
  b.submit(1, {a});
  b.credit("a", a, 1);
  proto::Header out;
  out.type = MsgType::kOutput;
  out.id = 1;
  out.aux = a;
  out.targets = {0, 0};
  auto got = b.feed(true, "a", out, {"first\n", ""});
  REQUIRE(of_type(got, MsgType::kOutput).size() == 1);
  CHECK(b.s.counters().outputs_forwarded == 1);
}
