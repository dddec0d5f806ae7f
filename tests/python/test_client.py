"""A client written in another language: every RPC of zlpr.v1 (plus health and reflection)
from Python, checked against a numpy float64 evaluation of docs/MATH.md."""
import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc


# --- float64 reference ------------------------------------------------------------------------

def lse0(v):
    """log-sum-exp of {0} ∪ v."""
    m = max(0.0, float(np.max(v))) if v.size else 0.0
    return m + np.log(np.exp(-m) + np.sum(np.exp(v - m)))


def ref_loss_grad(s, t, mask=None):
    s = s.astype(np.float64)
    t = t.astype(np.float64)
    keep = np.isfinite(s) if mask is None else (mask != 0) & np.isfinite(s)
    loss = np.zeros(s.shape[0])
    grad = np.zeros_like(s)
    for r in range(s.shape[0]):
        k = keep[r]
        pos = k & (t[r] > 0)
        neg = k & (t[r] < 1)
        with np.errstate(divide="ignore"):
            x = -s[r][pos] + np.log(t[r][pos])
            y = s[r][neg] + np.log1p(-t[r][neg])
        p, n = lse0(x), lse0(y)
        loss[r] = p + n
        grad[r][pos] -= np.exp(x - p)
        grad[r][neg] += np.exp(y - n)
    return loss, grad


def tensor(pb, a, dtype=None):
    zlpr_pb2 = pb[0]
    a = np.ascontiguousarray(a)
    dt = dtype or {np.float32: zlpr_pb2.FLOAT32, np.uint8: zlpr_pb2.UINT8}[a.dtype.type]
    return zlpr_pb2.Tensor(shape=list(a.shape), dtype=dt, data=a.tobytes())


def problem(rows, cols, seed, soft=True):
    rng = np.random.default_rng(seed)
    s = rng.uniform(-4, 4, (rows, cols)).astype(np.float32)
    t = (rng.random((rows, cols)) < 0.2).astype(np.float32)
    if soft:
        t *= rng.uniform(0.01, 1.0, (rows, cols)).astype(np.float32)
    return s, t


# --- ComputeLoss ------------------------------------------------------------------------------

@pytest.mark.parametrize("rows,cols", [(1, 1), (3, 7), (5, 33), (4, 1000)])
def test_compute_loss_matches_float64_numpy(pb, stub, rows, cols):
    s, t = problem(rows, cols, seed=rows * cols)
    req = pb[0].LossRequest(request_id="py", scores=tensor(pb, s), dense_labels=tensor(pb, t), want_grad=True)
    resp, call = stub.ComputeLoss.with_call(req, timeout=10)
    loss, grad = ref_loss_grad(s, t)
    got_grad = np.frombuffer(resp.grad.data, dtype=np.float32).reshape(rows, cols)
    assert resp.request_id == "py"
    np.testing.assert_allclose(resp.loss, loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_grad, grad, rtol=1e-5, atol=1e-6)
    assert resp.loss_sum == pytest.approx(float(np.sum(np.array(resp.loss, dtype=np.float64))))
    assert resp.loss_mean == pytest.approx(resp.loss_sum / rows)
    trailers = dict(call.trailing_metadata())
    assert float(trailers["zlpr-queue-seconds"]) >= 0
    assert float(trailers["zlpr-compute-seconds"]) >= 0


def test_sparse_labels_and_mask_give_the_dense_result(pb, stub):
    s, t = problem(6, 50, seed=3, soft=False)
    mask = (np.random.default_rng(4).random((6, 50)) < 0.8).astype(np.uint8)
    s[2, 5] = -np.inf
    rows, cols = np.nonzero(t)
    splits = np.searchsorted(rows, np.arange(7)).tolist()
    sparse = pb[0].SparseLabels(row_splits=splits, indices=cols.tolist())
    dense_req = pb[0].LossRequest(scores=tensor(pb, s), dense_labels=tensor(pb, t), mask=tensor(pb, mask), want_grad=True)
    sparse_req = pb[0].LossRequest(scores=tensor(pb, s), sparse_labels=sparse, mask=tensor(pb, mask), want_grad=True)
    a = stub.ComputeLoss(dense_req, timeout=10)
    b = stub.ComputeLoss(sparse_req, timeout=10)
    assert list(a.loss) == list(b.loss)
    assert a.grad.data == b.grad.data
    loss, grad = ref_loss_grad(s, t, mask)
    np.testing.assert_allclose(a.loss, loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.frombuffer(a.grad.data, np.float32).reshape(6, 50), grad, rtol=1e-5, atol=1e-6)


