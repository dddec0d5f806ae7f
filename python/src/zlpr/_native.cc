// zlpr._native: unary calls on gRPC C++ (the library zlpr-server and its C++ client use), for
// zlpr.Client's blocking calls, and the decoding of a PredictResponse's label lists.
//
// Why: grpcio's blocking unary call costs about 0.45 ms of the client's CPU per call on a small
// machine, more than the whole round trip of the C++ client (bench/RESULTS.md). Here a call
// runs with the GIL released, on a completion queue that the calling thread polls itself (as
// gRPC's synchronous API does), so no other thread is woken on the way. zlpr.Client builds the
// requests (numpy views, one copy of each tensor) and hands their bytes here; responses come
// back as bytes, except Predict's label lists, which are decoded here straight into numpy
// arrays (Python's protobuf would make one Python int per label on the way).
//
// Channel arguments are grpcio's (name, int | str) pairs, the same names gRPC core uses, so
// zlpr.Client passes one list to either transport: service config (retries, balancing),
// message limits, TLS target name override.
#include <absl/synchronization/mutex.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/security/credentials.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
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

// --- PredictResponse ------------------------------------------------------------------------
// PredictResponse {string request_id = 1; repeated RowLabels rows = 2; Tensor probs = 3;
// Error error = 4; Timing timing = 5;} and RowLabels {repeated int32 labels = 1;
// repeated float probs = 2;}. The rows are decoded here; the dense probabilities (field 3) are
// handed back apart, to be viewed in place (its last occurrence: the server writes one); every
// other field stays in `rest` for protobuf.
// The bytes come from the network: every read is bounds-checked, and malformed input raises
// ValueError.

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "fixed32 floats are copied as they are");

class WireReader {
 public:
  WireReader(const uint8_t* begin, const uint8_t* end) : p_(begin), end_(end) {}
  bool done() const { return p_ >= end_; }
  const uint8_t* pos() const { return p_; }

  uint64_t Varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (p_ >= end_) Fail("truncated varint");
      const uint8_t b = *p_++;
      v |= static_cast<uint64_t>(b & 0x7F) << shift;
      if ((b & 0x80) == 0) return v;
    }
    Fail("varint longer than 10 bytes");
  }
  // The next n bytes, consumed.
  const uint8_t* Take(uint64_t n) {
    if (n > static_cast<uint64_t>(end_ - p_)) Fail("a field runs past the end");
    const uint8_t* at = p_;
    p_ += n;
    return at;
  }
  // Skips a value of wire type `wire`.
  void Skip(uint32_t wire) {
    switch (wire) {
      case 0:
        Varint();
        break;
      case 1:
        Take(8);
        break;
      case 2:
        Take(Varint());
        break;
      case 5:
        Take(4);
        break;
      default:
        Fail("unsupported wire type " + std::to_string(wire));
    }
  }
  [[noreturn]] static void Fail(const std::string& why) {
    throw py::value_error("PredictResponse: " + why);
  }

 private:
  const uint8_t* p_;
  const uint8_t* const end_;
};

struct DecodedPredict {
  std::vector<int32_t> labels;  // every row's, in order
  std::vector<float> probs;
  std::vector<size_t> label_at{0}, prob_at{0};  // row r: [at[r], at[r + 1])
  std::string rest;                             // the other fields, as they came
  const uint8_t* dense = nullptr;               // the last field 3's payload, or null
  size_t dense_size = 0;
};

void DecodeRow(WireReader r, DecodedPredict& out) {
  while (!r.done()) {
    const uint64_t key = r.Varint();
    const uint64_t field = key >> 3;
    const uint32_t wire = key & 7;
    if (field == 1 && wire == 2) {  // packed labels
      const uint64_t n = r.Varint();
      const uint8_t* at = r.Take(n);
      for (WireReader packed(at, at + n); !packed.done();) {
        out.labels.push_back(static_cast<int32_t>(packed.Varint()));
      }
    } else if (field == 1 && wire == 0) {
      out.labels.push_back(static_cast<int32_t>(r.Varint()));
    } else if (field == 2 && wire == 2) {  // packed probabilities
      const uint64_t n = r.Varint();
      if (n % 4 != 0) WireReader::Fail("probs: packed length not a multiple of 4");
      const uint8_t* at = r.Take(n);
      const size_t old = out.probs.size();
      out.probs.resize(old + n / 4);
      std::memcpy(out.probs.data() + old, at, n);
    } else if (field == 2 && wire == 5) {
      float v;
      std::memcpy(&v, r.Take(4), 4);
      out.probs.push_back(v);
    } else {
      r.Skip(wire);
    }
  }
}

DecodedPredict DecodePredict(const uint8_t* data, size_t size) {
  DecodedPredict out;
  WireReader r(data, data + size);
  while (!r.done()) {
    const uint8_t* field_start = r.pos();
    const uint64_t key = r.Varint();
    const uint64_t field = key >> 3;
    if (field == 2 && (key & 7) == 2) {
      const uint64_t n = r.Varint();
      const uint8_t* row = r.Take(n);
      DecodeRow(WireReader(row, row + n), out);
      out.label_at.push_back(out.labels.size());
      out.prob_at.push_back(out.probs.size());
    } else if (field == 3 && (key & 7) == 2) {
      out.dense_size = r.Varint();
      out.dense = r.Take(out.dense_size);
    } else {
      r.Skip(key & 7);
      out.rest.append(reinterpret_cast<const char*>(field_start), r.pos() - field_start);
    }
  }
  return out;
}

