// The ZLPR kernels library: the multi-label ZLPR loss, its gradient, probabilities σ(2s) and
// the multi-label labeler, on CPUs (SIMD, threads) and NVIDIA GPUs (CUDA), behind one interface.
//
// This header is the library's whole public surface. It is host-only C++: no CUDA types and no
// gRPC. The formulas, edge cases and accuracy are those of docs/MATH.md.
//
// Usage:
//
//   std::unique_ptr<zlpr::Backend> backend = zlpr::NewCpuBackend({.threads = 4});
//   zlpr::LossInput in;
//   in.scores = {scores.data(), zlpr::DType::kFloat32, rows, cols};
//   in.labels = zlpr::MatrixView{labels.data(), zlpr::DType::kFloat32, rows, cols};
//   std::vector<float> loss(rows), grad(rows * cols);
//   absl::Status st = backend->Loss(in, {loss.data(), grad.data()});
//   if (!st.ok()) { /* INVALID_ARGUMENT naming the field, row and column */ }
//
// A caller that validates ahead of time (the server does, on arrival) keeps the proof in the
// type: ValidateLossInput returns a ValidatedLossInput, which only the validators (and
// validity-preserving operations such as ConcatenateLossInputs) can make, and the backend
// computes such an input without checking it again.
//
// Results are deterministic and batch-invariant: the bits of a row's loss, gradient and labels
// depend only on that row (and, for the labeler, on the per-label thresholds), never on the
// other rows of the batch, the batch size or the number of threads.
#ifndef ZLPR_KERNELS_ZLPR_H_
#define ZLPR_KERNELS_ZLPR_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "zlpr/dtype.h"

namespace zlpr {

namespace internal {
class ThreadPool;
class Validator;
}  // namespace internal

// A read-only, dense, row-major `rows` x `cols` matrix in host memory.
struct MatrixView {
  const void* data = nullptr;
  DType dtype = DType::kFloat32;
  int64_t rows = 0;
  int64_t cols = 0;
};

// Labels in compressed sparse rows: the entries of row r are
// indices[row_splits[r] .. row_splits[r+1]), strictly increasing within the row, with their
// label values (all 1 when `values` is empty). Every other entry has label 0.
struct SparseLabelsView {
  std::span<const int64_t> row_splits;  // rows + 1 offsets, starting at 0
  std::span<const int32_t> indices;     // column of each entry
  std::span<const float> values;        // empty, or one value in [0, 1] per entry
};

// Input of the loss: scores, dense or sparse labels, and an optional mask.
struct LossInput {
  MatrixView scores;
  // Dense labels (same shape as `scores`, values in [0, 1]) or sparse labels.
  std::variant<MatrixView, SparseLabelsView> labels;
  // Optional rows x cols bytes: 1 keeps an entry, 0 excludes it (as does a score of -inf).
  const uint8_t* mask = nullptr;
};

// Where the loss writes. `loss` has one float per row. `grad` is null for the loss alone, or
// rows x cols floats for the gradient ∂L/∂s (0 at excluded entries).
struct LossOutput {
  float* loss = nullptr;
  float* grad = nullptr;
};

// How the labeler picks a row's labels (docs/MATH.md, "Decoding").
struct LabelerOptions {
  float threshold = 0.5f;                   // global probability threshold, in (0, 1)
  const float* label_thresholds = nullptr;  // optional: cols per-label thresholds in (0, 1)
  uint32_t top_k = 0;                       // keep at most this many (0: no cap)
  uint32_t min_labels = 0;                  // top up to this many with the most probable
};

struct LabelerInput {
  MatrixView scores;
  const uint8_t* mask = nullptr;  // optional, as for the loss
  LabelerOptions options;
};

// The labeler's output, in compressed sparse rows: row r's labels are
// labels[row_offsets[r] .. row_offsets[r+1]), selected labels by score descending (ties by
// smaller index) and then any top-up labels likewise, each with its probability σ(2s).
struct LabelSets {
  std::vector<int64_t> row_offsets;
  std::vector<int32_t> labels;
  std::vector<float> probs;
};

// An input that passed validation: only the validators and validity-preserving operations
// (ConcatenateLossInputs, ConcatenateLabelerInputs) make one, so holding one is the proof. It
// holds the same views (not the data), which must outlive it.
template <typename Input>
class Validated {
 public:
  const Input& get() const { return input_; }
  const Input* operator->() const { return &input_; }
  int64_t rows() const { return input_.scores.rows; }
  int64_t cols() const { return input_.scores.cols; }

