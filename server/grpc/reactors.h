// The reactors of every gRPC front end's compute methods, written once: a raw unary call, and
// an in-order, windowed bidirectional stream. Both take their messages as raw bytes, so that a
// message is charged to the memory budget before it is parsed, and hand each one to a
// Protocol, which converts it and queues its job on the core:
//
//   struct Protocol {
//     using Request = ...;    // protobuf messages, or types of the protocol's own with
//     using Response = ...;   // ParseMessage and SerializeMessage overloads beside them
//                             // (call_support.h's signatures; found by argument-dependent lookup)
//     struct Extra { ... };   // what a message carries besides them (timing, a view)
//     InferenceCore& core();
//     MethodId method() const;
//     // Converts and queues `request`; `done` runs once (from this thread or a worker) after
//     // `response` is filled. `request`, `response`, `extra` and `admission` outlive it.
//     void Submit(Admission* admission, CallControl control, Request& request,
//                 Response* response, Extra* extra, absl::AnyInvocable<void(absl::Status)> done);
//     // A stream message's error, answered in its own response (the stream goes on).
//     void AnswerError(const absl::Status& status, Response* response);
//     // A unary call's trailing metadata after an OK answer.
//     void AddTrailers(const Extra& extra, grpc::CallbackServerContext* ctx);
//   };
//
// Every call is a CallScope (shutdown waits for it) and every message an Admission (in flight,
// its memory, its outcome, the deadline of its response's write), ended by their destructors.
// Nothing blocks inside a reaction.
#ifndef ZLPR_SERVER_GRPC_REACTORS_H_
#define ZLPR_SERVER_GRPC_REACTORS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/support/server_callback.h"
#include "server/core/core.h"
#include "server/grpc/call_support.h"

namespace zlpr::server {

template <typename Protocol>
class UnaryCall final : public grpc::ServerUnaryReactor {
 public:
  using Request = typename Protocol::Request;
  using Response = typename Protocol::Response;

  // Stores its arguments only (made by NewReactor); Start() runs the call.
  UnaryCall(Protocol* protocol, grpc::CallbackServerContext* ctx, grpc::ByteBuffer* raw_out)
      : protocol_(protocol), ctx_(ctx), raw_out_(raw_out) {}

  // `raw_in` is the call's own buffer (gRPC hands it as const): its bytes are released once
  // parsed, so that a request is not held twice.
  void Start(const grpc::ByteBuffer* raw_in) {
    auto* raw = const_cast<grpc::ByteBuffer*>(raw_in);
    InferenceCore& core = protocol_->core();
    call_ = core.BeginCall();
    admission_ = core.Admit(protocol_->method(), call_);
    const auto bytes = static_cast<int64_t>(raw->Length());
    if (absl::Status st = admission_.Charge(bytes); !st.ok()) {
      raw->Clear();
      return Answer(st);
    }
    // A large message is bulk work whatever it asks for: parsed on the background threads, so
    // that parsing it never holds up the interactive path's CPU.
    if (core.IsBulkMessage(bytes)) {
      return core.background().Post([this, raw] { ParseAndSubmit(raw); });
    }
    ParseAndSubmit(raw);
  }

  // A cancelled call's queued job is dropped at once.
  void OnCancel() override {
    InferenceCore* core;
    {
      absl::MutexLock lock(&reactions_mu_);
      core = &protocol_->core();
    }
    core->CallCancelled();
  }

  // The admission and the call end with the reactor.
  void OnDone() override {
    { absl::MutexLock lock(&reactions_mu_); }
    delete this;
  }

 private:
  void ParseAndSubmit(grpc::ByteBuffer* raw) {
    InferenceCore& core = protocol_->core();
    request_ = std::make_unique<Request>();
    response_ = std::make_unique<Response>();
    if (absl::Status st = ParseMessage(raw, request_.get()); !st.ok()) {
      core.Rejected(Reject::kInvalid);
      return Answer(st);
    }
    protocol_->Submit(
        &admission_, ControlOf(ctx_, core.clock()), *request_, response_.get(), &extra_,
        [this](absl::Status st) {
          // The request goes now: its share of the budget was returned once the response was
          // built, whichever thread serializes that.
          request_.reset();
          // A bulk request's response is serialized on the background threads,
          // not on the worker, which interactive work is waiting for.
          if (admission_.priority() == Priority::kBulk) {
            protocol_->core().background().Post([this, st = std::move(st)] { Answer(st); });
          } else {
            Answer(st);
          }
        });
  }

