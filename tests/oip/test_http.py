"""The Open Inference Protocol's HTTP/REST binding: tritonclient's HTTP client, unchanged
(JSON tensors and the binary tensor extension), against the float64 reference; then raw HTTP
for what a hostile or broken client can send (status codes and messages), and the bearer token
and TLS on the HTTP port, and connections that stall or stay idle."""
import http.client
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from error_cases import check_priority_levels, common_error_cases
from zlpr_reference import reference


@pytest.fixture(scope="module")
def client(server):
    return httpclient.InferenceServerClient(server["http"])


def tensor(name, array, datatype, binary=True):
    t = httpclient.InferInput(name, list(array.shape), datatype)
    t.set_data_from_numpy(array, binary_data=binary)
    return t


def raw(server, method, path, body=b"", headers=None):
    """One request on its own connection: (status, headers, body)."""
    host, port = server["http"].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request(method, path, body=body, headers=headers or {})
    r = conn.getresponse()
    out = r.status, dict(r.getheaders()), r.read()
    conn.close()
    return out


def test_liveness_readiness_metadata_and_config(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("zlpr_predict") and client.is_model_ready("zlpr_loss")
    assert client.is_model_ready("zlpr_loss", model_version="1")
    assert not client.is_model_ready("resnet50")
    meta = client.get_server_metadata()
    assert meta["name"] == "zlpr-server"
    assert {"model_configuration", "statistics", "classification",
            "binary_tensor_data"} <= set(meta["extensions"])
    model = client.get_model_metadata("zlpr_loss")
    assert [i["name"] for i in model["inputs"]] == ["scores", "labels", "mask"]
    assert [(o["name"], o["datatype"], o["shape"]) for o in model["outputs"]] == [
        ("loss", "FP32", [-1]), ("grad", "FP32", [-1, -1])]
    config = client.get_model_config("zlpr_predict")
    assert config["name"] == "zlpr_predict" and config["max_batch_size"] == 128
    assert [(i["name"], i["data_type"], i["dims"]) for i in config["input"]] == [
        ("scores", "TYPE_FP32", [-1]), ("label_thresholds", "TYPE_FP32", [-1]),
        ("mask", "TYPE_UINT8", [-1])]
    assert config["dynamic_batching"]["priority_levels"] == 2
    assert config["dynamic_batching"]["default_priority_level"] == 1
    assert client.get_model_config("zlpr_loss")["dynamic_batching"]["default_priority_level"] == 2
    with pytest.raises(InferenceServerException) as e:
        client.get_model_metadata("resnet50")
    assert "unknown model 'resnet50'" in e.value.message()


@pytest.mark.parametrize("datatype,binary", [("FP32", True), ("FP32", False), ("FP16", True)])
def test_loss_and_gradient_against_the_reference(client, datatype, binary):
    rng = np.random.default_rng(1)
    s = (rng.standard_normal((7, 301)) * 3).astype(np.float32)
    t = rng.random((7, 301)).astype(np.float32)
    dt = np.float16 if datatype == "FP16" else np.float32
    outputs = [httpclient.InferRequestedOutput("loss", binary_data=binary),
               httpclient.InferRequestedOutput("grad", binary_data=binary)]
    r = client.infer("zlpr_loss", [tensor("scores", s.astype(dt), datatype, binary),
                                   tensor("labels", t.astype(dt), datatype, binary)],
                     outputs=outputs, request_id="req-7")
    loss, grad = reference(s.astype(dt), t.astype(dt))
    np.testing.assert_allclose(r.as_numpy("loss"), loss, rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(r.as_numpy("grad"), grad, atol=2e-6)
    response = r.get_response()
    assert response["id"] == "req-7" and response["model_name"] == "zlpr_loss"
    assert response["parameters"]["loss_sum"] == pytest.approx(float(np.sum(loss)))
    # Only the loss when only it is asked for: no gradient computed or sent.
    only = client.infer("zlpr_loss", [tensor("scores", s, "FP32"), tensor("labels", t, "FP32")],
                        outputs=[httpclient.InferRequestedOutput("loss")])
    assert only.as_numpy("grad") is None


def test_json_and_binary_answers_are_the_same_numbers(client, server):
    s = np.random.default_rng(2).standard_normal((5, 33)).astype(np.float32)
    outs = ["probs", "labels", "label_probs", "label_count"]
    a = client.infer("zlpr_predict", [tensor("scores", s, "FP32", binary=False)],
                     outputs=[httpclient.InferRequestedOutput(o, binary_data=False) for o in outs])
    b = client.infer("zlpr_predict", [tensor("scores", s, "FP32")],
                     outputs=[httpclient.InferRequestedOutput(o, binary_data=True) for o in outs])
    for o in outs:
        # JSON floats are written in their shortest form that reads back to the same float32.
        np.testing.assert_array_equal(a.as_numpy(o), b.as_numpy(o))
    # The same request on gRPC's binding gives the same bits.
    import tritonclient.grpc as grpcclient
    g = grpcclient.InferenceServerClient(server["grpc"])
    gi = grpcclient.InferInput("scores", list(s.shape), "FP32")
    gi.set_data_from_numpy(s)
    c = g.infer("zlpr_predict", [gi])
    for o in outs:
        np.testing.assert_array_equal(c.as_numpy(o), b.as_numpy(o))


def test_predict_outputs_parameters_and_mask(client):
    s = np.array([[2.0, -1.0, 0.5, 3.0], [-2.0, -3.0, -1.0, -0.5]], dtype=np.float32)
    r = client.infer("zlpr_predict", [tensor("scores", s, "FP32")])
    np.testing.assert_array_equal(r.as_numpy("labels"), [[3, 0, 2], [-1, -1, -1]])
    np.testing.assert_array_equal(r.as_numpy("label_count"), [3, 0])
    np.testing.assert_allclose(r.as_numpy("probs"), 1 / (1 + np.exp(-2 * s)), rtol=1e-6)
    capped = client.infer("zlpr_predict", [tensor("scores", s, "FP32")],
                          parameters={"top_k": 1, "min_labels": 2, "threshold": 0.5},
                          outputs=[httpclient.InferRequestedOutput("labels")])
    np.testing.assert_array_equal(capped.as_numpy("labels"), [[3, 0], [3, 2]])
    assert capped.as_numpy("probs") is None
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=np.uint8)
    for binary in (True, False):
        masked = client.infer("zlpr_predict", [tensor("scores", s, "FP32"),
                                               tensor("mask", mask, "UINT8", binary)])
        np.testing.assert_array_equal(masked.as_numpy("labels")[0], [0, 2])
    per_label = client.infer("zlpr_predict", [
        tensor("scores", s, "FP32"),
        tensor("label_thresholds", np.array([0.99, 0.5, 0.5, 0.5], np.float32), "FP32", False)])
    np.testing.assert_array_equal(per_label.as_numpy("labels")[0], [3, 2])


def test_classification_extension_on_probs(client):
    s = np.array([[2.0, -1.0, 0.5, 3.0], [-2.0, -3.0, -1.0, -0.5]], dtype=np.float32)
    p = 1 / (1 + np.exp(-2 * s.astype(np.float64)))
    for binary in (True, False):
        r = client.infer("zlpr_predict", [tensor("scores", s, "FP32")], outputs=[
            httpclient.InferRequestedOutput("probs", binary_data=binary, class_count=2)])
        got = r.as_numpy("probs")
        assert got.shape == (2, 2)
        for row in range(2):
            best = np.argsort(-p[row], kind="stable")[:2]
            want = [f"{p[row, i]:f}:{i}" for i in best]
            assert [v.decode() if isinstance(v, bytes) else v for v in got[row]] == want


def test_errors_name_the_tensor_and_keep_their_codes(client):
    cases = common_error_cases(tensor) + [
        ("zlpr_predict", [tensor("scores", np.zeros((2, 3), np.int32), "INT32", False)], {},
         "input 'scores': datatype INT32 is not accepted: scores and labels are FP32"),
        # What numpy makes by default: refused for what it is, not sent to the binary extension
        # (which would refuse it too).
        ("zlpr_predict", [tensor("scores", np.zeros((2, 3), np.float64), "FP64", False)], {},
         "input 'scores': datatype FP64 is not accepted"),
        ("zlpr_predict", [tensor("scores", np.zeros((2, 3), np.float32), "FP32"),
                          tensor("mask", np.full((2, 3), 2.5, np.float32), "FP32", False)], {},
         "input 'mask': datatype FP32 is not allowed"),
    ]
    for model, inputs, params, message in cases:
        with pytest.raises(InferenceServerException) as e:
            client.infer(model, inputs, parameters=params or None)
        assert e.value.status() == "400", (message, e.value)
        assert message in e.value.message(), (message, e.value.message())
    with pytest.raises(InferenceServerException) as e:
        client.infer("resnet50", [tensor("scores", np.zeros((1, 1), np.float32), "FP32")])
    assert e.value.status() == "404"


def infer_body(inputs, outputs=None, **extra):
    body = {"inputs": inputs, **extra}
    if outputs is not None:
        body["outputs"] = outputs
    return json.dumps(body).encode()


SCORES = {"name": "scores", "datatype": "FP32", "shape": [1, 3], "data": [1, -1, 0.5]}


@pytest.mark.parametrize("body,headers,status,message", [
    (b"{not json", {}, 400, "the request is not valid JSON: [json.exception.parse_error.101] "
                          "parse error at line 1, column 3"),
    (b"[1, 2]", {}, 400, "the request must be a JSON object"),
    (infer_body([SCORES], inptus=[]), {}, 400, "request: unknown key 'inptus'"),
    (infer_body([{**SCORES, "data": [1, -1, "x"]}]), {}, 400,
     "inputs[0].data: element 2 is not a number"),
    (infer_body([{**SCORES, "data": [[1, -1], [0.5, {"a": 1}]]}]), {}, 400,
     "inputs[0].data: element 3 is not a number"),
    (infer_body([{**SCORES, "shape": [1, -3]}]), {}, 400, "'shape' must hold whole numbers"),
    (infer_body([{**SCORES, "shape": [2, 3]}]), {}, 400,
     "input 'scores': 3 values in 'data' for shape [2, 3] (6 elements)"),
    (infer_body([{**SCORES, "datatype": "FP33"}]), {}, 400, "unknown datatype 'FP33'"),
    (infer_body([{**SCORES, "parameters": {"binary_data_size": 12}}]), {}, 400,
     "give 'data' or parameters.binary_data_size, not both"),
    (infer_body([{"name": "mask", "datatype": "UINT8", "shape": [1, 3], "data": [1, 256, 0]},
                 SCORES]), {}, 400, "input 'mask': element 1 is 256"),
    (infer_body([SCORES], [{"name": "labels", "parameters": {"binary_data": "yes"}}]), {}, 400,
     "output 'labels': binary_data must be a boolean"),
    (b"[" * 100000 + b"]" * 100000, {}, 400, "the request must be a JSON object"),
    (b'{"inputs":[{"data":' + b"[" * 100000 + b"]" * 100000 + b"}]}", {}, 400,
     "data nested too deeply"),
    (infer_body([SCORES]).replace(b'{"inputs"', b'{"outputs":[],"outputs":[],"inputs"'), {},
     400, "request: key 'outputs' given twice"),
    (infer_body([SCORES]), {"Inference-Header-Content-Length": "100000"}, 400,
     "Inference-Header-Content-Length is 100000, more than"),
    (infer_body([SCORES]) + b"\0" * 8, {"Inference-Header-Content-Length": None}, 400,
     "8 bytes of binary data after the inputs"),
    (infer_body([SCORES]), {"Content-Encoding": "gzip"}, 400, "Content-Encoding gzip"),
    (b"", {}, 400, "not valid JSON"),
])
def test_bad_requests_get_400_with_what_is_wrong(server, body, headers, status, message):
    headers = dict(headers)
    if "Inference-Header-Content-Length" in headers and headers[
            "Inference-Header-Content-Length"] is None:
        headers["Inference-Header-Content-Length"] = str(len(body) - 8)
    got, _, text = raw(server, "POST", "/v2/models/zlpr_predict/infer", body, headers)
    assert got == status, text
    assert message in json.loads(text)["error"], text


def test_binary_tensors_after_the_json_header(server):
    s = np.array([[0.3, -2.0, 1.5, 0.0]], np.float32)
    head = json.dumps({"inputs": [{"name": "scores", "datatype": "FP32", "shape": [1, 4],
                                   "parameters": {"binary_data_size": 16}}],
                       "outputs": [{"name": "labels", "parameters": {"binary_data": True}},
                                   {"name": "label_count"}]}).encode()
    status, headers, body = raw(server, "POST", "/v2/models/zlpr_predict/infer",
                                head + s.tobytes(),
                                {"Inference-Header-Content-Length": str(len(head)),
                                 "Content-Type": "application/octet-stream"})
    assert status == 200, body
    n = int(headers["Inference-Header-Content-Length"])
    answer = json.loads(body[:n])
    labels, count = answer["outputs"]
    assert labels["parameters"]["binary_data_size"] == 8 and "data" not in labels
    np.testing.assert_array_equal(np.frombuffer(body[n:], np.int32), [2, 0])
    assert count["data"] == [2]
    # A size that does not match the shape names both.
    head = head.replace(b'"binary_data_size": 16', b'"binary_data_size": 12')
    status, _, body = raw(server, "POST", "/v2/models/zlpr_predict/infer", head + s.tobytes()[:12],
                          {"Inference-Header-Content-Length": str(len(head))})
    assert status == 400
    assert "12 bytes of binary data for shape [1, 4] of FP32, expected 16" in body.decode()


def test_paths_methods_and_limits(server):
    assert raw(server, "GET", "/v2/models/zlpr_predict/infer")[0] == 405
    assert raw(server, "POST", "/v2/models/zlpr_predict", b"{}")[0] == 405
    status, _, body = raw(server, "GET", "/v1/models")
    assert status == 404 and "no such endpoint" in body.decode()
    assert raw(server, "GET", "/v2/models/zlpr_predict/versions/2")[0] == 404
    assert raw(server, "GET", "/v2/models/zlpr_predict/versions/1/ready")[0] == 200
    assert raw(server, "GET", "/v2/models/zlpr_loss/versions/1/config")[0] == 200
    stats = json.loads(raw(server, "GET", "/v2/models/stats")[2])
    assert [m["name"] for m in stats["model_stats"]] == ["zlpr_predict", "zlpr_loss"]
    # A body over --max_message_bytes is refused from its Content-Length, unread.
    host, port = server["http"].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /v2/models/zlpr_predict/infer HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 1000000000000\r\n\r\n{")
        reply = sock.recv(4096).decode()
        assert reply.startswith("HTTP/1.1 413"), reply
        assert "over the server's limit" in reply
    # A chunked body (no length) is refused rather than read blind.
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /v2/models/zlpr_predict/infer HTTP/1.1\r\nHost: x\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        assert sock.recv(4096).decode().startswith("HTTP/1.1 411")


def test_expect_100_continue_is_answered_before_the_body(server):
    # curl sends large bodies only after "100 Continue" (else it waits a second for nothing).
    body = infer_body([SCORES])
    host, port = server["http"].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /v2/models/zlpr_predict/infer HTTP/1.1\r\nHost: x\r\n"
                     b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
        assert sock.recv(4096).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(body)
        reply = b""
        while b'"label_count"' not in reply:
            reply += sock.recv(4096)
        assert reply.startswith(b"HTTP/1.1 200")


def test_stalled_clients_do_not_block_others(server, client):
    host, port = server["http"].split(":")
    stalled = []
    for _ in range(8):  # headers sent, body promised and never sent
        sock = socket.create_connection((host, int(port)), timeout=10)
        sock.sendall(b"POST /v2/models/zlpr_predict/infer HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 100\r\n\r\n{")
        stalled.append(sock)
    s = np.ones((1, 4), np.float32)
    start = time.monotonic()
    r = client.infer("zlpr_predict", [tensor("scores", s, "FP32")])
    assert time.monotonic() - start < 5
    np.testing.assert_array_equal(r.as_numpy("label_count"), [4])
    for sock in stalled:
        sock.close()


def test_concurrent_http_and_grpc_requests_batch_together(server):
    import tritonclient.grpc as grpcclient
    s = np.random.default_rng(4).standard_normal((3, 50)).astype(np.float32)
    t = (s > 0.2).astype(np.float32)
    loss, _ = reference(s, t)
    errors = []

    def run(kind):
        try:
            if kind == "http":
                c = httpclient.InferenceServerClient(server["http"])
                make = lambda n, a: tensor(n, a, "FP32")
            else:
                c = grpcclient.InferenceServerClient(server["grpc"])

                def make(n, a):
                    x = grpcclient.InferInput(n, list(a.shape), "FP32")
                    x.set_data_from_numpy(a)
                    return x
            for _ in range(20):
                r = c.infer("zlpr_loss", [make("scores", s), make("labels", t)])
                np.testing.assert_allclose(r.as_numpy("loss"), loss, rtol=2e-6)
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=run, args=(k,)) for k in ["http", "grpc"] * 4]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    with urllib.request.urlopen(f"http://127.0.0.1:{server['metrics']}/metrics") as r:
        body = r.read().decode()
    http_ok = re.search(
        r'zlpr_requests_total\{code="OK",method="ModelInfer",protocol="oip_http"\} (\d+)', body)
    assert http_ok and int(http_ok.group(1)) >= 80
    assert 'protocol="oip_grpc"' in body and 'protocol="zlpr_v1"' in body


