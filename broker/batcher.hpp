// Batcher: packs the Outbox's small Tasks and Results into Batches (protocol
// revision 4) before the socket loop sends it.
//
// The Scheduler marks an Outgoing `batchable` when its peer announced
// revision 4 and the message may go into a Batch (proto::batchable).  pack()
// moves the messages of one loop iteration into the order they are sent:
// the batchable ones to one peer wait, and go out as one Batch (two or more)
// or alone (one) when a message to that peer that is not batchable comes
// (which then follows them), when a Batch is full (kBatchMaxRecords records,
// kBatchBodyBytes of body), or at the end.  So no message to a peer ever
// overtakes another to the same peer; messages to different peers may
// change places, which nothing depends on (each peer sees its own stream).
//
// libzmq's work per message and per frame is most of the broker's cost per
// task; a Batch of n Tasks is one message of three frames where n were n of
// three or four.  What it costs here: one hash lookup per batchable message
// (none while messages to one side run to one peer), and the records' bytes
// copied once.
//
// No sockets; not thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "scheduler.hpp"  // Outgoing, Outbox

namespace zfarm::broker {

class Batcher {
 public:
  struct Stats {
    std::uint64_t batches = 0;  // Batches made
    std::uint64_t records = 0;  // messages that went into them
  };

  // Moves every message of `in` to the end of `out`, in the order to send
  // them, batchable runs packed as above; `in` is left empty.  A Batch's
  // Outgoing has records = the messages in it.  The frame vectors of the
  // messages packed into Batches go to `spare`, when given.
  void pack(Outbox& in, Outbox& out, FramesPool* spare = nullptr);

  const Stats& stats() const { return stats_; }

 private:
  // A peer's batchable messages not yet moved to out: indices into `in`.
  struct Pending {
    Outgoing::Side side = Outgoing::kClient;
    std::string identity;
    std::vector<std::size_t> items;
    std::size_t bytes = 0;  // body bytes of the Batch they would make
    bool active = false;    // listed in active_ during this pack()
  };

  Pending& pending_for(const Outgoing& o);
  Pending* find(const Outgoing& o);
  void flush(Pending& p, Outbox& in, Outbox& out, FramesPool* spare);

  // Per side, by identity.  Kept from one pack() to the next, so that a
  // peer's entry and its vector are not allocated again every iteration;
  // forgotten whole when there are more than kMaxPeers (peers come and go).
  static constexpr std::size_t kMaxPeers = 4096;
  std::unordered_map<std::string, Pending> clients_, engines_;
  std::vector<Pending*> active_;  // peers with items, in order of their first
  // Per side, the peer of the last batchable message to that side: a
  // Result to a client and the next Task to an engine alternate, so one
  // for both sides would miss every time.
  Pending* last_[2] = {nullptr, nullptr};
  std::vector<proto::BatchRecord> records_;
  Stats stats_;
};

}  // namespace zfarm::broker
