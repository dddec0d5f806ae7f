// zlpr._native: unary calls on gRPC C++ (the library zlpr-server and its C++ client use), for
// zlpr.Client's blocking calls.
//
// Why: grpcio's blocking unary call costs about 0.5 ms of Python-side work per call on a small
// machine, three times the whole round trip of the C++ client (bench/RESULTS.md). This module
// moves bytes only: zlpr.Client still builds and parses the messages (numpy views, one copy of
// each tensor), and hands the request's bytes here; the call runs with the GIL released, on a
// completion queue of its own that the calling thread polls itself (as gRPC's synchronous API
// does), so no other thread is woken on the way.
//
// Channel arguments are grpcio's (name, int | str) pairs, the same names gRPC core uses, so
// zlpr.Client passes one list to either transport: service config (retries, balancing),
// message limits, TLS target name override.
#include <absl/synchronization/mutex.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/security/credentials.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace py = pybind11;

namespace {

using ChannelArg = std::pair<std::string, std::variant<int, std::string>>;
using Metadata = std::vector<std::pair<std::string, std::string>>;

// How often a blocked call looks up from gRPC to let Python run its signal handlers (Ctrl-C
// cancels the call rather than waiting out its deadline).
constexpr auto kSignalPoll = std::chrono::milliseconds(100);

PyObject* g_rpc_error = nullptr;  // zlpr._native.RpcError(code: int, details: str)

[[noreturn]] void RaiseRpcError(const grpc::Status& status) {
  py::object args = py::make_tuple(static_cast<int>(status.error_code()), status.error_message());
  PyErr_SetObject(g_rpc_error, args.ptr());
  throw py::error_already_set();
}

class Channel {
 public:
  Channel(const std::string& target, const std::vector<ChannelArg>& args, bool tls,
          std::optional<std::string> root_certs, std::optional<std::string> client_key,
          std::optional<std::string> client_cert) {
    grpc::ChannelArguments channel_args;
    for (const auto& [name, value] : args) {
      if (const int* i = std::get_if<int>(&value)) {
        channel_args.SetInt(name, *i);
      } else {
        channel_args.SetString(name, std::get<std::string>(value));
      }
    }
    std::shared_ptr<grpc::ChannelCredentials> creds;
    if (tls) {
      grpc::SslCredentialsOptions ssl;
      ssl.pem_root_certs = root_certs.value_or("");
      ssl.pem_private_key = client_key.value_or("");
      ssl.pem_cert_chain = client_cert.value_or("");
      creds = grpc::SslCredentials(ssl);
    } else {
      creds = grpc::InsecureChannelCredentials();
    }
    channel_ = grpc::CreateCustomChannel(target, creds, channel_args);
    if (channel_ == nullptr) throw py::value_error("target: " + target);
    stub_ = std::make_unique<grpc::GenericStub>(channel_);
  }

  // The response's bytes of one unary call of `method` ("/package.Service/Method") with the
  // request's bytes; a non-OK status raises RpcError(code, details).
  py::bytes Unary(const std::string& method, const py::buffer& request,
                  std::optional<double> timeout_s, const Metadata& metadata) {
    if (stub_ == nullptr) throw py::value_error("the channel is closed");
    grpc::ByteBuffer req;
    {
      const py::buffer_info view = request.request();
      if (!PyBuffer_IsContiguous(view.view(), 'C')) {
        throw py::value_error("request: a contiguous buffer is required");
      }
      grpc::Slice slice(view.ptr, static_cast<size_t>(view.size * view.itemsize));  // a copy
      req = grpc::ByteBuffer(&slice, 1);
    }
    grpc::ClientContext ctx;
    if (timeout_s.has_value()) {
      ctx.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::duration_cast<std::chrono::system_clock::duration>(
                           std::chrono::duration<double>(std::max(*timeout_s, 0.0))));
    }
    for (const auto& [key, value] : metadata) ctx.AddMetadata(key, value);

