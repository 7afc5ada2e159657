// Batches (protocol revision 4) in the broker: the Scheduler takes a
// client's Batch of Submits and an engine's Batch of Results record by
// record, and the socket loop's Batcher packs small Tasks and Results for
// peers that announced revision 4, never reordering what goes to one peer.
#include <doctest/doctest.h>

#include <map>
#include <string>
#include <vector>

#include <msgpack.hpp>

#include "scheduler_feed.hpp"

using namespace zfarm;
using proto::MsgType;

namespace {

using test::Got;
using Ids = std::vector<std::uint64_t>;
const std::vector<std::int64_t> kBalanced = {proto::kLoadBalanced};

Frames message(MsgType type, std::uint64_t id, std::vector<std::int64_t> targets = {},
               std::vector<std::string> chunks = {}) {
  proto::Header h;
  h.type = type;
  h.id = id;
  h.targets = std::move(targets);
  return proto::encode(h, test::FedScheduler::frames_of(chunks));
}
Frames submit(std::uint64_t id) { return message(MsgType::kSubmit, id, kBalanced, {"payload-" + std::to_string(id)}); }
Frames result(std::uint64_t id) { return message(MsgType::kResult, id, {}, {"value-" + std::to_string(id)}); }

Frames batch_of(const std::vector<Frames>& messages) {
  std::vector<const Frames*> p;
  for (const auto& m : messages) p.push_back(&m);
  return proto::pack_batch(p);
}
template <class... M>
Frames batch(M&&... m) {
  std::vector<Frames> v;
  (v.push_back(std::forward<M>(m)), ...);
  return batch_of(v);
}

// The records of a Batch that came out, decoded.
std::vector<Got> records(const Got& g) {
  REQUIRE(g.header.type == MsgType::kBatch);
  REQUIRE(g.payload.size() == 1);
  proto::Message m;
  m.header = g.header;
  m.payload.emplace_back(g.payload[0].data(), g.payload[0].size());
  std::vector<proto::Message> recs;
  REQUIRE(proto::decode_batch(m, recs).ok());
  std::vector<Got> r;
  for (auto& rec : recs) {
    Got x{g.side, g.identity, rec.header, {}};
    for (auto& p : rec.payload) x.payload.push_back(p.to_string());
    r.push_back(std::move(x));
  }
  return r;
}

// Messages to `identity`, in order, with each Batch's records in its place:
// what that peer handles, in the order it handles it.
std::vector<Got> unpacked(const std::vector<Got>& got, const std::string& identity) {
  std::vector<Got> r;
  for (const auto& g : got) {
    if (g.identity != identity) continue;
    if (g.header.type == MsgType::kBatch) {
      for (auto& x : records(g)) r.push_back(std::move(x));
    } else {
      r.push_back(g);
    }
  }
  return r;
}

std::vector<Got> to(const std::vector<Got>& got, const std::string& identity) {
  std::vector<Got> r;
  for (const auto& g : got) {
    if (g.identity == identity) r.push_back(g);
  }
  return r;
}

Ids ids_of(const std::vector<Got>& got, MsgType type) {
  Ids r;
  for (const auto& g : got) {
    if (g.header.type == type) r.push_back(g.header.id);
  }
  return r;
}

struct Broker : test::FedScheduler {
  void hello(const std::string& client, std::int64_t revision) {
    proto::Header h;
    h.type = MsgType::kHello;
    h.opts.session = "session-" + client;
    h.opts.revision = revision;
    auto got = feed(false, client, h);
    REQUIRE(got.size() == 1);
    REQUIRE(got[0].header.type == MsgType::kWelcome);
  }
  std::map<std::string, std::uint64_t> status() {
    proto::Header h;
    h.type = MsgType::kStatus;
    auto got = feed(false, "status-reader", h);
    REQUIRE(got.size() == 1);
    auto handle = msgpack::unpack(got[0].payload[0].data(), got[0].payload[0].size());
    std::map<std::string, std::uint64_t> r;
    for (const auto& [k, v] : handle.get().as<std::map<std::string, msgpack::object>>()) {
      if (v.type == msgpack::type::POSITIVE_INTEGER) r[k] = v.as<std::uint64_t>();
    }
    return r;
  }
};

// A Task the Scheduler would send to engine `identity`, for the Batcher alone.
broker::Outgoing task_to(const std::string& identity, std::uint64_t id, bool batchable = true,
                         std::size_t payload_bytes = 8) {
  broker::Outgoing o{broker::Outgoing::kEngine, identity,
                     message(MsgType::kTask, id, {}, {std::string(payload_bytes, 'x')})};
  o.batchable = batchable;
  return o;
}

// The same Task as the Scheduler makes it for an engine that takes
// Batches: its header written inline, its frames the payload alone.
broker::Outgoing inline_task_to(const std::string& identity, std::uint64_t id) {
  proto::Header h;
  h.type = MsgType::kTask;
  h.id = id;
  h.aux = 7;
  broker::Outgoing o{broker::Outgoing::kEngine, identity, test::FedScheduler::frames_of({"p-" + std::to_string(id)})};
  o.header_size = static_cast<std::uint8_t>(proto::encode_small_header(h, o.header.data()));
  REQUIRE(o.header_size != 0);
  o.batchable = true;
  o.batch_bytes = static_cast<std::uint32_t>(
      proto::batch_record_bytes(MsgType::kTask, o.header_size, o.frames.data(), o.frames.size()));
  return o;
}

}  // namespace

