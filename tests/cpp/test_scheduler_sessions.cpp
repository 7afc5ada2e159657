// The Scheduler's session side, message by message: Hello and Welcome,
// results kept until Ack, resent to a reconnected session, Fetch.
#include <doctest/doctest.h>

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

namespace {

struct Sent {
  std::string identity;
  proto::Header header;
  Frames payload;
};

class Broker {
 public:
  explicit Broker(broker::SchedulerOptions options = with_incarnation()) : s(options), now(Clock::now()) {}

  static broker::SchedulerOptions with_incarnation() {
    broker::SchedulerOptions o;
    o.incarnation = "feedface";
    return o;
  }

  std::vector<Sent> engine(const std::string& identity, proto::Header h, Frames payload = {}) {
    Frames f = framed(identity, proto::encode(h, std::move(payload)));
    s.on_engine_frames(f, now, out);
    return take();
  }
  std::vector<Sent> client(const std::string& identity, proto::Header h, Frames payload = {}) {
    Frames f = framed(identity, proto::encode(h, std::move(payload)));
    s.on_client_frames(f, now, out);
    return take();
  }

  void add_engine(const std::string& identity, std::int64_t credit = 100) {
    proto::Header h = header(MsgType::kRegister);
    h.aux = credit;
    h.text = "host:1";
    const std::size_t before = s.engine_count();
    engine(identity, h);
    REQUIRE(s.engine_count() == before + 1);
  }
  std::vector<Sent> hello(const std::string& identity, const std::string& session) {
    proto::Header h = header(MsgType::kHello, 1);
    h.opts.session = session;
    return client(identity, h);
  }
  std::vector<Sent> submit(const std::string& identity, std::uint64_t id) {
    proto::Header h = header(MsgType::kSubmit, id);
    h.targets = {proto::kLoadBalanced};
    return client(identity, h);
  }
  std::vector<Sent> result(const std::string& engine_identity, std::uint64_t id, Frames payload = {}) {
    return engine(engine_identity, header(MsgType::kResult, id), std::move(payload));
  }
  std::vector<Sent> with_ids(const std::string& identity, MsgType type, std::vector<std::uint64_t> ids) {
    proto::Header h = header(type);
    h.opts.ids = std::move(ids);
    return client(identity, h);
  }

  std::vector<Sent> take() {
    std::vector<Sent> sent;
    for (auto& o : out) {
      if (o.side == Outgoing::kEngine) continue;  // Tasks and replies to engines
      proto::Message m;
      broker::frame_header(o);  // a Task with its header inline: as the Batcher sends it alone
      REQUIRE(proto::decode(o.frames, 0, &m).ok());
      sent.push_back({o.identity, m.header, std::move(m.payload)});
    }
    out.clear();
    return sent;
  }

  static proto::Header header(MsgType type, std::uint64_t id = 0) {
    proto::Header h;
    h.type = type;
    h.id = id;
    return h;
  }
  static Frames framed(const std::string& identity, Frames frames) {
    Frames f;
    f.emplace_back(identity.data(), identity.size());
    for (auto& x : frames) f.push_back(std::move(x));
    return f;
  }

  Scheduler s;
  Outbox out;
  Clock::time_point now;
};

std::map<std::string, msgpack::object> status_of(Broker& b, msgpack::object_handle* handle) {
  auto reply = b.client("status-reader", Broker::header(MsgType::kStatus, 9));
  REQUIRE(reply.size() == 1);
  REQUIRE(reply[0].payload.size() == 1);
  *handle = msgpack::unpack(static_cast<const char*>(reply[0].payload[0].data()), reply[0].payload[0].size());
  return handle->get().as<std::map<std::string, msgpack::object>>();
}

Frames payload(std::size_t bytes) {
  Frames f;
  f.emplace_back(bytes);
  return f;
}

}  // namespace

