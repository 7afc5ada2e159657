// The broker's Scheduler driven message by message, with no sockets: each
// test feeds frames as a ROUTER would deliver them and checks what the
// Scheduler wants sent.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <chrono>
#include <map>
#include <string>
#include <vector>

#include <msgpack.hpp>

#include "scheduler.hpp"

using namespace zfarm;
using broker::Clock;
using broker::Outbox;
using broker::Outgoing;
using broker::Scheduler;
using proto::MsgType;
using proto::ResultStatus;
using std::chrono::milliseconds;

namespace {

// One message the Scheduler produced, decoded back.
struct Sent {
  Outgoing::Side side;
  std::string identity;
  proto::Header header;
  std::vector<zmq::message_t> payload;
};

constexpr std::uint32_t st(ResultStatus s) { return static_cast<std::uint32_t>(s); }

class Harness {
 public:
  explicit Harness(broker::SchedulerOptions options = {}) : s(options), now(Clock::now()) {}

  // Feeds one message from an engine or a client; returns what came out.
  std::vector<Sent> from_engine(const std::string& identity, proto::Header h, Frames payload = {}) {
    Frames f = with_identity(identity, proto::encode(h, std::move(payload)));
    s.on_engine_frames(f, now, out);
    return take();
  }
  std::vector<Sent> from_client(const std::string& identity, proto::Header h, Frames payload = {}) {
    Frames f = with_identity(identity, proto::encode(h, std::move(payload)));
    s.on_client_frames(f, now, out);
    return take();
  }
  std::vector<Sent> tick() {
    s.tick(now, out);
    return take();
  }

  // Registers an engine and returns the id the broker gave it.
  std::int64_t add_engine(const std::string& identity, std::int64_t credit) {
    proto::Header h;
    h.type = MsgType::kRegister;
    h.aux = credit;
    h.text = "host:" + identity;
    auto got = from_engine(identity, h);
    REQUIRE(!got.empty());
    REQUIRE(got[0].header.type == MsgType::kRegisterReply);
    return got[0].header.aux;
  }

  std::vector<Sent> submit(const std::string& client, std::uint64_t id, std::vector<std::int64_t> targets,
                           std::int64_t retries = 0, Frames payload = {}) {
    proto::Header h;
    h.type = MsgType::kSubmit;
    h.id = id;
    h.targets = std::move(targets);
    h.opts.retries = retries;
    return from_client(client, h, std::move(payload));
  }

  // A Submit with task options.
  std::vector<Sent> submit_opts(const std::string& client, std::uint64_t id, std::vector<std::int64_t> targets,
                                proto::Options opts, Frames payload = {}) {
    proto::Header h;
    h.type = MsgType::kSubmit;
    h.id = id;
    h.targets = std::move(targets);
    h.opts = std::move(opts);
    return from_client(client, h, std::move(payload));
  }

  std::vector<Sent> result(const std::string& engine, std::uint64_t id, ResultStatus status = ResultStatus::kOk,
                           Frames payload = {}) {
    proto::Header h;
    h.type = MsgType::kResult;
    h.id = id;
    h.status = st(status);
    return from_engine(engine, h, std::move(payload));
  }

  std::vector<Sent> take() {
    std::vector<Sent> sent;
    for (auto& o : out) {
      Sent x{o.side, o.identity, {}, {}};
      proto::Message m;
      broker::frame_header(o);  // a Task with its header inline: as the Batcher sends it alone
      proto::Status status = proto::decode(o.frames, 0, &m);
      REQUIRE(status.ok());  // the broker only ever sends what decodes
      x.header = m.header;
      x.payload = std::move(m.payload);
      sent.push_back(std::move(x));
    }
    out.clear();
    return sent;
  }

  static Frames with_identity(const std::string& identity, Frames frames) {
    Frames f;
    f.emplace_back(identity.data(), identity.size());
    for (auto& x : frames) f.push_back(std::move(x));
    return f;
  }

  Scheduler s;
  Outbox out;
  Clock::time_point now;
};

Frames payload_of(const std::string& bytes) {
  Frames f;
  f.emplace_back(bytes.data(), bytes.size());
  return f;
}

std::vector<Sent> of_type(const std::vector<Sent>& sent, MsgType type) {
  std::vector<Sent> r;
  for (const auto& x : sent) {
    if (x.header.type != type) continue;
    Sent c{x.side, x.identity, x.header, {}};
    for (const auto& p : x.payload) c.payload.emplace_back(p.data(), p.size());
    r.push_back(std::move(c));
  }
  return r;
}

proto::Header header(MsgType type, std::uint64_t id = 0) {
  proto::Header h;
  h.type = type;
  h.id = id;
  return h;
}

const std::vector<std::int64_t> kBalanced = {proto::kLoadBalanced};

}  // namespace

TEST_CASE("register assigns ids 0, 1, 2 and replies with the heartbeat interval") {
  broker::SchedulerOptions o;
  o.heartbeat = milliseconds(250);
  Harness h(o);
  proto::Header reg = header(MsgType::kRegister);
  reg.aux = 2;
  reg.text = "node1:100";
  for (int i = 0; i < 3; ++i) {
    auto got = h.from_engine("e" + std::to_string(i), reg);
    REQUIRE(got.size() == 1);
    CHECK(got[0].side == Outgoing::kEngine);
    CHECK(got[0].identity == "e" + std::to_string(i));
    CHECK(got[0].header.type == MsgType::kRegisterReply);
    CHECK(got[0].header.aux == i);
    CHECK(got[0].header.status == 250);
  }
  CHECK(h.s.engine_count() == 3);
}

TEST_CASE("register repeated from the same identity re-sends the same reply") {
  Harness h;
  CHECK(h.add_engine("a", 1) == 0);
  CHECK(h.add_engine("b", 1) == 1);
  CHECK(h.add_engine("a", 1) == 0);
  CHECK(h.s.engine_count() == 2);
}

TEST_CASE("register with credit 0 is refused with Error") {
  Harness h;
  proto::Header reg = header(MsgType::kRegister);
  reg.aux = 0;
  auto got = h.from_engine("e", reg);
  REQUIRE(got.size() == 1);
  CHECK(got[0].header.type == MsgType::kError);
  CHECK(h.s.engine_count() == 0);
  CHECK(h.s.counters().bad_messages == 1);
}

TEST_CASE("heartbeat from a registered engine is answered with a heartbeat") {
  Harness h;
  h.add_engine("e", 1);
  auto got = h.from_engine("e", header(MsgType::kHeartbeat));
  REQUIRE(got.size() == 1);
  CHECK(got[0].header.type == MsgType::kHeartbeat);
  CHECK(got[0].identity == "e");
}

TEST_CASE("heartbeat or result from an unknown engine gets Error: register again") {
  Harness h;
  auto got = h.from_engine("ghost", header(MsgType::kHeartbeat));
  REQUIRE(got.size() == 1);
  CHECK(got[0].header.type == MsgType::kError);
  CHECK(got[0].header.text == "unknown engine: register again");
  got = h.result("ghost", 5);
  REQUIRE(got.size() == 1);
  CHECK(got[0].header.text == "unknown engine: register again");
}

TEST_CASE("load-balanced task is dispatched as Task with the engine id and the same payload") {
  Harness h;
  h.add_engine("e", 1);
  Frames p = payload_of(std::string(1000, 'p'));
  const void* bytes = p[0].data();
  Frames f = Harness::with_identity("c", proto::encode([] {
                                       proto::Header s = header(MsgType::kSubmit, 7);
                                       s.targets = {proto::kLoadBalanced};
                                       return s;
                                     }(),
                                     std::move(p)));
  h.s.on_client_frames(f, h.now, h.out);
  REQUIRE(h.out.size() == 1);
  CHECK(h.out[0].identity == "e");
  REQUIRE(h.out[0].frames.size() == 3);
  CHECK(h.out[0].frames[2].data() == bytes);  // moved through, not copied
  auto got = h.take();
  CHECK(got[0].header.type == MsgType::kTask);
  CHECK(got[0].header.id == 7);
  CHECK(got[0].header.aux == 0);
}