  // The response serialized (the messages freed), the outcome recorded, then the status; the
  // call holds only its serialized response until gRPC has written it.
  void Answer(const absl::Status& st) {
    request_.reset();
    grpc::Status status = ToGrpc(st);
    int64_t bytes = 0;
    if (st.ok()) {
      protocol_->AddTrailers(extra_, ctx_);
      status = SerializeMessage(*response_, raw_out_);
      bytes = static_cast<int64_t>(raw_out_->Length());
    }
    response_.reset();
    admission_.ShrinkTo(bytes);
    admission_.Finish(static_cast<absl::StatusCode>(status.error_code()), bytes);
    admission_.WatchWrite(bytes, [ctx = ctx_] { ctx->TryCancel(); });
    HandToGrpc([&] { Finish(status); });
  }

  Protocol* const protocol_;
  grpc::CallbackServerContext* const ctx_;
  grpc::ByteBuffer* const raw_out_;
  CallScope call_;  // declared first: ends last, after the admission returned its memory
  Admission admission_;
  std::unique_ptr<Request> request_;
  std::unique_ptr<Response> response_;
  typename Protocol::Extra extra_;
  // gRPC runs OnDone after OnCancel has returned, but orders the two inside its own libraries,
  // where a thread sanitizer cannot see it: both take this lock, so that the order is one it
  // checks (uncontended, it costs an atomic each).
  absl::Mutex reactions_mu_;
};

// A bidirectional stream: messages are read one at a time as raw bytes and submitted as they
// arrive (up to the window: messages read and not yet answered, beyond which reading pauses
// until a write completes); responses are written strictly in arrival order, one write in
// flight. A message with an error (invalid, over the budget) is answered with it in place and
// the stream goes on; a message that does not parse ends the stream with INVALID_ARGUMENT once
// the messages before it are answered (its id cannot be read, so it cannot be answered in
// place). At shutdown the stream ends (UNAVAILABLE) once what it accepted is answered.
template <typename Protocol>
class OrderedStream final : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>,
                            public DrainRegistry::Member {
 public:
  using Request = typename Protocol::Request;
  using Response = typename Protocol::Response;

  // Stores its arguments only (made by NewReactor); Start() begins the stream.
  OrderedStream(Protocol* protocol, grpc::CallbackServerContext* ctx, int window)
      : protocol_(protocol), ctx_(ctx), window_(window) {}

  // Registers the stream for shutdown, refuses it while shutting down, else starts reading.
  void Start() {
    InferenceCore& core = protocol_->core();
    call_ = core.BeginCall();
    core.streams().Add(this);
    absl::MutexLock lock(&mu_);
    if (core.shutting_down()) {
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
      if (outstanding_ < window_ && !draining_) {
        StartNextReadLocked();
      } else {
        read_paused_ = true;
      }
    }
    InferenceCore& core = protocol_->core();
    auto message = std::make_shared<Message>();
    message->admission = core.Admit(protocol_->method(), call_);
    const auto bytes = static_cast<int64_t>(raw->Length());
    if (absl::Status st = message->admission.Charge(bytes); !st.ok()) {
      raw.reset();
      return Answered(seq, message, st);  // answered in order, with its error
    }
    if (core.IsBulkMessage(bytes)) {  // as a unary call's
      return core.background().Post([this, seq, message, raw = std::move(raw)]() mutable {
        ParseAndSubmit(seq, std::move(message), std::move(raw));
      });
    }
    ParseAndSubmit(seq, std::move(message), std::move(raw));
  }

  void OnWriteDone(bool ok) override {
    std::shared_ptr<Message> written;
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      written = std::move(writing_message_);
      ++next_write_seq_;
      --outstanding_;
      if (!ok) broken_ = true;  // the client is gone: answer nothing more
      if (read_paused_ && !draining_ && !broken_ && !failed_ && outstanding_ < window_) {
        read_paused_ = false;
        StartNextReadLocked();
      }
      WriteNextLocked();
      MaybeFinishLocked();
    }
    // Outside the lock: the watchdog may be cancelling this call right now.
    if (written != nullptr) written->admission.DisarmWrite();
  }

