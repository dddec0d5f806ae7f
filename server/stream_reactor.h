// The bidirectional stream reactor of StreamLoss and StreamPredict, and the registry of open
// streams that shutdown drains.
//
// A stream reads a message at a time, submits each through the service (the same path as a
// unary call), and writes the responses strictly in arrival order with one write in flight. At
// most `stream_window` messages are outstanding (read, not yet written); beyond that reading
// pauses until a write completes. A bad message is answered with its `error` and the stream
// goes on. Nothing blocks inside a reaction.
#ifndef ZLPR_SERVER_STREAM_REACTOR_H_
#define ZLPR_SERVER_STREAM_REACTOR_H_

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <utility>

#include "absl/base/dynamic_annotations.h"
#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/support/server_callback.h"
#include "server/service.h"

namespace zlpr::server {

// Creates a reactor for gRPC. gRPC hands a reactor to its completion threads through its own
// queues and relaxed loads, which ThreadSanitizer cannot order after the construction, so the
// construction is hidden from TSan: constructors here only store their arguments, and the
// reactors' logic runs in methods TSan sees. No effect outside TSan builds.
template <typename Reactor, typename... Args>
Reactor* NewReactor(Args&&... args) {
  ABSL_ANNOTATE_IGNORE_READS_AND_WRITES_BEGIN();
  Reactor* reactor = new Reactor(std::forward<Args>(args)...);
  ABSL_ANNOTATE_IGNORE_READS_AND_WRITES_END();
  return reactor;
}

// Every open stream, so that shutdown can end them once their accepted messages are answered.
class StreamRegistry {
 public:
  class Member {
   public:
    virtual ~Member() = default;
    virtual void Drain() = 0;
  };
  void Add(Member* m) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    members_.insert(m);
  }
  void Remove(Member* m) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    members_.erase(m);
  }
  void DrainAll() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    for (Member* m : members_) m->Drain();
  }

 private:
  absl::Mutex mu_;
  std::set<Member*> members_ ABSL_GUARDED_BY(mu_);
};