TEST_CASE("result is routed to the submitting client with the engine id") {
  Harness h;
  h.add_engine("e0", 1);
  h.add_engine("e1", 1);
  h.submit("alice", 10, kBalanced);
  h.submit("bob", 20, kBalanced);
  auto got = h.result("e1", 20, ResultStatus::kOk, payload_of("value"));
  REQUIRE(got.size() == 1);
  CHECK(got[0].side == Outgoing::kClient);
  CHECK(got[0].identity == "bob");
  CHECK(got[0].header.type == MsgType::kResult);
  CHECK(got[0].header.id == 20);
  CHECK(got[0].header.aux == 1);
  CHECK(got[0].header.status == st(ResultStatus::kOk));
  REQUIRE(got[0].payload.size() == 1);
  CHECK(got[0].payload[0].to_string() == "value");
  got = h.result("e0", 10, ResultStatus::kRemoteError);
  CHECK(got[0].identity == "alice");
  CHECK(got[0].header.status == st(ResultStatus::kRemoteError));
  CHECK(h.s.counters().done == 2);
  CHECK(h.s.counters().failed == 1);
  CHECK(h.s.pending() == 0);
}

TEST_CASE("credit limit: an engine never holds more than its credit") {
  Harness h;
  h.add_engine("e", 2);
  std::size_t tasks = 0;
  for (std::uint64_t id = 1; id <= 5; ++id) tasks += of_type(h.submit("c", id, kBalanced), MsgType::kTask).size();
  CHECK(tasks == 2);
  CHECK(h.s.inflight(0) == 2);
  CHECK(h.s.shared_queued() == 3);
  // Each result frees one credit and the next task goes out.
  auto got = h.result("e", 1);
  auto next = of_type(got, MsgType::kTask);
  REQUIRE(next.size() == 1);
  CHECK(next[0].header.id == 3);
  CHECK(h.s.inflight(0) == 2);
}

TEST_CASE("least-loaded: work goes to the engine with the most free credit, ties to the lowest id") {
  Harness h;
  h.add_engine("a", 1);  // id 0
  h.add_engine("b", 3);  // id 1
  h.add_engine("c", 3);  // id 2
  std::vector<std::string> order;
  for (std::uint64_t id = 1; id <= 7; ++id) {
    for (const auto& t : of_type(h.submit("cl", id, kBalanced), MsgType::kTask)) order.push_back(t.identity);
  }
  // free credit (a,b,c): 1,3,3 -> b; 1,2,3 -> c; 1,2,2 -> b; 1,1,2 -> c;
  // 1,1,1 -> a (all tie, lowest in-flight); 0,1,1 -> b; 0,0,1 -> c.
  CHECK(order == std::vector<std::string>{"b", "c", "b", "c", "a", "b", "c"});
}

TEST_CASE("least-loaded: the choice follows a linear scan as credit is used, freed, and engines come and go") {
  // The Scheduler keeps engines filed by free credit instead of scanning
  // them; replay a long mixed sequence and compare every choice with the
  // rule applied to the whole engine list.
  Harness h;
  struct Model {
    std::string identity;
    std::int64_t credit;
    std::vector<std::uint64_t> inflight;
  };
  std::map<std::int64_t, Model> engines;  // by id, like the Scheduler
  auto add = [&](const std::string& identity, std::int64_t credit) {
    engines[h.add_engine(identity, credit)] = Model{identity, credit, {}};
  };
  for (int i = 0; i < 12; ++i) add("e" + std::to_string(i), 1 + i % 4);
  auto expected = [&]() -> std::string {
    const Model* best = nullptr;
    for (const auto& [id, e] : engines) {
      const auto free = e.credit - static_cast<std::int64_t>(e.inflight.size());
      if (free <= 0) continue;
      const auto best_free = best ? best->credit - static_cast<std::int64_t>(best->inflight.size()) : 0;
      if (best == nullptr || free > best_free || (free == best_free && e.inflight.size() < best->inflight.size())) {
        best = &e;
      }
    }
    return best ? best->identity : std::string();
  };
  std::uint64_t next = 1, lcg = 12345;
  int checked = 0;
  for (int step = 0; step < 600; ++step) {
    lcg = lcg * 6364136223846793005ULL + 1442695040888963407ULL;
    const unsigned r = static_cast<unsigned>(lcg >> 33);
    if (r % 5 < 3) {  // submit one task: it must go where the scan says
      const std::string want = expected();
      auto tasks = of_type(h.submit("cl", next, kBalanced), MsgType::kTask);
      if (want.empty()) {
        CHECK(tasks.empty());
        h.from_client("cl", [&] {
          proto::Header a = header(MsgType::kAbort);
          a.opts.ids = {next};
          return a;
        }());
      } else {
        REQUIRE(tasks.size() == 1);
        CHECK(tasks[0].identity == want);
        ++checked;
        for (auto& [id, e] : engines) {
          if (e.identity == want) e.inflight.push_back(next);
        }
      }
      ++next;
    } else if (r % 5 == 3) {  // an engine answers its oldest task
      auto it = engines.begin();
      std::advance(it, static_cast<long>((r / 5) % engines.size()));
      if (!it->second.inflight.empty()) {
        const std::uint64_t id = it->second.inflight.front();
        it->second.inflight.erase(it->second.inflight.begin());
        CHECK(of_type(h.result(it->second.identity, id), MsgType::kTask).empty());  // nothing queued
      }
    } else if (engines.size() > 4) {  // an engine leaves, another joins
      auto it = engines.begin();
      std::advance(it, static_cast<long>((r / 5) % engines.size()));
      h.from_engine(it->second.identity, header(MsgType::kShutdown));
      engines.erase(it);
      add("n" + std::to_string(step), 1 + static_cast<std::int64_t>(r % 3));
    }
  }
  CHECK(checked > 100);
}

TEST_CASE("targeted tasks run in submission order on their engine") {
  Harness h;
  h.add_engine("e", 1);
  std::vector<std::uint64_t> ran;
  for (std::uint64_t id = 1; id <= 3; ++id) {
    for (const auto& t : of_type(h.submit("c", id, {0}), MsgType::kTask)) ran.push_back(t.header.id);
  }
  for (std::uint64_t id = 1; id <= 3; ++id) {
    for (const auto& t : of_type(h.result("e", id), MsgType::kTask)) ran.push_back(t.header.id);
  }
  CHECK(ran == std::vector<std::uint64_t>{1, 2, 3});
}

TEST_CASE("targeted work comes before the shared queue on the same engine") {
  Harness h;
  h.add_engine("e", 1);
  h.submit("c", 1, kBalanced);  // runs now
  h.submit("c", 2, kBalanced);  // waits in the shared queue
  h.submit("c", 3, {0});        // waits in engine 0's FIFO
  auto next = of_type(h.result("e", 1), MsgType::kTask);
  REQUIRE(next.size() == 1);
  CHECK(next[0].header.id == 3);
}

TEST_CASE("fan-out: k targets make tasks id..id+k-1 sharing one payload") {
  Harness h;
  h.add_engine("a", 1);
  h.add_engine("b", 1);
  h.add_engine("c", 1);
  Frames p = payload_of(std::string(4096, 'z'));
  const void* bytes = p[0].data();
  Frames f = Harness::with_identity("cl", proto::encode([] {
                                        proto::Header s = header(MsgType::kSubmit, 100);
                                        s.targets = {2, 0, 1};
                                        return s;
                                      }(),
                                      std::move(p)));
  h.s.on_client_frames(f, h.now, h.out);
  REQUIRE(h.out.size() == 3);
  for (auto& o : h.out) {
    REQUIRE(o.frames.size() == 3);
    CHECK(o.frames[2].data() == bytes);  // one buffer, refcounted
  }
  std::map<std::string, std::uint64_t> ids;
  for (const auto& t : h.take()) ids[t.identity] = t.header.id;
  CHECK(ids["c"] == 100);
  CHECK(ids["a"] == 101);
  CHECK(ids["b"] == 102);
}

TEST_CASE("submit to an unknown target is rejected, the other targets still run") {
  Harness h;
  h.add_engine("a", 1);
  auto got = h.submit("cl", 10, {0, 7, -2});
  auto tasks = of_type(got, MsgType::kTask);
  auto results = of_type(got, MsgType::kResult);
  REQUIRE(tasks.size() == 1);
  CHECK(tasks[0].header.id == 10);
  REQUIRE(results.size() == 2);
  CHECK(results[0].header.id == 11);
  CHECK(results[0].header.status == st(ResultStatus::kRejected));
  CHECK(results[0].identity == "cl");
  CHECK(results[0].payload.empty());
  CHECK(results[1].header.id == 12);
  CHECK(results[1].header.status == st(ResultStatus::kRejected));
  CHECK(h.s.pending() == 1);
}

TEST_CASE("submit with empty targets is rejected") {
  Harness h;
  auto got = h.submit("cl", 5, {});
  REQUIRE(got.size() == 1);
  CHECK(got[0].header.id == 5);
  CHECK(got[0].header.status == st(ResultStatus::kRejected));
  CHECK(h.s.pending() == 0);
}

