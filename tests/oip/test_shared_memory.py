"""The system shared-memory extension with tritonclient's own utilities, on both bindings:
regions registered, inputs read from and outputs written into them (bit-identical to the same
call with the bytes in the message), every refusal with its code, and a region its owner
truncates or removes, during requests too: the request fails, the server goes on."""
import os
import re
import signal
import subprocess
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from zlpr_reference import reference

ROWS, COLS = 64, 1000
BYTES = ROWS * COLS * 4


def start(request, *flags):
    binary = request.config.getoption("--server")
    proc = subprocess.Popen([binary, "--grpc_address=127.0.0.1:0", "--metrics_address=",
                             "--http_address=127.0.0.1:0", "--backend=cpu", "--threads=2", *flags],
                            stdout=subprocess.PIPE, text=True)
    grpc_port = re.search(r"gRPC on port (\d+)", proc.stdout.readline()).group(1)
    http_port = re.search(r"HTTP \(Open Inference Protocol\) on port (\d+)",
                          proc.stdout.readline()).group(1)
    return proc, {"grpc": f"127.0.0.1:{grpc_port}", "http": f"127.0.0.1:{http_port}"}


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


@pytest.fixture(scope="module")
def shm_server(request):
    proc, where = start(request, "--allow_client_shm", "--client_shm_max_regions=6",
                        f"--client_shm_max_bytes={64 << 20}")
    yield {**where, "proc": proc}
    stop(proc)


@pytest.fixture(params=["grpc", "http"])
def kind(request):
    return request.param


def client_of(kind, server):
    return (grpcclient if kind == "grpc" else httpclient).InferenceServerClient(server[kind])


def code_of(kind, e):
    """The error's code as the binding gives it: 'StatusCode.X' (gRPC) or the HTTP status."""
    return e.status()


def expect(kind, grpc_code, http_status):
    return f"StatusCode.{grpc_code}" if kind == "grpc" else str(http_status)


def problem(seed=0):
    rng = np.random.default_rng(seed)
    s = (rng.standard_normal((ROWS, COLS)) * 3).astype(np.float32)
    t = rng.random((ROWS, COLS)).astype(np.float32)
    return s, t


class Regions:
    """Input and output regions of one test, unregistered and removed after it."""

    def __init__(self, client, tag):
        self.client, self.tag, self.handles, self.names = client, tag, [], []

    def make(self, name, byte_size, register=True):
        name = f"{self.tag}_{name}"
        key = f"/zlpr_test_{os.getpid()}_{name}"
        handle = shm.create_shared_memory_region(name, key, byte_size)
        self.handles.append(handle)
        if register:
            self.client.register_system_shared_memory(name, key, byte_size)
            self.names.append(name)
        return name, key, handle

    def close(self):
        for name in self.names:
            self.client.unregister_system_shared_memory(name)
        for h in self.handles:
            try:
                shm.destroy_shared_memory_region(h)
            except (FileNotFoundError, shm.SharedMemoryException):
                pass  # the test removed the object itself


@pytest.fixture
def regions(kind, shm_server, request):
    r = Regions(client_of(kind, shm_server), f"{kind}_{request.node.name[:20]}".replace("[", "_")
                .replace("]", "").replace("-", "_"))
    yield r
    r.close()


def loss_in_shm(kind, client, in_name, out_name, s, t, grad_bytes=BYTES, offset=0):
    lib = grpcclient if kind == "grpc" else httpclient
    scores = lib.InferInput("scores", list(s.shape), "FP32")
    scores.set_shared_memory(in_name, s.nbytes, offset=offset)
    labels = lib.InferInput("labels", list(t.shape), "FP32")
    labels.set_shared_memory(in_name, t.nbytes, offset=offset + s.nbytes)
    loss = lib.InferRequestedOutput("loss")
    grad = lib.InferRequestedOutput("grad")
    grad.set_shared_memory(out_name, grad_bytes)
    return client.infer("zlpr_loss", [scores, labels], outputs=[loss, grad])


def loss_in_message(kind, client, s, t):
    """The same loss with the tensors in the message (binary over HTTP)."""
    lib = grpcclient if kind == "grpc" else httpclient
    inputs = []
    for name, a in (("scores", s), ("labels", t)):
        x = lib.InferInput(name, list(a.shape), "FP32")
        x.set_data_from_numpy(a) if kind == "grpc" else x.set_data_from_numpy(a, binary_data=True)
        inputs.append(x)
    return client.infer("zlpr_loss", inputs)


