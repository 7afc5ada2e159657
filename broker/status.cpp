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
  // + auth_refused; + the result store and sessions; + task options, timeouts, events; + output;
  // + failed handshakes and expired sessions; + credit; + timing; + batches
  pk.pack_map(13 + 1 + 7 + 9 + 3 + 5 + 4 + 1 + 4);

  key(pk, "engines");
  pk.pack_array(static_cast<std::uint32_t>(engines_.size()));
  for (const auto& [id, e] : engines_) {
    pk.pack_map(7);
    key(pk, "id");
    pk.pack_int64(id);
    key(pk, "host");
    pk.pack(e.host);
    key(pk, "credit");
    pk.pack_int64(e.credit);
    key(pk, "inflight");
    pk.pack_uint64(e.inflight.size());
    key(pk, "queued");
    pk.pack_uint64(e.queue.live);
    key(pk, "done");
    pk.pack_uint64(e.done);
    key(pk, "abandoned");  // timed out, still running until the engine answers
    pk.pack_uint64(e.abandoned);
  }
  key(pk, "queued");
  pk.pack_uint64(shared_.live());
  key(pk, "pending");
  pk.pack_uint64(tasks_.size());
  key(pk, "done");
  pk.pack_uint64(counters_.done);
  key(pk, "failed");
  pk.pack_uint64(counters_.failed);
  key(pk, "bad_messages");
  pk.pack_uint64(counters_.bad_messages);
  key(pk, "clients");
  pk.pack_uint64(sessions_.peers());
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

  // The result store and sessions.
  const ResultStore::Stats rs = results_.stats();
  key(pk, "stored_results");
  pk.pack_uint64(rs.stored_results);
  key(pk, "stored_bytes");
  pk.pack_uint64(rs.stored_bytes);
  key(pk, "cached_results");
  pk.pack_uint64(rs.cached_results);
  key(pk, "cached_bytes");
  pk.pack_uint64(rs.cached_bytes);
  key(pk, "results_evicted");
  pk.pack_uint64(rs.evicted);
  key(pk, "sessions");
  pk.pack_uint64(sessions_.size());
  key(pk, "incarnation");
  pk.pack(incarnation_);
  // Task options, timeouts and events.
  key(pk, "blocked");
  pk.pack_uint64(blocked_);
  key(pk, "abandoned");
  pk.pack_uint64(abandoned_.size());
  key(pk, "timers");
  pk.pack_uint64(timers_.size());
  key(pk, "finished_known");
  pk.pack_uint64(finished_.size());
  key(pk, "timed_out");
  pk.pack_uint64(counters_.timed_out);
  key(pk, "aborted");
  pk.pack_uint64(counters_.aborted);
  key(pk, "impossible");
  pk.pack_uint64(counters_.impossible);
  key(pk, "interrupts_sent");
  pk.pack_uint64(counters_.interrupts_sent);
  key(pk, "events_sent");
  pk.pack_uint64(counters_.events_sent);
  // Streamed output (scheduler_output.cpp).
  key(pk, "outputs_forwarded");
  pk.pack_uint64(counters_.outputs_forwarded);
  key(pk, "outputs_dropped");
  pk.pack_uint64(counters_.outputs_dropped);
  key(pk, "outputs_malformed");
  pk.pack_uint64(counters_.outputs_malformed);
  // Failed handshakes (security.hpp) and expired sessions (sessions.hpp).
  key(pk, "handshake_failed_client");
  pk.pack_uint64(counters_.handshake_failed_client);
  key(pk, "handshake_failed_engine");
  pk.pack_uint64(counters_.handshake_failed_engine);
  key(pk, "session_timeout_ms");
  pk.pack_int64(options_.session_timeout.count());
  key(pk, "sessions_expired");
  pk.pack_uint64(counters_.sessions_expired);
  key(pk, "results_expired");
  pk.pack_uint64(counters_.results_expired);
  // Engine credit and give-back (Credit).
  key(pk, "credits");
  pk.pack_uint64(counters_.credits);
  key(pk, "credits_ignored");
  pk.pack_uint64(counters_.credits_ignored);
  key(pk, "given_back");
  pk.pack_uint64(counters_.given_back);
  key(pk, "give_back_ignored");
  pk.pack_uint64(counters_.give_back_ignored);
  // Result timing (revision 3).
  key(pk, "bad_timing");
  pk.pack_uint64(counters_.bad_timing);
  // Batches (revision 4).
  key(pk, "batches_in");
  pk.pack_uint64(counters_.batches_in);
  key(pk, "batch_records_in");
  pk.pack_uint64(counters_.batch_records_in);
  key(pk, "batches_out");
  pk.pack_uint64(counters_.batches_out);
  key(pk, "batch_records_out");
  pk.pack_uint64(counters_.batch_records_out);

  Frames frames;
  frames.emplace_back(buf.data(), buf.size());
  return frames;
}

}  // namespace zfarm::broker