 private:
  friend class internal::Validator;
  explicit Validated(const Input& input) : input_(input) {}
  Input input_;
};

using ValidatedLossInput = Validated<LossInput>;
// Its options are normalised: top_k and min_labels are at most the column count (a larger cap
// selects the same labels), so no request can make a backend size anything by them.
using ValidatedLabelerInput = Validated<LabelerInput>;

// Checks an input against docs/MATH.md ("Invalid input"). The error is INVALID_ARGUMENT and
// names the field, row and column, e.g. "scores[3, 17] is NaN" or
// "sparse_labels.indices[12] (row 2) = 40 is out of range [0, 32)".
absl::StatusOr<ValidatedLossInput> ValidateLossInput(const LossInput& input);
absl::StatusOr<ValidatedLabelerInput> ValidateLabelerInput(const LabelerInput& input);

// Buffers that concatenations write into; reuse them across calls to avoid allocations.
struct ConcatBuffers {
  std::vector<char> scores, labels, mask;
  std::vector<int64_t> row_splits;
  std::vector<int32_t> indices;
  std::vector<float> values;
};

// Whether two validated inputs can share one kernel call: the same columns, element types,
// kind of labels (dense of one type, sparse hard, sparse soft), mask presence and, for the
// labeler, the same options (thresholds compared by value).
bool Concatenable(const ValidatedLossInput& a, const ValidatedLossInput& b);
bool Concatenable(const ValidatedLabelerInput& a, const ValidatedLabelerInput& b);

// The rows of `parts`, in order, as one input. The views point into `buffers` (or, for a single
// part, into that part's data). Every pair must be Concatenable (else FAILED_PRECONDITION);
// concatenating valid inputs gives a valid one, so the result is validated. The kernels are
// batch-invariant, so each row of the result computes to the bits it gets alone.
absl::StatusOr<ValidatedLossInput> ConcatenateLossInputs(
    std::span<const ValidatedLossInput* const> parts, ConcatBuffers* buffers);
absl::StatusOr<ValidatedLabelerInput> ConcatenateLabelerInputs(
    std::span<const ValidatedLabelerInput* const> parts, ConcatBuffers* buffers);

// Rows [begin, end) of a validated input (0 <= begin < end <= rows), still validated: the rows
// of a valid input are valid. The views point into the input's data, except sparse labels'
// row offsets, rebased to start at 0 in `buffers`. The kernels are row-independent, so each
// row computes to the same bits in a slice as in the whole (the executor computes large bulk
// jobs slice by slice).
ValidatedLossInput SliceRows(const ValidatedLossInput& in, int64_t begin, int64_t end,
                             ConcatBuffers* buffers);
ValidatedLabelerInput SliceRows(const ValidatedLabelerInput& in, int64_t begin, int64_t end);

enum class BackendKind { kCpu, kCuda };
const char* BackendKindName(BackendKind kind);

// One implementation of the ops. A Backend is driven by one thread at a time; it may use more
// threads or a GPU internally. A device failure is INTERNAL.
class Backend {
 public:
  virtual ~Backend() = default;

  virtual BackendKind kind() const = 0;
  // A one-line description, e.g. "cpu (AVX3, 4 threads)" or "cuda:0 (NVIDIA H200, sm_90)".
  virtual std::string Describe() const = 0;

  // Validates `input` (on the backend's own threads), then computes: INVALID_ARGUMENT without
  // writing anything when it is invalid.
  absl::Status Loss(const LossInput& input, const LossOutput& out);
  absl::Status Label(const LabelerInput& input, LabelSets* out, float* probs);

  // Per-row loss, and the gradient when `out.grad` is set.
  virtual absl::Status Loss(const ValidatedLossInput& input, const LossOutput& out) = 0;
  // Label sets, and the dense probabilities σ(2s) (rows x cols, 0 at excluded entries) too
  // when `probs` is not null.
  virtual absl::Status Label(const ValidatedLabelerInput& input, LabelSets* out, float* probs) = 0;

  // Device memory held for reuse across calls (0 for the CPU).
  virtual int64_t DeviceMemoryBytes() const { return 0; }

  // Another backend on the same hardware that computes while this one does (its own threads and
  // buffers), for a worker that runs interactive batches beside this one's bulk batches; null
  // where two callers would only take turns on one device (a GPU), which the server serves by
  // computing bulk batches in chunks instead.
  virtual std::unique_ptr<Backend> NewLane() const { return nullptr; }

  // OK while the backend can compute; else why not (a GPU whose context a CUDA error broke),
  // and every call then fails with that status (UNAVAILABLE). Called by the worker thread
  // that drives the backend.
  virtual absl::Status health() const { return absl::OkStatus(); }

 protected:
  // Threads the validation of the two entry points above is spread over (null: the caller's).
  virtual internal::ThreadPool* validation_pool() { return nullptr; }
};

struct CpuOptions {
  int threads = 0;  // 0: one per usable CPU (affinity and cgroup CPU limit)
  // Appended to Describe() in parentheses (e.g. why a CUDA build serves on the CPU).
  std::string note;
};
std::unique_ptr<Backend> NewCpuBackend(const CpuOptions& options = {});

// True when this build includes the CUDA backend.
bool CudaBuilt();
// Visible CUDA devices; 0 without the CUDA backend, a driver or a device.
int CudaDeviceCount();
// Why no CUDA device can be used (the CUDA runtime's error, e.g. no driver or no device), or ""
// when one can.
std::string CudaUnavailableReason();
struct CudaOptions {
  // Device memory (bytes) the backend's buffers may hold in all; 0: no limit of ours (the
  // device's). A batch that needs more is refused with RESOURCE_EXHAUSTED, as is one the
  // device cannot allocate; either way the next batch starts from empty buffers.
  int64_t memory_limit_bytes = 0;
};
// The CUDA backend on `device`; FAILED_PRECONDITION when CUDA is not built or the device is
// not visible.
//
// Errors: a batch that does not fit (see CudaOptions) is RESOURCE_EXHAUSTED; any other CUDA
// error fails the batch with INTERNAL and the CUDA error's name and text. When the error broke
// the device's context (an illegal address, a trap: every later CUDA call would fail), the
// process cannot use the device again, and health() turns UNAVAILABLE for good.
absl::StatusOr<std::unique_ptr<Backend>> NewCudaBackend(int device,
                                                        const CudaOptions& options = {});

// The highest-priority SIMD target the CPU kernels dispatch to on this machine, e.g. "AVX3".
std::string CpuSimdTarget();

}  // namespace zlpr

#endif  // ZLPR_KERNELS_ZLPR_H_
