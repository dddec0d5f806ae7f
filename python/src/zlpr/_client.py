"""zlpr.Client: numpy in, numpy out, on gRPC (blocking calls; zlpr.aio has the asyncio twin)."""
from __future__ import annotations

import concurrent.futures
import json
import queue
import threading
from dataclasses import dataclass, field
from typing import Iterable, Iterator, List, Optional, Sequence, Union

import grpc
import numpy as np

from zlpr import _wire
from zlpr.v1 import zlpr_pb2 as pb

try:  # the gRPC C++ transport, compiled into the wheel when gRPC C++ was there to build it
    from zlpr import _native
except ImportError:
    _native = None

_SERVICE = "/zlpr.v1.ZlprService/"
# What a request or response carries besides its tensors: ids, shapes, sums, timing, framing.
_SLACK_BYTES = 4096


class ZlprError(Exception):
    """A call that failed: `code` is the gRPC status code, `message` the server's explanation
    (INVALID_ARGUMENT names the field, row and column)."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


@dataclass
class SparseLabels:
    """Sparse labels in CSR form: row r's labels are indices[row_splits[r]:row_splits[r+1]],
    with values (all 1 when None)."""
    row_splits: Sequence[int]
    indices: Sequence[int]
    values: Optional[Sequence[float]] = None


@dataclass
class LossResult:
    loss: np.ndarray                 # float32 [rows]
    loss_sum: float                  # over the rows, accumulated in float64
    loss_mean: float
    grad: Optional[np.ndarray]       # [rows, cols] float32 (float16 when asked), or None
    request_id: str = ""
    queue_seconds: float = 0.0       # the server's time in its queue and in its kernel
    compute_seconds: float = 0.0     # (summed over the requests of a split call)


@dataclass
class PredictResult:
    labels: List[np.ndarray]         # per row, int32: selected labels, best first
    label_probs: List[np.ndarray]    # per row, float32: their probabilities σ(2s)
    probs: Optional[np.ndarray]      # [rows, cols] float32 when asked, else None
    request_id: str = ""
    queue_seconds: float = 0.0
    compute_seconds: float = 0.0


@dataclass
class ServerInfo:
    version: str
    backend: str
    devices: List[str]
    max_batch_rows: int
    max_message_bytes: int
    max_inflight_bytes: int


def service_config(max_attempts: int, load_balancing: str) -> str:
    """The gRPC service config the C++ client uses: balancing, and retries with backoff on
    UNAVAILABLE (and a CANCELLED from a server shutting down)."""
    config = {"loadBalancingConfig": [{load_balancing: {}}]}
    if max_attempts > 1:
        config["methodConfig"] = [{
            "name": [{"service": "zlpr.v1.ZlprService"}, {"service": "grpc.health.v1.Health"}],
            "retryPolicy": {"maxAttempts": min(max(max_attempts, 2), 5),
                            "initialBackoff": "0.05s", "maxBackoff": "2s",
                            "backoffMultiplier": 2,
                            "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"]}}]
    return json.dumps(config)


def pem(value, name: str) -> Optional[bytes]:
    """A TLS option as gRPC takes it, PEM bytes: bytes and PEM text as they are, anything else
    (a str or os.PathLike that is not PEM text) as the path of a PEM file, read here, as
    zlpr-cli's --tls_ca and friends are."""
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str) and value.lstrip().startswith("-----BEGIN"):
        return value.encode()
    try:
        with open(value, "rb") as f:
            return f.read()
    except (OSError, TypeError) as e:
        raise ValueError(f"{name}={value!r}: neither PEM bytes nor a readable PEM file ({e})") \
            from None


