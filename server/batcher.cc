// Batcher: one mutex and condition variable; batches are cut under the lock and run outside.
#include "server/batcher.h"

#include <algorithm>
#include <utility>

namespace zlpr::server {
namespace {

constexpr std::chrono::milliseconds kCancelPoll{50};

class SteadyClock final : public Clock {
 public:
  SteadyTime Now() const override { return std::chrono::steady_clock::now(); }
};

}  // namespace

Clock* SystemClock() {
  static SteadyClock clock;
  return &clock;
}

Batcher::Batcher(const BatcherOptions& options, Clock* clock)
    : options_(options), clock_(clock), queues_(static_cast<size_t>(options.num_ops)) {}

absl::Status Batcher::Enqueue(int op, std::unique_ptr<Work> work) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (shutdown_) return absl::UnavailableError("the server is shutting down");
    Queue& q = queues_[op];
    if (static_cast<int64_t>(q.items.size()) >= options_.max_queue_size) {
      return absl::ResourceExhaustedError("the request queue is full (" +
                                          std::to_string(options_.max_queue_size) +
                                          " requests waiting); retry later");
    }
    work->enqueued_at = clock_->Now();
    q.rows += work->rows();
    q.items.push_back(std::move(work));
    DepthChangedLocked(op);
  }
  cv_.notify_one();
  return absl::OkStatus();
}

void Batcher::DepthChangedLocked(int op) {
  if (options_.on_depth) options_.on_depth(op, static_cast<int64_t>(queues_[op].items.size()));
}

bool Batcher::TryCutLocked(SteadyTime now, int* op, Batch* batch,
                           std::vector<std::unique_ptr<Work>>* dropped, SteadyTime* next_due) {
  *next_due = SteadyTime::max();
  int best = -1;
  bool any_waiting = false;
  for (int i = 0; i < static_cast<int>(queues_.size()); ++i) {
    Queue& q = queues_[i];
    // Drop what nobody waits for any more, wherever it is in the queue, and note the earliest
    // deadline still ahead: the worker wakes then to drop it without computing it.
    SteadyTime earliest_deadline = SteadyTime::max();
    const size_t before = q.items.size();
    for (auto it = q.items.begin(); it != q.items.end();) {
      Work& w = **it;
      if (w.Cancelled() || w.deadline() <= now) {
        q.rows -= w.rows();
        dropped->push_back(std::move(*it));
        it = q.items.erase(it);
      } else {
        earliest_deadline = std::min(earliest_deadline, w.deadline());
        ++it;
      }
    }
    if (q.items.size() != before) DepthChangedLocked(i);
    if (q.items.empty()) continue;
    any_waiting = true;
    *next_due = std::min(*next_due, earliest_deadline);
    const SteadyTime head = q.items.front()->enqueued_at;
    const bool wait = q.rows < options_.max_batch_rows && !shutdown_ &&
                      (!options_.adaptive_delay || q.last_batch_requests > 1);
    const SteadyTime due = wait ? head + options_.max_queue_delay : head;
    if (due <= now) {
      // Among due queues, the one whose oldest request is oldest goes first.
      if (best < 0 || head < queues_[best].items.front()->enqueued_at) best = i;
    } else {
      *next_due = std::min(*next_due, due);
    }
  }
  // Cancellation is not signalled to the batcher: look again every kCancelPoll while waiting.
  if (any_waiting) *next_due = std::min(*next_due, now + kCancelPoll);
  if (best < 0) return false;
  Queue& q = queues_[best];
  int64_t rows = 0;
  while (!q.items.empty()) {
    Work& w = *q.items.front();
    if (!batch->empty() && rows + w.rows() > options_.max_batch_rows) break;
    rows += w.rows();
    q.rows -= w.rows();
    batch->push_back(std::move(q.items.front()));
    q.items.pop_front();
  }
  q.last_batch_requests = batch->size();
  DepthChangedLocked(best);
  *op = best;
  return true;
}

bool Batcher::TryCut(int* op, Batch* batch, std::vector<std::unique_ptr<Work>>* dropped,
                     SteadyTime* next_due) {
  std::lock_guard<std::mutex> lock(mu_);
  return TryCutLocked(clock_->Now(), op, batch, dropped, next_due);
}

bool Batcher::NextBatch(int* op, Batch* batch) {
  batch->clear();
  std::vector<std::unique_ptr<Work>> dropped;
  bool got = false;
  {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      SteadyTime next_due;
      got = TryCutLocked(clock_->Now(), op, batch, &dropped, &next_due);
      if (got || !dropped.empty()) break;  // drop outside the lock, then come back
      if (shutdown_ && next_due == SteadyTime::max()) break;  // drained
      if (next_due == SteadyTime::max()) {
        cv_.wait(lock);
      } else {
        cv_.wait_until(lock, next_due);
      }
    }
  }
  // A call whose deadline passed is also cancelled by gRPC: the deadline is the reason then.
  const SteadyTime now = clock_->Now();
  for (auto& w : dropped) {
    w->Drop(w->deadline() <= now ? absl::DeadlineExceededError("the deadline passed while queued")
                                 : absl::CancelledError("the call was cancelled while queued"));
  }
  if (!got && !dropped.empty()) return NextBatch(op, batch);
  if (got) cv_.notify_one();  // another worker may take the next due batch
  return got;
}

void Batcher::Shutdown() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    shutdown_ = true;
  }
  cv_.notify_all();
}

int64_t Batcher::depth(int op) const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int64_t>(queues_[op].items.size());
}

}  // namespace zlpr::server