TEST_CASE("welcome answers hello: incarnation, engine ids, heartbeat ms") {
  broker::SchedulerOptions o = Broker::with_incarnation();
  o.heartbeat = std::chrono::milliseconds(250);
  Broker b(o);
  b.add_engine("e0");
  b.add_engine("e1");
  auto got = b.hello("c", "sess");
  REQUIRE(got.size() == 1);
  CHECK(got[0].identity == "c");
  CHECK(got[0].header.type == MsgType::kWelcome);
  CHECK(got[0].header.id == 1);
  CHECK(got[0].header.text == "feedface");
  CHECK(got[0].header.targets == std::vector<std::int64_t>{0, 1});
  CHECK(got[0].header.status == 250);
  CHECK(b.s.session_count() == 1);
}

TEST_CASE("hello with an overlong session name is refused with Error") {
  Broker b;
  auto got = b.hello("c", std::string(broker::Sessions::kMaxName + 1, 's'));
  REQUIRE(got.size() == 1);
  CHECK(got[0].header.type == MsgType::kError);
  CHECK(b.s.session_count() == 0);
  CHECK(b.s.counters().bad_messages == 1);
  got = b.hello("c", std::string(broker::Sessions::kMaxName, 's'));
  REQUIRE(got.size() == 1);
  CHECK(got[0].header.type == MsgType::kWelcome);
}

TEST_CASE("welcome answers a client heartbeat") {
  Broker b;
  auto got = b.client("c", Broker::header(MsgType::kHeartbeat, 4));
  REQUIRE(got.size() == 1);
  CHECK(got[0].header.type == MsgType::kWelcome);
  CHECK(got[0].header.id == 4);
  CHECK(got[0].header.text == "feedface");
  CHECK(got[0].header.targets.empty());
  CHECK(b.s.counters().bad_messages == 0);
}

TEST_CASE("incarnation is random when not given") {
  Scheduler a, b;
  CHECK(a.incarnation().size() == 32);
  CHECK(a.incarnation() != b.incarnation());
}

TEST_CASE("a result stays stored until acknowledged, then moves to the cache") {
  Broker b;
  b.add_engine("e");
  b.hello("c", "sess");
  b.submit("c", 1);
  auto got = b.result("e", 1, payload(1000));
  REQUIRE(got.size() == 1);
  CHECK(got[0].identity == "c");
  CHECK(b.s.results().stats().stored_results == 1);
  CHECK(b.s.results().stats().stored_bytes > 1000);
  CHECK(b.with_ids("c", MsgType::kAck, {1}).empty());
  CHECK(b.s.results().stats().stored_results == 0);
  CHECK(b.s.results().stats().cached_results == 1);
}

TEST_CASE("a known session on a new identity gets every unacknowledged result again, in task-id order") {
  Broker b;
  b.add_engine("e");
  b.hello("old", "sess");
  for (std::uint64_t id : {30, 10, 20, 40}) b.submit("old", id);
  for (std::uint64_t id : {30, 10, 20}) REQUIRE(b.result("e", id).size() == 1);
  b.with_ids("old", MsgType::kAck, {20});

  auto got = b.hello("new", "sess");
  REQUIRE(got.size() == 3);
  CHECK(got[0].header.type == MsgType::kWelcome);
  for (const auto& x : got) CHECK(x.identity == "new");
  CHECK(got[1].header.type == MsgType::kResult);
  CHECK(got[1].header.id == 10);
  CHECK(got[2].header.id == 30);

  // A task of the session that ends later goes to the new identity too.
  got = b.result("e", 40);
  REQUIRE(got.size() == 1);
  CHECK(got[0].identity == "new");
  // A repeated Hello from the same identity resends nothing.
  got = b.hello("new", "sess");
  REQUIRE(got.size() == 1);
  CHECK(got[0].header.type == MsgType::kWelcome);
}

TEST_CASE("acks from the old identity after a rebind do not free the session's results") {
  Broker b;
  b.add_engine("e");
  b.hello("old", "sess");
  b.submit("old", 1);
  b.result("e", 1);
  b.hello("new", "sess");
  b.with_ids("old", MsgType::kAck, {1});
  CHECK(b.s.results().stats().stored_results == 1);
  b.with_ids("new", MsgType::kAck, {1});
  CHECK(b.s.results().stats().stored_results == 0);
}