TEST_CASE("submit with a task id already pending is rejected, the first task is kept") {
  Harness h;
  h.add_engine("a", 1);
  h.submit("cl", 5, kBalanced);
  auto got = h.submit("cl", 5, kBalanced);
  REQUIRE(got.size() == 1);
  CHECK(got[0].header.type == MsgType::kResult);
  CHECK(got[0].header.status == st(ResultStatus::kRejected));
  // A targeted submit overlapping the pending id: only the clash is refused.
  got = h.submit("cl", 4, {0, 0});
  auto results = of_type(got, MsgType::kResult);
  REQUIRE(results.size() == 1);
  CHECK(results[0].header.id == 5);
  CHECK(h.s.pending() == 2);
  got = h.result("a", 5);
  CHECK(of_type(got, MsgType::kResult).size() == 1);
}

TEST_CASE("result for an unknown task id is dropped and counted") {
  Harness h;
  h.add_engine("a", 1);
  auto got = h.result("a", 999);
  CHECK(got.empty());
  CHECK(h.s.counters().dropped_results == 1);
}

TEST_CASE("engine death after missed heartbeats retries load-balanced work elsewhere when retries remain") {
  broker::SchedulerOptions o;
  o.heartbeat = milliseconds(100);
  o.liveness = 3;
  Harness h(o);
  h.add_engine("a", 1);
  h.add_engine("b", 1);
  auto t1 = of_type(h.submit("cl", 1, kBalanced, /*retries=*/1, payload_of("job")), MsgType::kTask);
  REQUIRE(t1.size() == 1);
  CHECK(t1[0].identity == "a");
  // b stays alive, a falls silent.
  h.now += milliseconds(200);
  h.from_engine("b", header(MsgType::kHeartbeat));
  CHECK(h.tick().empty());  // 200 ms is within 3 x 100 ms
  h.now += milliseconds(150);
  h.from_engine("b", header(MsgType::kHeartbeat));
  auto got = h.tick();
  CHECK(h.s.engine_count() == 1);
  auto tasks = of_type(got, MsgType::kTask);
  REQUIRE(tasks.size() == 1);
  CHECK(tasks[0].identity == "b");
  CHECK(tasks[0].header.id == 1);
  CHECK(tasks[0].header.aux == 1);
  REQUIRE(tasks[0].payload.size() == 1);
  CHECK(tasks[0].payload[0].to_string() == "job");
  CHECK(of_type(got, MsgType::kResult).empty());
  CHECK(h.s.counters().retried == 1);
}

TEST_CASE("engine death ends in-flight work as EngineDied when no retries remain") {
  broker::SchedulerOptions o;
  o.heartbeat = milliseconds(100);
  Harness h(o);
  h.add_engine("a", 2);
  h.submit("cl", 1, kBalanced, /*retries=*/0);
  h.submit("cl", 2, {0});
  h.now += milliseconds(301);
  auto results = of_type(h.tick(), MsgType::kResult);
  REQUIRE(results.size() == 2);
  for (const auto& r : results) {
    CHECK(r.identity == "cl");
    CHECK(r.header.status == st(ResultStatus::kEngineDied));
    CHECK(r.header.aux == 0);
    CHECK_FALSE(r.header.text.empty());
  }
  CHECK(h.s.engine_count() == 0);
  CHECK(h.s.pending() == 0);
  // The dead engine is now unknown.
  auto got = h.from_engine("a", header(MsgType::kHeartbeat));
  CHECK(got[0].header.text == "unknown engine: register again");
}

TEST_CASE("queued targeted work on a dead engine ends as EngineDied") {
  broker::SchedulerOptions o;
  o.heartbeat = milliseconds(100);
  Harness h(o);
  h.add_engine("a", 1);
  h.submit("cl", 1, {0});
  h.submit("cl", 2, {0});
  h.submit("cl", 3, {0});
  h.now += milliseconds(400);
  auto results = of_type(h.tick(), MsgType::kResult);
  std::vector<std::uint64_t> ids;
  for (const auto& r : results) {
    CHECK(r.header.status == st(ResultStatus::kEngineDied));
    ids.push_back(r.header.id);
  }
  CHECK(ids == std::vector<std::uint64_t>{1, 2, 3});
}

TEST_CASE("engine Shutdown unregisters it like a death") {
  Harness h;
  h.add_engine("a", 1);
  h.add_engine("b", 1);
  h.submit("cl", 1, kBalanced, /*retries=*/2);
  auto got = h.from_engine("a", header(MsgType::kShutdown));
  auto tasks = of_type(got, MsgType::kTask);
  REQUIRE(tasks.size() == 1);
  CHECK(tasks[0].identity == "b");
  CHECK(h.s.engine_id("a") == -1);
}

TEST_CASE("retried tasks go to the front of the shared queue") {
  Harness h;
  h.add_engine("a", 1);
  h.submit("cl", 1, kBalanced, 1);  // to a
  h.submit("cl", 2, kBalanced, 1);  // queued
  h.from_engine("a", header(MsgType::kShutdown));
  CHECK(h.s.shared_queued() == 2);
  h.add_engine("b", 1);
  CHECK(h.s.shared_queued() == 1);
  auto got = h.result("b", 1);  // task 1 went first
  auto results = of_type(got, MsgType::kResult);
  REQUIRE(results.size() == 1);
  CHECK(results[0].header.aux == 1);
}

TEST_CASE("status reply lists engines and counters as a msgpack map") {
  broker::SchedulerOptions o;
  o.heartbeat = milliseconds(500);
  Harness h(o);
  h.add_engine("a", 2);
  h.add_engine("b", 1);
  h.submit("cl", 1, {0});
  h.submit("cl", 2, kBalanced);  // b has the most free credit: 1 vs 1, b has 0 in flight
  h.submit("cl", 3, kBalanced);
  h.submit("cl", 4, kBalanced);  // nowhere to go
  h.submit("cl", 5, kBalanced);
  h.result("a", 1);              // a takes task 4; task 5 waits
  auto got = h.from_client("cl", header(MsgType::kStatus, 42));
  REQUIRE(got.size() == 1);
  CHECK(got[0].header.type == MsgType::kStatusReply);
  CHECK(got[0].header.id == 42);
  REQUIRE(got[0].payload.size() == 1);
  auto handle = msgpack::unpack(static_cast<const char*>(got[0].payload[0].data()), got[0].payload[0].size());
  auto m = handle.get().as<std::map<std::string, msgpack::object>>();
  CHECK(m.at("queued").as<int>() == 1);
  CHECK(m.at("pending").as<int>() == 4);
  CHECK(m.at("done").as<int>() == 1);
  CHECK(m.at("failed").as<int>() == 0);
  CHECK(m.at("bad_messages").as<int>() == 0);
  CHECK(m.at("clients").as<int>() == 1);
  CHECK(m.at("heartbeat_ms").as<int>() == 500);
  auto engines = m.at("engines").as<std::vector<std::map<std::string, msgpack::object>>>();
  REQUIRE(engines.size() == 2);
  CHECK(engines[0].at("id").as<int>() == 0);
  CHECK(engines[0].at("host").as<std::string>() == "host:a");
  CHECK(engines[0].at("credit").as<int>() == 2);
  CHECK(engines[0].at("inflight").as<int>() == 2);
  CHECK(engines[0].at("queued").as<int>() == 0);
  CHECK(engines[0].at("done").as<int>() == 1);
  CHECK(engines[1].at("id").as<int>() == 1);
  CHECK(engines[1].at("inflight").as<int>() == 1);
}

TEST_CASE("client Shutdown tells every engine and aborts every pending task") {
  Harness h;
  h.add_engine("a", 1);
  h.add_engine("b", 1);
  h.submit("alice", 1, kBalanced);
  h.submit("alice", 2, {0});
  h.submit("bob", 3, kBalanced);
  h.submit("bob", 4, kBalanced);
  auto got = h.from_client("bob", header(MsgType::kShutdown, 9));
  CHECK(h.s.shutting_down());
  auto shut = of_type(got, MsgType::kShutdown);
  std::size_t to_engines = 0;
  for (const auto& x : shut) to_engines += x.side == Outgoing::kEngine;
  CHECK(to_engines == 2);
  auto results = of_type(got, MsgType::kResult);
  REQUIRE(results.size() == 4);
  for (const auto& r : results) CHECK(r.header.status == st(ResultStatus::kAborted));
  CHECK(results[0].identity == "alice");
  CHECK(results[3].identity == "bob");
  CHECK(h.s.pending() == 0);
  // Later submits are refused, not lost.
  auto late = h.submit("bob", 10, kBalanced);
  REQUIRE(late.size() == 1);
  CHECK(late[0].header.status == st(ResultStatus::kRejected));
}

