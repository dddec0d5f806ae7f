// A Clock for tests: it stands still until told to move, so that batching, deadlines and
// delays are driven without real time.
#ifndef ZLPR_SERVER_CORE_TEST_CLOCK_H_
#define ZLPR_SERVER_CORE_TEST_CLOCK_H_

#include <chrono>

#include "server/core/batcher.h"

namespace zlpr::server {

class FakeClock final : public Clock {
 public:
  SteadyTime Now() const override { return now_; }
  void Advance(std::chrono::microseconds d) { now_ += d; }

 private:
  SteadyTime now_ = SteadyTime{} + std::chrono::hours(1);
};

}  // namespace zlpr::server

#endif  // ZLPR_SERVER_CORE_TEST_CLOCK_H_
