// ResultStore, Sessions and FinishedRecord on their own: what is kept, what
// is freed, what is dropped over the bounds, and that nothing is copied byte
// by byte.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include <deque>
#include <map>
#include <utility>

#include "finished_record.hpp"
#include "result_store.hpp"
#include "sessions.hpp"

using namespace zfarm;
using broker::FinishedRecord;
using broker::ResultStore;
using broker::Sessions;

namespace {

// A stand-in for an encoded Result: one frame of `bytes` bytes whose first
// byte says which task it is for.
Frames message(std::size_t bytes, char tag = 'x') {
  Frames f;
  f.emplace_back(bytes);
  static_cast<char*>(f[0].data())[0] = tag;
  return f;
}

char tag_of(const Frames& f) { return static_cast<const char*>(f[0].data())[0]; }

// What the store counts for a result of `bytes` frame bytes.
constexpr std::size_t cost(std::size_t bytes) { return bytes + ResultStore::kEntryOverhead; }

ResultStore::Limits limits(std::size_t cache, std::size_t unacked) {
  ResultStore::Limits l;
  l.cache_bytes = cache;
  l.max_unacked_bytes = unacked;
  return l;
}

}  // namespace

TEST_CASE("store add keeps the result unacknowledged and returns it to send") {
  ResultStore s;
  Frames now = s.add("s1", 7, message(100, 'a'));
  REQUIRE(now.size() == 1);
  CHECK(now[0].size() == 100);
  CHECK(tag_of(now) == 'a');
  auto st = s.stats();
  CHECK(st.stored_results == 1);
  CHECK(st.stored_bytes == cost(100));
  CHECK(st.cached_results == 0);
  CHECK(s.contains(7));
}

TEST_CASE("store ack frees unacknowledged results into the cache") {
  ResultStore s;
  s.add("s1", 1, message(100));
  s.add("s1", 2, message(50));
  s.ack("s1", {1});
  auto st = s.stats();
  CHECK(st.stored_results == 1);
  CHECK(st.stored_bytes == cost(50));
  CHECK(st.cached_results == 1);
  CHECK(st.cached_bytes == cost(100));
  CHECK(s.unacked("s1").size() == 1);
  CHECK(s.find(1).has_value());  // still there for Fetch
}

TEST_CASE("store ack of another session's, unknown or repeated ids is ignored") {
  ResultStore s;
  s.add("s1", 1, message(100));
  s.ack("s2", {1});
  s.ack("s1", {99});
  CHECK(s.stats().stored_results == 1);
  s.ack("s1", {1});
  s.ack("s1", {1});
  CHECK(s.stats().stored_results == 0);
  CHECK(s.stats().cached_results == 1);
  CHECK(s.stats().cached_bytes == cost(100));
}

TEST_CASE("store cache bound drops the least recently used first") {
  ResultStore s(limits(2 * cost(100) + 50, 1 << 20));
  for (std::uint64_t id = 1; id <= 3; ++id) s.add("s", id, message(100, static_cast<char>('0' + id)));
  s.ack("s", {1, 2});
  CHECK(s.stats().cached_results == 2);
  CHECK(s.find(1).has_value());  // 1 is now more recently used than 2
  s.ack("s", {3});               // three do not fit: the least recently used goes
  auto st = s.stats();
  CHECK(st.cached_results == 2);
  CHECK(st.cached_bytes == 2 * cost(100));
  CHECK(s.contains(1));
  CHECK_FALSE(s.contains(2));
  CHECK(s.contains(3));
  CHECK(st.evicted == 0);  // only unacknowledged drops are counted
}

TEST_CASE("store dropped results give their frame vectors to the pool, and their nodes serve later results") {
  ResultStore s(limits(cost(100) + 50, 1 << 20));
  broker::FramesPool pool(1);
  s.give_frames_to(&pool);
  auto three = [] {  // a result of three frames, room for three
    Frames f;
    f.reserve(3);
    for (int i = 0; i < 3; ++i) f.emplace_back(40);
    return f;
  };
  s.add("s", 1, three());
  s.add("s", 2, three());
  s.ack("s", {1, 2});  // both do not fit the cache: 1 goes
  CHECK(pool.kept() == 1);
  CHECK_FALSE(s.contains(1));
  Frames spare = pool.take(0);
  CHECK(spare.empty());
  CHECK(spare.capacity() >= 3);
  // A later result for the dropped id, and another, are stored as usual.
  s.add("s", 1, message(10, 'n'));
  s.add("s", 4, message(10, 'm'));
  CHECK(tag_of(*s.find(1)) == 'n');
  CHECK(tag_of(*s.find(4)) == 'm');
  CHECK(s.stats().stored_results == 2);
}