TEST_CASE("client garbage is counted and answered with Error") {
  Harness h;
  Frames f;
  f.emplace_back("cl", 2);
  f.emplace_back("not a signature", 15);
  f.emplace_back("junk", 4);
  h.s.on_client_frames(f, h.now, h.out);
  auto got = h.take();
  REQUIRE(got.size() == 1);
  CHECK(got[0].side == Outgoing::kClient);
  CHECK(got[0].identity == "cl");
  CHECK(got[0].header.type == MsgType::kError);
  CHECK_FALSE(got[0].header.text.empty());
  CHECK(h.s.counters().bad_messages == 1);
}

TEST_CASE("client sending an engine-only type is counted and answered with Error") {
  Harness h;
  auto got = h.from_client("cl", header(MsgType::kResult, 3));
  REQUIRE(got.size() == 1);
  CHECK(got[0].header.type == MsgType::kError);
  CHECK(h.s.counters().bad_messages == 1);
}

TEST_CASE("engine garbage is counted and answered with Error") {
  Harness h;
  h.add_engine("e", 1);
  Frames f;
  f.emplace_back("e", 1);
  h.s.on_engine_frames(f, h.now, h.out);  // identity only
  auto got = h.take();
  REQUIRE(got.size() == 1);
  CHECK(got[0].header.type == MsgType::kError);
  got = h.from_engine("e", header(MsgType::kSubmit, 1));
  REQUIRE(got.size() == 1);
  CHECK(got[0].header.type == MsgType::kError);
  CHECK(h.s.counters().bad_messages == 2);
}

TEST_CASE("frames with no identity are only counted") {
  Harness h;
  Frames none;
  h.s.on_client_frames(none, h.now, h.out);
  h.s.on_engine_frames(none, h.now, h.out);
  CHECK(h.out.empty());
  CHECK(h.s.counters().bad_messages == 2);
}

TEST_CASE("an Error from a peer is counted and never answered") {
  Harness h;
  CHECK(h.from_client("cl", header(MsgType::kError)).empty());
  CHECK(h.from_engine("e", header(MsgType::kError)).empty());
  CHECK(h.s.counters().errors_received == 2);
  CHECK(h.s.counters().bad_messages == 0);
}

TEST_CASE("hello from a client is answered with Welcome") {
  Harness h;
  auto got = h.from_client("cl", header(MsgType::kHello));
  REQUIRE(got.size() == 1);
  CHECK(got[0].header.type == MsgType::kWelcome);
  CHECK(h.s.client_count() == 1);
}

TEST_CASE("every submitted task ends in exactly one result") {
  broker::SchedulerOptions o;
  o.heartbeat = milliseconds(100);
  Harness h(o);
  h.add_engine("a", 2);
  h.add_engine("b", 1);
  std::map<std::uint64_t, int> results;
  auto count = [&](const std::vector<Sent>& sent) {
    for (const auto& x : sent) {
      if (x.header.type == MsgType::kResult) ++results[x.header.id];
    }
  };
  std::vector<Sent> tasks;
  auto keep = [&](std::vector<Sent> sent) {
    count(sent);
    for (auto& x : of_type(sent, MsgType::kTask)) tasks.push_back(std::move(x));
  };
  for (std::uint64_t id = 0; id < 20; ++id) keep(h.submit("cl", id * 10, kBalanced, id % 2));
  keep(h.submit("cl", 500, {0, 1, 0, 1, 9}));
  // Engine a answers what it got so far, then b dies, then a is shut down.
  for (std::size_t i = 0; i < tasks.size(); ++i) {
    if (tasks[i].identity == "a") keep(h.result("a", tasks[i].header.id));
  }
  h.now += milliseconds(350);
  h.from_engine("a", header(MsgType::kHeartbeat));
  keep(h.tick());
  keep(h.from_engine("a", header(MsgType::kShutdown)));
  keep(h.from_client("cl", header(MsgType::kShutdown)));
  CHECK(results.size() == 25);
  for (const auto& [id, n] : results) {
    CAPTURE(id);
    CHECK(n == 1);
  }
  CHECK(h.s.pending() == 0);
}

TEST_CASE("a task retried once ends as EngineDied when its second engine dies too") {
  Harness h;
  h.add_engine("a", 1);
  h.add_engine("b", 1);
  auto first = of_type(h.submit("cl", 1, kBalanced, /*retries=*/1, payload_of("job")), MsgType::kTask);
  REQUIRE(first.size() == 1);
  auto second = of_type(h.from_engine(first[0].identity, header(MsgType::kShutdown)), MsgType::kTask);
  REQUIRE(second.size() == 1);
  CHECK(second[0].identity != first[0].identity);
  CHECK(second[0].payload[0].to_string() == "job");
  auto results = of_type(h.from_engine(second[0].identity, header(MsgType::kShutdown)), MsgType::kResult);
  REQUIRE(results.size() == 1);
  CHECK(results[0].header.status == st(ResultStatus::kEngineDied));
  CHECK(h.s.pending() == 0);
}

TEST_CASE("credit above the maximum is clamped") {
  broker::SchedulerOptions o;
  o.max_credit = 2;
  Harness h(o);
  h.add_engine("a", 1000);
  std::size_t sent = 0;
  for (std::uint64_t id = 1; id <= 5; ++id) sent += of_type(h.submit("cl", id, kBalanced), MsgType::kTask).size();
  CHECK(sent == 2);
}

// ---- task options, abort, interrupt, timeouts, events ----------------------------

namespace {

proto::Options with_priority(std::int64_t p) {
  proto::Options o;
  o.priority = p;
  return o;
}
proto::Options with_after(std::vector<std::uint64_t> ids) {
  proto::Options o;
  o.after = std::move(ids);
  return o;
}
proto::Options with_follow(std::vector<std::uint64_t> ids) {
  proto::Options o;
  o.follow = std::move(ids);
  return o;
}
proto::Options with_engines(std::vector<std::int64_t> ids) {
  proto::Options o;
  o.engines = std::move(ids);
  return o;
}
proto::Options with_timeout(std::int64_t ms) {
  proto::Options o;
  o.timeout_ms = ms;
  return o;
}
proto::Header request(MsgType type, std::vector<std::uint64_t> ids, std::vector<std::int64_t> targets = {}) {
  proto::Header h;
  h.type = type;
  h.opts.ids = std::move(ids);
  h.targets = std::move(targets);
  return h;
}

std::vector<std::uint64_t> ids_of(const std::vector<Sent>& sent) {
  std::vector<std::uint64_t> r;
  for (const auto& x : sent) r.push_back(x.header.id);
  return r;
}

std::map<std::string, msgpack::object> status_map(Harness& h, msgpack::object_handle& keep) {
  auto got = h.from_client("cl", header(MsgType::kStatus, 1));
  REQUIRE(got.size() == 1);
  REQUIRE(got[0].payload.size() == 1);
  keep = msgpack::unpack(static_cast<const char*>(got[0].payload[0].data()), got[0].payload[0].size());
  return keep.get().as<std::map<std::string, msgpack::object>>();
}

}  // namespace

TEST_CASE("priority: higher priority runs first, FIFO within equal priority") {
  Harness h;
  h.add_engine("a", 1);
  h.submit("cl", 1, kBalanced);  // runs now
  h.submit_opts("cl", 2, kBalanced, with_priority(0));
  h.submit_opts("cl", 3, kBalanced, with_priority(5));
  h.submit_opts("cl", 4, kBalanced, with_priority(0));
  h.submit_opts("cl", 5, kBalanced, with_priority(5));
  h.submit_opts("cl", 6, kBalanced, with_priority(-3));
  std::vector<std::uint64_t> order;
  std::uint64_t running = 1;
  for (int i = 0; i < 5; ++i) {
    auto tasks = of_type(h.result("a", running), MsgType::kTask);
    REQUIRE(tasks.size() == 1);
    running = tasks[0].header.id;
    order.push_back(running);
  }
  CHECK(order == std::vector<std::uint64_t>{3, 5, 2, 4, 6});
}

TEST_CASE("priority: an engine's own queue and the shared queue merge by priority") {
  Harness h;
  h.add_engine("a", 1);
  h.submit("cl", 1, kBalanced);  // runs now
  h.submit_opts("cl", 2, {0}, with_priority(0));
  h.submit_opts("cl", 3, kBalanced, with_priority(9));
  auto first = of_type(h.result("a", 1), MsgType::kTask);
  REQUIRE(first.size() == 1);
  CHECK(first[0].header.id == 3);
  auto second = of_type(h.result("a", 3), MsgType::kTask);
  REQUIRE(second.size() == 1);
  CHECK(second[0].header.id == 2);
}

