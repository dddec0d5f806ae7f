// FrontEnd: the listener, and one Session per connection.
#include "server/http/front_end.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <limits>
#include <memory>
#include <optional>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "boost/asio/dispatch.hpp"
#include "boost/asio/ip/tcp.hpp"
#include "boost/asio/post.hpp"
#include "boost/asio/ssl.hpp"
#include "boost/asio/steady_timer.hpp"
#include "boost/asio/strand.hpp"
#include "boost/beast/core.hpp"
#include "boost/beast/http.hpp"
#include "boost/beast/ssl.hpp"
#include "common/address.h"

namespace zlpr::server::http {

namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
namespace net = boost::asio;
namespace ssl = boost::asio::ssl;
using tcp = boost::asio::ip::tcp;
using SteadyClock = std::chrono::steady_clock;

namespace {

// A handler that throws is a bug of ours (or memory running out): say so in the log, without
// letting a client that can repeat it flood the log (the first 10, then every 1000th).
void LogHandlerFailure(std::string_view what) {
  static std::atomic<int64_t> failures{0};
  const int64_t n = failures.fetch_add(1, std::memory_order_relaxed) + 1;
  if (n <= 10 || n % 1000 == 0) {
    std::fprintf(stderr,
                 "zlpr-server: an HTTP request failed with an exception (%lld so far): %.*s\n",
                 static_cast<long long>(n), static_cast<int>(what.size()), what.data());
  }
}

// When a transfer that began at `start` must have moved `done` bytes: `timeout` plus the time
// those bytes take at the slowest rate allowed. Re-armed as bytes move, it cuts off a client
// that stalls or trickles, and never one that keeps up.
SteadyClock::time_point TransferDeadline(SteadyClock::time_point start,
                                         std::chrono::milliseconds timeout, uint64_t done,
                                         int64_t min_bytes_per_second) {
  const auto ms = static_cast<int64_t>(
      std::min<double>(1e12, 1000.0 * static_cast<double>(done) /
                                 static_cast<double>(std::max<int64_t>(1, min_bytes_per_second))));
  return start + timeout + std::chrono::milliseconds(ms);
}

// A reserved connection (over max_connections) gets this long for its header.
constexpr std::chrono::seconds kReservedHeaderTimeout{2};

// The protocol label of this front end's connections in the core's reports.
constexpr char kProtocol[] = "oip_http";

}  // namespace

class FrontEnd::Impl {
 public:
  Impl(const Options& opts, InferenceCore* c, Application* a)
      : options(opts), core(c), app(a), acceptor(ioc) {}

  const Options options;
  InferenceCore* const core;
  Application* const app;
  // Declared before the io_context, so that they outlive it: its destructor destroys the
  // handlers still queued, and with them the last sessions, which use these.
  std::optional<ssl::context> tls;
  absl::Mutex connections_mu;
  int connections ABSL_GUARDED_BY(connections_mu) = 0;
  std::atomic<bool> stopping{false};
  // Closed by Stop() before the I/O threads end: from then on what other threads hand back to
  // a session (the memory budget's grants, the application's answers) is dropped instead of
  // posted to the io_context.
  struct PostGate {
    absl::Mutex mu;
    bool open ABSL_GUARDED_BY(mu) = true;
  };
  std::shared_ptr<PostGate> gate = std::make_shared<PostGate>();
  net::io_context ioc;
  tcp::acceptor acceptor;
  std::vector<std::thread> threads;

  void Accept();
};

namespace {

// One connection: requests read one after another (keep-alive), each answered before the next is
// read. Runs on its strand; a request being handled holds no thread. `Stream` is a
// beast::tcp_stream or a TLS stream over one.
template <typename Stream>
class Session : public std::enable_shared_from_this<Session<Stream>> {
 public:
  Session(FrontEnd::Impl* front, Stream stream, bool reserve)
      : front_(front),
        core_(front->core),
        app_(front->app),
        stream_(std::move(stream)),
        budget_timer_(stream_.get_executor()),
        reserve_(reserve) {
    core_->listener().OnConnections(kProtocol, 1);
  }

  ~Session() {
    budget_ticket_.Cancel();
    core_->listener().OnConnections(kProtocol, -1);
    absl::MutexLock lock(&front_->connections_mu);
    --front_->connections;
  }