TEST_CASE("a client that never said hello has its own implicit session") {
  Broker b;
  b.add_engine("e");
  b.submit("plain", 5);
  auto got = b.result("e", 5);
  REQUIRE(got.size() == 1);
  CHECK(got[0].identity == "plain");
  CHECK(b.s.session_count() == 1);
  CHECK(b.s.results().stats().stored_results == 1);
  b.with_ids("plain", MsgType::kAck, {5});
  CHECK(b.s.results().stats().stored_results == 0);
}

TEST_CASE("rejected submits are stored and routed by session too") {
  Broker b;  // no engines
  b.hello("c", "sess");
  proto::Header h = Broker::header(MsgType::kSubmit, 3);
  h.targets = {7};
  auto got = b.client("c", h);
  REQUIRE(got.size() == 1);
  CHECK(got[0].header.status == static_cast<std::uint32_t>(ResultStatus::kRejected));
  CHECK(b.s.results().stats().stored_results == 1);
  got = b.hello("c2", "sess");
  REQUIRE(got.size() == 2);
  CHECK(got[1].header.id == 3);
}

TEST_CASE("fetch of a stored, a cached, a pending and an unknown id") {
  Broker b;
  b.add_engine("e");
  b.hello("owner", "s1");
  b.hello("other", "s2");
  for (std::uint64_t id : {1, 2, 3}) b.submit("owner", id);
  b.result("e", 1, payload(100));
  b.result("e", 2, payload(200));
  b.with_ids("owner", MsgType::kAck, {2});  // 1 stored, 2 cached, 3 pending

  auto got = b.with_ids("other", MsgType::kFetch, {1, 2, 3, 99});
  REQUIRE(got.size() == 3);
  for (const auto& x : got) {
    CHECK(x.identity == "other");
    CHECK(x.header.type == MsgType::kResult);
  }
  CHECK(got[0].header.id == 1);
  CHECK(got[0].header.status == 0);
  REQUIRE(got[0].payload.size() == 1);
  CHECK(got[0].payload[0].size() == 100);
  CHECK(got[1].header.id == 2);
  REQUIRE(got[1].payload.size() == 1);
  CHECK(got[1].payload[0].size() == 200);
  CHECK(got[2].header.id == 99);
  CHECK(got[2].header.status == static_cast<std::uint32_t>(ResultStatus::kRejected));
  CHECK(got[2].header.text == "no result for task 99");
  CHECK(b.s.counters().done == 2);  // fetches and refusals are not results of tasks

  // Fetching does not acknowledge for the owner.
  CHECK(b.s.results().stats().stored_results == 1);

  // The pending one reaches the owner and the fetcher when it ends.
  got = b.result("e", 3, payload(300));
  REQUIRE(got.size() == 2);
  CHECK(got[0].identity == "owner");
  CHECK(got[1].identity == "other");
  CHECK(got[1].header.id == 3);
  REQUIRE(got[1].payload.size() == 1);
  CHECK(got[1].payload[0].size() == 300);
}

TEST_CASE("fetch of its own pending task does not deliver the result twice") {
  Broker b;
  b.add_engine("e");
  b.hello("c", "s");
  b.submit("c", 1);
  CHECK(b.with_ids("c", MsgType::kFetch, {1}).empty());
  auto got = b.result("e", 1);
  REQUIRE(got.size() == 1);
  CHECK(got[0].identity == "c");
}

TEST_CASE("results share their frames: delivered, resent and fetched point at the engine's bytes") {
  Broker b;
  b.add_engine("e");
  b.hello("old", "sess");
  b.submit("old", 1);
  Frames p = payload(broker::ResultStore::kOwnCopyMaxBytes + 1);  // smaller ones are copied once when stored
  const void* bytes = p[0].data();
  auto got = b.result("e", 1, std::move(p));
  REQUIRE(got.size() == 1);
  REQUIRE(got[0].payload.size() == 1);
  CHECK(got[0].payload[0].data() == bytes);
  got = b.hello("new", "sess");
  REQUIRE(got.size() == 2);
  CHECK(got[1].payload[0].data() == bytes);
  got = b.with_ids("other", MsgType::kFetch, {1});
  REQUIRE(got.size() == 1);
  CHECK(got[0].payload[0].data() == bytes);
}