TEST_CASE("priority: many queued tasks keep their order") {
  Harness h;
  for (std::uint64_t id = 1; id <= 20000; ++id) h.submit_opts("cl", id, kBalanced, with_priority(id % 3));
  CHECK(h.s.shared_queued() == 20000);
  h.add_engine("a", 1);  // takes the first of priority 2: task 2
  std::vector<std::uint64_t> order{2};
  for (int i = 0; i < 5; ++i) {
    auto tasks = of_type(h.result("a", order.back()), MsgType::kTask);
    REQUIRE(tasks.size() == 1);
    order.push_back(tasks[0].header.id);
  }
  CHECK(order == std::vector<std::uint64_t>{2, 5, 8, 11, 14, 17});
}

TEST_CASE("after: a task waits for its dependency and runs once it ended Ok") {
  Harness h;
  h.add_engine("a", 4);
  h.submit("cl", 1, kBalanced);
  auto got = h.submit_opts("cl", 2, kBalanced, with_after({1}));
  CHECK(of_type(got, MsgType::kTask).empty());
  CHECK(h.s.blocked() == 1);
  auto tasks = of_type(h.result("a", 1), MsgType::kTask);
  REQUIRE(tasks.size() == 1);
  CHECK(tasks[0].header.id == 2);
  CHECK(h.s.blocked() == 0);
}

TEST_CASE("after: a failed dependency ends the task Impossible, naming the dependency") {
  Harness h;
  h.add_engine("a", 4);
  h.submit("cl", 1, kBalanced);
  h.submit_opts("cl", 2, kBalanced, with_after({1}));
  auto got = h.result("a", 1, ResultStatus::kRemoteError);
  auto results = of_type(got, MsgType::kResult);
  REQUIRE(results.size() == 2);
  CHECK(results[0].header.id == 1);  // the dependency's own result comes first
  CHECK(results[1].header.id == 2);
  CHECK(results[1].header.status == st(ResultStatus::kImpossible));
  CHECK(results[1].header.text.find("task 1") != std::string::npos);
  CHECK(of_type(got, MsgType::kTask).empty());
  CHECK(h.s.pending() == 0);
  CHECK(h.s.counters().impossible == 1);
}

TEST_CASE("after: dependencies that already ended are found in the finished record") {
  Harness h;
  h.add_engine("a", 4);
  h.submit("cl", 1, kBalanced);
  h.submit("cl", 2, kBalanced);
  h.result("a", 1, ResultStatus::kOk);
  h.result("a", 2, ResultStatus::kRemoteError);
  auto ok = h.submit_opts("cl", 3, kBalanced, with_after({1, 999}));  // 999: unknown, counts as Ok
  CHECK(ids_of(of_type(ok, MsgType::kTask)) == std::vector<std::uint64_t>{3});
  auto bad = of_type(h.submit_opts("cl", 4, kBalanced, with_after({1, 2})), MsgType::kResult);
  REQUIRE(bad.size() == 1);
  CHECK(bad[0].header.status == st(ResultStatus::kImpossible));
  CHECK(bad[0].header.text.find("task 2") != std::string::npos);
  auto self = of_type(h.submit_opts("cl", 5, kBalanced, with_after({5})), MsgType::kResult);
  REQUIRE(self.size() == 1);
  CHECK(self[0].header.status == st(ResultStatus::kImpossible));
}

TEST_CASE("after: a long chain of dependents fails one by one, each with one result") {
  Harness h;
  h.add_engine("a", 1);
  h.submit("cl", 1, kBalanced);
  for (std::uint64_t id = 2; id <= 5000; ++id) h.submit_opts("cl", id, kBalanced, with_after({id - 1}));
  CHECK(h.s.blocked() == 4999);
  auto results = of_type(h.result("a", 1, ResultStatus::kRemoteError), MsgType::kResult);
  REQUIRE(results.size() == 5000);
  for (std::size_t i = 1; i < results.size(); ++i) {
    CHECK(results[i].header.id == i + 1);
    CHECK(results[i].header.status == st(ResultStatus::kImpossible));
  }
  CHECK(h.s.pending() == 0);
  CHECK(h.s.blocked() == 0);
}

TEST_CASE("follow: the task runs on the engine where its dependency ran") {
  Harness h;
  h.add_engine("a", 2);
  h.add_engine("b", 2);
  h.submit("cl", 1, kBalanced);  // to a
  h.submit("cl", 2, kBalanced);  // to b
  CHECK(of_type(h.submit_opts("cl", 3, kBalanced, with_follow({2})), MsgType::kTask).empty());
  auto tasks = of_type(h.result("b", 2), MsgType::kTask);
  REQUIRE(tasks.size() == 1);
  CHECK(tasks[0].header.id == 3);
  CHECK(tasks[0].identity == "b");
  // Already ended: found in the record, queued at b straight away.
  auto again = of_type(h.submit_opts("cl", 4, kBalanced, with_follow({2})), MsgType::kTask);
  REQUIRE(again.size() == 1);
  CHECK(again[0].identity == "b");
}

TEST_CASE("follow: dependencies on different engines or on a gone engine are Impossible") {
  Harness h;
  h.add_engine("a", 2);
  h.add_engine("b", 2);
  h.submit("cl", 1, kBalanced);  // to a
  h.submit("cl", 2, kBalanced);  // to b
  h.result("a", 1);
  h.result("b", 2);
  auto split = of_type(h.submit_opts("cl", 3, kBalanced, with_follow({1, 2})), MsgType::kResult);
  REQUIRE(split.size() == 1);
  CHECK(split[0].header.status == st(ResultStatus::kImpossible));
  CHECK(split[0].header.text.find("different engines") != std::string::npos);
  h.from_engine("a", header(MsgType::kShutdown));
  auto gone = of_type(h.submit_opts("cl", 4, kBalanced, with_follow({1})), MsgType::kResult);
  REQUIRE(gone.size() == 1);
  CHECK(gone[0].header.status == st(ResultStatus::kImpossible));
  CHECK(gone[0].header.text.find("gone") != std::string::npos);
}

TEST_CASE("engines: load-balanced only among the listed engines") {
  Harness h;
  h.add_engine("a", 2);
  h.add_engine("b", 2);
  h.add_engine("c", 2);
  std::vector<std::string> where;
  for (std::uint64_t id = 1; id <= 3; ++id) {
    for (const auto& t : of_type(h.submit_opts("cl", id, kBalanced, with_engines({1, 2})), MsgType::kTask)) {
      where.push_back(t.identity);
    }
  }
  CHECK(where == std::vector<std::string>{"b", "c", "b"});
  auto next = of_type(h.submit_opts("cl", 4, kBalanced, with_engines({1, 2})), MsgType::kTask);
  REQUIRE(next.size() == 1);
  CHECK(next[0].identity == "c");
  // Both full: the fifth waits, and is not sent to the idle engine a.
  CHECK(of_type(h.submit_opts("cl", 5, kBalanced, with_engines({1, 2})), MsgType::kTask).empty());
  auto freed = of_type(h.result("c", 2), MsgType::kTask);
  REQUIRE(freed.size() == 1);
  CHECK(freed[0].header.id == 5);
  CHECK(freed[0].identity == "c");
}

TEST_CASE("engines: none of them registered ends the task Impossible") {
  Harness none;
  auto got = of_type(none.submit_opts("cl", 1, kBalanced, with_engines({0})), MsgType::kResult);
  REQUIRE(got.size() == 1);
  CHECK(got[0].header.status == st(ResultStatus::kImpossible));
  CHECK(got[0].header.text.find("none of them") != std::string::npos);
  Harness h;
  h.add_engine("a", 1);
  got = of_type(h.submit_opts("cl", 1, kBalanced, with_engines({5, 6})), MsgType::kResult);
  REQUIRE(got.size() == 1);
  CHECK(got[0].header.status == st(ResultStatus::kImpossible));
  CHECK(h.s.pending() == 0);
}

TEST_CASE("engines: work restricted to a busy engine does not hold back other work") {
  Harness h;
  h.add_engine("a", 1);
  h.add_engine("b", 1);
  h.submit("cl", 1, {0});  // a is busy
  CHECK(of_type(h.submit_opts("cl", 2, kBalanced, with_engines({0})), MsgType::kTask).empty());
  auto other = of_type(h.submit("cl", 3, kBalanced), MsgType::kTask);
  REQUIRE(other.size() == 1);
  CHECK(other[0].identity == "b");
  auto later = of_type(h.result("a", 1), MsgType::kTask);
  REQUIRE(later.size() == 1);
  CHECK(later[0].header.id == 2);
}