  void Start() {
    if constexpr (std::is_same_v<Stream, beast::tcp_stream>) {
      net::dispatch(stream_.get_executor(), [self = this->shared_from_this()] { self->Read(); });
    } else {
      beast::get_lowest_layer(stream_).expires_after(options().io_timeout);
      stream_.async_handshake(ssl::stream_base::server,
                              [self = this->shared_from_this()](beast::error_code ec) {
                                if (!ec) self->Step([&] { self->Read(); });
                              });
    }
  }

 private:
  const Options& options() const { return front_->options; }

  // Runs one step of the session on its strand. An exception must not leave an I/O thread (it
  // would end the process): it fails this request with 500 and closes the connection, and the
  // server goes on.
  template <typename F>
  void Step(F&& step) {
    try {
      std::forward<F>(step)();
    } catch (const std::exception& e) {
      Fail(e.what());
    } catch (...) {
      Fail("an exception that is not a std::exception");
    }
  }

  void Fail(std::string_view what) {
    LogHandlerFailure(what);
    failed_ = true;
    if (handling_ || writing_ != nullptr || continue_ != nullptr) {
      // The application still owns the request, or a write is under way: the connection just
      // closes; OnAnswer or OnWritten ends the request.
      return Close();
    }
    if (admission_.has_value()) admission_->Finish(absl::StatusCode::kInternal);
    Send(app_->Error(500,
                     "the server could not handle this request (an internal error, logged "
                     "by the server)"),
         /*close=*/true);
  }

  void Read() {
    head_ = false;
    expect_continue_ = false;
    discarded_ = 0;
    parser_.emplace();
    parser_->header_limit(16 << 10);
    // Checked against the header's Content-Length below, with a clear answer. (Not boost::none:
    // Boost 1.74 compares a Content-Length with an empty limit as if the limit were smaller.)
    parser_->body_limit(std::numeric_limits<uint64_t>::max());
    beast::get_lowest_layer(stream_).expires_after(
        reserve_ ? std::chrono::milliseconds(kReservedHeaderTimeout) : options().io_timeout);
    bhttp::async_read_header(stream_, buffer_, *parser_,
                             [self = this->shared_from_this()](beast::error_code ec, size_t) {
                               self->Step([&] { self->OnHeader(ec); });
                             });
  }

  void OnHeader(beast::error_code ec) {
    if (ec) {
      if (ec != bhttp::error::end_of_stream && ec != beast::error::timeout &&
          ec != net::error::eof && ec != net::error::operation_aborted) {
        // A malformed request line or header (or one over 16 KiB): say so, then close.
        core_->Rejected(Reject::kInvalid);
        return Send(app_->Error(400, absl::StrCat("the request's header could not be read: ",
                                                  ec.message())),
                    /*close=*/true);
      }
      return Close();
    }
    const Request& req = parser_->get();
    keep_alive_ = req.keep_alive();
    head_ = req.method() == bhttp::verb::head;
    // Transfer-Encoding decides where this request ends and the next begins: anything but one
    // plain "chunked" (and no Content-Length beside it) could be read one way here and another
    // by a proxy in front, and is refused with the connection closed (RFC 9112, section 6.3).
    if (const auto te = req.find(bhttp::field::transfer_encoding); te != req.end()) {
      const bool with_length = req.count(bhttp::field::content_length) > 0;
      if (req.count(bhttp::field::transfer_encoding) > 1 ||
          !beast::iequals(te->value(), "chunked") || with_length) {
        core_->Rejected(Reject::kInvalid);
        return Send(app_->Error(400, absl::StrFormat("Transfer-Encoding '%s'%s is not "
                                                     "supported: send a Content-Length",
                                                     std::string(te->value()),
                                                     with_length ? " with Content-Length" : "")),
                    /*close=*/true);
      }
    }
    const std::string_view target(req.target().data(), req.target().size());
    const std::string_view path = target.substr(0, target.find('?'));
    path_ = absl::StrSplit(absl::string_view(path.data(), path.size()), '/', absl::SkipEmpty());
    has_body_ = parser_->chunked() || parser_->content_length().value_or(0) > 0;
    const bool health = app_->IsHealthCheck(path_);
    if (reserve_ && !health) {
      return Send(app_->Error(503, absl::StrFormat("the server has %d connections open "
                                                   "(--http_max_connections): only health "
                                                   "checks are answered on this one; retry later",
                                                   options().max_connections)),
                  /*close=*/true);
    }
    if (options().tokens != nullptr && !health) {
      const auto it = req.find(bhttp::field::authorization);
      if (it == req.end() ||
          !options().tokens->Accepts(std::string_view(it->value().data(), it->value().size()))) {
        core_->Rejected(Reject::kUnauthenticated);
        Response res = app_->Error(
            401, it == req.end() ? "this server needs a bearer token (authorization: Bearer ...)"
                                 : "the bearer token is not valid");
        res.set(bhttp::field::www_authenticate, "Bearer");
        return Send(std::move(res), /*close=*/true);
      }
    }
    Application::Route route = app_->Classify(req, path_);
    // A request answered from its header takes no body: a body is not read, and the connection
    // closes after the answer.
    if (route.answer.has_value()) return Send(*std::move(route.answer), has_body_);
    call_ = core_->BeginCall();
    admission_ = core_->Admit(route.method, call_);
    ReadBody();
  }

