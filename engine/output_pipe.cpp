#include "output_pipe.hpp"

#include <algorithm>
#include <utility>

namespace zfarm::engine {

std::size_t utf8_prefix(std::string_view text, std::size_t max_bytes) {
  if (text.size() <= max_bytes) return text.size();
  // text[i] is the first byte left out: a boundary unless it continues a
  // character (10xxxxxx).  A character is at most 4 bytes.
  std::size_t i = max_bytes;
  for (int back = 0; back < 4 && i > 0; ++back, --i) {
    if ((static_cast<unsigned char>(text[i]) & 0xC0) != 0x80) return i;
  }
  return max_bytes;  // not UTF-8 here: cut anywhere
}

OutputPipe::OutputPipe(SendFn send, std::chrono::milliseconds flush_after)
    : send_(std::move(send)), flush_after_(flush_after) {}

void OutputPipe::begin(std::uint64_t task_id, std::int64_t engine_id) {
  std::lock_guard lock(mu_);
  active_ = enabled_.load(std::memory_order_relaxed);
  task_id_ = task_id;
  engine_id_ = engine_id;
  pending_[0].clear();
  pending_[1].clear();
  sent_[0] = sent_[1] = 0;
  flags_ = 0;
  flags_sent_ = true;
  has_pending_.store(false, std::memory_order_relaxed);
}

void OutputPipe::end() {
  std::lock_guard lock(mu_);
  active_ = false;
  for (auto& p : pending_) {
    // A task that printed a lot leaves no large buffer behind.
    if (p.capacity() > 2 * kSendAtBytes) std::string().swap(p);
    p.clear();
  }
  has_pending_.store(false, std::memory_order_relaxed);
}

void OutputPipe::write(int stream, std::string_view text, bool capped, Clock::time_point now) {
  if (stream != 0 && stream != 1) return;
  std::lock_guard lock(mu_);
  if (!active_) return;
  const bool was_idle = pending_[0].empty() && pending_[1].empty() && flags_sent_;
  pending_[stream].append(text);
  if (capped) {
    const std::uint32_t bit = stream == 0 ? proto::kStdoutCapped : proto::kStderrCapped;
    if ((flags_ & bit) == 0) {
      flags_ |= bit;
      flags_sent_ = false;
    }
  }
  if (pending_[0].empty() && pending_[1].empty() && flags_sent_) return;
  if (was_idle) pending_since_ = now;
  has_pending_.store(true, std::memory_order_relaxed);
  if (pending_[0].size() + pending_[1].size() >= kSendAtBytes) send_pending_locked();
}

void OutputPipe::on_tick(Clock::time_point now) {
  if (!has_pending_.load(std::memory_order_relaxed)) return;
  std::lock_guard lock(mu_);
  if (!active_ || now - pending_since_ < flush_after_) return;
  send_pending_locked();
}

void OutputPipe::send_pending_locked() {
  std::size_t taken[2] = {0, 0};
  while (taken[0] < pending_[0].size() || taken[1] < pending_[1].size() || !flags_sent_) {
    proto::Header h;
    h.type = proto::MsgType::kOutput;
    h.id = task_id_;
    h.aux = engine_id_;
    h.status = flags_;
    h.targets = {static_cast<std::int64_t>(sent_[0]), static_cast<std::int64_t>(sent_[1])};
    Frames payload;
    for (int s = 0; s < 2; ++s) {
      const std::string_view rest = std::string_view(pending_[s]).substr(taken[s]);
      std::size_t n = utf8_prefix(rest, proto::kMaxOutputChunk);
      if (n == 0 && !rest.empty()) n = std::min(rest.size(), proto::kMaxOutputChunk);
      payload.emplace_back(rest.data(), n);
      taken[s] += n;
      sent_[s] += n;
    }
    flags_sent_ = true;
    send_(proto::encode(h, std::move(payload)));
    messages_sent_.fetch_add(1, std::memory_order_relaxed);
  }
  pending_[0].clear();
  pending_[1].clear();
  has_pending_.store(false, std::memory_order_relaxed);
}

}  // namespace zfarm::engine