@dataclass
class ChannelSettings:
    """What Client and aio.Client share: the same meaning as zlpr::ClientOptions in C++."""
    target: str
    deadline_s: Optional[float] = 30.0
    max_attempts: int = 5
    max_message_bytes: Optional[int] = None   # None: learned from the server (GetServerInfo)
    load_balancing: str = "round_robin"
    tls: bool = False
    tls_root_certs: Optional[bytes] = None    # PEM bytes or a PEM file's path; None: system's
    tls_client_cert: Optional[bytes] = None   # mutual TLS
    tls_client_key: Optional[bytes] = None
    tls_server_name: Optional[str] = None
    token: Optional[str] = None               # sent as "authorization: Bearer <token>"
    options: list = field(default_factory=list)

    def __post_init__(self):
        for name in ("tls_root_certs", "tls_client_cert", "tls_client_key"):
            setattr(self, name, pem(getattr(self, name), name))

    def channel_args(self):
        limit = self.max_message_bytes or (64 << 20)
        args = [("grpc.max_receive_message_length", max(limit, 4 << 20)),
                ("grpc.max_send_message_length", -1),
                ("grpc.service_config", service_config(self.max_attempts, self.load_balancing)),
                ("grpc.enable_retries", 1 if self.max_attempts > 1 else 0)]
        if self.tls_server_name:
            args.append(("grpc.ssl_target_name_override", self.tls_server_name))
        return args + list(self.options)

    def credentials(self):
        return grpc.ssl_channel_credentials(self.tls_root_certs, self.tls_client_key,
                                            self.tls_client_cert)

    def metadata(self):
        return (("authorization", f"Bearer {self.token}"),) if self.token else None


def _identity(b):
    return b


_PRIORITIES = {None: pb.PRIORITY_DEFAULT, "interactive": pb.PRIORITY_INTERACTIVE,
               "bulk": pb.PRIORITY_BULK}


def wire_priority(priority) -> int:
    """A request's class on the wire: None (the operation's default: Predict interactive, the
    loss bulk), "interactive" or "bulk"."""
    if priority not in _PRIORITIES:
        raise ValueError(f"priority={priority!r}: use None, 'interactive' or 'bulk'")
    return _PRIORITIES[priority]


def loss_request(scores, labels, mask, want_grad, grad_dtype, request_id, priority=None):
    """(the small LossRequest fields, [(field, Matrix)]) for a whole call."""
    s = _wire.Matrix.of(scores, "scores")
    msg = pb.LossRequest(request_id=request_id, want_grad=want_grad,
                         priority=wire_priority(priority))
    if grad_dtype is not None:
        msg.grad_dtype = _wire.wire_dtype(grad_dtype)
    tensors = [(2, s)]
    if isinstance(labels, SparseLabels):
        sp = msg.sparse_labels
        sp.row_splits.extend(int(v) for v in labels.row_splits)
        sp.indices.extend(int(v) for v in labels.indices)
        if labels.values is not None:
            sp.values.extend(float(v) for v in labels.values)
    else:
        tensors.append((3, _wire.Matrix.of(labels, "dense_labels")))
    if mask is not None:
        tensors.append((5, _wire.Matrix(np.asarray(mask, dtype=np.uint8), pb.UINT8, "mask")))
    return msg, tensors


def chunk_loss(msg, tensors, begin, end):
    """The LossRequest of rows [begin, end): slices of the matrices (views) and of sparse
    labels (re-based)."""
    part = pb.LossRequest()
    part.CopyFrom(msg)
    if msg.HasField("sparse_labels"):
        sp, out = msg.sparse_labels, part.sparse_labels
        lo, hi = sp.row_splits[begin], sp.row_splits[end]
        del out.row_splits[:], out.indices[:], out.values[:]
        out.row_splits.extend(v - lo for v in sp.row_splits[begin:end + 1])
        out.indices.extend(sp.indices[lo:hi])
        if len(sp.values):
            out.values.extend(sp.values[lo:hi])
    return part, [(n, m.slice_rows(begin, end)) for n, m in tensors]