  // Finishes the request being read with `code` and answers `res`, closing the connection when
  // the body is left unread.
  void Refuse(absl::StatusCode code, Response res, bool close = true) {
    admission_->Finish(code);
    Send(std::move(res), close);
  }

  // A request's body: its size checked from the header, its memory found before it is read.
  void ReadBody() {
    const Request& req = parser_->get();
    if (!call_.accepted()) {
      core_->Rejected(Reject::kShuttingDown);
      return Refuse(absl::StatusCode::kUnavailable,
                    app_->Error(503, "the server is shutting down"));
    }
    if (const auto it = req.find(bhttp::field::content_encoding);
        it != req.end() && it->value() != "identity") {
      core_->Rejected(Reject::kInvalid);
      return Refuse(absl::StatusCode::kInvalidArgument,
                    app_->Error(400, absl::StrFormat("Content-Encoding %s is not supported: send "
                                                     "the body uncompressed",
                                                     std::string(it->value()))));
    }
    if (!parser_->content_length()) {
      // A chunked body's size is not known before it is read: refuse it rather than read blind.
      core_->Rejected(Reject::kInvalid);
      return Refuse(absl::StatusCode::kInvalidArgument,
                    app_->Error(411,
                                "send the request with a Content-Length (chunked bodies are "
                                "not read)"));
    }
    const uint64_t length = *parser_->content_length();
    if (length > static_cast<uint64_t>(options().max_message_bytes)) {
      core_->Rejected(Reject::kInvalid);
      return Refuse(absl::StatusCode::kResourceExhausted,
                    app_->Error(413, absl::StrFormat("the request body is %d bytes, over the "
                                                     "server's limit of %d (--max_message_bytes)",
                                                     length, options().max_message_bytes)));
    }
    body_length_ = length;
    parser_->body_limit(length);
    body_start_ = SteadyClock::now();
    // A client that waits for leave to send its body (curl does for large ones) sends nothing
    // before it: its memory is found first.
    if (const auto it = req.find(bhttp::field::expect);
        it != req.end() && beast::iequals(it->value(), "100-continue")) {
      expect_continue_ = true;
      return Reserve();
    }
    if (parser_->is_done() || buffer_.size() > 0) return Reserve();
    // The body is given its memory once its first bytes arrive (at most one read, 64 KiB, is
    // taken before): a client that sends only a header holds none.
    beast::get_lowest_layer(stream_).expires_at(body_start_ + options().body_timeout);
    bhttp::async_read_some(stream_, buffer_, *parser_,
                           [self = this->shared_from_this()](beast::error_code ec, size_t) {
                             self->Step([&] {
                               if (ec) return self->OnBody(ec);
                               self->Reserve();
                             });
                           });
  }

