// Batcher: one mutex and condition variable; batches are cut under the lock and run outside.
#include "server/batcher.h"

#include <utility>

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

Batcher::Batcher(const BatcherOptions& options, Clock* clock)
    : options_(options), clock_(clock), queues_(static_cast<size_t>(options.num_ops)) {}

absl::Status Batcher::Enqueue(int op, std::unique_ptr<Work> work) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (shutdown_) return absl::UnavailableError("the server is shutting down");
    Queue& q = queues_[op];
    if (static_cast<int64_t>(q.items.size()) >= options_.max_queue_size) {
      return absl::ResourceExhaustedError(
          "the request queue is full (" + std::to_string(options_.max_queue_size) +
          " requests waiting); retry later");
    }
    work->enqueued_at = clock_->Now();
    q.rows += work->rows();
    q.items.push_back(std::move(work));
  }
  cv_.notify_one();
  return absl::OkStatus();
}

bool Batcher::TryCutLocked(SteadyTime now, int* op, Batch* batch,
                           std::vector<std::unique_ptr<Work>>* dropped, SteadyTime* next_due) {
  *next_due = SteadyTime::max();
  int best = -1;
  for (int i = 0; i < static_cast<int>(queues_.size()); ++i) {
    Queue& q = queues_[i];
    // Drop what nobody waits for any more before it counts towards a batch.
    while (!q.items.empty() &&
           (q.items.front()->Cancelled() || q.items.front()->deadline() <= now)) {
      q.rows -= q.items.front()->rows();
      dropped->push_back(std::move(q.items.front()));
      q.items.pop_front();
    }
    if (q.items.empty()) continue;
    const SteadyTime due = q.rows >= options_.max_batch_rows || shutdown_
                               ? q.items.front()->enqueued_at
                               : q.items.front()->enqueued_at + options_.max_queue_delay;
    if (due <= now) {
      // Among due queues, the one whose oldest request is oldest goes first.
      if (best < 0 || q.items.front()->enqueued_at < queues_[best].items.front()->enqueued_at) {
        best = i;
      }
    } else if (due < *next_due) {
      *next_due = due;
    }
  }
  if (best < 0) return false;
  Queue& q = queues_[best];
  int64_t rows = 0;
  while (!q.items.empty()) {
    Work& w = *q.items.front();
    if (w.Cancelled() || w.deadline() <= now) {
      q.rows -= w.rows();
      dropped->push_back(std::move(q.items.front()));
      q.items.pop_front();
      continue;
    }
    if (!batch->empty() && rows + w.rows() > options_.max_batch_rows) break;
    rows += w.rows();
    q.rows -= w.rows();
    batch->push_back(std::move(q.items.front()));
    q.items.pop_front();
  }
  *op = best;
  return !batch->empty();
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
  for (auto& w : dropped) {
    w->Drop(w->Cancelled() ? absl::CancelledError("the call was cancelled while queued")
                           : absl::DeadlineExceededError("the deadline passed while queued"));
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
