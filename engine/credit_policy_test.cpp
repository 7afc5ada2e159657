// CreditPolicy units: the credit as task running times come in, one rule a
// case.  Running times are plain durations: no clock, no sleeps.
#include <doctest/doctest.h>

#include <chrono>

#include "credit_policy.hpp"

using namespace zfarm;
using namespace zfarm::engine;
using std::chrono::microseconds;
using std::chrono::milliseconds;

namespace {

constexpr microseconds kQuick{50};
constexpr microseconds kSlow{1000};  // exactly kShortTask: long

// Runs n quick tasks; returns how many of them changed the credit.
int run_quick(CreditPolicy& p, int n) {
  int changes = 0;
  for (int i = 0; i < n; ++i) changes += p.on_task_end(kQuick) ? 1 : 0;
  return changes;
}

}  // namespace

TEST_CASE("credit: starts at the base; a ceiling at or below the base turns adaptation off") {
  CreditPolicy p(2, 16);
  CHECK(p.credit() == 2);
  CHECK(p.adaptive());
  CreditPolicy fixed(4, 4);
  CHECK_FALSE(fixed.adaptive());
  CHECK(run_quick(fixed, 1000) == 0);
  CHECK(fixed.credit() == 4);
  CreditPolicy below(8, 2);
  CHECK_FALSE(below.adaptive());
  CHECK(below.credit() == 8);
}

TEST_CASE("credit: doubles after kRaiseAfter quick tasks in a row, up to the ceiling") {
  CreditPolicy p(2, 16);
  CHECK(run_quick(p, CreditPolicy::kRaiseAfter - 1) == 0);
  CHECK(p.credit() == 2);
  CHECK(p.on_task_end(kQuick));
  CHECK(p.credit() == 4);
  CHECK(run_quick(p, CreditPolicy::kRaiseAfter) == 1);
  CHECK(p.credit() == 8);
  CHECK(run_quick(p, CreditPolicy::kRaiseAfter) == 1);
  CHECK(p.credit() == 16);
  // At the ceiling: no more changes, so no more Credit messages.
  CHECK(run_quick(p, 10 * CreditPolicy::kRaiseAfter) == 0);
  CHECK(p.credit() == 16);
}

TEST_CASE("credit: a ceiling that is not a power of two times the base is reached, not passed") {
  CreditPolicy p(3, 10);
  run_quick(p, 2 * CreditPolicy::kRaiseAfter);
  CHECK(p.credit() == 10);
  run_quick(p, 2 * CreditPolicy::kRaiseAfter);
  CHECK(p.credit() == 10);
}

TEST_CASE("credit: a task ending long drops the credit to the base and restarts the streak") {
  CreditPolicy p(2, 16);
  run_quick(p, 2 * CreditPolicy::kRaiseAfter);
  REQUIRE(p.credit() == 8);
  CHECK(p.on_task_end(kSlow));
  CHECK(p.credit() == 2);
  CHECK_FALSE(p.on_task_end(kSlow));  // already at the base: nothing to announce
  CHECK(run_quick(p, CreditPolicy::kRaiseAfter - 1) == 0);
  CHECK(p.credit() == 2);
  // A long task inside a streak breaks it.
  CHECK_FALSE(p.on_task_end(milliseconds(5)));
  CHECK(run_quick(p, CreditPolicy::kRaiseAfter - 1) == 0);
  CHECK(p.on_task_end(kQuick));
  CHECK(p.credit() == 4);
}

TEST_CASE("credit: a task turning long drops to the base at once, then to 1, and is long until it ends") {
  CreditPolicy p(2, 16);
  run_quick(p, 3 * CreditPolicy::kRaiseAfter);
  REQUIRE(p.credit() == 16);
  CHECK_FALSE(p.long_task());
  CHECK(p.on_long_task(milliseconds(1)));
  CHECK(p.credit() == 2);
  CHECK(p.long_task());
  CHECK(p.keep(/*running=*/true) == 1);
  CHECK(p.keep(/*running=*/false) == 2);
  CHECK_FALSE(p.on_long_task(milliseconds(3)));  // a second look before kLongTask: no change
  CHECK(p.on_long_task(CreditPolicy::kLongTask));
  CHECK(p.credit() == 1);
  CHECK(p.keep(/*running=*/true) == 0);  // nothing waits behind it
  CHECK_FALSE(p.on_long_task(milliseconds(1)));  // never back up while it runs
  CHECK(p.credit() == 1);
  CHECK(p.on_task_end(milliseconds(250)));  // back to the base for the next task
  CHECK(p.credit() == 2);
  CHECK_FALSE(p.long_task());
  // At the base already: the first look changes nothing to announce (the
  // caller still gives back what the base does not allow).
  CHECK_FALSE(p.on_long_task(milliseconds(2)));
}

TEST_CASE("credit: with a base of 1 a long task changes nothing") {
  CreditPolicy p(1, 4);
  CHECK_FALSE(p.on_long_task(milliseconds(1)));
  CHECK_FALSE(p.on_long_task(milliseconds(20)));
  CHECK_FALSE(p.on_task_end(milliseconds(20)));
  CHECK(p.credit() == 1);
}

TEST_CASE("credit: a short end after a long look goes back to the base") {
  // The first look may come a little early (a signal woke the watch
  // thread); whatever the ending time, the next task starts at the base.
  CreditPolicy p(2, 16);
  p.on_long_task(CreditPolicy::kLongTask);
  REQUIRE(p.credit() == 1);
  CHECK(p.on_task_end(microseconds(900)));
  CHECK(p.credit() == 2);
}

TEST_CASE("credit: reset goes back to the base and forgets the streak and a long task") {
  CreditPolicy p(1, 8);
  run_quick(p, CreditPolicy::kRaiseAfter + 5);
  REQUIRE(p.credit() == 2);
  p.on_long_task(milliseconds(1));
  run_quick(p, 3);  // (ends the long task too)
  p.on_long_task(milliseconds(50));
  p.reset();
  CHECK(p.credit() == 1);
  CHECK_FALSE(p.long_task());
  CHECK(run_quick(p, CreditPolicy::kRaiseAfter - 1) == 0);
  CHECK(p.on_task_end(kQuick));
  CHECK(p.credit() == 2);
}

TEST_CASE("credit: alternating long and short tasks never raise it: no Credit messages at all") {
  CreditPolicy p(2, 16);
  int changes = 0;
  for (int i = 0; i < 1000; ++i) {
    changes += p.on_task_end(i % 8 == 7 ? kSlow : kQuick) ? 1 : 0;
  }
  CHECK(changes == 0);
  CHECK(p.credit() == 2);
}

TEST_CASE("credit: the worst mix costs at most two changes per kRaiseAfter + 1 tasks") {
  CreditPolicy p(2, 16);
  int changes = 0;
  const int rounds = 100;
  for (int r = 0; r < rounds; ++r) {
    changes += run_quick(p, CreditPolicy::kRaiseAfter);
    changes += p.on_task_end(kSlow) ? 1 : 0;
  }
  CHECK(changes == 2 * rounds);
}