  // Takes the request's memory from the budget, in turn with other waiting bodies; the body
  // stays unread meanwhile, for at most budget_wait. Twice the body (it and what it becomes),
  // and as much again set aside for the response (twice a response as large as the body, which
  // an answer to a body of tensors does not exceed): a request whose body was read is not then
  // refused for its response's memory, which waiting bodies would have taken.
  void Reserve() {
    MemoryBudget& budget = core_->budget();
    const int64_t input = 2 * static_cast<int64_t>(body_length_);
    const int64_t bytes = 2 * input <= budget.limit() ? 2 * input : input;
    reserving_ = bytes;
    if (bytes > budget.limit()) {  // can never fit
      core_->Rejected(Reject::kMemory);
      admission_->Finish(absl::StatusCode::kResourceExhausted);
      return RefuseBody(app_->Error(
          429, absl::StrFormat("the request needs %d bytes, more than the server's whole memory "
                               "for requests in flight (%d bytes, --max_inflight_bytes): send "
                               "fewer rows per request",
                               bytes, budget.limit())));
    }
    waiting_budget_ = true;
    budget_ticket_ = budget.Wait(
        bytes, [weak = this->weak_from_this(), gate = front_->gate](MemoryBudget::Lease lease) {
          // On the thread that returned the bytes (or this one): back to the strand, unless
          // the session or the front end is gone (the lease then goes back with this lambda).
          auto self = weak.lock();
          absl::MutexLock lock(&gate->mu);
          if (self == nullptr || !gate->open) return;
          net::post(self->stream_.get_executor(),
                    [self, lease = std::make_shared<MemoryBudget::Lease>(std::move(lease))] {
                      self->Step([&] { self->OnReserved(std::move(*lease)); });
                    });
        });
    if (!budget_ticket_.queued()) return;  // granted at once: OnReserved is posted
    budget_timer_.expires_after(options().budget_wait);
    budget_timer_.async_wait([self = this->shared_from_this()](beast::error_code ec) {
      if (!ec) self->Step([&] { self->OnBudgetWaitOver(); });
    });
  }

  void OnReserved(MemoryBudget::Lease lease) {
    if (!waiting_budget_) return;  // the wait already ended: the lease goes back
    waiting_budget_ = false;
    budget_timer_.cancel();
    const int64_t headroom = lease.bytes() - 2 * static_cast<int64_t>(body_length_);
    if (absl::Status st = admission_->Adopt(std::move(lease), headroom); !st.ok()) {
      return Refuse(st.code(), app_->Error(503, std::string(st.message())));
    }
    body_start_ = SteadyClock::now();  // the transfer's clock starts once the body may flow
    if (!expect_continue_) return ReadBodyBytes();
    continue_ = std::make_shared<bhttp::response<bhttp::empty_body>>(bhttp::status::continue_, 11);
    beast::get_lowest_layer(stream_).expires_after(options().write_timeout);
    bhttp::async_write(stream_, *continue_,
                       [self = this->shared_from_this()](beast::error_code ec, size_t) {
                         self->Step([&] {
                           self->continue_.reset();
                           if (ec) return self->OnBody(ec);
                           self->body_start_ = SteadyClock::now();
                           self->ReadBodyBytes();
                         });
                       });
  }

  // The budget could not cover the body in time: 429 with Retry-After.
  void OnBudgetWaitOver() {
    if (!waiting_budget_ || !budget_ticket_.Cancel()) return;  // granted meanwhile
    waiting_budget_ = false;
    core_->Rejected(Reject::kMemory);
    admission_->Finish(absl::StatusCode::kResourceExhausted);
    const auto waited = std::chrono::duration_cast<std::chrono::seconds>(options().budget_wait);
    Response res = app_->Error(
        429, absl::StrFormat("the server's memory for requests in flight (--max_inflight_bytes) "
                             "could not hold this request's %d bytes within %d s: retry later, "
                             "or send fewer rows per request",
                             reserving_, waited.count()));
    res.set(bhttp::field::retry_after, "1");
    RefuseBody(std::move(res));
  }

  // Answers `res` instead of reading the body into memory: the body is read and dropped first,
  // so that a client still sending it sees the answer and the connection stays usable. A client
  // that waits for 100-continue has sent none: the answer goes at once, and the connection
  // closes after it.
  void RefuseBody(Response res) {
    if (expect_continue_) return Send(std::move(res), /*close=*/true);
    refusal_ = std::move(res);
    discarding_ = true;
    body_start_ = SteadyClock::now();
    ReadBodyBytes();
  }

