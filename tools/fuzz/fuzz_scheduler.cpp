// libFuzzer target: the broker's input handling.  A Scheduler is fed a
// sequence of client and engine messages and clock ticks decoded from the
// input, through its public entry points only (on_client_frames,
// on_engine_frames, tick, shutdown), and must never crash; after every
// step its invariants are checked, and every message it sends must decode,
// after the socket loop's Batcher packed them (a Batch's records too).
//
//   input := step*
//   step  := op:u8, then by op % 4:
//     0  client message:  who:u8 (one of 3 identities), sign:u8, frames block
//     1  engine message:  who:u8 (one of 4 identities), sign:u8, frames block
//     2  tick after:      ms:u16le
//     3  a step that only advances the clock by op ms
//   sign bit 0: put a valid signature frame first (fuzz_input.hpp).
// At the end the Scheduler shuts down and must have no task left.
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <set>
#include <string>

#include "batcher.hpp"
#include "fuzz_input.hpp"
#include "protocol.hpp"
#include "scheduler.hpp"

using namespace zfarm;
using broker::Outbox;
using broker::Outgoing;
using broker::Scheduler;

namespace {

constexpr int kMaxSteps = 64;  // keeps each run short; depth comes from the corpus

void require(bool ok, const char* what) {
  if (!ok) {
    __builtin_printf("invariant broken: %s\n", what);
    std::abort();
  }
}

// Everything the broker sends must be a well-formed message of a type that
// side may receive; a Batch only Tasks to an engine or Results to a client.
void check_outbox(Outbox& out, const Scheduler& s, broker::Batcher& batcher) {
  static Outbox packed;
  static std::vector<proto::Message> records;
  batcher.pack(out, packed);
  for (auto& o : packed) {
    require(!o.identity.empty(), "a message to nobody");
    proto::Message msg;
    const proto::Status st = proto::decode(o.frames, 0, &msg);
    require(st.ok(), "the broker sent a message that does not decode");
    auto t = msg.header.type;
    if (t == proto::MsgType::kBatch) {
      require(proto::decode_batch(msg, records).ok(), "the broker sent a Batch that does not decode");
      require(records.size() >= 2 && records.size() == o.records, "a Batch of fewer than two records");
      for (const auto& r : records) {
        require(r.header.type == records[0].header.type, "a Batch of mixed types");
      }
      t = records[0].header.type;
      require(t == (o.side == Outgoing::kEngine ? proto::MsgType::kTask : proto::MsgType::kResult),
              "a Batch of the wrong type for its side");
    }
    if (o.side == Outgoing::kEngine) {
      require(t == proto::MsgType::kRegisterReply || t == proto::MsgType::kHeartbeat ||
                  t == proto::MsgType::kTask || t == proto::MsgType::kShutdown || t == proto::MsgType::kError ||
                  t == proto::MsgType::kInterrupt,
              "an engine was sent a client's message type");
      if (t == proto::MsgType::kTask) {
        require(s.engine_id(o.identity) >= 0, "a task was sent to an unregistered engine");
      }
    } else {
      require(t != proto::MsgType::kTask && t != proto::MsgType::kRegisterReply && t != proto::MsgType::kSubmit,
              "a client was sent an engine's message type");
    }
  }
  packed.clear();
}

void check_state(const Scheduler& s, const std::set<std::string>& engines) {
  require(s.shared_queued() <= s.pending(), "more queued than pending");
  for (const auto& identity : engines) {
    const std::int64_t id = s.engine_id(identity);
    if (id < 0) continue;
    const std::int64_t inflight = s.inflight(id);
    require(inflight >= 0, "a registered engine without an entry");
    require(inflight <= s.options().max_credit, "an engine holds more than any credit");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const char* const kClients[] = {"client-a", "client-b", "client-c"};
  static const char* const kEngines[] = {"engine-a", "engine-b", "engine-c", "engine-d"};
  broker::SchedulerOptions options;
  options.heartbeat = std::chrono::milliseconds(100);
  options.max_credit = 4;
  Scheduler s(options);
  auto now = broker::Clock::time_point{} + std::chrono::hours(1);
  std::set<std::string> engines(std::begin(kEngines), std::end(kEngines));
  Outbox out;
  broker::Batcher batcher;

  fuzz::Input in(data, size);
  for (int step = 0; step < kMaxSteps && !in.empty(); ++step) {
    const std::uint8_t op = in.u8();
    switch (op % 4) {
      case 0:
      case 1: {
        const bool client = op % 4 == 0;
        const std::uint8_t who = in.u8();
        const std::uint8_t sign = in.u8();
        Frames frames;
        // The routing envelope a ROUTER adds (sometimes missing or empty).
        if ((sign & 2) == 0) {
          const std::string id = client ? kClients[who % 3] : kEngines[who % 4];
          frames.emplace_back(id.data(), id.size());
        }
        in.frames(&frames, (sign & 1) != 0);
        if (client) {
          s.on_client_frames(frames, now, out);
        } else {
          s.on_engine_frames(frames, now, out);
        }
        break;
      }
      case 2:
        now += std::chrono::milliseconds(in.u16());
        s.tick(now, out);
        break;
      default:
        now += std::chrono::milliseconds(op);
        break;
    }
    check_outbox(out, s, batcher);
    check_state(s, engines);
  }
  if (!s.shutting_down()) s.shutdown("the fuzz input ended", out);
  check_outbox(out, s, batcher);
  require(s.pending() == 0, "tasks left pending after shutdown");
  return 0;
}