// ---- incoming -------------------------------------------------------------------

TEST_CASE("batch: a client's Batch of Submits queues each task, in order, payloads intact") {
  Broker b;
  b.reg("e", 2, 3);
  b.feed_only(false, "cl", batch(submit(1), submit(2), submit(3), submit(4), submit(5)));
  auto got = b.take();
  CHECK(ids_of(got, MsgType::kTask) == Ids{1, 2});  // credit 2
  REQUIRE(got.size() == 2);
  CHECK(got[0].payload == std::vector<std::string>{"payload-1"});
  CHECK(got[1].payload == std::vector<std::string>{"payload-2"});
  CHECK(b.s.pending() == 5);
  CHECK(b.s.shared_queued() == 3);
  CHECK(b.s.counters().batches_in == 1);
  CHECK(b.s.counters().batch_records_in == 5);
  CHECK(b.s.counters().bad_messages == 0);
}

TEST_CASE("batch: an engine's Batch of Results ends each task; each result reaches its client") {
  Broker b;
  b.reg("e", 4, 3);
  for (std::uint64_t id = 1; id <= 4; ++id) b.feed_only(false, "cl", submit(id));
  CHECK(ids_of(b.take(), MsgType::kTask) == Ids{1, 2, 3, 4});
  b.feed_only(true, "e", batch(result(3), result(1), result(4), result(2)));
  auto got = b.take();
  CHECK(ids_of(got, MsgType::kResult) == Ids{3, 1, 4, 2});
  REQUIRE(got.size() == 4);
  CHECK(got[0].identity == "cl");
  CHECK(got[0].payload == std::vector<std::string>{"value-3"});
  CHECK(b.s.pending() == 0);
  CHECK(b.s.counters().done == 4);
  CHECK(b.s.inflight(b.s.engine_id("e")) == 0);
}

TEST_CASE("batch: a bad Batch from a client is answered with Error and none of its records is acted on") {
  Broker b;
  b.reg("e", 4, 3);
  SUBCASE("a record of a type that is never batched") {
    b.feed_only(false, "cl", batch(submit(1), submit(2), message(MsgType::kStatus, 9)));
  }
  SUBCASE("a truncated body") {
    Frames m = batch(submit(1), submit(2));
    m[2] = zmq::message_t(m[2].data(), m[2].size() - 1);
    b.feed_only(false, "cl", std::move(m));
  }
  SUBCASE("a count that does not match the records") {
    proto::Header h;
    h.type = MsgType::kBatch;
    h.aux = 3;
    Frames m = batch(submit(1), submit(2));
    Frames wrong = proto::encode(h);
    wrong.push_back(std::move(m[2]));
    b.feed_only(false, "cl", std::move(wrong));
  }
  SUBCASE("two payload frames") {
    Frames m = batch(submit(1), submit(2));
    m.emplace_back(3);
    b.feed_only(false, "cl", std::move(m));
  }
  auto got = b.take();
  REQUIRE(got.size() == 1);
  CHECK(got[0].header.type == MsgType::kError);
  CHECK(got[0].identity == "cl");
  CHECK(b.s.pending() == 0);
  CHECK(b.s.counters().bad_messages == 1);
  CHECK(b.s.counters().batches_in == 0);
}