def row_chunks(rows: int, request_row_bytes: float, response_row_bytes: float, limit: int,
               fixed_bytes: int = 0) -> List[tuple]:
    """[begin, end) row ranges whose requests and responses each stay under `limit` bytes."""
    per_row = max(request_row_bytes, response_row_bytes, 1)
    n = int(max(1, (limit - _SLACK_BYTES - fixed_bytes) // per_row))
    return [(b, min(b + n, rows)) for b in range(0, rows, n)] or [(0, 0)]


def parse_loss(data: bytes, bf16_bits: bool = False) -> LossResult:
    rest, grad = _wire.split(data, 5)
    r = pb.LossResponse.FromString(rest)
    return LossResult(loss=np.asarray(r.loss, dtype=np.float32), loss_sum=r.loss_sum,
                      loss_mean=r.loss_mean,
                      grad=_wire.decode_matrix(grad, widen_bf16=not bf16_bits),
                      request_id=r.request_id, queue_seconds=r.timing.queue_seconds,
                      compute_seconds=r.timing.compute_seconds), r


def parse_predict(data: bytes):
    """(PredictResult, the PredictResponse without its rows or dense probabilities)."""
    if _native is not None:  # the label lists decoded in C++, straight into arrays
        return decoded_predict(*_native.split_predict(data))
    rest, dense = _wire.split(data, 3)
    r = pb.PredictResponse.FromString(rest)
    return decoded_predict([np.asarray(row.labels, dtype=np.int32) for row in r.rows],
                           [np.asarray(row.probs, dtype=np.float32) for row in r.rows], r, dense)


def decoded_predict(labels, label_probs, rest, dense):
    """The PredictResult of a response whose rows are decoded (`rest`: the other fields, as
    bytes or a message; `dense`: the probs Tensor's bytes, or None)."""
    r = pb.PredictResponse.FromString(rest) if isinstance(rest, bytes) else rest
    return PredictResult(labels=labels, label_probs=label_probs,
                         probs=_wire.decode_matrix(dense), request_id=r.request_id,
                         queue_seconds=r.timing.queue_seconds,
                         compute_seconds=r.timing.compute_seconds), r


def merge_loss(parts: List[LossResult], request_id: str) -> LossResult:
    """One result from the results of consecutive row ranges, as one call would have given:
    the sum is accumulated in float64 over the rows in order, as the server does."""
    if len(parts) == 1:
        return parts[0]
    loss = np.concatenate([p.loss for p in parts])
    total = float(np.cumsum(loss, dtype=np.float64)[-1]) if len(loss) else 0.0
    grads = [p.grad for p in parts]
    grad = np.concatenate(grads) if all(g is not None for g in grads) else None
    return LossResult(loss=loss, loss_sum=total, loss_mean=total / len(loss) if len(loss) else 0.0,
                      grad=grad, request_id=request_id,
                      queue_seconds=sum(p.queue_seconds for p in parts),
                      compute_seconds=sum(p.compute_seconds for p in parts))


def merge_predict(parts: List[PredictResult], request_id: str) -> PredictResult:
    if len(parts) == 1:
        return parts[0]
    probs = [p.probs for p in parts]
    return PredictResult(labels=[l for p in parts for l in p.labels],
                         label_probs=[l for p in parts for l in p.label_probs],
                         probs=np.concatenate(probs) if all(x is not None for x in probs) else None,
                         request_id=request_id,
                         queue_seconds=sum(p.queue_seconds for p in parts),
                         compute_seconds=sum(p.compute_seconds for p in parts))


def predict_request(scores, threshold, label_thresholds, top_k, min_labels, want_probs, mask,
                    request_id, priority=None):
    s = _wire.Matrix.of(scores, "scores")
    msg = pb.PredictRequest(request_id=request_id, top_k=int(top_k), min_labels=int(min_labels),
                            want_probs=want_probs, priority=wire_priority(priority))
    if threshold is not None:
        msg.threshold = float(threshold)
    tensors = [(2, s)]
    if label_thresholds is not None:
        lt = np.ascontiguousarray(label_thresholds, dtype=np.float32).reshape(1, -1)
        tensors.append((4, _wire.Matrix(lt, pb.FLOAT32, "label_thresholds")))
    if mask is not None:
        tensors.append((8, _wire.Matrix(np.asarray(mask, dtype=np.uint8), pb.UINT8, "mask")))
    return msg, tensors


def chunk_predict(msg, tensors, begin, end):
    # label_thresholds (field 4) is per column: every chunk carries it whole.
    return msg, [(n, m if n == 4 else m.slice_rows(begin, end)) for n, m in tensors]


def loss_row_bytes(tensors, msg, want_grad, grad_dtype):
    s = tensors[0][1]
    req = sum(len(m.data) / max(m.rows, 1) for _, m in tensors)
    if msg.HasField("sparse_labels"):
        req += 8 * max(len(msg.sparse_labels.indices), 1) / max(s.rows, 1) + 8
    grad_size = 4 if grad_dtype is None else _wire._ITEMSIZE[_wire.wire_dtype(grad_dtype)]
    resp = 4 + (s.cols * grad_size if want_grad else 0)
    return req, resp


def predict_row_bytes(tensors, want_probs):
    s = tensors[0][1]
    req = sum(len(m.data) / max(m.rows, 1) for n, m in tensors if n != 4)
    # A row's label list can hold every column: int32 label and float32 probability.
    resp = 8 * s.cols + 16 + (4 * s.cols if want_probs else 0)
    fixed = sum(len(m.data) for n, m in tensors if n == 4)
    return req, resp, fixed


def loss_ranges(msg, tensors, want_grad, grad_dtype, limit: int) -> List[tuple]:
    """The row ranges a loss call is sent in; the whole call when its sparse labels do not match
    its rows (the server names the error)."""
    req, resp = loss_row_bytes(tensors, msg, want_grad, grad_dtype)
    rows = tensors[0][1].rows
    if msg.HasField("sparse_labels") and len(msg.sparse_labels.row_splits) != rows + 1:
        return [(0, rows)]
    return row_chunks(rows, req, resp, limit)


def predict_ranges(tensors, want_probs, limit: int) -> List[tuple]:
    s = tensors[0][1]
    if len(s.data) * 3 + 16 * s.rows * (s.cols + 1) + _SLACK_BYTES < limit // 2:
        return [(0, s.rows)]  # far under the limit (a bound on the sizes below; the usual case)
    req, resp, fixed = predict_row_bytes(tensors, want_probs)
    return row_chunks(tensors[0][1].rows, req, resp, limit, fixed)


def parse_server_info(data: bytes) -> "ServerInfo":
    r = pb.ServerInfo.FromString(data)
    return ServerInfo(version=r.version, backend=r.backend, devices=list(r.devices),
                      max_batch_rows=r.batcher.max_batch_rows,
                      max_message_bytes=r.limits.max_message_bytes,
                      max_inflight_bytes=r.limits.max_inflight_bytes)


class Client:
    """A blocking client of zlpr-server.

        client = zlpr.Client("127.0.0.1:50051", token=None, deadline_s=30)
        r = client.compute_loss(scores, labels, want_grad=True)
        p = client.predict(scores, top_k=5)

    Calls larger than the server's message limit are split by rows into several requests, sent
    concurrently, and reassembled in order: the result is the one a single call would give (the
    server computes each row independently of its batch). Errors raise ZlprError.

    `transport` carries the unary calls: "native" (gRPC C++ through zlpr._native, built into
    the wheel when gRPC C++ was installed: a fifth of grpcio's CPU per call, under half its
    latency; bench/RESULTS.md), "grpcio", or "auto" (native when built). Streams always run on
    grpcio. `options` are gRPC channel arguments, (name, int or str) pairs, given to either.

    `shared_memory=True`, for a client on the server's host (the server started with
    --allow_client_shm, as the same user): compute_loss writes the scores, labels and mask into
    POSIX shared memory the client registered with the server once, and reads the gradient from
    a second region, instead of sending them through the socket; results are bit-identical.
    Sparse labels and float16/bfloat16 gradients take the usual path. `shared_tensors(rows,
    cols)` goes further: arrays that live in a registered region, read and written there by the
    server's kernels, so that a call moves no tensor bytes at all.
    """

    def __init__(self, target: str, *, deadline_s: Optional[float] = 30.0, max_attempts: int = 5,
                 max_message_bytes: Optional[int] = None, load_balancing: str = "round_robin",
                 tls: bool = False, tls_root_certs: Optional[bytes] = None,
                 tls_client_cert: Optional[bytes] = None, tls_client_key: Optional[bytes] = None,
                 tls_server_name: Optional[str] = None, token: Optional[str] = None,
                 max_parallel_chunks: int = 4, options: Optional[list] = None,
                 transport: str = "auto", shared_memory: bool = False):
        self.settings = ChannelSettings(
            target=target, deadline_s=deadline_s, max_attempts=max_attempts,
            max_message_bytes=max_message_bytes, load_balancing=load_balancing, tls=tls,
            tls_root_certs=tls_root_certs, tls_client_cert=tls_client_cert,
            tls_client_key=tls_client_key, tls_server_name=tls_server_name, token=token,
            options=options or [])
        for option in self.settings.options:
            if (not isinstance(option, tuple) or len(option) != 2 or not isinstance(option[0], str)
                    or not isinstance(option[1], (int, str))):
                raise ValueError(f"options: {option!r} is not a (name, int or str) pair")
        self.transport = choose_transport(transport)
        self._native = None
        self._grpcio = None  # made on first use: every call on grpcio, or a stream
        self._grpcio_lock = threading.Lock()
        self._grpcio_calls = {}
        self._closed = False
        self._metadata = self.settings.metadata()
        if self.transport == "native":
            st = self.settings  # (the TLS options as PEM bytes, read from files if paths)
            self._native = _native.Channel(target, st.channel_args(), tls, st.tls_root_certs,
                                           st.tls_client_key, st.tls_client_cert)
        self._limit = max_message_bytes
        self._limit_lock = threading.Lock()
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, max_parallel_chunks))
        self._shm = None
        if shared_memory:
            from zlpr._shm import SharedMemoryLoss
            self._shm = SharedMemoryLoss(
                lambda path, data, deadline_s: self._unary(
                    path, data, self.settings.deadline_s if deadline_s is None else deadline_s))

    # -- plumbing ------------------------------------------------------------------------------

    def close(self) -> None:
        if self._shm is not None and not self._closed:
            self._shm.close()  # (unregisters its regions: before the channel goes)
        self._closed = True
        self._pool.shutdown(wait=False)
        if self._native is not None:
            self._native.close()
        with self._grpcio_lock:
            if self._grpcio is not None:
                self._grpcio.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def _channel(self) -> grpc.Channel:
        """The grpcio channel (streams; every call when transport is "grpcio")."""
        with self._grpcio_lock:
            if self._closed:
                raise ValueError("the client is closed")
            if self._grpcio is None:
                s, args = self.settings, self.settings.channel_args()
                self._grpcio = (grpc.secure_channel(s.target, s.credentials(), options=args)
                                if s.tls else grpc.insecure_channel(s.target, options=args))
            return self._grpcio

    def _unary(self, path: str, data: bytes, timeout: Optional[float],
               decode_predict: bool = False):
        """One unary call of `path` ("/package.Service/Method"): the response's bytes, or with
        `decode_predict` (native transport only) a Predict response as split_predict decodes
        it."""
        if self._closed:
            raise ValueError("the client is closed")
        metadata = self._metadata
        if self._native is not None:
            call = self._native.unary_predict if decode_predict else self._native.unary
            try:
                return call(path, data, timeout, metadata or ())
            except _native.RpcError as e:
                code, details = e.args
                raise ZlprError(status_code(code), details) from None
        call = self._grpcio_calls.get(path)
        if call is None:
            call = self._grpcio_calls[path] = self._channel.unary_unary(
                path, request_serializer=_identity, response_deserializer=_identity)
        try:
            return call(data, timeout=timeout, metadata=metadata)
        except grpc.RpcError as e:
            raise ZlprError(e.code(), e.details() or "") from None

    def _call(self, method: str, data: bytes, deadline_s: Optional[float],
              decode_predict: bool = False):
        timeout = self.settings.deadline_s if deadline_s is None else deadline_s
        return self._unary(_SERVICE + method, data, timeout, decode_predict)

    def message_limit(self) -> int:
        """The largest message the server takes (asked once, then kept)."""
        with self._limit_lock:
            if self._limit is None:
                self._limit = self.server_info().max_message_bytes
            return self._limit

    def _run_chunks(self, msg, tensors, ranges, chunk, call):
        """call(request bytes) for each row range's request, concurrently; results in order."""
        if len(ranges) == 1:
            return [call(_wire.join(msg, tensors))]
        futures = [self._pool.submit(lambda b=b, e=e: call(_wire.join(*chunk(msg, tensors, b, e))))
                   for b, e in ranges]
        return [f.result() for f in futures]

    # -- the API -------------------------------------------------------------------------------

    def shared_tensors(self, rows: int, cols: int, dtype=np.float32, mask: bool = False):
        """A set of scores, labels and gradient arrays of [rows, cols] (and a uint8 mask when
        `mask`) in shared memory registered with the server, for a client made with
        shared_memory=True: compute_loss given its scores and labels (or a block of their rows)
        sends no tensor bytes and returns the gradient in the set's `grad` array itself
        (valid until the next call with the set). `dtype`: float32 or float16. Close it (or the
        client) when done; one set per call in flight."""
        if self._shm is None:
            raise ValueError("shared_tensors: needs a client made with shared_memory=True")
        return self._shm.tensors(int(rows), int(cols), dtype, mask)

    def compute_loss(self, scores, labels, mask=None, want_grad: bool = False,
                     grad_dtype=None, request_id: str = "",
                     deadline_s: Optional[float] = None, bf16_bits: bool = False, *,
                     priority: Optional[str] = None) -> LossResult:
        """The ZLPR loss of each row of `scores` [rows, cols] (float32 or float16) against
        `labels` (a dense [rows, cols] array in [0, 1], or SparseLabels), with an optional uint8
        `mask` (0 excludes an entry); the gradient ∂L/∂s too when `want_grad` (in `grad_dtype`:
        "float32", "float16" or "bfloat16"; a bfloat16 gradient arrives widened to float32, or
        as its uint16 bits with `bf16_bits`). `priority`: "interactive" or "bulk" (the loss's
        default) asks the server to take the request before or after other work."""
        if (self._shm is not None and not isinstance(labels, SparseLabels) and
                grad_dtype in (None, "float32") and not bf16_bits):
            level = wire_priority(priority)  # the same numbers as Triton's levels
            loss, total, mean, grad = self._shm.loss(scores, labels, mask, want_grad, request_id,
                                                     deadline_s, level)
            return LossResult(loss=loss, loss_sum=total, loss_mean=mean, grad=grad,
                              request_id=request_id)
        msg, tensors = loss_request(scores, labels, mask, want_grad, grad_dtype, request_id,
                                    priority)
        ranges = loss_ranges(msg, tensors, want_grad, grad_dtype, self.message_limit())

        def call(data):
            return parse_loss(self._call("ComputeLoss", data, deadline_s), bf16_bits)[0]
        parts = self._run_chunks(msg, tensors, ranges, chunk_loss, call)
        return merge_loss(parts, request_id)

    def predict(self, scores, threshold: Optional[float] = None, label_thresholds=None,
                top_k: int = 0, min_labels: int = 0, want_probs: bool = False, mask=None,
                request_id: str = "", deadline_s: Optional[float] = None, *,
                priority: Optional[str] = None) -> PredictResult:
        """Each row's labels: those with σ(2s) > threshold (0.5 when None; or one threshold per
        column), at most `top_k` (0: no cap), topped up to `min_labels`; best first, with their
        probabilities. `want_probs` also returns the dense probabilities. `priority`:
        "interactive" (Predict's default) or "bulk"."""
        msg, tensors = predict_request(scores, threshold, label_thresholds, top_k, min_labels,
                                       want_probs, mask, request_id, priority)
        ranges = predict_ranges(tensors, want_probs, self.message_limit())
        if self._native is not None and not want_probs:  # the response decoded in C++
            def call(data):
                return decoded_predict(*self._call("Predict", data, deadline_s, True))[0]
        else:  # (dense probabilities: viewed in the received bytes, not copied out)
            def call(data):
                return parse_predict(self._call("Predict", data, deadline_s))[0]
        parts = self._run_chunks(msg, tensors, ranges, chunk_predict, call)
        return merge_predict(parts, request_id)

    def server_info(self) -> ServerInfo:
        return parse_server_info(self._call("GetServerInfo", b"", None))

    def health(self, service: str = "") -> bool:
        """Whether grpc.health.v1.Health says SERVING for `service` ("" is the whole server)."""
        # HealthCheckRequest{service = 1} and HealthCheckResponse{status = 1}, SERVING = 1.
        name = service.encode()
        request = (b"\x0a" + _wire._varint(len(name)) + name) if name else b""
        try:
            return self._unary("/grpc.health.v1.Health/Check", request,
                               self.settings.deadline_s) == b"\x08\x01"
        except ZlprError:
            return False

    def loss_stream(self, window: int = 32) -> "LossStream":
        """A StreamLoss session: send() requests, receive() or results() gives their results in
        order; at most `window` requests are in flight (send() waits beyond)."""
        return LossStream(self, window)

    def predict_stream(self, window: int = 32) -> "PredictStream":
        """A StreamPredict session, as loss_stream()."""
        return PredictStream(self, window)