template <typename Request, typename Response>
class StreamReactor final : public grpc::ServerBidiReactor<Request, Response>,
                            public StreamRegistry::Member {
 public:
  using Submit = void (ZlprServiceImpl::*)(grpc::CallbackServerContext*, const Request*, Response*,
                                           ZlprServiceImpl::Done);

  // Stores its arguments only (see NewReactor); Start() begins the stream. `accepted`: the
  // service's CallBegins() for this stream.
  StreamReactor(ZlprServiceImpl* service, grpc::CallbackServerContext* ctx, Method method,
                Submit submit, bool accepted)
      : service_(service), ctx_(ctx), method_(method), submit_(submit), accepted_(accepted) {}

  // Registers the stream for shutdown, refuses it while shutting down or without credentials,
  // else starts reading.
  void Start() {
    service_->streams().Add(this);
    absl::MutexLock lock(&mu_);
    if (service_->shutting_down()) {
      draining_ = true;
      finished_ = true;
      this->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down"));
      return;
    }
    if (absl::Status st = service_->auth().Check(*ctx_); !st.ok()) {
      service_->metrics().rejected(Reject::kUnauthenticated).Increment();
      finished_ = true;
      this->Finish(ToGrpc(st));
      return;
    }
    StartNextReadLocked();
  }

  void OnReadDone(bool ok) override {
    std::unique_ptr<Request> request;
    uint64_t seq;
    {
      absl::MutexLock lock(&mu_);
      request = std::move(reading_);
      if (!ok) {
        reads_done_ = true;
        MaybeFinishLocked();
        return;
      }
      seq = next_seq_++;
      ++outstanding_;
      if (outstanding_ < service_->stream_window() && !draining_) {
        StartNextReadLocked();
      } else {
        read_paused_ = true;
      }
    }
    service_->metrics().inflight().Increment();
    const SteadyTime start = service_->clock().Now();
    auto response = std::make_unique<Response>();
    Response* raw = response.get();
    const Request* req = request.get();
    // The request and response live in the completion until it runs.
    auto owned = std::make_shared<std::pair<std::unique_ptr<Request>, std::unique_ptr<Response>>>(
        std::move(request), std::move(response));
    (service_->*submit_)(
        ctx_, req, raw, [this, seq, owned, start](const ZlprServiceImpl::Outcome& outcome) {
          Response* resp = owned->second.get();
          if (!outcome.status.ok()) {
            resp->mutable_error()->set_code(outcome.status.error_code());
            resp->mutable_error()->set_message(outcome.status.error_message());
          }
          service_->metrics().RequestDone(
              method_, outcome.status.error_code(),
              std::chrono::duration<double>(service_->clock().Now() - start).count());
          Completed(seq, std::move(owned->second));
        });
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    writing_response_.reset();
    ++next_write_seq_;
    --outstanding_;
    service_->metrics().inflight().Decrement();
    if (!ok) broken_ = true;  // the client is gone: answer nothing more
    if (read_paused_ && !draining_ && !broken_ && outstanding_ < service_->stream_window()) {
      read_paused_ = false;
      StartNextReadLocked();
    }
    WriteNextLocked();
    MaybeFinishLocked();
  }

  void OnDone() override {
    service_->streams().Remove(this);
    service_->CallEnds(accepted_);
    delete this;
  }

  void Drain() override {
    absl::MutexLock lock(&mu_);
    draining_ = true;
    MaybeFinishLocked();
  }

 private:
  void StartNextReadLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    reading_ = std::make_unique<Request>();
    this->StartRead(reading_.get());
  }

  void Completed(uint64_t seq, std::unique_ptr<Response> response) ABSL_LOCKS_EXCLUDED(mu_) {
    service_->metrics().response_bytes().Increment(static_cast<double>(response->ByteSizeLong()));
    absl::MutexLock lock(&mu_);
    ready_.emplace(seq, std::move(response));
    WriteNextLocked();
    MaybeFinishLocked();
  }

  void WriteNextLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    while (!writing_) {
      auto it = ready_.find(next_write_seq_);
      if (it == ready_.end()) return;
      if (broken_ || finished_) {  // nobody to write to: count it answered
        ready_.erase(it);
        ++next_write_seq_;
        --outstanding_;
        service_->metrics().inflight().Decrement();
        continue;
      }
      writing_ = true;
      writing_response_ = std::move(it->second);
      ready_.erase(it);
      this->StartWrite(writing_response_.get());
    }
  }

  void MaybeFinishLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_ || writing_ || outstanding_ > 0) return;
    if (reads_done_) {
      finished_ = true;
      this->Finish(grpc::Status::OK);
    } else if (draining_ || broken_) {
      finished_ = true;
      this->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down"));
    }
  }

  ZlprServiceImpl* const service_;
  grpc::CallbackServerContext* const ctx_;
  const Method method_;
  const Submit submit_;
  const bool accepted_;  // begun before shutdown: the server waits for it

  absl::Mutex mu_;
  std::unique_ptr<Request> reading_ ABSL_GUARDED_BY(mu_);  // the one read in flight
  uint64_t next_seq_ ABSL_GUARDED_BY(mu_) = 0;             // sequence number of the next read
  uint64_t next_write_seq_ ABSL_GUARDED_BY(mu_) = 0;       // the response that must be written next
  int outstanding_ ABSL_GUARDED_BY(mu_) = 0;               // read and not yet written
  std::map<uint64_t, std::unique_ptr<Response>> ready_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<Response> writing_response_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool read_paused_ ABSL_GUARDED_BY(mu_) = false;
  bool reads_done_ ABSL_GUARDED_BY(mu_) = false;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool broken_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace zlpr::server

#endif  // ZLPR_SERVER_STREAM_REACTOR_H_