TEST_CASE("engines: restricted work whose engines all left ends Impossible") {
  Harness h;
  h.add_engine("a", 1);
  h.submit("cl", 1, {0});
  h.submit_opts("cl", 2, kBalanced, with_engines({0}));
  auto got = of_type(h.from_engine("a", header(MsgType::kShutdown)), MsgType::kResult);
  REQUIRE(got.size() == 2);
  CHECK(got[0].header.status == st(ResultStatus::kEngineDied));
  CHECK(got[1].header.id == 2);
  CHECK(got[1].header.status == st(ResultStatus::kImpossible));
  CHECK(h.s.pending() == 0);
}

TEST_CASE("abort: queued, targeted and blocked tasks end Aborted, running ones are untouched") {
  Harness h;
  h.add_engine("a", 1);
  h.submit("cl", 1, kBalanced);                        // running
  h.submit("cl", 2, kBalanced);                        // shared queue
  h.submit("cl", 3, {0});                              // a's queue
  h.submit_opts("cl", 4, kBalanced, with_after({1}));  // blocked
  h.submit("cl", 5, kBalanced);                        // stays queued
  auto got = of_type(h.from_client("cl", request(MsgType::kAbort, {1, 2, 3, 4, 77})), MsgType::kResult);
  CHECK(ids_of(got) == std::vector<std::uint64_t>{2, 3, 4});
  for (const auto& r : got) {
    CHECK(r.header.status == st(ResultStatus::kAborted));
    CHECK(r.header.text == "aborted");
  }
  CHECK(h.s.pending() == 2);
  CHECK(h.s.blocked() == 0);
  auto next = of_type(h.result("a", 1), MsgType::kTask);
  REQUIRE(next.size() == 1);
  CHECK(next[0].header.id == 5);  // the aborted ones are skipped
}

TEST_CASE("interrupt: forwarded to the engine running the task, or to everything an engine runs") {
  Harness h;
  h.add_engine("a", 2);
  h.add_engine("b", 1);
  h.submit("cl", 1, {0});
  h.submit("cl", 2, {0});
  h.submit("cl", 3, {1});
  h.submit("cl", 4, {1});  // queued at b: not interrupted
  auto got = h.from_client("cl", request(MsgType::kInterrupt, {3, 4, 99}));
  REQUIRE(got.size() == 1);
  CHECK(got[0].side == Outgoing::kEngine);
  CHECK(got[0].identity == "b");
  CHECK(got[0].header.type == MsgType::kInterrupt);
  CHECK(got[0].header.id == 3);
  got = h.from_client("cl", request(MsgType::kInterrupt, {}, {0, 7}));
  CHECK(ids_of(of_type(got, MsgType::kInterrupt)) == std::vector<std::uint64_t>{1, 2});
  CHECK(got.size() == 2);
  // The engine's answer is an ordinary Result.
  proto::Header r = header(MsgType::kResult, 3);
  r.status = st(ResultStatus::kAborted);
  r.text = "interrupted";
  auto res = of_type(h.from_engine("b", r), MsgType::kResult);
  REQUIRE(res.size() == 1);
  CHECK(res[0].header.text == "interrupted");
  CHECK(h.s.counters().interrupts_sent == 3);
}

TEST_CASE("timeout: a queued task ends TimedOut at its deadline") {
  Harness h;
  CHECK(h.s.next_deadline() == Clock::time_point::max());
  h.submit_opts("cl", 1, kBalanced, with_timeout(100));
  h.submit_opts("cl", 2, {}, with_timeout(100));  // rejected: no timer left behind
  CHECK(h.s.next_deadline() == h.now + milliseconds(100));
  h.now += milliseconds(99);
  CHECK(of_type(h.tick(), MsgType::kResult).empty());
  h.now += milliseconds(1);
  auto got = of_type(h.tick(), MsgType::kResult);
  REQUIRE(got.size() == 1);
  CHECK(got[0].header.id == 1);
  CHECK(got[0].header.status == st(ResultStatus::kTimedOut));
  CHECK(h.s.pending() == 0);
  CHECK(h.s.shared_queued() == 0);
  CHECK(h.s.next_deadline() == Clock::time_point::max());
  // An engine arriving later gets nothing.
  h.add_engine("a", 1);
  CHECK(h.s.inflight(0) == 0);
}

TEST_CASE("timeout: a running task ends TimedOut, its engine is interrupted, its late result dropped, its credit freed then") {
  Harness h;
  h.add_engine("a", 1);
  h.submit_opts("cl", 1, kBalanced, with_timeout(100));
  h.submit("cl", 2, kBalanced);  // waits for a's only slot
  h.now += milliseconds(150);
  h.from_engine("a", header(MsgType::kHeartbeat));  // a is alive
  auto got = h.tick();
  auto results = of_type(got, MsgType::kResult);
  REQUIRE(results.size() == 1);
  CHECK(results[0].header.id == 1);
  CHECK(results[0].header.status == st(ResultStatus::kTimedOut));
  auto interrupts = of_type(got, MsgType::kInterrupt);
  REQUIRE(interrupts.size() == 1);
  CHECK(interrupts[0].identity == "a");
  CHECK(interrupts[0].header.id == 1);
  CHECK(of_type(got, MsgType::kTask).empty());
  CHECK(h.s.inflight(0) == 1);
  CHECK(h.s.abandoned() == 1);
  // The id stays taken while the engine still holds it.
  auto dup = of_type(h.submit("cl", 1, kBalanced), MsgType::kResult);
  REQUIRE(dup.size() == 1);
  CHECK(dup[0].header.status == st(ResultStatus::kRejected));
  auto late = h.result("a", 1, ResultStatus::kAborted);
  CHECK(of_type(late, MsgType::kResult).empty());
  auto tasks = of_type(late, MsgType::kTask);
  REQUIRE(tasks.size() == 1);
  CHECK(tasks[0].header.id == 2);
  CHECK(h.s.counters().dropped_results == 1);
  CHECK(h.s.abandoned() == 0);
  CHECK(h.s.counters().timed_out == 1);
}

TEST_CASE("timeout: a task blocked on a dependency times out too and its record fails its dependents") {
  Harness h;
  h.submit("cl", 1, kBalanced);  // no engine: stays queued
  h.submit_opts("cl", 2, kBalanced, [] {
    proto::Options o = with_after({1});
    o.timeout_ms = 50;
    return o;
  }());
  h.submit_opts("cl", 3, kBalanced, with_after({2}));
  h.now += milliseconds(50);
  auto got = of_type(h.tick(), MsgType::kResult);
  REQUIRE(got.size() == 2);
  CHECK(got[0].header.id == 2);
  CHECK(got[0].header.status == st(ResultStatus::kTimedOut));
  CHECK(got[1].header.id == 3);
  CHECK(got[1].header.status == st(ResultStatus::kImpossible));
  CHECK(h.s.pending() == 1);
}

TEST_CASE("retries: taken from opts.retries, never from aux") {
  broker::SchedulerOptions o;
  o.heartbeat = milliseconds(100);
  Harness h(o);
  h.add_engine("a", 1);
  h.add_engine("b", 1);
  proto::Header old = header(MsgType::kSubmit, 1);
  old.targets = kBalanced;
  old.aux = 5;  // the old place of retries: ignored
  h.from_client("cl", old);
  proto::Options retry;
  retry.retries = 1;
  h.submit_opts("cl", 2, kBalanced, retry);  // to b
  h.now += milliseconds(400);
  h.from_engine("b", header(MsgType::kHeartbeat));
  auto got = h.tick();  // a is dead
  auto results = of_type(got, MsgType::kResult);
  REQUIRE(results.size() == 1);
  CHECK(results[0].header.id == 1);
  CHECK(results[0].header.status == st(ResultStatus::kEngineDied));
  h.now += milliseconds(400);
  h.from_engine("c", [] {
    proto::Header r = header(MsgType::kRegister);
    r.aux = 1;
    return r;
  }());
  got = h.tick();  // b is dead too; task 2 is retried on c
  auto tasks = of_type(got, MsgType::kTask);
  REQUIRE(tasks.size() == 1);
  CHECK(tasks[0].header.id == 2);
  CHECK(tasks[0].identity == "c");
}