TEST_CASE("batch: a bad Batch from an engine is answered with Error; its tasks stay in flight") {
  Broker b;
  const auto e = b.reg("e", 4, 4);
  b.feed_only(false, "cl", submit(1));
  b.feed_only(false, "cl", submit(2));
  b.take();
  b.feed_only(true, "e", batch(result(1), message(MsgType::kHeartbeat, 0)));
  auto got = b.take();
  REQUIRE(got.size() == 1);
  CHECK(got[0].header.type == MsgType::kError);
  CHECK(got[0].identity == "e");
  CHECK(b.s.inflight(e) == 2);
  CHECK(b.s.counters().done == 0);
  CHECK(b.s.counters().bad_messages == 1);
}

TEST_CASE("batch: a record not allowed on that side is handled as the same message alone") {
  Broker b;
  b.reg("e", 4, 3);
  SUBCASE("a Result from a client") {
    b.feed_only(false, "cl", batch(submit(1), result(7), submit(2)));
    auto got = b.take();
    CHECK(ids_of(got, MsgType::kTask) == Ids{1, 2});
    REQUIRE(ids_of(got, MsgType::kError).size() == 1);
    CHECK(to(got, "cl").size() == 1);
    CHECK(b.s.pending() == 2);
  }
  SUBCASE("a Submit from an engine") {
    b.feed_only(false, "cl", submit(1));
    b.take();
    b.feed_only(true, "e", batch(submit(5), result(1)));
    auto got = b.take();
    REQUIRE(ids_of(got, MsgType::kError).size() == 1);
    CHECK(ids_of(got, MsgType::kResult) == Ids{1});
    CHECK(b.s.pending() == 0);
  }
  CHECK(b.s.counters().bad_messages == 1);
  CHECK(b.s.counters().batches_in == 1);
}

TEST_CASE("batch: from an engine the broker does not know, one Error asks it to register again") {
  Broker b;
  b.feed_only(true, "ghost", batch(result(1), result(2), result(3)));
  auto got = b.take();
  REQUIRE(got.size() == 1);
  CHECK(got[0].header.type == MsgType::kError);
  CHECK(got[0].header.text == "unknown engine: register again");
  CHECK(b.s.counters().dropped_results == 0);
}

// ---- outgoing -------------------------------------------------------------------

TEST_CASE("batch: Tasks to a revision 4 engine go out as one Batch, to an older engine one by one") {
  Broker b;
  b.reg("new", 8, 4);
  b.reg("old", 8, 3);
  std::vector<Frames> subs;
  for (std::uint64_t id = 1; id <= 16; ++id) subs.push_back(submit(id));
  b.feed_only(false, "cl", batch_of(subs));
  auto got = b.take_packed();
  auto to_new = to(got, "new");
  auto to_old = to(got, "old");
  REQUIRE(to_new.size() == 1);
  CHECK(to_new[0].header.aux == 8);
  auto recs = records(to_new[0]);
  REQUIRE(recs.size() == 8);
  for (const auto& r : recs) CHECK(r.header.type == MsgType::kTask);
  CHECK(recs[0].payload == std::vector<std::string>{"payload-" + std::to_string(recs[0].header.id)});
  CHECK(to_old.size() == 8);
  CHECK(ids_of(to_old, MsgType::kTask).size() == 8);
  CHECK(b.batcher.stats().batches == 1);
  CHECK(b.batcher.stats().records == 8);
}