TEST_CASE("store result larger than the cache is dropped on ack") {
  ResultStore s(limits(cost(10), 1 << 20));
  s.add("s", 1, message(100));
  s.ack("s", {1});
  CHECK_FALSE(s.contains(1));
  CHECK(s.stats().cached_bytes == 0);
}

TEST_CASE("store unacknowledged bound drops the oldest and counts them") {
  ResultStore s(limits(1 << 20, 2 * cost(100) + 50));
  s.add("a", 1, message(100, '1'));
  s.add("b", 2, message(100, '2'));
  s.add("a", 3, message(100, '3'));  // over: 1 (the oldest, any session) goes
  auto st = s.stats();
  CHECK(st.stored_results == 2);
  CHECK(st.stored_bytes == 2 * cost(100));
  CHECK(st.evicted == 1);
  CHECK_FALSE(s.contains(1));
  auto a = s.unacked("a");
  REQUIRE(a.size() == 1);
  CHECK(tag_of(a[0]) == '3');
}

TEST_CASE("store unacked lists a session's results in task-id order") {
  ResultStore s;
  s.add("s", 30, message(40, 'c'));
  s.add("s", 10, message(40, 'a'));
  s.add("other", 15, message(40, 'o'));
  s.add("s", 20, message(40, 'b'));
  auto r = s.unacked("s");
  REQUIRE(r.size() == 3);
  CHECK(tag_of(r[0]) == 'a');
  CHECK(tag_of(r[1]) == 'b');
  CHECK(tag_of(r[2]) == 'c');
  CHECK(s.unacked("nobody").empty());
}

TEST_CASE("store counts a fixed overhead per result, so tiny results meet the bound too") {
  ResultStore s(limits(1 << 20, 10 * cost(0)));
  for (std::uint64_t id = 0; id < 100; ++id) s.add("s", id, message(1));
  CHECK(s.stats().stored_results == 9);
  CHECK(s.stats().evicted == 91);
}

TEST_CASE("store a second result for the same task id replaces the first") {
  ResultStore s;
  s.add("s", 5, message(100, 'a'));
  s.ack("s", {5});
  s.add("s", 5, message(60, 'b'));
  auto st = s.stats();
  CHECK(st.stored_results == 1);
  CHECK(st.stored_bytes == cost(60));
  CHECK(st.cached_results == 0);
  CHECK(st.cached_bytes == 0);
  auto f = s.find(5);
  REQUIRE(f.has_value());
  CHECK(tag_of(*f) == 'b');
}

TEST_CASE("store find of an unknown id gives nothing") {
  ResultStore s;
  CHECK_FALSE(s.find(42).has_value());
}

TEST_CASE("store shares frames: sent, resent and fetched copies point at the same bytes") {
  ResultStore s;
  Frames original = message(ResultStore::kOwnCopyMaxBytes + 1);
  const void* bytes = original[0].data();
  Frames now = s.add("s", 1, std::move(original));
  CHECK(now[0].data() == bytes);
  auto again = s.unacked("s");
  REQUIRE(again.size() == 1);
  CHECK(again[0][0].data() == bytes);
  s.ack("s", {1});
  auto fetched = s.find(1);
  REQUIRE(fetched.has_value());
  CHECK((*fetched)[0].data() == bytes);
}

TEST_CASE("store copies a small frame once on the way in, then shares that copy") {
  ResultStore s;
  Frames original = message(ResultStore::kOwnCopyMaxBytes, 'q');
  const void* received = original[0].data();
  Frames now = s.add("s", 1, std::move(original));
  const void* kept = now[0].data();
  CHECK(kept != received);  // no longer a slice of someone else's buffer
  CHECK(tag_of(now) == 'q');
  CHECK(now[0].size() == ResultStore::kOwnCopyMaxBytes);
  CHECK(s.unacked("s")[0][0].data() == kept);
  CHECK((*s.find(1))[0].data() == kept);
}