  // Reads the body as it arrives, each read due by the transfer deadline (a stalled or
  // trickling client is cut off); a body being discarded is dropped as it is read.
  void ReadBodyBytes() {
    if (parser_->is_done()) return OnBody({});
    auto& body = parser_->get().body();
    if (discarding_) {
      discarded_ += body.size();
      body.clear();
      body.shrink_to_fit();
    }
    beast::get_lowest_layer(stream_).expires_at(
        TransferDeadline(body_start_, options().body_timeout, discarded_ + body.size(),
                         options().min_bytes_per_second));
    bhttp::async_read_some(stream_, buffer_, *parser_,
                           [self = this->shared_from_this()](beast::error_code ec, size_t) {
                             self->Step([&] {
                               if (ec) return self->OnBody(ec);
                               self->ReadBodyBytes();
                             });
                           });
  }

  void OnBody(beast::error_code ec) {
    if (ec) {  // the client went away or stalled past its deadline: nobody to answer
      if (!discarding_) {
        core_->Rejected(Reject::kCancelled);
        admission_->Finish(absl::StatusCode::kCancelled);
      }
      EndRequest();
      return Close();
    }
    if (discarding_) {
      discarding_ = false;
      parser_->release();
      return Send(*std::exchange(refusal_, std::nullopt), /*close=*/false);
    }
    Request req = parser_->release();
    keep_alive_ = req.keep_alive();
    handling_ = true;
    auto gone = std::make_shared<std::atomic<bool>>(false);
    app_->Handle(std::move(req), path_, &*admission_,
                 // The connection is the caller: bulk work is shared out fairly among callers.
                 CallControl{.cancelled = [gone] { return gone->load(); },
                             .caller = reinterpret_cast<uintptr_t>(this)},
                 // Holds the session: it lives until its request is answered (the client may
                 // have half-closed the connection and still read the answer).
                 [self = this->shared_from_this(), gate = front_->gate](Response res) {
                   // From any thread: back to the strand, unless the front end stopped.
                   absl::MutexLock lock(&gate->mu);
                   if (!gate->open) return;
                   net::post(self->stream_.get_executor(),
                             [self, res = std::make_shared<Response>(std::move(res))]() mutable {
                               self->Step([&] { self->OnAnswer(std::move(*res)); });
                             });
                 });
    if (handling_) WatchForDisconnect(std::move(gone));
  }

  // While a request is handled its connection has nothing to read, so a readable socket means
  // the client closed it (end of stream, or a reset) or sent more (a pipelined request). A
  // close cancels the request: the batcher drops it if it is still queued, as it drops a gRPC
  // call its client cancelled. A TLS client's close_notify is data: over TLS only an abrupt
  // close is seen.
  void WatchForDisconnect(std::shared_ptr<std::atomic<bool>> gone) {
    beast::get_lowest_layer(stream_).socket().async_wait(
        tcp::socket::wait_read,
        [self = this->shared_from_this(), gone = std::move(gone)](beast::error_code ec) mutable {
          if (ec || !self->handling_) return;  // the answer came first (the wait cancelled)
          auto& socket = beast::get_lowest_layer(self->stream_).socket();
          char byte;
          beast::error_code peek, ignored;
          socket.non_blocking(true, ignored);  // never block this I/O thread on a peek
          const size_t n = socket.receive(net::buffer(&byte, 1), tcp::socket::message_peek, peek);
          socket.non_blocking(false, ignored);
          if (peek == net::error::would_block || peek == net::error::try_again) {
            return self->WatchForDisconnect(std::move(gone));  // woken for nothing: again
          }
          if (!peek && n > 0) return;  // the client sent more: it is there
          gone->store(true);
          self->core_->CallCancelled();
        });
  }

  void OnAnswer(Response res) {
    handling_ = false;
    beast::error_code ignored;
    beast::get_lowest_layer(stream_).socket().cancel(ignored);  // the disconnect watch
    if (failed_) {  // the connection is closing: nobody to answer
      EndRequest();
      return;
    }
    Send(std::move(res), /*close=*/false);
  }

  // Writes `res`; then reads the next request, or closes when `close`, the client asked to, or
  // the server is shutting down.
  void Send(Response res, bool close) {
    const bool keep = !close && keep_alive_ && !reserve_ && !front_->stopping.load();
    res.keep_alive(keep);
    res.set(bhttp::field::server, "zlpr-server");
    res.prepare_payload();
    if (head_) {
      // The answer to HEAD is GET's header, its Content-Length included, without the body.
      return Write(std::make_shared<bhttp::response<bhttp::empty_body>>(std::move(res.base())),
                   keep);
    }
    Write(std::make_shared<Response>(std::move(res)), keep);
  }

