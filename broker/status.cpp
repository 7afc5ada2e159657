// The StatusReply payload: one msgpack map describing the broker's state.
// docs/protocol.rst lists the keys; clients read it as a plain dict.
#include <msgpack.hpp>

#include "scheduler.hpp"

namespace zfarm::broker {

namespace {

void key(msgpack::packer<msgpack::sbuffer>& pk, const char* k) { pk.pack(std::string_view(k)); }

}  // namespace

Frames Scheduler::status_payload() const {
  msgpack::sbuffer buf;
  msgpack::packer<msgpack::sbuffer> pk(buf);
  pk.pack_map(14);

  key(pk, "engines");
  pk.pack_array(static_cast<std::uint32_t>(engines_.size()));
  for (const auto& [id, e] : engines_) {
    pk.pack_map(6);
    key(pk, "id");
    pk.pack_int64(id);
    key(pk, "host");
    pk.pack(e.host);
    key(pk, "credit");
    pk.pack_int64(e.credit);
    key(pk, "inflight");
    pk.pack_uint64(e.inflight.size());
    key(pk, "queued");
    pk.pack_uint64(e.queue.size());
    key(pk, "done");
    pk.pack_uint64(e.done);
  }
  key(pk, "queued");
  pk.pack_uint64(shared_.size());
  key(pk, "pending");
  pk.pack_uint64(tasks_.size());
  key(pk, "done");
  pk.pack_uint64(counters_.done);
  key(pk, "failed");
  pk.pack_uint64(counters_.failed);
  key(pk, "bad_messages");
  pk.pack_uint64(counters_.bad_messages);
  key(pk, "clients");
  pk.pack_uint64(clients_.size());
  key(pk, "heartbeat_ms");
  pk.pack_int64(options_.heartbeat.count());
  key(pk, "dropped_results");
  pk.pack_uint64(counters_.dropped_results);
  key(pk, "engines_lost");
  pk.pack_uint64(counters_.engines_lost);
  key(pk, "retried");
  pk.pack_uint64(counters_.retried);
  key(pk, "unroutable");
  pk.pack_uint64(counters_.unroutable);
  key(pk, "errors_received");
  pk.pack_uint64(counters_.errors_received);
  key(pk, "auth_refused");
  pk.pack_uint64(counters_.auth_refused);

  Frames frames;
  frames.emplace_back(buf.data(), buf.size());
  return frames;
}

}  // namespace zfarm::broker
