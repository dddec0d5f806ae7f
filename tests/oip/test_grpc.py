"""tritonclient's gRPC client, unchanged, against zlpr-server's Open Inference Protocol:
liveness, readiness, metadata, configuration, inference on both models against a float64
reference (raw and typed inputs, FP16, requested outputs, parameters), errors with their codes
and the tensor they name, and the counters shared with zlpr.v1."""
import os
import re
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from error_cases import check_priority_levels, common_error_cases
from zlpr_reference import reference

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def client(server):
    return grpcclient.InferenceServerClient(server["grpc"])


def tensor(name, array, datatype):
    t = grpcclient.InferInput(name, list(array.shape), datatype)
    t.set_data_from_numpy(array)
    return t


def test_liveness_readiness_metadata_and_config(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("zlpr_predict") and client.is_model_ready("zlpr_loss")
    assert not client.is_model_ready("resnet50")
    meta = client.get_server_metadata()
    assert meta.name == "zlpr-server" and "model_configuration" in meta.extensions
    # docs/OIP.md lists exactly the extensions served.
    doc = open(os.path.join(ROOT, "docs", "OIP.md"), encoding="utf-8").read()
    listed = re.search(r"ServerMetadata \(extensions ([^);]*)", doc).group(1)
    assert sorted(re.findall(r"`([a-z_]+)`", listed)) == sorted(meta.extensions), listed
    model = client.get_model_metadata("zlpr_loss")
    assert [i.name for i in model.inputs] == ["scores", "labels", "mask"]
    assert [(o.name, o.datatype, list(o.shape)) for o in model.outputs] == [
        ("loss", "FP32", [-1]), ("grad", "FP32", [-1, -1])]
    config = client.get_model_config("zlpr_predict").config
    assert config.name == "zlpr_predict" and config.max_batch_size == 128
    assert [(i.name, list(i.dims)) for i in config.input] == [
        ("scores", [-1]), ("label_thresholds", [-1]), ("mask", [-1])]
    assert (config.dynamic_batching.priority_levels,
            config.dynamic_batching.default_priority_level) == (2, 1)
    loss_batching = client.get_model_config("zlpr_loss").config.dynamic_batching
    assert (loss_batching.priority_levels, loss_batching.default_priority_level) == (2, 2)
    with pytest.raises(InferenceServerException) as e:
        client.get_model_metadata("resnet50")
    assert "unknown model 'resnet50'" in e.value.message()


@pytest.mark.parametrize("datatype", ["FP32", "FP16"])
def test_loss_and_gradient_against_the_reference(client, datatype):
    rng = np.random.default_rng(1)
    s = (rng.standard_normal((7, 301)) * 3).astype(np.float32)
    t = rng.random((7, 301)).astype(np.float32)
    dt = np.float16 if datatype == "FP16" else np.float32
    r = client.infer("zlpr_loss", [tensor("scores", s.astype(dt), datatype),
                                   tensor("labels", t.astype(dt), datatype)], request_id="req-7")
    loss, grad = reference(s.astype(dt), t.astype(dt))
    np.testing.assert_allclose(r.as_numpy("loss"), loss, rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(r.as_numpy("grad"), grad, atol=2e-6)
    response = r.get_response()
    assert response.id == "req-7" and response.model_name == "zlpr_loss"
    assert response.parameters["loss_sum"].double_param == pytest.approx(float(np.sum(loss)))
    # Only the loss when only it is asked for: no gradient computed or sent.
    only = client.infer("zlpr_loss", [tensor("scores", s, "FP32"), tensor("labels", t, "FP32")],
                        outputs=[grpcclient.InferRequestedOutput("loss")])
    assert only.as_numpy("grad") is None
    np.testing.assert_array_equal(only.as_numpy("loss"), r.as_numpy("loss")
                                  if datatype == "FP32" else only.as_numpy("loss"))


def test_predict_outputs_parameters_and_mask(client):
    s = np.array([[2.0, -1.0, 0.5, 3.0], [-2.0, -3.0, -1.0, -0.5]], dtype=np.float32)
    r = client.infer("zlpr_predict", [tensor("scores", s, "FP32")])
    np.testing.assert_array_equal(r.as_numpy("labels"), [[3, 0, 2], [-1, -1, -1]])
    np.testing.assert_array_equal(r.as_numpy("label_count"), [3, 0])
    np.testing.assert_allclose(r.as_numpy("label_probs")[0], 1 / (1 + np.exp(-2 * s[0, [3, 0, 2]])),
                               rtol=1e-6)
    np.testing.assert_allclose(r.as_numpy("probs"), 1 / (1 + np.exp(-2 * s)), rtol=1e-6)
    capped = client.infer("zlpr_predict", [tensor("scores", s, "FP32")],
                          parameters={"top_k": 1, "min_labels": 2, "threshold": 0.5},
                          outputs=[grpcclient.InferRequestedOutput("labels")])
    np.testing.assert_array_equal(capped.as_numpy("labels"), [[3, 0], [3, 2]])
    assert capped.as_numpy("probs") is None
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=np.uint8)
    masked = client.infer("zlpr_predict", [tensor("scores", s, "FP32"),
                                           tensor("mask", mask, "UINT8")])
    np.testing.assert_array_equal(masked.as_numpy("labels")[0], [0, 2])
    per_label = client.infer("zlpr_predict", [
        tensor("scores", s, "FP32"),
        tensor("label_thresholds", np.array([0.99, 0.5, 0.5, 0.5], np.float32), "FP32")])
    np.testing.assert_array_equal(per_label.as_numpy("labels")[0], [3, 2])


def test_errors_name_the_tensor_and_keep_their_codes(client):
    cases = common_error_cases(tensor) + [
        ("zlpr_predict", [tensor("scores", np.zeros((2, 3), np.float32), "FP32")],
         {"threshold": 1.5}, "threshold"),
        ("zlpr_predict", [tensor("scores", np.zeros((2, 3), np.float32), "FP32"),
                          tensor("mask", np.ones((2, 2), np.uint8), "UINT8")], {},
         "input 'mask': shape [2, 2]"),
    ]
    for model, inputs, params, message in cases:
        with pytest.raises(InferenceServerException) as e:
            client.infer(model, inputs, parameters=params or None)
        assert e.value.status() == "StatusCode.INVALID_ARGUMENT", (message, e.value)
        assert message in e.value.message(), (message, e.value.message())
    with pytest.raises(InferenceServerException) as e:
        client.infer("resnet50", [tensor("scores", np.zeros((1, 1), np.float32), "FP32")])
    assert e.value.status() == "StatusCode.NOT_FOUND"


def test_both_protocols_are_counted_on_the_same_path(server, client):
    s = np.ones((3, 5), np.float32)
    client.infer("zlpr_predict", [tensor("scores", s, "FP32")])
    with urllib.request.urlopen(f"http://127.0.0.1:{server['metrics']}/metrics") as r:
        body = r.read().decode()
    assert 'zlpr_requests_total{code="OK",method="ModelInfer",protocol="oip_grpc"}' in body
    assert 'zlpr_rows_total{op="predict"}' in body


def test_model_statistics_count_rows_batches_and_times(client):
    before = client.get_inference_statistics("zlpr_loss").model_stats[0]
    s = np.random.default_rng(3).standard_normal((6, 40)).astype(np.float32)
    t = (s > 0).astype(np.float32)
    for _ in range(3):
        client.infer("zlpr_loss", [tensor("scores", s, "FP32"), tensor("labels", t, "FP32")])
    with pytest.raises(InferenceServerException):  # converted, then refused: not a failure
        bad = s.copy()
        bad[0, 0] = np.nan
        client.infer("zlpr_loss", [tensor("scores", bad, "FP32"), tensor("labels", t, "FP32")])
    after = client.get_inference_statistics("zlpr_loss").model_stats[0]
    assert after.name == "zlpr_loss" and after.version == "1"
    assert after.inference_count - before.inference_count == 18
    assert 1 <= after.execution_count - before.execution_count <= 3
    stats, prior = after.inference_stats, before.inference_stats
    assert stats.success.count - prior.success.count == 3
    assert stats.success.ns > prior.success.ns
    assert stats.compute_infer.count > prior.compute_infer.count
    assert after.last_inference > 0
    both = client.get_inference_statistics()
    assert [m.name for m in both.model_stats] == ["zlpr_predict", "zlpr_loss"]


def test_stream_infer_answers_in_order_with_errors_in_place(server):
    import queue
    client = grpcclient.InferenceServerClient(server["grpc"])
    results = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    s = np.array([[1.0, -1.0, 2.0]], dtype=np.float32)
    for i in range(12):
        scores = np.full((1, 3), np.nan, np.float32) if i == 5 else s * (i + 1)
        client.async_stream_infer("zlpr_predict", [tensor("scores", scores, "FP32")],
                                  request_id=str(i), parameters={"top_k": 1})
    got = [results.get(timeout=30) for _ in range(12)]
    client.stop_stream()
    for i, (result, error) in enumerate(got):
        if i == 5:
            assert result is None and "scores[0, 0] is NaN" in str(error)
        else:
            assert error is None, error
            assert result.get_response().id == str(i)
            np.testing.assert_array_equal(result.as_numpy("labels"), [[2]])


def test_classification_extension_on_probs(client):
    s = np.array([[2.0, -1.0, 0.5, 3.0], [-2.0, -3.0, -1.0, -0.5]], dtype=np.float32)
    r = client.infer("zlpr_predict", [tensor("scores", s, "FP32")],
                     outputs=[grpcclient.InferRequestedOutput("probs", class_count=2)])
    got = r.as_numpy("probs")
    assert got.shape == (2, 2)
    p = 1 / (1 + np.exp(-2 * s.astype(np.float64)))
    for row in range(2):
        best = np.argsort(-p[row], kind="stable")[:2]
        want = [f"{p[row, i]:f}:{i}".encode() for i in best]
        assert list(got[row]) == want
    with pytest.raises(InferenceServerException) as e:
        client.infer("zlpr_predict", [tensor("scores", s, "FP32")],
                     outputs=[grpcclient.InferRequestedOutput("labels", class_count=2)])
    assert "classification is, on probs" in e.value.message()


def test_label_thresholds_per_column_also_repeated_per_row(client):
    s = np.array([[2.0, -1.0, 0.5, 3.0], [0.1, 0.2, -0.1, 3.0]], dtype=np.float32)
    row = np.array([0.99, 0.5, 0.5, 0.5], np.float32)
    r = client.infer("zlpr_predict", [tensor("scores", s, "FP32"),
                                       tensor("label_thresholds", np.stack([row, row]), "FP32")])
    np.testing.assert_array_equal(r.as_numpy("labels"), [[3, 2], [3, 1]])
    with pytest.raises(InferenceServerException) as e:
        client.infer("zlpr_predict", [tensor("scores", s, "FP32"), tensor(
            "label_thresholds", np.stack([row, row * 0.9]), "FP32")])
    assert "row 1 differs from row 0" in e.value.message()


def test_hostile_label_thresholds_shape_is_refused(server):
    # A row count whose product with the columns overflows 64 bits: refused, not wrapped.
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server["grpc"]))
    req = service_pb2.ModelInferRequest(model_name="zlpr_predict")
    s = req.inputs.add(name="scores", datatype="FP32", shape=[1, 4])
    t = req.inputs.add(name="label_thresholds", datatype="FP32", shape=[2**62, 4])
    req.raw_input_contents.extend([np.zeros((1, 4), np.float32).tobytes(),
                                   np.full(4, 0.5, np.float32).tobytes()])
    assert s and t
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(req, timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'label_thresholds': must be FP32 [4]" in e.value.details()


def test_triton_priority_levels_choose_the_class(client):
    check_priority_levels(client, tensor)


def test_stream_errors_carry_the_request_id_and_a_malformed_message_ends_the_stream(server):
    # The raw messages, as any v2 client sees them (tritonclient keeps only error_message).
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    def request(i, datatype="FP32", scores=(1.0, -1.0, 2.0)):
        r = service_pb2.ModelInferRequest(model_name="zlpr_predict", id=f"r{i}")
        r.inputs.add(name="scores", datatype=datatype, shape=[1, 3])
        r.raw_input_contents.append(np.array([scores], np.float32).tobytes())
        r.parameters["top_k"].int64_param = 1
        return r

    with grpc.insecure_channel(server["grpc"]) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        sent = [request(0), request(1, datatype="FLOAT"), request(2, scores=(np.nan, 0, 0)),
                request(3)]
        got = list(stub.ModelStreamInfer(iter(sent), timeout=30))
        assert [g.infer_response.id for g in got] == ["r0", "r1", "r2", "r3"]
        assert [bool(g.error_message) for g in got] == [False, True, True, False]
        assert "input 'scores': unknown datatype 'FLOAT'" in got[1].error_message
        assert "scores[0, 0] is NaN" in got[2].error_message
        assert not got[1].infer_response.outputs and not got[2].infer_response.outputs
        assert [o.name for o in got[3].infer_response.outputs] == [
            "probs", "labels", "label_probs", "label_count"]

        # Bytes that are not a ModelInferRequest (a truncated field): the messages before
        # them are answered, then the stream ends with INVALID_ARGUMENT.
        broken = channel.stream_stream(
            "/inference.GRPCInferenceService/ModelStreamInfer",
            request_serializer=lambda b: b, response_deserializer=lambda b: b)
        answers = broken(iter([request(4).SerializeToString(), b"\x0a\x20zlpr"]), timeout=30)
        first = service_pb2.ModelStreamInferResponse.FromString(next(answers))
        assert first.infer_response.id == "r4" and not first.error_message
        with pytest.raises(grpc.RpcError) as e:
            next(answers)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "stream message 1" in e.value.details()
        assert "is not a valid inference.ModelInferRequest: a field is longer" in e.value.details()

        # An empty message is a valid, empty ModelInferRequest: refused for what it lacks.
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                    request_serializer=lambda b: b,
                                    response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as e:
            infer(b"", timeout=30)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        assert "unknown model ''" in e.value.details()
