// The dynamic batcher: per-operation FIFO queues feeding worker threads with batches.
//
// Requests (Work) are queued per operation. A queue is due when max_batch_rows rows wait or
// its oldest request has waited max_queue_delay. With adaptive_delay (the default) the wait
// applies only while the load makes it pay off, i.e. when the queue's previous batch held more
// than one request; under light load (a lone caller) a request is cut at once, so waiting
// never adds latency where no other request would have joined. A worker cuts a batch from its head
// under the lock (requests cancelled or past their deadline are dropped, not computed) and
// runs it outside the lock. A request larger than max_batch_rows is a batch of its own. A
// full queue refuses at once (RESOURCE_EXHAUSTED). Clock and executor are injected, so tests
// drive it without threads, gRPC or real time.
//
//   Batcher batcher({.num_ops = 2, .max_batch_rows = 256, .max_queue_delay = 500us,
//                    .max_queue_size = 1024});
//   batcher.Enqueue(std::move(work));               // from request handlers
//   while (batcher.NextBatch(&op, &batch)) Run(op, batch);   // in each worker thread
#ifndef ZLPR_SERVER_BATCHER_H_
#define ZLPR_SERVER_BATCHER_H_

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "absl/status/status.h"

namespace zlpr::server {

using SteadyTime = std::chrono::steady_clock::time_point;

class Clock {
 public:
  virtual ~Clock() = default;
  virtual SteadyTime Now() const = 0;
};

// The real steady clock.
Clock* SystemClock();

// One request waiting to be computed.
class Work {
 public:
  virtual ~Work() = default;
  virtual int64_t rows() const = 0;
  // The client gave up (the call was cancelled).
  virtual bool Cancelled() const = 0;
  // After this the result is of no use; SteadyTime::max() for none.
  virtual SteadyTime deadline() const = 0;
  // Completes the request without computing it (cancelled, expired).
  virtual void Drop(absl::Status why) = 0;

  SteadyTime enqueued_at{};
};

using Batch = std::vector<std::unique_ptr<Work>>;

struct BatcherOptions {
  int num_ops = 1;
  int64_t max_batch_rows = 256;
  std::chrono::microseconds max_queue_delay{250};
  int64_t max_queue_size = 1024;  // requests per operation
  // Wait for max_queue_delay only when the queue's previous batch merged several requests;
  // false: always wait (up to max_queue_delay or max_batch_rows).
  bool adaptive_delay = true;
  // Called under the batcher's lock whenever a queue's length changes (keep it cheap: a gauge).
  std::function<void(int op, int64_t depth)> on_depth;
};

class Batcher {
 public:
  explicit Batcher(const BatcherOptions& options, Clock* clock = SystemClock());
  Batcher(const Batcher&) = delete;
  Batcher& operator=(const Batcher&) = delete;

  // Queues `work` for operation `op`. RESOURCE_EXHAUSTED when that queue is full,
  // UNAVAILABLE after Shutdown(); `work` is destroyed then (not dropped: the caller answers).
  absl::Status Enqueue(int op, std::unique_ptr<Work> work);

  // Blocks until a batch is due and returns it (true), or returns false once shut down and
  // drained. Cancelled and expired requests met on the way are Drop()ped, outside the lock.
  bool NextBatch(int* op, Batch* batch);

  // The non-blocking core of NextBatch, for tests with an injected clock: cuts a batch if one
  // is due at clock->Now() and returns true; else returns false and sets *next_due to when
  // the next one will be (SteadyTime::max() when all queues are empty). Requests to drop are
  // appended to *dropped, for the caller to Drop() outside any lock.
  bool TryCut(int* op, Batch* batch, std::vector<std::unique_ptr<Work>>* dropped,
              SteadyTime* next_due);

  // Refuses new work; queued work is still handed out (immediately, without waiting for the
  // delay), after which NextBatch returns false.
  void Shutdown();

  // Requests waiting in the queue of `op`.
  int64_t depth(int op) const;
  const BatcherOptions& options() const { return options_; }

 private:
  struct Queue {
    std::deque<std::unique_ptr<Work>> items;
    int64_t rows = 0;
    size_t last_batch_requests = 0;  // requests in the queue's previous batch
  };
  void DepthChangedLocked(int op);
  bool TryCutLocked(SteadyTime now, int* op, Batch* batch,
                    std::vector<std::unique_ptr<Work>>* dropped, SteadyTime* next_due);

  const BatcherOptions options_;
  Clock* const clock_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Queue> queues_;  // guarded by mu_
  bool shutdown_ = false;      // guarded by mu_
};

}  // namespace zlpr::server

#endif  // ZLPR_SERVER_BATCHER_H_