@pytest.fixture(scope="module")
def token_server(request, tmp_path_factory):
    """A server whose ports both need a bearer token."""
    d = tmp_path_factory.mktemp("token")
    (d / "token").write_text("s3cret\n")
    proc = subprocess.Popen([request.config.getoption("--server"), "--grpc_address=127.0.0.1:0",
                             "--metrics_address=", "--http_address=127.0.0.1:0",
                             "--backend=cpu", "--threads=1", f"--auth_token_file={d / 'token'}"],
                            stdout=subprocess.PIPE, text=True)
    proc.stdout.readline()
    port = int(re.search(r"on port (\d+)", proc.stdout.readline()).group(1))
    yield {"http": f"127.0.0.1:{port}"}
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def test_bearer_token_on_the_http_port(token_server):
    assert raw(token_server, "GET", "/v2/health/live")[0] == 200  # probes need no token
    assert raw(token_server, "GET", "/v2/health/ready")[0] == 200
    status, headers, body = raw(token_server, "GET", "/v2/models/zlpr_predict")
    assert status == 401 and "needs a bearer token" in body.decode()
    assert headers["WWW-Authenticate"] == "Bearer"
    status, _, body = raw(token_server, "GET", "/v2", headers={"Authorization": "Bearer wrong"})
    assert status == 401 and "not valid" in body.decode()
    # Refused from the headers: a promised body of 1 TB is never read.
    host, port = token_server["http"].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /v2/models/zlpr_predict/infer HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 1000000000000\r\n\r\n{")
        assert sock.recv(4096).decode().startswith("HTTP/1.1 401")
    auth = {"Authorization": "Bearer s3cret"}
    assert raw(token_server, "GET", "/v2", headers=auth)[0] == 200
    status, _, body = raw(token_server, "POST", "/v2/models/zlpr_predict/infer",
                          infer_body([SCORES]), auth)
    assert status == 200 and json.loads(body)["outputs"][3]["data"] == [2]
    c = httpclient.InferenceServerClient(token_server["http"])
    r = c.infer("zlpr_predict", [tensor("scores", np.ones((1, 2), np.float32), "FP32")],
                headers=auth)
    np.testing.assert_array_equal(r.as_numpy("label_count"), [2])


@pytest.fixture(scope="module")
def tls_server(request, tmp_path_factory):
    """A server with TLS (its own CA) and a bearer token on both ports."""
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
                   check=True, capture_output=True)
    (d / "token").write_text("s3cret\n")
    proc = subprocess.Popen([request.config.getoption("--server"), "--grpc_address=127.0.0.1:0",
                             "--metrics_address=", "--http_address=127.0.0.1:0",
                             "--backend=cpu", "--threads=1", f"--tls_cert={d / 'cert.pem'}",
                             f"--tls_key={d / 'key.pem'}", f"--auth_token_file={d / 'token'}"],
                            stdout=subprocess.PIPE, text=True)
    proc.stdout.readline()
    port = int(re.search(r"on port (\d+)", proc.stdout.readline()).group(1))
    yield {"port": port, "cert": str(d / "cert.pem")}
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def test_tls_on_the_http_port(tls_server):
    ctx = ssl.create_default_context(cafile=tls_server["cert"])

    def call(path, headers=None, body=None):
        conn = http.client.HTTPSConnection("127.0.0.1", tls_server["port"], context=ctx,
                                           timeout=10)
        conn.request("POST" if body else "GET", path, body=body, headers=headers or {})
        r = conn.getresponse()
        out = r.status, r.read()
        conn.close()
        return out

    assert call("/v2/health/live")[0] == 200
    assert call("/v2/models/zlpr_predict")[0] == 401
    auth = {"Authorization": "Bearer s3cret"}
    status, body = call("/v2/models/zlpr_predict/infer", auth, infer_body([SCORES]))
    assert status == 200 and json.loads(body)["outputs"][3]["data"] == [2]
    c = httpclient.InferenceServerClient(f"127.0.0.1:{tls_server['port']}", ssl=True,
                                         ssl_options={"ca_certs": tls_server["cert"]})
    r = c.infer("zlpr_predict", [tensor("scores", np.ones((1, 2), np.float32), "FP32")],
                headers=auth)
    np.testing.assert_array_equal(r.as_numpy("label_count"), [2])
    # Plaintext on the TLS port gets no answer: the handshake fails and the connection closes.
    with socket.create_connection(("127.0.0.1", tls_server["port"]), timeout=10) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert not sock.recv(4096).startswith(b"HTTP/1.1 200")


def test_many_idle_keep_alive_connections_starve_nobody(server, client):
    # Connections are served asynchronously: hundreds of open keep-alive connections, each
    # having sent one request, hold no thread, and a new client is answered at once.
    host, port = server["http"].split(":")
    idle = []
    for _ in range(200):
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("GET", "/v2/health/live")
        assert conn.getresponse().read() == b""
        idle.append(conn)
    start = time.monotonic()
    r = client.infer("zlpr_predict", [tensor("scores", np.ones((1, 4), np.float32), "FP32")])
    assert time.monotonic() - start < 5
    np.testing.assert_array_equal(r.as_numpy("label_count"), [4])
    for conn in idle:  # still open and served
        conn.request("GET", "/v2/health/ready")
        assert conn.getresponse().status == 200
        conn.close()


def test_triton_priority_levels_choose_the_class(client):
    check_priority_levels(client, tensor)