TEST_CASE("unacknowledged results over the bound are dropped and counted in the status") {
  broker::SchedulerOptions o = Broker::with_incarnation();
  o.max_unacked_bytes = 2 * (1000 + broker::ResultStore::kEntryOverhead + 100);  // two results, not three
  Broker b(o);
  b.add_engine("e");
  for (std::uint64_t id = 1; id <= 3; ++id) b.submit("c", id);
  for (std::uint64_t id = 1; id <= 3; ++id) b.result("e", id, payload(1000));
  CHECK(b.s.results().stats().evicted == 1);
  CHECK(b.s.results().stats().stored_results == 2);
  // The dropped one cannot be fetched any more: it ended, so it is Lost.
  auto got = b.with_ids("c", MsgType::kFetch, {1});
  REQUIRE(got.size() == 1);
  CHECK(got[0].header.status == static_cast<std::uint32_t>(ResultStatus::kLost));
  CHECK(got[0].header.text.find("no longer kept") != std::string::npos);

  auto reply = b.client("c", Broker::header(MsgType::kStatus, 9));
  REQUIRE(reply.size() == 1);
  REQUIRE(reply[0].payload.size() == 1);
  auto handle = msgpack::unpack(static_cast<const char*>(reply[0].payload[0].data()), reply[0].payload[0].size());
  auto map = handle.get().as<std::map<std::string, msgpack::object>>();
  CHECK(map.at("results_evicted").as<std::uint64_t>() == 1);
  CHECK(map.at("stored_results").as<std::uint64_t>() == 2);
  CHECK(map.at("stored_bytes").as<std::uint64_t>() > 2000);
  CHECK(map.at("cached_results").as<std::uint64_t>() == 0);
  CHECK(map.at("cached_bytes").as<std::uint64_t>() == 0);
  CHECK(map.at("sessions").as<std::uint64_t>() == 1);
  CHECK(map.at("incarnation").as<std::string>() == "feedface");
}

TEST_CASE("an ack from a client with no session is ignored and makes none") {
  Broker b;
  CHECK(b.with_ids("stranger", MsgType::kAck, {1, 2}).empty());
  CHECK(b.s.session_count() == 0);
  CHECK(b.s.counters().bad_messages == 0);
}

TEST_CASE("fetch of a pending task whose id was also refused as a duplicate waits for the real result") {
  Broker b;
  b.add_engine("e");
  b.submit("c", 1);
  auto got = b.submit("c", 1);  // refused: already pending, and stored as such
  REQUIRE(got.size() == 1);
  CHECK(got[0].header.status == static_cast<std::uint32_t>(ResultStatus::kRejected));
  CHECK(b.with_ids("other", MsgType::kFetch, {1}).empty());
  got = b.result("e", 1, payload(64));
  REQUIRE(got.size() == 2);
  CHECK(got[1].identity == "other");
  CHECK(got[1].header.status == 0);
  CHECK(b.s.results().stats().stored_results == 1);  // the refusal was replaced
}

TEST_CASE("client identities: the current identity of every session, once") {
  Broker b;
  b.hello("a", "s1");
  b.hello("b", "s2");
  b.hello("c", "s1");  // s1 moves from a to c
  CHECK(b.s.client_identities() == std::vector<std::string>{"b", "c"});
}

// ---- session expiry (a fake clock: b.now moves, tick() sweeps) ------------------------------

namespace {

constexpr std::chrono::milliseconds kTimeout{10000};

broker::SchedulerOptions expiring() {
  broker::SchedulerOptions o = Broker::with_incarnation();
  o.heartbeat = std::chrono::milliseconds(1000);
  o.liveness = 1000000;  // engines stay registered however long the test's clock runs
  o.session_timeout = kTimeout;
  return o;
}

// Moves the clock on and lets the Scheduler do its periodic work.
void pass_time(Broker& b, Clock::duration d) {
  b.now += d;
  b.s.tick(b.now, b.out);
}

std::vector<Sent> heartbeat(Broker& b, const std::string& identity) {
  return b.client(identity, Broker::header(MsgType::kHeartbeat, 5));
}

}  // namespace