  // Writes `message` a piece at a time, each due by the transfer deadline: a client that stops
  // reading is cut off, and what its request held goes back.
  template <typename Message>
  void Write(std::shared_ptr<Message> message, bool keep) {
    writing_ = message;
    written_ = 0;
    write_start_ = SteadyClock::now();
    auto serializer =
        std::make_shared<bhttp::serializer<false, typename Message::body_type>>(*message);
    WriteSome(std::move(message), std::move(serializer), keep);
  }

  template <typename Message, typename Serializer>
  void WriteSome(std::shared_ptr<Message> message, std::shared_ptr<Serializer> serializer,
                 bool keep) {
    beast::get_lowest_layer(stream_).expires_at(TransferDeadline(
        write_start_, options().write_timeout, written_, options().min_bytes_per_second));
    Serializer& sr = *serializer;
    bhttp::async_write_some(
        stream_, sr,
        [self = this->shared_from_this(), message = std::move(message),
         serializer = std::move(serializer), keep](beast::error_code ec, size_t n) mutable {
          self->written_ += n;
          // A write that ran past its deadline: the client stopped reading.
          if (ec == beast::error::timeout) self->core_->Rejected(Reject::kSlowReader);
          if (ec || serializer->is_done()) return self->OnWritten(ec, keep);
          self->WriteSome(std::move(message), std::move(serializer), keep);
        });
  }

  void OnWritten(beast::error_code ec, bool keep) {
    writing_.reset();
    EndRequest();
    if (ec || !keep) return Close();
    keep_alive_ = true;
    Read();
  }

  // The request's memory, outcome and place in the drain end here (when it has none: nothing).
  void EndRequest() {
    admission_.reset();
    call_.End();
  }

  void Close() {
    beast::error_code ignored;
    beast::get_lowest_layer(stream_).socket().shutdown(tcp::socket::shutdown_send, ignored);
  }

