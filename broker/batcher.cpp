#include "batcher.hpp"

#include <algorithm>
#include <utility>

namespace zfarm::broker {

Batcher::Pending* Batcher::find(const Outgoing& o) {
  Pending* last = last_[o.side];
  if (last != nullptr && last->identity == o.identity) return last;
  auto& peers = o.side == Outgoing::kClient ? clients_ : engines_;
  auto it = peers.find(o.identity);
  return it == peers.end() ? nullptr : &it->second;
}

Batcher::Pending& Batcher::pending_for(const Outgoing& o) {
  Pending* last = last_[o.side];
  if (last != nullptr && last->identity == o.identity) return *last;
  auto& peers = o.side == Outgoing::kClient ? clients_ : engines_;
  auto [it, added] = peers.try_emplace(o.identity);
  if (added) {
    it->second.side = o.side;
    it->second.identity = o.identity;
  }
  last_[o.side] = &it->second;
  return it->second;
}

void Batcher::flush(Pending& p, Outbox& in, Outbox& out, FramesPool* spare) {
  if (p.items.size() == 1) {
    Outgoing& o = out.emplace_back(std::move(in[p.items[0]]));
    frame_header(o);
  } else {
    records_.clear();
    for (std::size_t i : p.items) {
      const Outgoing& o = in[i];
      if (o.header_size != 0) {  // written inline: the frames are the payload
        records_.push_back({o.header.data(), o.header_size, o.frames.data(), o.frames.size()});
      } else {
        const zmq::message_t& header = o.frames[1];
        records_.push_back({header.data(), header.size(), o.frames.data() + 2, o.frames.size() - 2});
      }
    }
    Outgoing& batch = out.emplace_back(Outgoing{p.side, p.identity, proto::pack_batch(records_, p.bytes)});
    batch.records = static_cast<std::uint32_t>(p.items.size());
    ++stats_.batches;
    stats_.records += p.items.size();
    if (spare != nullptr) {
      for (std::size_t i : p.items) spare->give(std::move(in[i].frames));
    }
  }
  p.items.clear();
  p.bytes = 0;
}

void Batcher::pack(Outbox& in, Outbox& out, FramesPool* spare) {
  // Nothing to pack (peers of older revisions, large payloads): the
  // messages change vectors, not places.
  if (out.empty() && std::none_of(in.begin(), in.end(), [](const Outgoing& o) { return o.batchable; })) {
    out.swap(in);
    return;
  }
  last_[Outgoing::kClient] = last_[Outgoing::kEngine] = nullptr;
  for (std::size_t i = 0; i < in.size(); ++i) {
    Outgoing& o = in[i];
    if (!o.batchable) {
      // What waits for this peer goes first.
      if (!active_.empty()) {
        if (Pending* p = find(o); p != nullptr && !p->items.empty()) flush(*p, in, out, spare);
      }
      out.push_back(std::move(o));
      continue;
    }
    Pending& p = pending_for(o);
    const std::size_t bytes = o.batch_bytes != 0 ? o.batch_bytes : proto::batch_bytes(o.frames);
    if (!p.items.empty() && (p.items.size() >= proto::kBatchMaxRecords || p.bytes + bytes > proto::kBatchBodyBytes)) {
      flush(p, in, out, spare);
    }
    p.items.push_back(i);
    p.bytes += bytes;
    if (!p.active) {
      p.active = true;
      active_.push_back(&p);
    }
  }
  for (Pending* p : active_) {
    if (!p->items.empty()) flush(*p, in, out, spare);
    p->active = false;
  }
  active_.clear();
  last_[Outgoing::kClient] = last_[Outgoing::kEngine] = nullptr;
  in.clear();
  if (clients_.size() > kMaxPeers) clients_.clear();
  if (engines_.size() > kMaxPeers) engines_.clear();
}

}  // namespace zfarm::broker