TEST_CASE("store unacked after acks in any order: the rest, by task id, and none once all are acked") {
  ResultStore s;
  // Arrival order differs from id order; acks remove from the middle, the
  // front and the back of the session's list.
  for (std::uint64_t id : {5, 2, 9, 1, 7}) s.add("s", id, message(10, static_cast<char>('0' + id)));
  s.add("t", 3, message(10, '3'));
  s.ack("s", {9});
  s.ack("s", {5});
  auto rest = s.unacked("s");
  REQUIRE(rest.size() == 3);
  CHECK(tag_of(rest[0]) == '1');
  CHECK(tag_of(rest[1]) == '2');
  CHECK(tag_of(rest[2]) == '7');
  s.ack("s", {1, 2, 7, 3});  // 3 is another session's: ignored
  CHECK(s.unacked("s").empty());
  CHECK(s.unacked("t").size() == 1);
  CHECK(s.stats().stored_results == 1);
  CHECK(s.stats().cached_results == 5);
  // The session may have results again after all were acknowledged.
  s.add("s", 11, message(10, 'b'));
  REQUIRE(s.unacked("s").size() == 1);
  CHECK(tag_of(s.unacked("s")[0]) == 'b');
}

TEST_CASE("store a second result for an unacknowledged task id replaces it in its session too") {
  ResultStore s;
  s.add("s", 5, message(100, 'a'));
  s.add("t", 5, message(40, 'b'));
  CHECK(s.unacked("s").empty());
  REQUIRE(s.unacked("t").size() == 1);
  CHECK(tag_of(s.unacked("t")[0]) == 'b');
  CHECK(s.stats().stored_results == 1);
  CHECK(s.stats().stored_bytes == cost(40));
  s.ack("s", {5});  // no longer the owner
  CHECK(s.stats().stored_results == 1);
  s.ack("t", {5});
  CHECK(s.stats().cached_bytes == cost(40));
}

TEST_CASE("store unacknowledged bound drops the oldest by arrival, not by task id") {
  ResultStore s(limits(1 << 20, 3 * cost(10)));
  s.add("s", 30, message(10, 'a'));
  s.add("s", 10, message(10, 'b'));
  s.add("t", 20, message(10, 'c'));
  s.add("t", 5, message(10, 'd'));  // over the bound: task 30 goes
  CHECK_FALSE(s.contains(30));
  CHECK(s.contains(10));
  CHECK(s.stats().evicted == 1);
  CHECK(s.unacked("s").size() == 1);
  CHECK(s.unacked("t").size() == 2);
}

TEST_CASE("store a frame held inside the zmq message (a few bytes) is kept as it is") {
  ResultStore s;
  Frames original = message(8, 'z');
  Frames now = s.add("s", 1, std::move(original));
  REQUIRE(now[0].size() == 8);
  CHECK(tag_of(now) == 'z');
  CHECK(tag_of(*s.find(1)) == 'z');
}

TEST_CASE("store watchers are returned once each, then forgotten") {
  ResultStore s;
  s.watch(9, "a");
  s.watch(9, "b");
  s.watch(9, "a");
  CHECK(s.watched_tasks() == 1);
  auto w = s.take_watchers(9);
  REQUIRE(w.size() == 2);
  CHECK(w[0] == "a");
  CHECK(w[1] == "b");
  CHECK(s.take_watchers(9).empty());
  CHECK(s.watched_tasks() == 0);
}

TEST_CASE("sessions: an identity without Hello gets an implicit session named after it") {
  Sessions s;
  CHECK(s.session_of("id1") == "id1");
  REQUIRE(s.identity_of("id1") != nullptr);
  CHECK(*s.identity_of("id1") == "id1");
  CHECK(s.size() == 1);
}