template <typename T>
py::list RowArrays(const std::vector<T>& values, const std::vector<size_t>& at) {
  py::list rows(at.size() - 1);
  for (size_t i = 0; i + 1 < at.size(); ++i) {
    py::array_t<T> row(static_cast<py::ssize_t>(at[i + 1] - at[i]));
    std::copy(values.begin() + at[i], values.begin() + at[i + 1], row.mutable_data());
    rows[i] = std::move(row);
  }
  return rows;
}

// (labels: one int32 array per row, label_probs: one float32 array per row, rest: the other
// fields' bytes, dense: the probs Tensor's bytes or None).
py::tuple PredictTuple(const DecodedPredict& d, py::object dense) {
  return py::make_tuple(RowArrays(d.labels, d.label_at), RowArrays(d.probs, d.prob_at),
                        py::bytes(d.rest), std::move(dense));
}

// A PredictResponse's bytes decoded; its dense probabilities (when present) are a memoryview
// of `data`, not a copy.
py::tuple SplitPredict(const py::buffer& data) {
  const py::buffer_info view = data.request();
  if (!PyBuffer_IsContiguous(view.view(), 'C')) throw py::value_error("a contiguous buffer");
  const auto* begin = static_cast<const uint8_t*>(view.ptr);
  const DecodedPredict d = DecodePredict(begin, static_cast<size_t>(view.size * view.itemsize));
  py::object dense = py::none();
  if (d.dense != nullptr) {
    py::object whole = py::reinterpret_steal<py::object>(PyMemoryView_FromObject(data.ptr()));
    if (!whole) throw py::error_already_set();
    const auto from = static_cast<py::ssize_t>(d.dense - begin);
    dense = whole[py::slice(from, from + static_cast<py::ssize_t>(d.dense_size), 1)];
  }
  return PredictTuple(d, std::move(dense));
}

// --- Calls ----------------------------------------------------------------------------------

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
    std::shared_ptr<grpc::Channel> channel = grpc::CreateCustomChannel(target, creds, channel_args);
    if (channel == nullptr) throw py::value_error("target: " + target);
    stub_ = std::make_shared<grpc::GenericStub>(channel);
  }

  // The response's bytes of one unary call of `method` ("/package.Service/Method") with the
  // request's bytes; a non-OK status raises RpcError(code, details).
  py::bytes Unary(const std::string& method, const py::buffer& request,
                  std::optional<double> timeout_s, const Metadata& metadata) {
    grpc::ByteBuffer response = Call(method, request, timeout_s, metadata);
    const std::vector<grpc::Slice> slices = SlicesOf(response);
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

  // A Predict call, its response decoded as split_predict does (the dense probabilities, when
  // asked for, are copied out: callers that want them use unary + split_predict, one copy).
  py::tuple UnaryPredict(const std::string& method, const py::buffer& request,
                         std::optional<double> timeout_s, const Metadata& metadata) {
    grpc::ByteBuffer response = Call(method, request, timeout_s, metadata);
    grpc::Slice single;
    std::string joined;
    const uint8_t* data;
    size_t size;
    if (response.TrySingleSlice(&single).ok()) {
      data = single.begin();
      size = single.size();
    } else {
      for (const grpc::Slice& s : SlicesOf(response)) joined.append(s.begin(), s.end());
      data = reinterpret_cast<const uint8_t*>(joined.data());
      size = joined.size();
    }
    const DecodedPredict d = DecodePredict(data, size);
    py::object dense = py::none();
    if (d.dense != nullptr) dense = py::bytes(reinterpret_cast<const char*>(d.dense), d.dense_size);
    return PredictTuple(d, std::move(dense));
  }

  void Close() { stub_.reset(); }

 private:
  grpc::ByteBuffer Call(const std::string& method, const py::buffer& request,
                        std::optional<double> timeout_s, const Metadata& metadata) {
    // Held for the call: close() from another thread cannot pull the stub from under it.
    const std::shared_ptr<grpc::GenericStub> stub = stub_;
    if (stub == nullptr) throw py::value_error("the channel is closed");
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
          stub->PrepareUnaryCall(&ctx, method, req, &cq);
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
    return resp;
  }

  static std::vector<grpc::Slice> SlicesOf(grpc::ByteBuffer& buffer) {
    std::vector<grpc::Slice> slices;
    if (!buffer.Dump(&slices).ok()) throw std::runtime_error("response: unreadable buffer");
    return slices;
  }

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

  std::shared_ptr<grpc::GenericStub> stub_;  // changed and copied under the GIL only
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
      .def("unary_predict", &Channel::UnaryPredict, py::arg("method"), py::arg("request"),
           py::arg("timeout_s") = py::none(), py::arg("metadata") = Metadata{},
           "A Predict call: its response as split_predict gives it.")
      .def("close", &Channel::Close);
  m.def("split_predict", &SplitPredict, py::arg("data"),
        "A PredictResponse's bytes decoded: (labels: one int32 array per row, label_probs: one "
        "float32 array per row, rest: the bytes of its other fields, dense: a memoryview of "
        "the probs Tensor's bytes, or None).");
}
