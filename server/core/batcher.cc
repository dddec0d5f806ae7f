// The batcher is a template (batcher.h); this is the real clock it reads by default.
#include "server/core/batcher.h"

namespace zlpr::server {
namespace {

class SteadyClock final : public Clock {
 public:
  SteadyTime Now() const override { return std::chrono::steady_clock::now(); }
};

}  // namespace

Clock* SystemClock() {
  static SteadyClock clock;
  return &clock;
}

}  // namespace zlpr::server