  FrontEnd::Impl* const front_;
  InferenceCore* const core_;
  Application* const app_;
  Stream stream_;
  net::steady_timer budget_timer_;  // the end of a body's wait for memory
  const bool reserve_;              // over max_connections: health checks only
  beast::flat_buffer buffer_;
  std::optional<bhttp::request_parser<bhttp::string_body>> parser_;
  Path path_;
  bool has_body_ = false;
  bool keep_alive_ = true;
  bool head_ = false;  // the request is a HEAD: its answer has no body
  // The request being read or handled: its admission (memory, outcome) and its call.
  std::optional<Admission> admission_;
  CallScope call_;
  // The body being read: its declared length, when its transfer began, its place in the memory
  // budget's queue.
  uint64_t body_length_ = 0;
  int64_t reserving_ = 0;  // the memory asked of the budget for it
  SteadyClock::time_point body_start_{};
  MemoryBudget::Ticket budget_ticket_;
  bool waiting_budget_ = false;
  bool expect_continue_ = false;
  bool discarding_ = false;  // refused: read and dropped, then refusal_ is sent
  uint64_t discarded_ = 0;
  std::optional<Response> refusal_;
  bool handling_ = false;          // the application has the request: the disconnect watch is on
  bool failed_ = false;            // a step threw: the connection is closing
  std::shared_ptr<void> writing_;  // the answer being written
  SteadyClock::time_point write_start_{};
  uint64_t written_ = 0;
  std::shared_ptr<bhttp::response<bhttp::empty_body>> continue_;
};

}  // namespace

void FrontEnd::Impl::Accept() {
  acceptor.async_accept(net::make_strand(ioc), [this](beast::error_code ec, tcp::socket socket) {
    if (ec == net::error::operation_aborted || stopping.load()) return;
    if (!ec) {
      // Over the connection limit and its reserve for health checks: closed at once (the
      // client sees a reset and retries). In the reserve: health checks only (Session).
      int open;
      {
        absl::MutexLock lock(&connections_mu);
        open = connections;
        if (open < options.max_connections + options.reserved_connections) ++connections;
      }
      if (open >= options.max_connections + options.reserved_connections) {
        beast::error_code ignored;
        socket.close(ignored);
      } else {
        const bool reserve = open >= options.max_connections;
        // Small answers go out at once, not held back for a delayed ACK.
        beast::error_code ignored;
        socket.set_option(tcp::no_delay(true), ignored);
        beast::tcp_stream stream(std::move(socket));
        if (tls) {
          std::make_shared<Session<beast::ssl_stream<beast::tcp_stream>>>(
              this, beast::ssl_stream<beast::tcp_stream>(std::move(stream), *tls), reserve)
              ->Start();
        } else {
          std::make_shared<Session<beast::tcp_stream>>(this, std::move(stream), reserve)->Start();
        }
      }
    }
    Accept();
  });
}

FrontEnd::FrontEnd(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

absl::StatusOr<std::unique_ptr<FrontEnd>> FrontEnd::Start(const Options& options,
                                                          InferenceCore* core, Application* app) {
  auto impl = std::make_unique<Impl>(options, core, app);
  if (!options.tls_cert_file.empty()) {
    try {
      ssl::context& ctx = impl->tls.emplace(ssl::context::tls_server);
      ctx.set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                      ssl::context::no_sslv3 | ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1 |
                      ssl::context::single_dh_use);
      ctx.use_certificate_chain_file(options.tls_cert_file);
      ctx.use_private_key_file(options.tls_key_file, ssl::context::pem);
      if (!options.tls_client_ca_file.empty()) {
        ctx.load_verify_file(options.tls_client_ca_file);
        ctx.set_verify_mode(ssl::verify_peer | ssl::verify_fail_if_no_peer_cert);
      }
    } catch (const boost::system::system_error& e) {
      return absl::InvalidArgumentError(
          absl::StrCat("--tls_cert/--tls_key/--tls_client_ca for the HTTP port: ", e.what()));
    }
  }
  // HOST:PORT or [V6]:PORT; the host may be a name.
  const auto host_port = SplitHostPort(options.address);
  if (!host_port) {
    return absl::InvalidArgumentError(
        absl::StrCat("--http_address=", options.address, ": use HOST:PORT"));
  }
  const auto& [host, port] = *host_port;
  try {
    tcp::resolver resolver(impl->ioc);
    const auto endpoints = resolver.resolve(host, port, tcp::resolver::passive);
    const tcp::endpoint endpoint = endpoints.begin()->endpoint();
    impl->acceptor.open(endpoint.protocol());
    impl->acceptor.set_option(net::socket_base::reuse_address(true));
    impl->acceptor.bind(endpoint);
    impl->acceptor.listen(net::socket_base::max_listen_connections);
  } catch (const boost::system::system_error& e) {
    return absl::UnavailableError(absl::StrCat("--http_address=", options.address,
                                               ": could not listen there (", e.what(), ")"));
  }
  std::unique_ptr<FrontEnd> front(new FrontEnd(std::move(impl)));
  Impl* i = front->impl_.get();
  front->port_ = i->acceptor.local_endpoint().port();
  i->Accept();
  for (int t = 0; t < std::max(1, options.threads); ++t) {
    i->threads.emplace_back([i] {
      // Sessions catch their own exceptions (Session::Step); this is the last line, for a
      // handler outside a session: the thread logs it and goes on serving.
      for (;;) {
        try {
          i->ioc.run();
          return;
        } catch (const std::exception& e) {
          LogHandlerFailure(e.what());
        } catch (...) {
          LogHandlerFailure("an exception that is not a std::exception");
        }
      }
    });
  }
  return front;
}

void FrontEnd::Stop(std::chrono::milliseconds flush) {
  if (impl_ == nullptr || impl_->threads.empty()) return;
  Impl* i = impl_.get();
  i->stopping.store(true);
  net::post(i->acceptor.get_executor(), [i] {
    beast::error_code ignored;
    i->acceptor.close(ignored);
  });
  // Answers being written get `flush`; then every connection is dropped with the I/O threads.
  {
    absl::MutexLock lock(&i->connections_mu);
    i->connections_mu.AwaitWithTimeout(absl::Condition(
                                           +[](int* n) { return *n == 0; }, &i->connections),
                                       absl::FromChrono(flush));
  }
  {
    absl::MutexLock lock(&i->gate->mu);
    i->gate->open = false;
  }
  i->ioc.stop();
  for (auto& t : i->threads) t.join();
  i->threads.clear();
}

FrontEnd::~FrontEnd() { Stop(); }

}  // namespace zlpr::server::http