    grpc::ByteBuffer resp;
    grpc::Status status;
    bool interrupted = false;
    {
      py::gil_scoped_release release;
      grpc::CompletionQueue& cq = ThreadQueue();
      std::unique_ptr<grpc::GenericClientAsyncResponseReader> call =
          stub_->PrepareUnaryCall(&ctx, method, req, &cq);
      call->StartCall();
      call->Finish(&resp, &status, &status);
      // The queue holds this call's one event: wait for it (the call always completes, with
      // a status, even when cancelled), looking up for signals now and then.
      void* tag = nullptr;
      bool ok = false;
      for (;;) {
        const auto next = cq.AsyncNext(&tag, &ok, std::chrono::system_clock::now() + kSignalPoll);
        if (next == grpc::CompletionQueue::GOT_EVENT) break;
        if (next == grpc::CompletionQueue::SHUTDOWN) {  // never shut down while in use
          status = grpc::Status(grpc::StatusCode::INTERNAL, "completion queue shut down");
          break;
        }
        if (!interrupted) {
          py::gil_scoped_acquire acquire;
          if (PyErr_CheckSignals() != 0) {  // a handler raised (KeyboardInterrupt): cancel
            interrupted = true;
            ctx.TryCancel();
          }
        }
      }
    }
    if (interrupted) throw py::error_already_set();  // the handler's exception
    if (!status.ok()) RaiseRpcError(status);
    return ToBytes(resp);
  }

  void Close() {
    stub_.reset();
    channel_.reset();
  }

 private:
  // The calling thread's completion queue, kept for its later calls (a call's only event is
  // taken before it returns, so the queue is empty between calls).
  static grpc::CompletionQueue& ThreadQueue() {
    struct Queue {
      grpc::CompletionQueue cq;
      ~Queue() {
        cq.Shutdown();
        void* tag;
        bool ok;
        while (cq.Next(&tag, &ok)) {
        }
      }
    };
    thread_local Queue queue;
    return queue.cq;
  }

  static py::bytes ToBytes(grpc::ByteBuffer& buffer) {
    std::vector<grpc::Slice> slices;
    if (!buffer.Dump(&slices).ok()) throw std::runtime_error("response: unreadable buffer");
    size_t size = 0;
    for (const grpc::Slice& s : slices) size += s.size();
    PyObject* bytes = PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(size));
    if (bytes == nullptr) throw py::error_already_set();
    char* out = PyBytes_AS_STRING(bytes);
    for (const grpc::Slice& s : slices) {
      std::memcpy(out, s.begin(), s.size());
      out += s.size();
    }
    return py::reinterpret_steal<py::bytes>(bytes);
  }

  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<grpc::GenericStub> stub_;
};

}  // namespace

PYBIND11_MODULE(_native, m) {
  m.doc() = "Unary gRPC calls on gRPC C++, for zlpr.Client (transport='native').";
  // Debian builds abseil without NDEBUG, which leaves absl::Mutex's deadlock detector on: every
  // lock gRPC takes would update a process-wide lock graph. zlpr-server turns it off too.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  static py::exception<std::runtime_error> rpc_error(m, "RpcError");
  g_rpc_error = rpc_error.ptr();
  m.attr("GRPC_VERSION") = grpc::Version();
  py::class_<Channel>(m, "Channel")
      .def(py::init<const std::string&, const std::vector<ChannelArg>&, bool,
                    std::optional<std::string>, std::optional<std::string>,
                    std::optional<std::string>>(),
           py::arg("target"), py::arg("args"), py::arg("tls") = false,
           py::arg("root_certs") = py::none(), py::arg("client_key") = py::none(),
           py::arg("client_cert") = py::none())
      .def("unary", &Channel::Unary, py::arg("method"), py::arg("request"),
           py::arg("timeout_s") = py::none(), py::arg("metadata") = Metadata{},
           "The response's bytes; RpcError(code, details) when the status is not OK.")
      .def("close", &Channel::Close);
}
