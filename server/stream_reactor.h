// The bidirectional stream reactor of StreamLoss and StreamPredict, and the registry of open
// streams that shutdown drains.
//
// A stream reads a message at a time as raw bytes, receives and submits each through the
// service (the same path as a unary call), and writes the responses strictly in arrival order
// with one write in flight. At most `stream_window` messages are outstanding (read, not yet
// written); beyond that reading pauses until a write completes. An invalid message (or one the
// memory budget cannot cover) is answered with its `error` and the stream goes on; a message
// that does not parse ends the stream with INVALID_ARGUMENT once the messages before it are
// answered (its request_id cannot be read, so it cannot be answered in place). Nothing blocks
// inside a reaction.
#ifndef ZLPR_SERVER_STREAM_REACTOR_H_
#define ZLPR_SERVER_STREAM_REACTOR_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <utility>

#include "absl/base/dynamic_annotations.h"
#include "absl/base/thread_annotations.h"
#include "absl/strings/str_format.h"
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

// Runs `op`, a reactor's Finish, StartWrite or StartRead, with its writes hidden from
// ThreadSanitizer. gRPC arms the operation's completion tag there (CallbackWithSuccessTag::Set,
// CallOpSet) and runs the tag on a completion thread, ordered by gRPC core, which TSan cannot
// see. tests/tsan.supp names those frames, but a suppression only matches a stack TSan can
// restore, and TSan cannot always restore an old access of a busy (or since finished) worker
// thread: the report then shows "[failed to restore the stack]" and no suppression applies (CI
// saw it once, in a shutdown test under load). Reads stay checked, and so does everything our
// reactions do: gRPC runs them later, on its own threads. No effect outside TSan builds.
template <typename Op>
void HandToGrpc(Op&& op) {
  ABSL_ANNOTATE_IGNORE_WRITES_BEGIN();
  std::forward<Op>(op)();
  ABSL_ANNOTATE_IGNORE_WRITES_END();
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
class StreamReactor final : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>,
                            public StreamRegistry::Member {
 public:
  using Submit = void (ZlprServiceImpl::*)(grpc::CallbackServerContext*, const Request*, Response*,
                                           MemoryBudget::Lease*, ZlprServiceImpl::Done);

  // Stores its arguments only (see NewReactor); Start() begins the stream. `accepted`: the
  // service's CallBegins() for this stream.
  StreamReactor(ZlprServiceImpl* service, grpc::CallbackServerContext* ctx, Method method,
                Submit submit, bool accepted)
      : service_(service), ctx_(ctx), method_(method), submit_(submit), accepted_(accepted) {}

  // Registers the stream for shutdown, refuses it while shutting down, else starts reading.
  void Start() {
    service_->streams().Add(this);
    absl::MutexLock lock(&mu_);
    if (service_->shutting_down()) {
      draining_ = true;
      finished_ = true;
      HandToGrpc([this] {
        this->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down"));
      });
      return;
    }
    StartNextReadLocked();
  }

  void OnReadDone(bool ok) override {
    std::unique_ptr<grpc::ByteBuffer> raw;
    uint64_t seq;
    {
      absl::MutexLock lock(&mu_);
      raw = std::move(reading_);
      if (!ok || failed_) {  // the client is done, or the stream already failed: read no more
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
    // The request, its response and its memory lease live until the response is serialized;
    // the lease until it is written.
    auto message = std::make_shared<Message>();
    auto done = [this, seq, message, start](const ZlprServiceImpl::Outcome& outcome) {
      message->request.reset();
      Response& resp = *message->response;
      if (!outcome.status.ok()) {
        resp.mutable_error()->set_code(outcome.status.error_code());
        resp.mutable_error()->set_message(outcome.status.error_message());
      }
      service_->metrics().RequestDone(
          method_, outcome.status.error_code(),
          std::chrono::duration<double>(service_->clock().Now() - start).count());
      Completed(seq, message);
    };
    const absl::Status received =
        service_->Receive(raw.get(), message->request.get(), &message->lease);
    raw.reset();
    if (absl::IsInvalidArgument(received)) {  // the message does not parse: end the stream
      service_->metrics().RequestDone(method_, grpc::StatusCode::INVALID_ARGUMENT, 0);
      Failed(seq, grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                               absl::StrFormat("stream message %d: %s; the stream ends here, and "
                                               "the messages sent after it were not answered",
                                               seq, received.message())));
      return;
    }
    if (!received.ok()) return done({ToGrpc(received)});  // over the budget: answered in order
    (service_->*submit_)(ctx_, message->request.get(), message->response.get(), &message->lease,
                         std::move(done));
  }

  void OnWriteDone(bool ok) override {
    service_->watchdog().Disarm(write_watch_.exchange(0));
    absl::MutexLock lock(&mu_);
    writing_ = false;
    writing_message_.reset();
    ++next_write_seq_;
    --outstanding_;
    service_->metrics().inflight().Decrement();
    if (!ok) broken_ = true;  // the client is gone: answer nothing more
    if (read_paused_ && !draining_ && !broken_ && !failed_ &&
        outstanding_ < service_->stream_window()) {
      read_paused_ = false;
      StartNextReadLocked();
    }
    WriteNextLocked();
    MaybeFinishLocked();
  }

  void OnDone() override {
    service_->watchdog().Disarm(write_watch_.exchange(0));
    service_->streams().Remove(this);  // no Drain() from now on
    // The thread that called Finish did so holding mu_, and gRPC may run OnDone before that
    // thread lets go of it: wait for it, or the mutex is destroyed under its unlock. (Nobody
    // takes mu_ after Finish: every message was answered, every reaction is over.)
    { absl::MutexLock lock(&mu_); }
    service_->CallEnds(accepted_);
    delete this;
  }

  void Drain() override {
    absl::MutexLock lock(&mu_);
    draining_ = true;
    MaybeFinishLocked();
  }

 private:
  struct Message {
    std::unique_ptr<Request> request = std::make_unique<Request>();
    std::unique_ptr<Response> response = std::make_unique<Response>();
    grpc::ByteBuffer serialized;  // the response, once serialized
    MemoryBudget::Lease lease;
  };

  void StartNextReadLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    reading_ = std::make_unique<grpc::ByteBuffer>();
    grpc::ByteBuffer* into = reading_.get();
    HandToGrpc([&] { this->StartRead(into); });
  }

  // Serializes the response, then queues it for writing in order.
  void Completed(uint64_t seq, std::shared_ptr<Message> message) ABSL_LOCKS_EXCLUDED(mu_) {
    const grpc::Status serialized = Serialize(*message->response, &message->serialized);
    message->response.reset();
    // From here on the message holds only its serialized response.
    message->lease.ShrinkTo(static_cast<int64_t>(message->serialized.Length()));
    if (!serialized.ok()) return Failed(seq, serialized);
    service_->metrics().response_bytes().Increment(
        static_cast<double>(message->serialized.Length()));
    absl::MutexLock lock(&mu_);
    ready_.emplace(seq, std::move(message));
    WriteNextLocked();
    MaybeFinishLocked();
  }

  // Message `seq` cannot be answered (it did not parse): nothing is written for it or after it;
  // once the messages before it are answered the stream ends with `why`.
  void Failed(uint64_t seq, const grpc::Status& why) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    if (!failed_ || seq < failed_seq_) {
      failed_ = true;
      failed_seq_ = seq;
      failed_status_ = why;
    }
    ready_.emplace(seq, nullptr);
    WriteNextLocked();
    MaybeFinishLocked();
  }

  void WriteNextLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    while (!writing_) {
      auto it = ready_.find(next_write_seq_);
      if (it == ready_.end()) return;
      // Nothing to write (or not after a failed message), or nobody to write to: count it
      // answered.
      if (it->second == nullptr || it->first > failed_seq_ || broken_ || finished_) {
        ready_.erase(it);
        ++next_write_seq_;
        --outstanding_;
        service_->metrics().inflight().Decrement();
        continue;
      }
      writing_ = true;
      writing_message_ = std::move(it->second);
      ready_.erase(it);
      const grpc::ByteBuffer* serialized = &writing_message_->serialized;
      write_watch_.store(
          service_->WatchWrite(ctx_, static_cast<int64_t>(serialized->Length())));
      HandToGrpc([&] { this->StartWrite(serialized); });
    }
  }

  void MaybeFinishLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_ || writing_ || outstanding_ > 0) return;
    if (failed_) {
      finished_ = true;
      const grpc::Status status = failed_status_;
      HandToGrpc([&] { this->Finish(status); });
    } else if (reads_done_) {
      finished_ = true;
      HandToGrpc([this] { this->Finish(grpc::Status::OK); });
    } else if (draining_ || broken_) {
      finished_ = true;
      HandToGrpc([this] {
        this->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "the server is shutting down"));
      });
    }
  }

  ZlprServiceImpl* const service_;
  grpc::CallbackServerContext* const ctx_;
  const Method method_;
  const Submit submit_;
  const bool accepted_;  // begun before shutdown: the server waits for it
  std::atomic<Watchdog::Id> write_watch_{0};  // the write in flight's deadline

  absl::Mutex mu_;
  std::unique_ptr<grpc::ByteBuffer> reading_ ABSL_GUARDED_BY(mu_);  // the one read in flight
  uint64_t next_seq_ ABSL_GUARDED_BY(mu_) = 0;        // sequence number of the next read
  uint64_t next_write_seq_ ABSL_GUARDED_BY(mu_) = 0;  // the response that must be written next
  int outstanding_ ABSL_GUARDED_BY(mu_) = 0;          // read and not yet written
  // Answered messages waiting for their turn (null: nothing to write for it).
  std::map<uint64_t, std::shared_ptr<Message>> ready_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<Message> writing_message_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool read_paused_ ABSL_GUARDED_BY(mu_) = false;
  bool reads_done_ ABSL_GUARDED_BY(mu_) = false;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool broken_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool failed_ ABSL_GUARDED_BY(mu_) = false;  // a message did not parse (or serialize)
  uint64_t failed_seq_ ABSL_GUARDED_BY(mu_) = UINT64_MAX;  // the first such message
  grpc::Status failed_status_ ABSL_GUARDED_BY(mu_);
};

}  // namespace zlpr::server

#endif  // ZLPR_SERVER_STREAM_REACTOR_H_