TEST_CASE("events: every known client hears engines join and leave") {
  Harness h;
  h.from_client("alice", header(MsgType::kHello));
  h.from_client("bob", header(MsgType::kHello));
  proto::Header reg = header(MsgType::kRegister);
  reg.aux = 1;
  reg.text = "node1:42";
  auto got = of_type(h.from_engine("e", reg), MsgType::kEvent);
  REQUIRE(got.size() == 2);
  for (const auto& ev : got) {
    CHECK(ev.side == Outgoing::kClient);
    CHECK(ev.header.status == static_cast<std::uint32_t>(proto::EventKind::kEngineJoined));
    CHECK(ev.header.aux == 0);
    CHECK(ev.header.text == "node1:42");
  }
  CHECK((got[0].identity == "alice" && got[1].identity == "bob"));
  // A repeated Register is no new engine.
  CHECK(of_type(h.from_engine("e", reg), MsgType::kEvent).empty());
  got = of_type(h.from_engine("e", header(MsgType::kShutdown)), MsgType::kEvent);
  REQUIRE(got.size() == 2);
  CHECK(got[0].header.status == static_cast<std::uint32_t>(proto::EventKind::kEngineLeft));
  CHECK(got[0].header.aux == 0);
  CHECK(got[0].header.text.find("shut down") != std::string::npos);
}

TEST_CASE("status: counts blocked, timed out, aborted and impossible tasks") {
  Harness h;
  h.submit("cl", 1, kBalanced);
  h.submit_opts("cl", 2, kBalanced, with_after({1}));
  h.submit_opts("cl", 3, kBalanced, with_engines({4}));
  h.submit_opts("cl", 4, kBalanced, with_timeout(10));
  h.submit("cl", 5, kBalanced);
  h.from_client("cl", request(MsgType::kAbort, {5}));
  h.now += milliseconds(10);
  h.tick();
  msgpack::object_handle keep;
  auto m = status_map(h, keep);
  CHECK(m.at("queued").as<int>() == 1);
  CHECK(m.at("blocked").as<int>() == 1);
  CHECK(m.at("pending").as<int>() == 2);
  CHECK(m.at("timed_out").as<int>() == 1);
  CHECK(m.at("aborted").as<int>() == 1);
  CHECK(m.at("impossible").as<int>() == 1);
  CHECK(m.at("timers").as<int>() == 0);
  CHECK(m.at("finished_known").as<int>() == 3);
}

TEST_CASE("engines: a restricted task with retries is retried on another of its engines") {
  broker::SchedulerOptions o;
  o.heartbeat = milliseconds(100);
  Harness h(o);
  h.add_engine("a", 1);
  h.add_engine("b", 1);
  h.add_engine("c", 1);
  proto::Options opts = with_engines({0, 2});
  opts.retries = 1;
  auto first = of_type(h.submit_opts("cl", 1, kBalanced, opts), MsgType::kTask);
  REQUIRE(first.size() == 1);
  CHECK(first[0].identity == "a");
  h.submit("cl", 2, {2});  // c busy for now
  h.now += milliseconds(400);
  h.from_engine("b", header(MsgType::kHeartbeat));
  h.from_engine("c", header(MsgType::kHeartbeat));
  CHECK(of_type(h.tick(), MsgType::kTask).empty());  // a died; c is full, b is not allowed
  auto retried = of_type(h.result("c", 2), MsgType::kTask);
  REQUIRE(retried.size() == 1);
  CHECK(retried[0].header.id == 1);
  CHECK(retried[0].identity == "c");
}

TEST_CASE("after: targeted tasks wait for their dependencies too") {
  Harness h;
  h.add_engine("a", 2);
  h.add_engine("b", 2);
  h.submit("cl", 1, {0});
  CHECK(of_type(h.submit_opts("cl", 10, {0, 1}, with_after({1})), MsgType::kTask).empty());
  auto tasks = of_type(h.result("a", 1), MsgType::kTask);
  REQUIRE(tasks.size() == 2);
  CHECK(ids_of(tasks) == std::vector<std::uint64_t>{10, 11});
  auto wrong = of_type(h.submit_opts("cl", 20, {1}, with_follow({1})), MsgType::kResult);
  REQUIRE(wrong.size() == 1);  // task 1 ran on engine 0, the target is 1
  CHECK(wrong[0].header.status == st(ResultStatus::kImpossible));
}

TEST_CASE("finished record: bounded, oldest forgotten first; a forgotten id counts as ended Ok") {
  broker::SchedulerOptions o;
  o.finished_record = 2;
  Harness h(o);
  h.add_engine("a", 4);
  h.submit("cl", 1, kBalanced);
  h.result("a", 1, ResultStatus::kRemoteError);
  h.submit("cl", 2, kBalanced);
  h.result("a", 2);
  auto still = of_type(h.submit_opts("cl", 3, kBalanced, with_after({1})), MsgType::kResult);
  REQUIRE(still.size() == 1);  // 1 is remembered as failed
  CHECK(still[0].header.status == st(ResultStatus::kImpossible));
  // Task 3's end pushed task 1 out of the record.
  auto forgotten = of_type(h.submit_opts("cl", 4, kBalanced, with_after({1})), MsgType::kTask);
  CHECK(ids_of(forgotten) == std::vector<std::uint64_t>{4});
}

// ---- fair sharing of the shared queue between clients ------------------------------

namespace {

// Runs engine `engine` (credit 1, now running `running`) until nothing is
// left, returning the ids in the order they were dispatched.
std::vector<std::uint64_t> run_all(Harness& h, const std::string& engine, std::uint64_t running) {
  std::vector<std::uint64_t> order;
  for (;;) {
    auto tasks = of_type(h.result(engine, running), MsgType::kTask);
    if (tasks.empty()) break;
    REQUIRE(tasks.size() == 1);
    running = tasks[0].header.id;
    order.push_back(running);
  }
  return order;
}

proto::Header hello_as(const std::string& session) {
  proto::Header h = header(MsgType::kHello, 1);
  h.opts.session = session;
  return h;
}

}  // namespace

TEST_CASE("fair: two clients on one engine take turns, each in its own order") {
  Harness h;
  h.add_engine("a", 1);
  for (std::uint64_t id = 1; id <= 5; ++id) h.submit("big", id, kBalanced);  // 1 runs now
  for (std::uint64_t id = 101; id <= 103; ++id) h.submit("small", id, kBalanced);
  CHECK(h.s.shared_queued() == 7);
  CHECK(run_all(h, "a", 1) == std::vector<std::uint64_t>{2, 101, 3, 102, 4, 103, 5});
  CHECK(h.s.pending() == 0);
}

TEST_CASE("fair: a client arriving behind a large backlog is served within one turn") {
  Harness h;
  h.add_engine("a", 1);
  for (std::uint64_t id = 1; id <= 1000; ++id) h.submit("big", id, kBalanced);
  h.submit("small", 5001, kBalanced);
  h.submit("small", 5002, kBalanced);
  auto order = run_all(h, "a", 1);
  REQUIRE(order.size() == 1001);
  CHECK(order[1] == 5001);  // big's task 2 had its turn, then small's
  CHECK(order[3] == 5002);
}

TEST_CASE("fair: a higher priority goes first whoever sent it, turns within a priority") {
  Harness h;
  h.add_engine("a", 1);
  h.submit("x", 1, kBalanced);  // runs now
  h.submit_opts("x", 2, kBalanced, with_priority(0));
  h.submit_opts("x", 3, kBalanced, with_priority(0));
  h.submit_opts("y", 11, kBalanced, with_priority(0));
  h.submit_opts("y", 12, kBalanced, with_priority(7));
  h.submit_opts("x", 4, kBalanced, with_priority(7));
  h.submit_opts("x", 5, kBalanced, with_priority(7));
  CHECK(run_all(h, "a", 1) == std::vector<std::uint64_t>{12, 4, 5, 2, 11, 3});
}

TEST_CASE("fair: a retried task goes first for its client, the other client keeps its turn") {
  Harness h;
  h.add_engine("a", 1);
  h.submit("x", 1, kBalanced, 1);  // to a
  h.submit("x", 2, kBalanced, 1);
  h.submit("y", 11, kBalanced, 1);
  h.submit("y", 12, kBalanced, 1);
  h.from_engine("a", header(MsgType::kShutdown));  // task 1 retried
  CHECK(h.s.counters().retried == 1);
  CHECK(h.s.shared_queued() == 4);
  auto first = of_type(h.submit("x", 3, kBalanced), MsgType::kTask);
  CHECK(first.empty());  // no engine yet
  auto tasks = of_type(h.from_engine("b", [] {
                         proto::Header r = header(MsgType::kRegister);
                         r.aux = 1;
                         r.text = "host:b";
                         return r;
                       }()),
                       MsgType::kTask);
  REQUIRE(tasks.size() == 1);
  CHECK(tasks[0].header.id == 1);  // the retry, ahead of x's task 2
  CHECK(run_all(h, "b", 1) == std::vector<std::uint64_t>{11, 2, 12, 3});
}