  void OnDone() override {
    protocol_->core().streams().Remove(this);  // no Drain() from now on
    // The thread that called Finish did so holding mu_, and gRPC may run OnDone before that
    // thread lets go of it: wait for it, or the mutex is destroyed under its unlock. (Nobody
    // takes mu_ after Finish: every message was answered, every reaction is over.)
    { absl::MutexLock lock(&mu_); }
    delete this;  // the messages' admissions and the call end with it
  }

  void Drain() override {
    absl::MutexLock lock(&mu_);
    draining_ = true;
    MaybeFinishLocked();
  }

  // A cancelled stream's queued jobs are dropped at once. gRPC runs OnDone after this returns,
  // but orders the two inside its own libraries, where a thread sanitizer cannot see it: mu_,
  // which OnDone takes too, makes the order one it checks.
  void OnCancel() override {
    InferenceCore* core;
    {
      absl::MutexLock lock(&mu_);
      core = &protocol_->core();
    }
    core->CallCancelled();
  }

 private:
  struct Message {
    Admission admission;
    std::unique_ptr<Request> request = std::make_unique<Request>();
    std::unique_ptr<Response> response = std::make_unique<Response>();
    typename Protocol::Extra extra;
    grpc::ByteBuffer serialized;  // the response, once serialized
  };

  void ParseAndSubmit(uint64_t seq, std::shared_ptr<Message> message,
                      std::unique_ptr<grpc::ByteBuffer> raw) {
    InferenceCore& core = protocol_->core();
    if (const absl::Status why = ParseMessage(raw.get(), message->request.get()); !why.ok()) {
      core.Rejected(Reject::kInvalid);
      message->admission.Finish(why.code());
      return Failed(seq, grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                      absl::StrFormat("stream message %d: %s; the stream ends "
                                                      "here, and the messages sent after it "
                                                      "were not answered",
                                                      seq, why.message())));
    }
    raw.reset();
    Message* m = message.get();
    protocol_->Submit(
        &m->admission, ControlOf(ctx_, core.clock()), *m->request, m->response.get(), &m->extra,
        [this, seq, message = std::move(message)](absl::Status st) {
          message->request.reset();  // as a unary call's
          // A bulk message's response is serialized on the background threads.
          if (message->admission.priority() == Priority::kBulk) {
            protocol_->core().background().Post(
                [this, seq, message, st = std::move(st)] { Answered(seq, message, st); });
          } else {
            Answered(seq, message, st);
          }
        });
  }

  // Message `seq` has its answer (a response, or `st`): serialized and queued in order.
  void Answered(uint64_t seq, const std::shared_ptr<Message>& message, const absl::Status& st) {
    message->request.reset();
    if (!st.ok()) protocol_->AnswerError(st, message->response.get());
    Completed(seq, message, st.code());
  }

  void StartNextReadLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    reading_ = std::make_unique<grpc::ByteBuffer>();
    grpc::ByteBuffer* into = reading_.get();
    HandToGrpc([&] { this->StartRead(into); });
  }

  // Serializes the response, then queues it for writing in order.
  void Completed(uint64_t seq, std::shared_ptr<Message> message, absl::StatusCode code)
      ABSL_LOCKS_EXCLUDED(mu_) {
    const grpc::Status serialized = SerializeMessage(*message->response, &message->serialized);
    message->response.reset();
    const auto bytes = static_cast<int64_t>(message->serialized.Length());
    message->admission.ShrinkTo(bytes);
    message->admission.Finish(code, serialized.ok() ? bytes : 0);
    if (!serialized.ok()) return Failed(seq, serialized);
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
        continue;
      }
      writing_ = true;
      writing_message_ = std::move(it->second);
      ready_.erase(it);
      const grpc::ByteBuffer* serialized = &writing_message_->serialized;
      writing_message_->admission.WatchWrite(static_cast<int64_t>(serialized->Length()),
                                             [ctx = ctx_] { ctx->TryCancel(); });
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

  Protocol* const protocol_;
  grpc::CallbackServerContext* const ctx_;
  const int window_;
  CallScope call_;  // begun before shutdown: the server waits for it

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
  bool failed_ ABSL_GUARDED_BY(mu_) = false;               // a message did not parse (or serialize)
  uint64_t failed_seq_ ABSL_GUARDED_BY(mu_) = UINT64_MAX;  // the first such message
  grpc::Status failed_status_ ABSL_GUARDED_BY(mu_);
};

}  // namespace zlpr::server

#endif  // ZLPR_SERVER_GRPC_REACTORS_H_