TEST_CASE("batch: Results go in a Batch to a client whose Hello named revision 4, one by one to others") {
  Broker b;
  b.reg("e", 16, 3);
  b.hello("c4", 4);
  b.hello("c3", 3);
  b.feed_only(false, "c4", submit(1));
  b.feed_only(false, "c4", submit(2));
  b.feed_only(false, "c3", submit(11));
  b.feed_only(false, "c3", submit(12));
  b.feed_only(false, "anon", submit(21));  // no Hello at all
  b.feed_only(false, "anon", submit(22));
  b.take();
  b.feed_only(true, "e", batch(result(1), result(11), result(21), result(2), result(12), result(22)));
  auto got = b.take_packed();
  auto c4 = to(got, "c4");
  REQUIRE(c4.size() == 1);
  CHECK(ids_of(records(c4[0]), MsgType::kResult) == Ids{1, 2});
  CHECK(records(c4[0])[1].payload == std::vector<std::string>{"value-2"});
  CHECK(ids_of(to(got, "c3"), MsgType::kResult) == Ids{11, 12});
  CHECK(ids_of(to(got, "anon"), MsgType::kResult) == Ids{21, 22});
}

TEST_CASE("batch: a Result to a revision 4 client, sent alone, and the same Result fetched again are whole") {
  // The Result's header is written inline for a Batch; the store keeps the
  // whole message made from it, and a Result that goes alone is made whole.
  Broker b;
  b.reg("e", 16, 3);
  b.hello("c4", 4);
  b.feed_only(false, "c4", submit(5));
  b.take();
  proto::Header r;
  r.type = MsgType::kResult;
  r.id = 5;
  proto::put_timing(proto::Timing{1700000000000000, 1234}, &r);
  auto got = b.feed(true, "e", r, {"value-5"});
  auto sent = to(got, "c4");
  REQUIRE(sent.size() == 1);
  REQUIRE(sent[0].header.type == MsgType::kResult);
  proto::Header f;
  f.type = MsgType::kFetch;
  f.opts.ids = {5};
  auto again = to(b.feed(false, "c4", f), "c4");
  REQUIRE(again.size() == 1);
  for (const Got* g : {&sent[0], &again[0]}) {
    CHECK(g->header.type == MsgType::kResult);
    CHECK(g->header.id == 5);
    proto::Timing t;
    REQUIRE(proto::read_timing(g->header, &t) == proto::TimingField::kOk);
    CHECK(t.started_us == 1700000000000000);
    CHECK(t.run_ns == 1234);
    CHECK(g->payload == std::vector<std::string>{"value-5"});
  }
}

TEST_CASE("batch: a single batchable message goes out as itself") {
  Broker b;
  b.reg("e", 1, 4);
  b.feed_only(false, "cl", submit(1));
  auto got = b.take_packed();
  REQUIRE(got.size() == 1);
  CHECK(got[0].header.type == MsgType::kTask);
  CHECK(b.batcher.stats().batches == 0);
}

TEST_CASE("batch: a message that is not batchable follows the records pending for its peer") {
  Broker b;
  b.reg("e", 8, 4);
  b.feed_only(false, "cl", batch(submit(1), submit(2)));
  proto::Header h;
  h.type = MsgType::kInterrupt;
  h.opts.ids = {2};
  b.feed_only(false, "cl", proto::encode(h));  // an Interrupt to e, after Tasks 1 and 2
  b.feed_only(false, "cl", batch(submit(3), submit(4)));
  auto got = b.take_packed();
  REQUIRE(got.size() == 3);
  CHECK(got[0].header.type == MsgType::kBatch);
  CHECK(ids_of(records(got[0]), MsgType::kTask) == Ids{1, 2});
  CHECK(got[1].header.type == MsgType::kInterrupt);
  CHECK(got[1].header.id == 2);
  CHECK(got[2].header.type == MsgType::kBatch);
  CHECK(ids_of(records(got[2]), MsgType::kTask) == Ids{3, 4});
}

TEST_CASE("batch: a large Task is not batched, and keeps its place among the small ones") {
  Broker b;
  b.reg("e", 8, 4);
  proto::Header h;
  h.type = MsgType::kSubmit;
  h.id = 2;
  h.targets = kBalanced;
  Frames big = proto::encode(h, test::FedScheduler::frames_of({std::string(proto::kBatchRecordBytes + 1, 'b')}));
  b.feed_only(false, "cl", submit(1));
  b.feed_only(false, "cl", std::move(big));
  b.feed_only(false, "cl", submit(3));
  b.feed_only(false, "cl", submit(4));
  auto got = b.take_packed();
  auto seq = unpacked(got, "e");
  CHECK(ids_of(seq, MsgType::kTask) == Ids{1, 2, 3, 4});
  REQUIRE(got.size() == 3);
  CHECK(got[0].header.type == MsgType::kTask);  // alone: the big one came next
  CHECK(got[1].header.type == MsgType::kTask);
  CHECK(got[1].payload[0].size() == proto::kBatchRecordBytes + 1);
  CHECK(got[2].header.type == MsgType::kBatch);
}