class _Stream:
    """A long-lived bidirectional stream: requests go out as they are sent, responses come back
    in order, at most `window` in flight (send() waits beyond). Per-message errors are raised
    by receive() in their place, and the stream goes on."""

    _METHOD = ""

    def __init__(self, client: Client, window: int):
        self._window = threading.Semaphore(max(1, window))
        self._queue: queue.SimpleQueue = queue.SimpleQueue()  # None: no more requests
        self._closed = False
        call = client._channel.stream_stream(_SERVICE + self._METHOD,
                                             request_serializer=_identity,
                                             response_deserializer=_identity)
        self._responses = call(self._requests(), metadata=client.settings.metadata())

    def _requests(self) -> Iterator[bytes]:
        while (data := self._queue.get()) is not None:
            yield data

    def _send(self, data: bytes) -> None:
        if self._closed:
            raise ValueError("send() after close()")
        self._window.acquire()
        self._queue.put(data)

    def close(self) -> None:
        """No more requests; receive() returns None after the last response."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)

    def _receive(self, parse):
        try:
            data = next(self._responses)
        except StopIteration:
            return None
        except grpc.RpcError as e:
            raise ZlprError(e.code(), e.details() or "") from None
        self._window.release()
        result, r = parse(data)
        if r.HasField("error"):
            raise ZlprError(status_code(r.error.code), r.error.message)
        return result

    def results(self) -> Iterator:
        """receive() until the stream ends (an error ends the iteration by raising)."""
        while (result := self.receive()) is not None:
            yield result


class LossStream(_Stream):
    """A StreamLoss session (Client.loss_stream): a trainer's epoch on one stream."""

    _METHOD = "StreamLoss"

    def send(self, scores, labels, mask=None, want_grad=False, grad_dtype=None,
             request_id: str = "", *, priority: Optional[str] = None) -> None:
        self._send(_wire.join(*loss_request(scores, labels, mask, want_grad, grad_dtype,
                                            request_id, priority)))

    def receive(self) -> Optional[LossResult]:
        """The next result in order; None once the stream has ended after close()."""
        return self._receive(parse_loss)