def test_regions_are_registered_listed_and_unregistered(kind, shm_server, regions):
    client = regions.client
    meta = client.get_server_metadata()
    extensions = meta.extensions if kind == "grpc" else meta["extensions"]
    assert "system_shared_memory" in extensions
    name, key, _ = regions.make("a", 4096)
    status = client.get_system_shared_memory_status(name)
    if kind == "grpc":
        region = status.regions[name]
        assert (region.name, region.key, region.offset, region.byte_size) == (name, key, 0, 4096)
    else:
        assert status == [{"name": name, "key": key, "offset": 0, "byte_size": 4096}]
    with pytest.raises(InferenceServerException) as e:
        client.register_system_shared_memory(name, key, 4096)
    assert code_of(kind, e.value) == expect(kind, "ALREADY_EXISTS", 409)
    client.unregister_system_shared_memory(name)
    regions.names.remove(name)
    with pytest.raises(InferenceServerException) as e:
        client.get_system_shared_memory_status(name)
    assert code_of(kind, e.value) == expect(kind, "NOT_FOUND", 404)
    client.unregister_system_shared_memory(name)  # again: no error


def test_a_loss_through_shared_memory_is_the_loss_through_the_message(kind, shm_server, regions):
    client = regions.client
    s, t = problem(1)
    in_name, _, in_handle = regions.make("in", 2 * BYTES + 4096)
    out_name, _, out_handle = regions.make("out", BYTES)
    shm.set_shared_memory_region(in_handle, [s, t], offset=4096)
    r = loss_in_shm(kind, client, in_name, out_name, s, t, offset=4096)
    grad = shm.get_contents_as_numpy(out_handle, np.float32, [ROWS, COLS])
    loss = r.as_numpy("loss")
    want_loss, want_grad = reference(s, t)
    np.testing.assert_allclose(loss, want_loss, rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(grad, want_grad, rtol=2e-6, atol=1e-7)
    # The same call with the tensors in the message: the same bits.
    plain = loss_in_message(kind, client, s, t)
    assert np.array_equal(plain.as_numpy("loss"), loss)
    assert np.array_equal(plain.as_numpy("grad"), grad)
    # The response says where the gradient went instead of carrying it.
    out = r.get_output("grad")
    params = out.parameters if kind == "grpc" else out["parameters"]
    if kind == "grpc":
        assert params["shared_memory_region"].string_param == out_name
        assert params["shared_memory_byte_size"].int64_param == BYTES
        assert list(out.shape) == [ROWS, COLS]
    else:
        assert params == {"shared_memory_region": out_name, "shared_memory_byte_size": BYTES}
        assert out["shape"] == [ROWS, COLS] and "data" not in out


def test_predict_reads_its_scores_from_shared_memory(kind, shm_server, regions):
    client = regions.client
    s, _ = problem(2)
    in_name, _, in_handle = regions.make("in", BYTES)
    shm.set_shared_memory_region(in_handle, [s])
    lib = grpcclient if kind == "grpc" else httpclient
    scores = lib.InferInput("scores", [ROWS, COLS], "FP32")
    scores.set_shared_memory(in_name, BYTES)
    r = client.infer("zlpr_predict", [scores], parameters={"top_k": 3})
    assert r.as_numpy("label_count").tolist() == [3] * ROWS


def short_scores(kind, client, in_name):
    lib = grpcclient if kind == "grpc" else httpclient
    scores = lib.InferInput("scores", [ROWS, COLS], "FP32")
    scores.set_shared_memory(in_name, BYTES - 4)
    return client.infer("zlpr_predict", [scores])


@pytest.mark.parametrize("case", ["unknown_region", "past_its_end", "wrong_byte_size",
                                  "output_too_small", "offset_overflow"])
def test_tensors_that_do_not_fit_their_region_are_refused(kind, shm_server, regions, case):
    client = regions.client
    s, t = problem(3)
    in_name, _, in_handle = regions.make("in", 2 * BYTES)
    out_name, _, _ = regions.make("out", BYTES)
    shm.set_shared_memory_region(in_handle, [s, t])
    messages = {
        "unknown_region": (lambda: loss_in_shm(kind, client, "nope", out_name, s, t),
                           "input 'scores': shared memory region 'nope' is not registered"),
        "past_its_end": (lambda: loss_in_shm(kind, client, in_name, out_name, s, t, offset=8),
                         f"bytes at offset {8 + BYTES} of shared memory region '{in_name}', "
                         f"which has {2 * BYTES} bytes"),
        "wrong_byte_size": (lambda: short_scores(kind, client, in_name),
                            f"input 'scores': {BYTES - 4} bytes of data for shape [{ROWS}, "
                            f"{COLS}] of FP32, expected {BYTES}"),
        "output_too_small": (lambda: loss_in_shm(kind, client, in_name, out_name, s, t,
                                                 grad_bytes=BYTES - 4),
                             f"output 'grad': {BYTES} bytes (shape [{ROWS}, {COLS}]), but "
                             f"shared_memory_byte_size gives it {BYTES - 4}"),
        "offset_overflow": (lambda: loss_in_shm(kind, client, in_name, out_name, s, t,
                                                offset=2 ** 63 - 1 - BYTES), "which has"),
    }
    call, message = messages[case]
    with pytest.raises(InferenceServerException) as e:
        call()
    assert code_of(kind, e.value) == expect(kind, "INVALID_ARGUMENT", 400), e.value
    assert message in e.value.message(), e.value.message()
    assert client.is_server_live()


def test_registrations_that_cannot_work_are_refused_with_their_code(kind, shm_server, regions):
    client = regions.client
    cases = [
        (("r", "/zlpr_no_such_object", 4096, 0), "NOT_FOUND", 404, "No such file"),
        (("r", "/a/../b", 4096, 0), "INVALID_ARGUMENT", 400, "POSIX shared-memory object"),
        (("bad name/x", "/k", 4096, 0), "INVALID_ARGUMENT", 400, "1 to 128 letters"),
        (("r", "/k", 0, 0), "INVALID_ARGUMENT", 400, "the size must be 1 to"),
    ]
    _, key, _ = regions.make("small", 4096, register=False)
    cases += [(("r", key, 8192, 0), "INVALID_ARGUMENT", 400, "which has 4096"),
              (("r", key, 4096, 1), "INVALID_ARGUMENT", 400, "which has 4096"),
              (("r", key, 2 ** 63, 2 ** 63), "INVALID_ARGUMENT", 400, "the size must be"),
              (("r", key, 65 << 20, 0), "INVALID_ARGUMENT", 400, "the size must be 1 to")]
    for (name, k, size, offset), grpc_code, status, message in cases:
        if kind == "http" and "/" in name:
            continue  # not a path segment HTTP can carry: see the gRPC run
        with pytest.raises(InferenceServerException) as e:
            client.register_system_shared_memory(name, k, size, offset=offset)
        assert code_of(kind, e.value) == expect(kind, grpc_code, status), (name, k, e.value)
        assert message in e.value.message(), e.value.message()
    # The limits: 6 regions, 64 MiB together.
    names = [regions.make(f"n{i}", 4096)[0] for i in range(6)]
    with pytest.raises(InferenceServerException) as e:
        regions.make("one_too_many", 4096)
    assert code_of(kind, e.value) == expect(kind, "RESOURCE_EXHAUSTED", 429)
    assert "at most 6 regions" in e.value.message()
    for n in names:
        client.unregister_system_shared_memory(n)
        regions.names.remove(n)
    # CUDA shared memory: this server has no device.
    with pytest.raises(InferenceServerException) as e:
        client.register_cuda_shared_memory("c", b"\0" * 64, 0, 4096)
    assert code_of(kind, e.value) == expect(kind, "FAILED_PRECONDITION", 400)
    assert "this server computes on the CPU" in e.value.message()


def test_a_region_its_owner_truncates_fails_the_request_not_the_server(kind, shm_server, regions):
    client = regions.client
    s, t = problem(4)
    in_name, key, in_handle = regions.make("in", 2 * BYTES)
    out_name, _, _ = regions.make("out", BYTES)
    shm.set_shared_memory_region(in_handle, [s, t])
    loss_in_shm(kind, client, in_name, out_name, s, t)
    os.truncate(f"/dev/shm/{key.lstrip('/')}", 4096)
    with pytest.raises(InferenceServerException) as e:
        loss_in_shm(kind, client, in_name, out_name, s, t)
    assert code_of(kind, e.value) == expect(kind, "INVALID_ARGUMENT", 400)
    assert "no longer holds bytes" in e.value.message(), e.value.message()
    assert client.is_server_live() and client.is_server_ready()


def test_truncations_during_requests_never_end_the_server(kind, shm_server, regions):
    """The race the size check cannot see: the owner shrinks and regrows its objects while the
    server's kernels read and write them in place (16 MB tensors: a call takes milliseconds, so
    some truncations land inside one and meet the SIGBUS handler). Each request is answered, OK
    or INVALID_ARGUMENT, and the server lives on."""
    client = regions.client
    rows, cols = 512, 8192
    rng = np.random.default_rng(5)
    s = rng.standard_normal((rows, cols)).astype(np.float32)
    t = (rng.random((rows, cols)) < 0.1).astype(np.float32)
    n = s.nbytes
    in_name, key, in_handle = regions.make("in", 2 * n)
    out_name, out_key, out_handle = regions.make("out", n)
    shm.set_shared_memory_region(in_handle, [s, t])
    path, out_path = f"/dev/shm/{key.lstrip('/')}", f"/dev/shm/{out_key.lstrip('/')}"
    stop_flipping = threading.Event()

    def flip():
        while not stop_flipping.is_set():
            for p, size in ((path, 2 * n), (out_path, n)):
                os.truncate(p, 0)
                time.sleep(0.001)
                os.truncate(p, size)
                time.sleep(0.003)

    flipper = threading.Thread(target=flip)
    flipper.start()
    answers, reasons = {"ok": 0, "refused": 0}, set()
    try:
        for _ in range(30):
            try:
                loss_in_shm(kind, client, in_name, out_name, s, t, grad_bytes=n)
                answers["ok"] += 1
            except InferenceServerException as e:
                assert code_of(kind, e) == expect(kind, "INVALID_ARGUMENT", 400), e
                answers["refused"] += 1
                reasons.add(re.sub(r".*: its object '.*?' ", "", e.message()))
    finally:
        stop_flipping.set()
        flipper.join()
    print(kind, answers, reasons)
    assert answers["ok"] + answers["refused"] == 30
    lost = ("shrank while the server had it mapped (its owner truncated or removed it); "
            "unregister the region and register it again")
    for reason in reasons:  # the size check's, or the SIGBUS handler's
        assert re.fullmatch(r"no longer holds bytes \d+ to \d+ \(truncated by its owner\?\); "
                            r"register it again", reason) or reason == lost, reason
    assert client.is_server_live()
    assert shm_server["proc"].poll() is None
    # Whole again, a region whose pages went during a request stays refused (the server's
    # mapping no longer follows the object) until it is registered again; then it is right.
    for name, k, size in ((in_name, key, 2 * n), (out_name, out_key, n)):
        try:
            loss_in_shm(kind, client, in_name, out_name, s, t, grad_bytes=n)
        except InferenceServerException as e:
            assert e.message().endswith(lost) or "no longer holds" in e.message(), e.message()
        client.unregister_system_shared_memory(name)
        client.register_system_shared_memory(name, k, size)
    shm.set_shared_memory_region(in_handle, [s, t])
    loss = loss_in_shm(kind, client, in_name, out_name, s, t, grad_bytes=n).as_numpy("loss")
    grad = shm.get_contents_as_numpy(out_handle, np.float32, [rows, cols])
    plain = loss_in_message(kind, client, s, t)
    assert np.array_equal(plain.as_numpy("loss"), loss)
    assert np.array_equal(plain.as_numpy("grad"), grad)


def test_a_removed_object_stays_readable_until_it_is_unregistered(kind, shm_server, regions):
    """shm_unlink removes the name, not the pages the server mapped: the region works on, as a
    file that is open after it is deleted."""
    client = regions.client
    s, t = problem(6)
    in_name, key, in_handle = regions.make("in", 2 * BYTES)
    out_name, _, _ = regions.make("out", BYTES)
    shm.set_shared_memory_region(in_handle, [s, t])
    os.unlink(f"/dev/shm/{key.lstrip('/')}")
    r = loss_in_shm(kind, client, in_name, out_name, s, t)
    np.testing.assert_allclose(r.as_numpy("loss"), reference(s, t)[0], rtol=2e-6, atol=1e-6)


def test_shared_memory_is_off_unless_asked_for(kind, server):
    client = client_of(kind, server)
    meta = client.get_server_metadata()
    assert "system_shared_memory" not in (meta.extensions if kind == "grpc"
                                          else meta["extensions"])
    with pytest.raises(InferenceServerException) as e:
        client.register_system_shared_memory("r", "/k", 4096)
    assert code_of(kind, e.value) == expect(kind, "FAILED_PRECONDITION", 400)
    assert "start it with --allow_client_shm" in e.value.message()
    lib = grpcclient if kind == "grpc" else httpclient
    scores = lib.InferInput("scores", [1, 4], "FP32")
    scores.set_shared_memory("r", 16)
    with pytest.raises(InferenceServerException) as e:
        client.infer("zlpr_predict", [scores])
    assert code_of(kind, e.value) == expect(kind, "INVALID_ARGUMENT", 400)
    assert "shared memory is off on this server" in e.value.message()


def test_registration_needs_the_token(request, tmp_path, kind):
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    proc, where = start(request, "--allow_client_shm", f"--auth_token_file={token}")
    try:
        client = client_of(kind, where)
        with pytest.raises(InferenceServerException) as e:
            client.register_system_shared_memory("r", "/k", 4096)
        assert code_of(kind, e.value) == expect(kind, "UNAUTHENTICATED", 401)
        with pytest.raises(InferenceServerException) as e:
            client.get_system_shared_memory_status()
        assert code_of(kind, e.value) == expect(kind, "UNAUTHENTICATED", 401)
        headers = {"authorization": "Bearer s3cret"}
        assert client.get_system_shared_memory_status(headers=headers) is not None
    finally:
        stop(proc)


def raw_http(server, method, path, body=b""):
    import http.client
    host, port = server["http"].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request(method, path, body=body)
    r = conn.getresponse()
    out = r.status, r.read()
    conn.close()
    return out


@pytest.mark.parametrize("body,message", [
    (b"", "must be a JSON object"),
    (b"not json", "must be a JSON object"),
    (b"[1, 2]", "must be a JSON object"),
    (b'{"key": 5, "byte_size": 10}', "'key' must be a string"),
    (b'{"key": "/k", "byte_size": -1}', "'byte_size' must be a whole number of bytes"),
    (b'{"key": "/k", "byte_size": 1.5}', "'byte_size' must be a whole number of bytes"),
    (b'{"key": "/k", "byte_size": "10"}', "'byte_size' must be a whole number of bytes"),
    (b'{"key": "/k", "byte_size": 10, "offset": 18446744073709551615}', "the size must be"),
    (b'{"key": "/k", "byte_size": 99999999999999999999999}', "must be"),
    (b'{"key": "/k\\u0000x", "byte_size": 10}', "POSIX shared-memory object"),
    (b'{"key": "/k", "byte_size": 10, "colour": 1}', "unknown key 'colour'"),
])
def test_hostile_registrations_over_http_are_refused_and_the_server_goes_on(shm_server, body,
                                                                           message):
    status, text = raw_http(shm_server, "POST", "/v2/systemsharedmemory/region/r/register", body)
    assert status == 400, (status, text)
    assert message in text.decode(), text
    assert raw_http(shm_server, "GET", "/v2/health/live")[0] == 200


@pytest.mark.parametrize("params,message", [
    ({"shared_memory_region": 5, "shared_memory_byte_size": 16}, "must be a region's name"),
    ({"shared_memory_region": "", "shared_memory_byte_size": 16}, "must be a region's name"),
    ({"shared_memory_region": "nope"}, "'shared_memory_byte_size' is needed"),
    ({"shared_memory_region": "nope", "shared_memory_byte_size": -16}, "whole number of bytes"),
    ({"shared_memory_region": "nope", "shared_memory_byte_size": "16"}, "whole number of bytes"),
    ({"shared_memory_region": "nope", "shared_memory_byte_size": 16,
      "shared_memory_offset": -1}, "whole number of bytes"),
    ({"shared_memory_region": "nope", "shared_memory_byte_size": 16}, "is not registered"),
])
def test_hostile_tensor_parameters_are_refused_naming_the_tensor(shm_server, params, message):
    import json
    body = json.dumps({"inputs": [{"name": "scores", "datatype": "FP32", "shape": [1, 4],
                                   "parameters": params}]}).encode()
    status, text = raw_http(shm_server, "POST", "/v2/models/zlpr_predict/infer", body)
    assert status == 400, (status, text)
    assert "input 'scores'" in text.decode() and message in text.decode(), text
    # The same input with its data as well as a region: one or the other.
    both = json.dumps({"inputs": [{"name": "scores", "datatype": "FP32", "shape": [1, 4],
                                   "data": [1, 2, 3, 4], "parameters": params}]}).encode()
    status, text = raw_http(shm_server, "POST", "/v2/models/zlpr_predict/infer", both)
    assert status == 400, (status, text)