TEST_CASE("batch: the status counts Batches in and out") {
  Broker b;
  b.reg("e", 8, 4);
  b.feed_only(false, "cl", batch(submit(1), submit(2), submit(3)));
  b.take_packed();
  b.s.set_batches_out(b.batcher.stats().batches, b.batcher.stats().records);
  auto st = b.status();
  CHECK(st.at("batches_in") == 1);
  CHECK(st.at("batch_records_in") == 3);
  CHECK(st.at("batches_out") == 1);
  CHECK(st.at("batch_records_out") == 3);
}

// ---- the Batcher alone ----------------------------------------------------------

TEST_CASE("batcher: more than kBatchMaxRecords messages to one peer make several Batches, in order") {
  broker::Batcher batcher;
  broker::Outbox in, out;
  const std::size_t n = 2 * proto::kBatchMaxRecords + 1;
  for (std::size_t i = 0; i < n; ++i) in.push_back(task_to("a", i));
  batcher.pack(in, out);
  CHECK(in.empty());
  REQUIRE(out.size() == 3);
  CHECK(out[0].records == proto::kBatchMaxRecords);
  CHECK(out[1].records == proto::kBatchMaxRecords);
  CHECK(out[2].records == 1);
  Ids seq;
  for (auto& o : out) {
    proto::Message m;
    REQUIRE(proto::decode(o.frames, 0, &m).ok());
    if (m.header.type == MsgType::kTask) {
      seq.push_back(m.header.id);
      continue;
    }
    std::vector<proto::Message> recs;
    REQUIRE(proto::decode_batch(m, recs).ok());
    for (auto& r : recs) seq.push_back(r.header.id);
  }
  Ids want;
  for (std::size_t i = 0; i < n; ++i) want.push_back(i);
  CHECK(seq == want);
  CHECK(batcher.stats().batches == 2);
  CHECK(batcher.stats().records == 2 * proto::kBatchMaxRecords);
}

TEST_CASE("batcher: the frame vectors of packed messages go to the pool; a message sent alone keeps its own") {
  broker::Batcher batcher;
  broker::FramesPool pool;
  broker::Outbox in, out;
  in.push_back(task_to("a", 1));
  in.push_back(task_to("a", 2));
  in.push_back(task_to("b", 3));  // alone: sent as itself
  batcher.pack(in, out, &pool);
  REQUIRE(out.size() == 2);
  CHECK(out[0].records == 2);
  CHECK(out[1].frames.size() == 3);  // b's Task, frames intact
  CHECK(pool.kept() == 2);
  // A vector from the pool is empty, with its room kept.
  Frames f = pool.take(2);
  CHECK(f.empty());
  CHECK(f.capacity() >= 3);
  CHECK(pool.kept() == 1);
}

TEST_CASE("batcher: Tasks with inline headers go into a Batch among framed ones, or alone as whole messages") {
  broker::Batcher batcher;
  broker::Outbox in, out;
  in.push_back(inline_task_to("a", 1));
  in.push_back(task_to("a", 2));
  in.push_back(inline_task_to("a", 3));
  in.push_back(inline_task_to("b", 4));  // alone: made a whole message
  batcher.pack(in, out);
  REQUIRE(out.size() == 2);
  CHECK(out[0].records == 3);
  CHECK(out[1].header_size == 0);
  proto::Message m;
  REQUIRE(proto::decode(out[0].frames, 0, &m).ok());
  std::vector<proto::Message> recs;
  REQUIRE(proto::decode_batch(m, recs).ok());
  REQUIRE(recs.size() == 3);
  const Ids want = {1, 2, 3};
  for (std::size_t i = 0; i < recs.size(); ++i) {
    CHECK(recs[i].header.type == MsgType::kTask);
    CHECK(recs[i].header.id == want[i]);
    REQUIRE(recs[i].payload.size() == 1);
    CHECK(recs[i].payload[0].to_string() == (i == 1 ? std::string(8, 'x') : "p-" + std::to_string(want[i])));
  }
  proto::Message alone;
  REQUIRE(proto::decode(out[1].frames, 0, &alone).ok());
  CHECK(alone.header.type == MsgType::kTask);
  CHECK(alone.header.id == 4);
  CHECK(alone.header.aux == 7);
  REQUIRE(alone.payload.size() == 1);
  CHECK(alone.payload[0].to_string() == "p-4");
}