def test_invalid_input_is_invalid_argument_naming_row_and_column(pb, stub):
    s, t = problem(2, 3, seed=1)
    s[1, 2] = np.nan
    with pytest.raises(grpc.RpcError) as e:
        stub.ComputeLoss(pb[0].LossRequest(scores=tensor(pb, s), dense_labels=tensor(pb, t)), timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details() == "scores[1, 2] is NaN"


# --- Predict ----------------------------------------------------------------------------------

def ref_labels(s, threshold=0.5, top_k=0, min_labels=0):
    z = 0.5 * np.log(threshold / (1 - threshold))
    order = sorted(range(len(s)), key=lambda i: (-s[i], i))
    selected = [i for i in order if s[i] > z]
    rest = [i for i in order if s[i] <= z]
    if top_k and len(selected) > top_k:
        rest = sorted(selected[top_k:] + rest, key=lambda i: (-s[i], i))
        selected = selected[:top_k]
    if len(selected) < min_labels:
        selected += rest[:min_labels - len(selected)]
    return selected


def test_predict_matches_numpy_labeler_and_probabilities(pb, stub):
    s, _ = problem(5, 40, seed=9)
    req = pb[0].PredictRequest(scores=tensor(pb, s), threshold=0.3, top_k=4, min_labels=2, want_probs=True)
    resp = stub.Predict(req, timeout=10)
    probs = 1 / (1 + np.exp(-2 * s.astype(np.float64)))
    np.testing.assert_allclose(np.frombuffer(resp.probs.data, np.float32).reshape(5, 40), probs, rtol=1e-6, atol=1e-7)
    for r in range(5):
        assert list(resp.rows[r].labels) == ref_labels(s[r], 0.3, 4, 2)
        np.testing.assert_allclose(resp.rows[r].probs, probs[r][list(resp.rows[r].labels)], rtol=1e-6)


# --- Streams ----------------------------------------------------------------------------------

def test_stream_loss_answers_in_order_with_per_message_errors(pb, stub):
    problems = [problem(1 + i % 3, 20, seed=100 + i) for i in range(12)]

    def requests():
        for i, (s, t) in enumerate(problems):
            if i == 4:
                s = s.copy()
                s[0, 0] = np.inf
            yield pb[0].LossRequest(request_id=str(i), scores=tensor(pb, s), dense_labels=tensor(pb, t))

    responses = list(stub.StreamLoss(requests(), timeout=30))
    assert [r.request_id for r in responses] == [str(i) for i in range(12)]
    assert responses[4].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "scores[0, 0] is +inf" in responses[4].error.message
    for i, r in enumerate(responses):
        if i != 4:
            np.testing.assert_allclose(r.loss, ref_loss_grad(*problems[i])[0], rtol=1e-5, atol=1e-6)


def test_stream_predict(pb, stub):
    s, _ = problem(2, 10, seed=5)
    reqs = [pb[0].PredictRequest(request_id=str(i), scores=tensor(pb, s), top_k=1) for i in range(5)]
    responses = list(stub.StreamPredict(iter(reqs), timeout=30))
    assert [r.request_id for r in responses] == [str(i) for i in range(5)]
    assert all(len(row.labels) <= 1 for r in responses for row in r.rows)


# --- Info, health, reflection -----------------------------------------------------------------

def test_server_info(pb, stub):
    info = stub.GetServerInfo(pb[0].ServerInfoRequest(), timeout=10)
    assert info.backend == "cpu"
    assert info.devices and info.devices[0].startswith("cpu (")
    assert info.batcher.max_batch_rows > 0
    assert info.limits.max_message_bytes == 64 << 20


def test_health_check_and_watch(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ["", "zlpr.v1.ZlprService"]:
        resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    watch = health.Watch(health_pb2.HealthCheckRequest(service="zlpr.v1.ZlprService"), timeout=10)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()


def test_reflection_lists_the_services(channel):
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
    names = {s.name for s in next(responses).list_services_response.service}
    assert {"zlpr.v1.ZlprService", "grpc.health.v1.Health"} <= names
    fd = refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
        file_containing_symbol="zlpr.v1.ZlprService")]), timeout=10)
    assert next(fd).file_descriptor_response.file_descriptor_proto