class PredictStream(_Stream):
    """A StreamPredict session (Client.predict_stream): the lowest per-call cost for a caller
    that sends one request after another (no per-call setup)."""

    _METHOD = "StreamPredict"

    def send(self, scores, threshold=None, label_thresholds=None, top_k=0, min_labels=0,
             want_probs=False, mask=None, request_id: str = "", *,
             priority: Optional[str] = None) -> None:
        self._send(_wire.join(*predict_request(scores, threshold, label_thresholds, top_k,
                                               min_labels, want_probs, mask, request_id,
                                               priority)))

    def receive(self) -> Optional[PredictResult]:
        return self._receive(parse_predict)


def native_available() -> bool:
    """Whether this installation has the gRPC C++ transport (zlpr._native)."""
    return _native is not None


def choose_transport(transport: str) -> str:
    if transport not in ("auto", "native", "grpcio"):
        raise ValueError(f"transport {transport!r}: use auto, native or grpcio")
    if transport == "native" and _native is None:
        raise ValueError("transport 'native': this zlpr was installed without zlpr._native "
                         "(build the wheel where gRPC C++ is installed; see docs/PYTHON.md)")
    if transport == "auto":
        return "grpcio" if _native is None else "native"
    return transport


def status_code(number: int) -> grpc.StatusCode:
    """The grpc.StatusCode of a numeric status code."""
    for c in grpc.StatusCode:
        if c.value[0] == number:
            return c
    return grpc.StatusCode.UNKNOWN
