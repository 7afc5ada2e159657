// A Scheduler fed whole messages, its output decoded back with payloads as
// strings: the base of the message-by-message tests of Output and Credit.
#pragma once

#include <doctest/doctest.h>

#include <string>
#include <utility>
#include <vector>

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
  broker::Clock::time_point now = broker::Clock::now();

  // One message from an engine (engine = true) or a client; returns what
  // came out.
  std::vector<Got> feed(bool engine, const std::string& identity, const proto::Header& h,
                        std::vector<std::string> chunks = {}) {
    Frames payload;
    for (const auto& c : chunks) payload.emplace_back(c.data(), c.size());
    Frames f;
    f.emplace_back(identity.data(), identity.size());
    for (auto& x : proto::encode(h, std::move(payload))) f.push_back(std::move(x));
    if (engine) {
      s.on_engine_frames(f, now, out);
    } else {
      s.on_client_frames(f, now, out);
    }
    return take();
  }

  std::vector<Got> take() {
    std::vector<Got> got;
    for (auto& o : out) {
      proto::Message m;
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