TEST_CASE("frames pool: keeps vectors of useful sizes only, up to its bound") {
  broker::FramesPool pool;
  Frames small;
  small.reserve(2);  // under the default pool's 3 frames
  pool.give(std::move(small));
  Frames large;
  large.reserve(broker::FramesPool::kMaxCapacity + 1);
  pool.give(std::move(large));
  CHECK(pool.kept() == 0);
  for (std::size_t i = 0; i < broker::FramesPool::kMaxKept + 10; ++i) {
    Frames f;
    f.reserve(4);
    f.emplace_back("x", 1);  // its frames are let go, the room kept
    pool.give(std::move(f));
  }
  CHECK(pool.kept() == broker::FramesPool::kMaxKept);
  Frames f = pool.take(8);  // more room than any kept vector has: grown
  CHECK(f.empty());
  CHECK(f.capacity() >= 8);
  // An empty pool still gives a vector with the room asked for.
  broker::FramesPool empty;
  CHECK(empty.take(5).capacity() >= 5);
  // A pool for one- and two-frame payloads keeps only those.
  broker::FramesPool payloads(1, 2);
  for (std::size_t capacity : {1, 2, 3}) {
    Frames f;
    f.reserve(capacity);
    payloads.give(std::move(f));
  }
  CHECK(payloads.kept() == 2);
}

TEST_CASE("batcher: a Batch stops before its body would pass kBatchBodyBytes") {
  broker::Batcher batcher;
  broker::Outbox in, out;
  for (std::uint64_t i = 0; i < 200; ++i) in.push_back(task_to("a", i, true, proto::kBatchRecordBytes));
  batcher.pack(in, out);
  REQUIRE(out.size() >= 4);  // 200 records of 4 KiB: 800 KiB
  std::size_t total = 0;
  for (auto& o : out) {
    CHECK(o.frames.size() == 3);
    CHECK(o.frames[2].size() <= proto::kBatchBodyBytes);
    total += o.records;
  }
  CHECK(total == 200);
}

TEST_CASE("batcher: each peer's messages keep their order; other peers' in between do not split a Batch") {
  broker::Batcher batcher;
  broker::Outbox in, out;
  in.push_back(task_to("a", 1));
  in.push_back(task_to("b", 101));
  in.push_back(task_to("a", 2));
  in.push_back(task_to("b", 102, false));  // not batchable: b's 101 goes before it
  in.push_back(task_to("a", 3));
  in.push_back(task_to("b", 103));
  in.push_back(task_to("b", 104));
  // The same identity on the other side is another peer.
  broker::Outgoing c{broker::Outgoing::kClient, "a", message(MsgType::kResult, 201)};
  c.batchable = true;
  in.push_back(std::move(c));
  batcher.pack(in, out);
  std::vector<std::pair<std::string, Ids>> sends;
  for (auto& o : out) {
    proto::Message m;
    REQUIRE(proto::decode(o.frames, 0, &m).ok());
    Ids ids;
    if (m.header.type == MsgType::kBatch) {
      std::vector<proto::Message> recs;
      REQUIRE(proto::decode_batch(m, recs).ok());
      for (auto& r : recs) ids.push_back(r.header.id);
    } else {
      ids.push_back(m.header.id);
    }
    sends.emplace_back((o.side == broker::Outgoing::kClient ? "client " : "engine ") + o.identity, ids);
  }
  using S = std::vector<std::pair<std::string, Ids>>;
  CHECK(sends == S{{"engine b", {101}}, {"engine b", {102}}, {"engine a", {1, 2, 3}}, {"engine b", {103, 104}},
                   {"client a", {201}}});
}