TEST_CASE("sessions: hello binds, a repeated hello is the same, a new identity rebinds") {
  Sessions s;
  CHECK(s.bind("sess", "id1") == Sessions::Bind::kNew);
  CHECK(s.session_of("id1") == "sess");
  CHECK(s.bind("sess", "id1") == Sessions::Bind::kSame);
  CHECK(s.bind("sess", "id2") == Sessions::Bind::kRebound);
  CHECK(*s.identity_of("sess") == "id2");
  CHECK(s.session_of("id2") == "sess");
  // The old identity speaks for itself now.
  CHECK(s.session_of("id1") == "id1");
  CHECK(s.size() == 2);
  CHECK(s.identities() == std::vector<std::string>{"id1", "id2"});
  CHECK(s.identity_of("nope") == nullptr);
  CHECK(s.find("nope") == nullptr);
  REQUIRE(s.find("id2") != nullptr);
  CHECK(*s.find("id2") == "sess");
}

TEST_CASE("sessions: one session's name is one interned string, whichever identity asks") {
  Sessions s;
  const std::string* implicit = &s.session_of("id1");
  CHECK(&s.session_of("id1") == implicit);
  s.bind("work", "id2");
  const std::string* work = &s.session_of("id2");
  CHECK(*work == "work");
  s.bind("work", "id3");  // the client reconnected: same session, same name
  CHECK(&s.session_of("id3") == work);
  CHECK(s.find("id3") == work);
  CHECK(s.find("nobody") == nullptr);
  // The old identity now has a session of its own.
  CHECK(s.session_of("id2") == "id2");
  CHECK(&s.session_of("id3") == work);
}

TEST_CASE("sessions: hello with no session name binds the implicit session") {
  Sessions s;
  CHECK(s.bind("", "id1") == Sessions::Bind::kNew);
  CHECK(s.session_of("id1") == "id1");
}

TEST_CASE("incarnations are 32 hex digits and differ") {
  const std::string a = broker::random_incarnation();
  const std::string b = broker::random_incarnation();
  CHECK(a.size() == 32);
  CHECK(a.find_first_not_of("0123456789abcdef") == std::string::npos);
  CHECK(a != b);
}

TEST_CASE("finished record: finds what it recorded, nothing else") {
  FinishedRecord r(10);
  CHECK(r.find(1) == nullptr);
  r.record(1, 0, 3);
  r.record(2, 7, -1);
  REQUIRE(r.find(1) != nullptr);
  CHECK(r.find(1)->status == 0);
  CHECK(r.find(1)->engine == 3);
  REQUIRE(r.find(2) != nullptr);
  CHECK(r.find(2)->status == 7);
  CHECK(r.find(2)->engine == -1);
  CHECK(r.find(3) == nullptr);
  CHECK(r.size() == 2);
}

TEST_CASE("finished record: beyond its capacity the oldest are forgotten first") {
  FinishedRecord r(3);
  for (std::uint64_t id = 1; id <= 5; ++id) r.record(id, 0, static_cast<std::int64_t>(id));
  CHECK(r.size() == 3);
  CHECK(r.find(1) == nullptr);
  CHECK(r.find(2) == nullptr);
  for (std::uint64_t id = 3; id <= 5; ++id) {
    REQUIRE(r.find(id) != nullptr);
    CHECK(r.find(id)->engine == static_cast<std::int64_t>(id));
  }
}

TEST_CASE("finished record: an id recorded again keeps its newest entry, also when the old one is overwritten") {
  FinishedRecord r(3);
  r.record(1, 1, 10);
  r.record(2, 0, 20);
  r.record(1, 0, 11);  // task id 1 reused and ended again
  CHECK(r.size() == 2);
  CHECK(r.find(1)->engine == 11);
  r.record(3, 0, 30);  // overwrites the dead first entry of 1
  r.record(4, 0, 40);  // overwrites 2
  REQUIRE(r.find(1) != nullptr);
  CHECK(r.find(1)->engine == 11);
  CHECK(r.find(2) == nullptr);
  CHECK(r.size() == 3);
}

TEST_CASE("finished record: capacity 0 remembers nothing") {
  FinishedRecord r(0);
  r.record(1, 0, 0);
  CHECK(r.find(1) == nullptr);
  CHECK(r.size() == 0);
}

