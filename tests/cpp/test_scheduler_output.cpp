// The Scheduler's forwarding of Output (broker/scheduler_output.cpp), message
// by message: where a chunk goes, and which ones are dropped and counted.
#include <doctest/doctest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "scheduler_feed.hpp"

using namespace zfarm;
using broker::Outgoing;
using proto::MsgType;

namespace {

using test::Got;

struct Broker : test::FedScheduler {
  std::vector<Got> reg(const std::string& engine) {
    proto::Header h;
    h.type = MsgType::kRegister;
    h.aux = 1;
    return feed(true, engine, h);
  }
  std::vector<Got> hello(const std::string& client, const std::string& session) {
    proto::Header h;
    h.type = MsgType::kHello;
    h.opts.session = session;
    return feed(false, client, h);
  }
  std::vector<Got> submit(const std::string& client, std::uint64_t id) {
    proto::Header h;
    h.type = MsgType::kSubmit;
    h.id = id;
    h.targets = {proto::kLoadBalanced};
    return feed(false, client, h);
  }
  std::vector<Got> output(const std::string& engine, std::uint64_t id, std::vector<std::string> chunks = {"out", "err"},
                          std::vector<std::int64_t> offsets = {0, 0}, std::uint32_t flags = 0) {
    proto::Header h;
    h.type = MsgType::kOutput;
    h.id = id;
    h.aux = 99;  // the engine's claim; the broker puts its own id
    h.status = flags;
    h.targets = std::move(offsets);
    return feed(true, engine, h, std::move(chunks));
  }
  std::vector<Got> result(const std::string& engine, std::uint64_t id) {
    proto::Header h;
    h.type = MsgType::kResult;
    h.id = id;
    return feed(true, engine, h);
  }
};

}  // namespace

TEST_CASE("output: RegisterReply and Welcome announce the protocol revision") {
  Broker b;
  auto got = b.reg("e");
  REQUIRE(got.size() == 1);
  CHECK(got[0].header.type == MsgType::kRegisterReply);
  CHECK(got[0].header.opts.revision == proto::kRevision);
  got = b.hello("c", "sess");
  REQUIRE(!got.empty());
  CHECK(got[0].header.type == MsgType::kWelcome);
  CHECK(got[0].header.opts.revision == proto::kRevision);
}

TEST_CASE("output: forwarded to the submitting client, with the broker's engine id, and not stored") {
  Broker b;
  b.reg("e0");
  b.hello("c", "sess");
  b.submit("c", 7);
  auto got = b.output("e0", 7, {"first\n", "warn\n"}, {0, 0}, proto::kStderrCapped);
  REQUIRE(got.size() == 1);
  CHECK(got[0].side == Outgoing::kClient);
  CHECK(got[0].identity == "c");
  CHECK(got[0].header.type == MsgType::kOutput);
  CHECK(got[0].header.id == 7);
  CHECK(got[0].header.aux == 0);
  CHECK(got[0].header.status == proto::kStderrCapped);
  CHECK(got[0].header.targets == std::vector<std::int64_t>{0, 0});
  CHECK(got[0].payload == std::vector<std::string>{"first\n", "warn\n"});
  CHECK(b.s.counters().outputs_forwarded == 1);
  CHECK(b.s.results().stats().stored_results == 0);  // best effort: nothing kept, nothing to ack
  CHECK(b.s.pending() == 1);                          // the task itself is untouched
}

TEST_CASE("output: goes to the session's current identity after a reconnect") {
  Broker b;
  b.reg("e0");
  b.hello("old", "sess");
  b.submit("old", 7);
  b.hello("new", "sess");
  auto got = b.output("e0", 7);
  REQUIRE(got.size() == 1);
  CHECK(got[0].identity == "new");
}

TEST_CASE("output: for a task the engine does not run is dropped and counted") {
  Broker b;
  b.reg("e0");
  b.reg("e1");
  b.submit("c", 7);  // goes to e0 (lowest id wins a tie)
  CHECK(b.output("e1", 7).empty());     // another engine cannot speak for it
  CHECK(b.output("e0", 8).empty());     // no such task
  CHECK(b.s.counters().outputs_dropped == 2);
  REQUIRE(b.output("e0", 7).size() == 1);
  b.result("e0", 7);
  CHECK(b.output("e0", 7).empty());     // a straggler after the Result
  CHECK(b.s.counters().outputs_dropped == 3);
  CHECK(b.s.counters().outputs_forwarded == 1);
  CHECK(b.s.counters().bad_messages == 0);
}

TEST_CASE("output: from an unregistered engine is dropped, not answered") {
  Broker b;
  CHECK(b.output("ghost", 1).empty());
  CHECK(b.s.counters().outputs_dropped == 1);
  CHECK(b.s.counters().bad_messages == 0);
}

TEST_CASE("output: malformed ones are dropped and counted, never answered") {
  Broker b;
  b.reg("e0");
  b.submit("c", 7);
  CHECK(b.output("e0", 7, {"only one frame"}).empty());
  CHECK(b.output("e0", 7, {"a", "b", "c"}).empty());
  CHECK(b.output("e0", 7, {std::string(proto::kMaxOutputChunk + 1, 'x'), ""}).empty());
  CHECK(b.output("e0", 7, {"a", ""}, {0}).empty());
  CHECK(b.output("e0", 7, {"a", ""}, {-1, 0}).empty());
  CHECK(b.output("e0", 7, {"a", ""}, {0, 0}, 8).empty());
  CHECK(b.s.counters().outputs_malformed == 6);
  CHECK(b.s.counters().bad_messages == 6);
  CHECK(b.s.counters().outputs_forwarded == 0);
  // The engine and its task are fine: a good chunk still goes through.
  CHECK(b.output("e0", 7).size() == 1);
}

TEST_CASE("output: also goes to sessions that fetched the running task, each once, shared") {
  Broker b;
  b.reg("e0");
  b.hello("c", "sess");
  b.hello("w1", "watcher-1");
  b.hello("w2", "watcher-2");
  b.submit("c", 7);
  proto::Header fetch;
  fetch.type = MsgType::kFetch;
  fetch.opts.ids = {7};
  CHECK(b.feed(false, "w1", fetch).empty());
  CHECK(b.feed(false, "w1", fetch).empty());  // twice: still one copy
  CHECK(b.feed(false, "w2", fetch).empty());
  CHECK(b.feed(false, "c", fetch).empty());   // the owner's own fetch: no second copy
  auto got = b.output("e0", 7, {"first\n", ""});
  REQUIRE(got.size() == 3);
  std::vector<std::string> to;
  for (const auto& g : got) {
    to.push_back(g.identity);
    CHECK(g.header.type == MsgType::kOutput);
    CHECK(g.header.aux == 0);
    CHECK(g.payload == std::vector<std::string>{"first\n", ""});
  }
  std::sort(to.begin(), to.end());
  CHECK(to == std::vector<std::string>{"c", "w1", "w2"});
  CHECK(b.s.counters().outputs_forwarded == 3);
  // Once the task ended the watchers are gone with it: a straggler goes nowhere.
  b.result("e0", 7);
  CHECK(b.output("e0", 7).empty());
}