TEST_CASE("a silent session with nothing pending expires with its unacked results; a heartbeating one stays") {
  Broker b(expiring());
  b.add_engine("e");
  b.hello("gone", "s-gone");
  b.hello("live", "s-live");
  b.submit("gone", 1);
  b.submit("live", 2);
  b.result("e", 1, payload(100));
  b.result("e", 2, payload(100));
  CHECK(b.s.results().stats().stored_results == 2);
  for (int i = 0; i < 30; ++i) {  // 30 s: live heartbeats every second, gone is silent
    pass_time(b, std::chrono::seconds(1));
    heartbeat(b, "live");
    b.take();
  }
  CHECK(b.s.session_count() == 1);
  CHECK(b.s.results().stats().stored_results == 1);  // live's result, still unacknowledged
  CHECK(b.s.counters().sessions_expired == 1);
  CHECK(b.s.counters().results_expired == 1);
  // The live session keeps everything: a reconnect gets its result again.
  auto got = b.hello("live-again", "s-live");
  REQUIRE(got.size() == 2);
  CHECK(got[0].header.aux == 0);  // a session the broker knew
  CHECK(got[1].header.id == 2);

  msgpack::object_handle handle;
  auto map = status_of(b, &handle);
  CHECK(map.at("sessions_expired").as<std::uint64_t>() == 1);
  CHECK(map.at("results_expired").as<std::uint64_t>() == 1);
  CHECK(map.at("session_timeout_ms").as<std::int64_t>() == 10000);
  CHECK(map.at("sessions").as<std::uint64_t>() == 1);
}

TEST_CASE("a session expires no sooner than the timeout after its last message") {
  Broker b(expiring());
  b.hello("c", "s");
  pass_time(b, kTimeout - std::chrono::milliseconds(1));
  pass_time(b, std::chrono::milliseconds(0));
  CHECK(b.s.session_count() == 1);
  // The sweep runs every timeout/4 at most: a quarter later it has run.
  for (int i = 0; i < 20; ++i) pass_time(b, kTimeout / 16);
  CHECK(b.s.session_count() == 0);
  CHECK(b.s.counters().sessions_expired == 1);
  CHECK(b.s.counters().results_expired == 0);
}

TEST_CASE("a session with a pending task does not expire, however silent") {
  Broker b(expiring());  // no engine: the task stays queued
  b.hello("c", "s");
  b.submit("c", 7);
  pass_time(b, std::chrono::hours(2));
  pass_time(b, std::chrono::hours(2));
  CHECK(b.s.session_count() == 1);
  CHECK(b.s.pending() == 1);
  // Once its task ended, the timeout counts from its client's last message:
  // long passed, so the next sweep forgets it and the unacked result.
  b.add_engine("e");
  auto got = b.result("e", 7);
  REQUIRE(got.size() == 1);
  CHECK(got[0].identity == "c");
  pass_time(b, std::chrono::hours(1));
  CHECK(b.s.session_count() == 0);
  CHECK(b.s.counters().results_expired == 1);
}