TEST_CASE("fair: a client reconnecting to its session keeps its place") {
  Harness h;
  h.from_client("x1", hello_as("sx"));
  h.from_client("y1", hello_as("sy"));
  h.add_engine("a", 1);
  h.submit("x1", 1, kBalanced);  // runs now
  h.submit("x1", 2, kBalanced);
  h.submit("x1", 3, kBalanced);
  h.submit("y1", 11, kBalanced);
  h.submit("y1", 12, kBalanced);
  // x reconnects with a new identity and submits more: still one client.
  h.from_client("x2", hello_as("sx"));
  h.submit("x2", 4, kBalanced);
  auto first = of_type(h.result("a", 1), MsgType::kTask);
  REQUIRE(first.size() == 1);
  CHECK(first[0].header.id == 2);
  CHECK(run_all(h, "a", 2) == std::vector<std::uint64_t>{11, 3, 12, 4});
}

TEST_CASE("fair: aborted and timed-out queued tasks leave counts right and turns intact") {
  Harness h;
  h.add_engine("a", 1);
  h.submit("x", 1, kBalanced);  // runs now
  for (std::uint64_t id = 2; id <= 4; ++id) h.submit("x", id, kBalanced);
  h.submit_opts("y", 11, kBalanced, with_timeout(100));
  h.submit("y", 12, kBalanced);
  h.submit("z", 21, kBalanced);
  CHECK(h.s.shared_queued() == 6);
  auto aborted = of_type(h.from_client("x", request(MsgType::kAbort, {2, 3})), MsgType::kResult);
  CHECK(ids_of(aborted) == std::vector<std::uint64_t>{2, 3});
  CHECK(h.s.shared_queued() == 4);
  h.now += milliseconds(100);
  auto timed = of_type(h.tick(), MsgType::kResult);
  REQUIRE(timed.size() == 1);
  CHECK(timed[0].header.id == 11);
  CHECK(timed[0].header.status == st(ResultStatus::kTimedOut));
  CHECK(h.s.shared_queued() == 3);
  CHECK(h.s.pending() == 4);
  CHECK(run_all(h, "a", 1) == std::vector<std::uint64_t>{4, 12, 21});
  CHECK(h.s.shared_queued() == 0);
  CHECK(h.s.pending() == 0);
}

TEST_CASE("fair: many aborted tasks of one client are compacted away, the other client is unaffected") {
  Harness h;
  h.add_engine("a", 1);
  h.submit("x", 1, kBalanced);  // runs now
  std::vector<std::uint64_t> ids;
  for (std::uint64_t id = 2; id <= 5001; ++id) {
    h.submit("x", id, kBalanced);
    ids.push_back(id);
  }
  h.submit("y", 9001, kBalanced);
  auto aborted = of_type(h.from_client("x", request(MsgType::kAbort, ids)), MsgType::kResult);
  CHECK(aborted.size() == 5000);
  CHECK(h.s.shared_queued() == 1);
  CHECK(run_all(h, "a", 1) == std::vector<std::uint64_t>{9001});
  CHECK(h.s.pending() == 0);
}

TEST_CASE("tasks in reused nodes start clean: options, payload and session of the task before are gone") {
  // Finished tasks leave their nodes for the next ones (new_task): each new
  // task must behave as if freshly made.
  Harness h;
  const std::int64_t e = h.add_engine("e0", 1);
  proto::Options opts;
  opts.timeout_ms = 60000;
  opts.priority = 5;
  opts.engines = {e};
  auto t = of_type(h.submit_opts("alice", 1, kBalanced, opts, payload_of("first")), MsgType::kTask);
  REQUIRE(t.size() == 1);
  h.result("e0", 1, ResultStatus::kOk, payload_of("r1"));
  for (std::uint64_t id = 2; id <= 200; ++id) {
    CAPTURE(id);
    const std::string client = id % 2 == 0 ? "bob" : "carol";
    auto task = of_type(h.submit(client, id, kBalanced, 0, payload_of("job" + std::to_string(id))), MsgType::kTask);
    REQUIRE(task.size() == 1);
    REQUIRE(task[0].payload.size() == 1);
    CHECK(task[0].payload[0].to_string() == "job" + std::to_string(id));
    auto got = h.result("e0", id, ResultStatus::kOk, payload_of("r" + std::to_string(id)));
    REQUIRE(got.size() == 1);
    CHECK(got[0].identity == client);
    CHECK(got[0].header.id == id);
    REQUIRE(got[0].payload.size() == 1);
    CHECK(got[0].payload[0].to_string() == "r" + std::to_string(id));
  }
  // No timer of the first task lives on in a reused node.
  CHECK(h.s.next_deadline() == Clock::time_point::max());
  h.now += milliseconds(120000);
  CHECK(of_type(h.tick(), MsgType::kResult).empty());  // (the engine is dropped: no heartbeats)
  CHECK(h.s.counters().timed_out == 0);
  CHECK(h.s.pending() == 0);
}

TEST_CASE("a message after one with options and payload is read on its own (the decoded message is reused)") {
  Harness h;
  h.add_engine("e0", 2);
  proto::Options opts;
  opts.priority = 9;
  opts.retries = 3;
  h.submit_opts("alice", 1, kBalanced, opts, payload_of("a"));
  // A plain Submit next: no priority or retries carried over from the first.
  auto t = of_type(h.submit("alice", 2, kBalanced), MsgType::kTask);
  REQUIRE(t.size() == 1);
  CHECK(t[0].payload.empty());
  h.from_engine("e0", header(MsgType::kShutdown));  // both tasks die with it
  CHECK(h.s.counters().retried == 1);                // only the first had retries
}

TEST_CASE("timing: a Result's timing reaches the client as the engine sent it; none when it sent none") {
  Harness h;
  h.add_engine("e0", 2);
  h.submit("alice", 1, kBalanced);
  h.submit("alice", 2, kBalanced);
  proto::Header r = header(MsgType::kResult, 1);
  proto::put_timing({1'764'400'000'000'000, 1'500}, &r);
  auto got = h.from_engine("e0", r);
  REQUIRE(got.size() == 1);
  proto::Timing t;
  CHECK(proto::read_timing(got[0].header, &t) == proto::TimingField::kOk);
  CHECK(t.started_us == 1'764'400'000'000'000);
  CHECK(t.run_ns == 1'500);
  // An engine of an older revision sends none: the client gets none (and
  // the reused header carries nothing over from the Result before).
  got = h.result("e0", 2);
  REQUIRE(got.size() == 1);
  CHECK(got[0].header.targets.empty());
  CHECK(h.s.counters().bad_timing == 0);
}

TEST_CASE("timing: a malformed timing is counted and dropped; the result itself still goes through") {
  Harness h;
  h.add_engine("e0", 3);
  h.submit("alice", 1, kBalanced);
  h.submit("alice", 2, kBalanced);
  h.submit("alice", 3, kBalanced);
  const std::vector<std::vector<std::int64_t>> bad = {{7}, {-1, 5}, {1, 2, 3}};
  for (std::uint64_t id = 1; id <= 3; ++id) {
    proto::Header r = header(MsgType::kResult, id);
    r.targets = bad[id - 1];
    auto got = h.from_engine("e0", r, payload_of("value"));
    REQUIRE(got.size() == 1);
    CHECK(got[0].header.type == MsgType::kResult);
    CHECK(got[0].header.id == id);
    CHECK(got[0].header.status == st(ResultStatus::kOk));
    CHECK(got[0].header.targets.empty());
    REQUIRE(got[0].payload.size() == 1);
    CHECK(got[0].payload[0].to_string() == "value");
  }
  CHECK(h.s.counters().bad_timing == 3);
  CHECK(h.s.counters().bad_messages == 0);
  CHECK(h.s.pending() == 0);
}

TEST_CASE("timing: the broker's own Results (aborted, rejected, engine died) carry none") {
  Harness h;
  h.add_engine("e0", 1);
  h.submit("alice", 1, kBalanced);  // runs on e0
  h.submit("alice", 2, kBalanced);  // queued
  proto::Header abort = header(MsgType::kAbort);
  abort.opts.ids = {2};
  auto got = of_type(h.from_client("alice", abort), MsgType::kResult);
  REQUIRE(got.size() == 1);
  CHECK(got[0].header.status == st(ResultStatus::kAborted));
  CHECK(got[0].header.targets.empty());
  got = of_type(h.submit("alice", 3, {99}), MsgType::kResult);
  REQUIRE(got.size() == 1);
  CHECK(got[0].header.status == st(ResultStatus::kRejected));
  CHECK(got[0].header.targets.empty());
  got = of_type(h.from_engine("e0", header(MsgType::kShutdown)), MsgType::kResult);
  REQUIRE(got.size() == 1);
  CHECK(got[0].header.status == st(ResultStatus::kEngineDied));
  CHECK(got[0].header.targets.empty());
}
