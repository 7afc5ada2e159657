#include "credit_policy.hpp"

#include <algorithm>

namespace zfarm::engine {

CreditPolicy::CreditPolicy(std::int64_t base, std::int64_t ceiling)
    : base_(std::max<std::int64_t>(base, 1)), ceiling_(std::max(ceiling, base_)), credit_(base_) {}

bool CreditPolicy::on_task_end(std::chrono::nanoseconds ran) {
  long_task_ = false;
  if (ran >= kShortTask || credit_ < base_) return set(base_);
  if (credit_ >= ceiling_ || ++streak_ < kRaiseAfter) return false;
  return set(std::min(2 * credit_, ceiling_));
}

bool CreditPolicy::on_long_task(std::chrono::nanoseconds ran) {
  long_task_ = true;
  return set(ran >= kLongTask ? 1 : std::min(credit_, base_));
}

void CreditPolicy::reset() {
  set(base_);
  long_task_ = false;
}

bool CreditPolicy::set(std::int64_t credit) {
  streak_ = 0;
  if (credit_ == credit) return false;
  credit_ = credit;
  return true;
}

}  // namespace zfarm::engine