TEST_CASE("after expiry: fetch of a forgotten result is Lost, hello makes a new session, heartbeat says so") {
  Broker b(expiring());
  b.add_engine("e");
  b.hello("c", "s");
  b.submit("c", 1);
  b.result("e", 1, payload(10));
  pass_time(b, std::chrono::hours(1));
  pass_time(b, std::chrono::hours(1));
  REQUIRE(b.s.session_count() == 0);

  // A heartbeat from the identity whose session was forgotten: aux 1.
  auto got = heartbeat(b, "c");
  REQUIRE(got.size() == 1);
  CHECK(got[0].header.type == MsgType::kWelcome);
  CHECK(got[0].header.aux == 1);

  // The client comes back on a new socket: its session is new, nothing is resent.
  got = b.hello("c2", "s");
  REQUIRE(got.size() == 1);
  CHECK(got[0].header.type == MsgType::kWelcome);
  CHECK(got[0].header.aux == 1);
  got = b.with_ids("c2", MsgType::kFetch, {1, 99});
  REQUIRE(got.size() == 2);
  CHECK(got[0].header.id == 1);
  CHECK(got[0].header.status == static_cast<std::uint32_t>(ResultStatus::kLost));
  CHECK(got[0].header.text.find("no longer kept") != std::string::npos);
  CHECK(got[1].header.status == static_cast<std::uint32_t>(ResultStatus::kRejected));  // never a task here
  CHECK(b.s.counters().done == 1);  // answers to Fetch are not results of tasks

  // The new session works as any other.
  b.submit("c2", 2);
  got = b.result("e", 2);
  REQUIRE(got.size() == 1);
  CHECK(got[0].identity == "c2");
  heartbeat(b, "c2");
  got = heartbeat(b, "c2");
  REQUIRE(got.size() == 1);
  CHECK(got[0].header.aux == 0);
}

TEST_CASE("identities with no session are forgotten when silent; the clients count follows") {
  Broker b(expiring());
  b.client("stranger", Broker::header(MsgType::kStatus, 1));
  b.hello("old", "s");
  b.hello("new", "s");  // "old" no longer speaks for s
  CHECK(b.s.client_count() == 3);  // + status-reader below is not there yet
  for (int i = 0; i < 30; ++i) {
    pass_time(b, std::chrono::seconds(1));
    heartbeat(b, "new");
    b.take();
  }
  CHECK(b.s.client_count() == 1);  // "new" only
  CHECK(b.s.session_count() == 1);
}

TEST_CASE("session_timeout 0 keeps sessions for the broker's life") {
  broker::SchedulerOptions o = expiring();
  o.session_timeout = std::chrono::milliseconds(0);
  Broker b(o);
  b.add_engine("e");
  b.hello("c", "s");
  b.submit("c", 1);
  b.result("e", 1);
  for (int i = 0; i < 10; ++i) pass_time(b, std::chrono::hours(24));
  CHECK(b.s.session_count() == 1);
  CHECK(b.s.results().stats().stored_results == 1);
  CHECK(b.s.counters().sessions_expired == 0);
}

TEST_CASE("a watcher whose session expired is skipped; the owner still gets the result") {
  Broker b(expiring());
  b.add_engine("e");
  b.hello("owner", "s-owner");
  b.hello("watcher", "s-watcher");
  b.submit("owner", 1);
  CHECK(b.with_ids("watcher", MsgType::kFetch, {1}).empty());
  for (int i = 0; i < 30; ++i) {
    pass_time(b, std::chrono::seconds(1));
    heartbeat(b, "owner");
    b.take();
  }
  REQUIRE(b.s.session_count() == 1);
  auto got = b.result("e", 1);
  REQUIRE(got.size() == 1);
  CHECK(got[0].identity == "owner");
}

TEST_CASE("identity_of follows rebinding and forgetting of the session it found last") {
  broker::Sessions s;
  s.bind("s1", "a", 4);
  s.bind("s2", "b");
  std::int64_t revision = -1;
  const std::string* id = s.identity_of("s1", &revision);
  REQUIRE(id != nullptr);
  CHECK(*id == "a");
  CHECK(revision == 4);
  const std::string* name = s.find("a");
  REQUIRE(name != nullptr);
  CHECK(*s.identity_of(*name) == "a");  // by the interned name
  CHECK(*s.identity_of("s2", &revision) == "b");
  CHECK(revision == 0);
  CHECK(*s.identity_of("s2") == "b");
  CHECK(s.identity_of("s3") == nullptr);

  CHECK(*s.identity_of("s1") == "a");
  CHECK(s.bind("s1", "c", 3) == broker::Sessions::Bind::kRebound);
  CHECK(*s.identity_of("s1", &revision) == "c");
  CHECK(revision == 3);

  s.forget(s.find("c"));
  CHECK(s.identity_of("s1") == nullptr);
  CHECK(s.bind("s1", "d") == broker::Sessions::Bind::kNew);
  CHECK(*s.identity_of("s1") == "d");
}
