// A Scheduler fed whole messages, its output decoded back with payloads as
// strings: the base of the message-by-message tests of Output, Credit and
// Batch.  take_packed() passes the output through the socket loop's
// Batcher first, as the broker sends it.
#pragma once

#include <doctest/doctest.h>

#include <string>
#include <utility>
#include <vector>

#include "batcher.hpp"
#include "scheduler.hpp"

namespace zfarm::test {

// One message the Scheduler produced, decoded.
struct Got {
  broker::Outgoing::Side side;
  std::string identity;
  proto::Header header;
  std::vector<std::string> payload;
};

struct FedScheduler {
  explicit FedScheduler(broker::SchedulerOptions o = {}) : s(std::move(o)) {}

  broker::Scheduler s;
  broker::Outbox out;
  broker::Batcher batcher;
  broker::Clock::time_point now = broker::Clock::now();

  // One message from an engine (engine = true) or a client; returns what
  // came out.
  std::vector<Got> feed(bool engine, const std::string& identity, const proto::Header& h,
                        std::vector<std::string> chunks = {}) {
    feed_only(engine, identity, proto::encode(h, frames_of(chunks)));
    return take();
  }

  // One message (signature, header, payload ...) from an engine or a
  // client; its output stays in `out`.
  void feed_only(bool engine, const std::string& identity, Frames message) {
    Frames f;
    f.emplace_back(identity.data(), identity.size());
    for (auto& x : message) f.push_back(std::move(x));
    if (engine) {
      s.on_engine_frames(f, now, out);
    } else {
      s.on_client_frames(f, now, out);
    }
  }

  // Registers an engine that speaks `revision` (2 or more: it may give
  // tasks back; 4 or more: it takes Batches); returns the id the broker
  // gave it.
  std::int64_t reg(const std::string& engine, std::int64_t credit, std::int64_t revision = proto::kRevision) {
    proto::Header h;
    h.type = proto::MsgType::kRegister;
    h.aux = credit;
    h.opts.revision = revision;
    auto got = feed(true, engine, h);
    REQUIRE(!got.empty());
    REQUIRE(got[0].header.type == proto::MsgType::kRegisterReply);
    return got[0].header.aux;
  }

  static Frames frames_of(const std::vector<std::string>& chunks) {
    Frames payload;
    for (const auto& c : chunks) payload.emplace_back(c.data(), c.size());
    return payload;
  }

  // What came out, as the socket loop sends it: Batches made by the Batcher.
  std::vector<Got> take_packed() {
    broker::Outbox packed;
    batcher.pack(out, packed, &s.frames_pool());  // as the socket loop does
    out.swap(packed);
    return take();
  }

  std::vector<Got> take() {
    std::vector<Got> got;
    for (auto& o : out) {
      proto::Message m;
      broker::frame_header(o);  // a Task with its header inline: as the Batcher sends it alone
      REQUIRE(proto::decode(o.frames, 0, &m).ok());  // the broker only sends what decodes
      Got g{o.side, o.identity, m.header, {}};
      for (auto& p : m.payload) g.payload.push_back(p.to_string());
      got.push_back(std::move(g));
    }
    out.clear();
    return got;
  }
};

}  // namespace zfarm::test
