#include "task_board.hpp"

#include <algorithm>
#include <utility>

namespace zfarm::engine {

TaskBoard::TaskBoard(TripFn trip) : trip_(std::move(trip)) {}

void TaskBoard::add(proto::Message task) {
  {
    std::lock_guard lock(mu_);
    queue_.push_back(Held{std::move(task), epoch_});
  }
  cv_.notify_all();
}

TaskBoard::Interrupted TaskBoard::interrupt(std::uint64_t id) {
  std::lock_guard lock(mu_);
  if (running_ && running_id_ == id && running_epoch_ == epoch_) {
    running_tripped_ = true;
    if (trip_) trip_();
    return Interrupted::kRunning;
  }
  auto it = std::find_if(queue_.begin(), queue_.end(), [&](const Held& h) { return h.msg.header.id == id; });
  if (it != queue_.end()) {
    queue_.erase(it);
    return Interrupted::kQueued;
  }
  return Interrupted::kNotHeld;
}

std::size_t TaskBoard::new_epoch() {
  std::lock_guard lock(mu_);
  ++epoch_;
  const std::size_t dropped = queue_.size();
  queue_.clear();
  return dropped;
}

std::vector<std::uint64_t> TaskBoard::give_back(std::size_t keep) {
  std::vector<std::uint64_t> ids;
  std::lock_guard lock(mu_);
  if (queue_.size() <= keep) return ids;
  ids.reserve(queue_.size() - keep);
  for (std::size_t i = keep; i < queue_.size(); ++i) ids.push_back(queue_[i].msg.header.id);
  queue_.erase(queue_.begin() + static_cast<std::ptrdiff_t>(keep), queue_.end());
  return ids;
}

std::optional<proto::Message> TaskBoard::take(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  const std::uint64_t generation = wake_generation_;
  cv_.wait_for(lock, timeout, [&] { return (!queue_.empty() && !paused_) || wake_generation_ != generation; });
  if (queue_.empty() || paused_) return std::nullopt;
  return take_locked();
}

std::optional<proto::Message> TaskBoard::try_take() {
  std::lock_guard lock(mu_);
  if (queue_.empty() || paused_) return std::nullopt;
  return take_locked();
}

bool TaskBoard::ready() const {
  std::lock_guard lock(mu_);
  return !queue_.empty() && !paused_;
}

proto::Message TaskBoard::take_locked() {
  Held held = std::move(queue_.front());
  queue_.pop_front();
  running_ = true;
  running_id_ = held.msg.header.id;
  running_epoch_ = held.epoch;
  running_tripped_ = false;
  return std::move(held.msg);
}

TaskBoard::Finished TaskBoard::finish() {
  std::lock_guard lock(mu_);
  Finished f;
  f.id = running_id_;
  f.interrupted = running_tripped_;
  f.stale = running_epoch_ != epoch_;
  running_ = false;
  running_tripped_ = false;
  return f;
}

void TaskBoard::set_paused(bool paused) {
  {
    std::lock_guard lock(mu_);
    if (paused_ == paused) return;
    paused_ = paused;
  }
  cv_.notify_all();
}

void TaskBoard::wake() {
  {
    std::lock_guard lock(mu_);
    ++wake_generation_;
  }
  cv_.notify_all();
}

std::size_t TaskBoard::queued() const {
  std::lock_guard lock(mu_);
  return queue_.size();
}

std::optional<std::uint64_t> TaskBoard::running() const {
  std::lock_guard lock(mu_);
  if (!running_) return std::nullopt;
  return running_id_;
}

std::uint64_t TaskBoard::epoch() const {
  std::lock_guard lock(mu_);
  return epoch_;
}

}  // namespace zfarm::engine