TEST_CASE("finished record: agrees with a map and a FIFO over many records, reused ids and wraps") {
  // The reference is the structure it replaced: id -> (entry, stamp) and the
  // order of recording; an old order entry only removes its own stamp.
  constexpr std::size_t kCapacity = 1000;
  FinishedRecord r(kCapacity);
  std::map<std::uint64_t, std::pair<std::int64_t, std::uint64_t>> model;
  std::deque<std::pair<std::uint64_t, std::uint64_t>> order;
  std::uint64_t x = 12345, stamp = 0;
  for (int i = 0; i < 50000; ++i) {
    x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    // Mostly new consecutive ids, some reused ones, some far apart.
    const std::uint64_t id = (x >> 60) == 0 ? (x >> 40) % 3000 : (x >> 62) == 1 ? x : static_cast<std::uint64_t>(i);
    const auto engine = static_cast<std::int64_t>(i);
    r.record(id, 0, engine);
    model[id] = {engine, ++stamp};
    order.emplace_back(id, stamp);
    if (order.size() > kCapacity) {
      const auto [old, old_stamp] = order.front();
      order.pop_front();
      auto it = model.find(old);
      if (it != model.end() && it->second.second == old_stamp) model.erase(it);
    }
    if (i % 97 == 0 || i > 49000) {
      CAPTURE(i);
      REQUIRE(r.size() == model.size());
      for (const auto& [mid, entry] : model) {
        const FinishedRecord::Entry* e = r.find(mid);
        REQUIRE(e != nullptr);
        CHECK(e->engine == entry.first);
      }
      CHECK(r.find(~std::uint64_t{0} - static_cast<std::uint64_t>(i)) == nullptr);
    }
  }
}

TEST_CASE("forget_session frees that session's unacknowledged results only") {
  ResultStore st;
  st.add("a", 1, message(10));
  st.add("a", 2, message(10));
  st.add("b", 3, message(10));
  st.add("a", 4, message(10));
  st.ack("a", {4});  // cached: not the session's any more
  CHECK(st.forget_session("a") == 2);
  CHECK(st.stats().stored_results == 1);
  CHECK(st.stats().cached_results == 1);
  CHECK_FALSE(st.contains(1));
  CHECK_FALSE(st.contains(2));
  CHECK(st.contains(3));
  CHECK(st.contains(4));
  CHECK(st.unacked("a").empty());
  CHECK(st.forget_session("a") == 0);
  CHECK(st.forget_session("nobody") == 0);
  // The session may come back and store anew.
  st.add("a", 5, message(10));
  CHECK(st.unacked("a").size() == 1);
}

TEST_CASE("sessions: idle ones are those whose identity was silent for the timeout") {
  using C = Sessions::Clock;
  const C::time_point t0 = C::now();
  Sessions s;
  s.heard_from("id1", t0);
  s.bind("s1", "id1");
  s.heard_from("id2", t0);
  s.bind("s2", "id2");
  s.heard_from("id1", t0 + std::chrono::seconds(5));
  auto idle = s.idle(t0 + std::chrono::seconds(10), std::chrono::seconds(10));
  REQUIRE(idle.size() == 1);
  CHECK(*idle[0] == "s2");
  // A rebind: the session is as fresh as its new identity.
  s.heard_from("id3", t0 + std::chrono::seconds(9));
  CHECK(s.bind("s2", "id3") == Sessions::Bind::kRebound);
  CHECK(s.idle(t0 + std::chrono::seconds(10), std::chrono::seconds(10)).empty());
  // id2 speaks for nothing now and is silent: forgotten; id1 and id3 are not.
  CHECK(s.forget_idle_peers(t0 + std::chrono::seconds(10), std::chrono::seconds(10)) == 1);
  CHECK(s.peers() == 2);

  const std::string* name = s.idle(t0 + std::chrono::seconds(20), std::chrono::seconds(10)).at(0);
  CHECK(*name == "s1");
  s.forget(name);
  CHECK(s.size() == 1);
  CHECK(s.find("id1") == nullptr);
  CHECK(s.identity_of("s1") == nullptr);
  CHECK(s.peers() == 2);  // id1 stays a peer until it is silent with no session
  CHECK(s.forget_idle_peers(t0 + std::chrono::seconds(20), std::chrono::seconds(10)) == 1);
  // It binds again as a new session.
  CHECK(s.bind("s1", "id1") == Sessions::Bind::kNew);
}
