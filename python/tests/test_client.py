"""zlpr.Client and zlpr.aio.Client against a real zlpr-server: results against the float64
reference at awkward sizes, every dtype, sparse labels and masks, predictions, errors as
exceptions with the server's code and message, splitting of calls over the message limit
(bit-identical to one call), streams, health, server info and bearer tokens."""
import asyncio

import grpc
import numpy as np
import pytest

import zlpr
import zlpr.aio
from conftest import native_or_skip, reference, start_server, stop_server


def problem(rows, cols, seed=0, density=0.1, soft=False):
    rng = np.random.default_rng(seed)
    s = (rng.standard_normal((rows, cols)) * 3).astype(np.float32)
    t = rng.random((rows, cols)).astype(np.float32) if soft else \
        (rng.random((rows, cols)) < density).astype(np.float32)
    return s, t


def test_zlpr_aio_is_there_after_a_plain_import_zlpr():
    """docs/PYTHON.md's asyncio lines start from `import zlpr` alone."""
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-c", "import zlpr; print(zlpr.aio.Client.__name__)"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "Client", r.stderr


@pytest.mark.parametrize("rows,cols", [(1, 1), (3, 7), (17, 1000), (64, 4099)])
@pytest.mark.parametrize("soft", [False, True])
def test_loss_and_gradient_match_the_float64_reference(client, rows, cols, soft):
    s, t = problem(rows, cols, seed=rows * cols, soft=soft)
    r = client.compute_loss(s, t, want_grad=True, request_id="abc")
    loss, grad = reference(s, t)
    np.testing.assert_allclose(r.loss, loss, rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(r.grad, grad, atol=2e-6)
    assert r.grad.dtype == np.float32 and r.grad.shape == (rows, cols)
    assert r.request_id == "abc"
    assert r.loss_sum == pytest.approx(float(np.sum(r.loss, dtype=np.float64)), rel=1e-12)
    assert r.loss_mean == pytest.approx(r.loss_sum / rows, rel=1e-12)


def test_without_want_grad_there_is_no_gradient(client):
    s, t = problem(4, 9)
    assert client.compute_loss(s, t).grad is None


def test_sparse_labels_and_mask_give_what_dense_labels_give(client):
    s, t = problem(6, 50, seed=3)
    mask = (np.random.default_rng(4).random(s.shape) < 0.8).astype(np.uint8)
    splits, indices, values = [0], [], []
    for row in t:
        nz = np.flatnonzero(row)
        indices += nz.tolist()
        values += row[nz].tolist()
        splits.append(len(indices))
    dense = client.compute_loss(s, t, mask=mask, want_grad=True)
    sparse = client.compute_loss(s, zlpr.SparseLabels(splits, indices, values), mask=mask,
                                 want_grad=True)
    hard = client.compute_loss(s, zlpr.SparseLabels(splits, indices), mask=mask, want_grad=True)
    np.testing.assert_array_equal(dense.loss, sparse.loss)
    np.testing.assert_array_equal(dense.grad, sparse.grad)
    np.testing.assert_array_equal(dense.loss, hard.loss)
    loss, grad = reference(s, t, mask)
    np.testing.assert_allclose(dense.loss, loss, rtol=2e-6, atol=1e-6)
    assert np.all(dense.grad[mask == 0] == 0)


@pytest.mark.parametrize("grad_dtype,atol", [("float32", 2e-6), ("float16", 1e-3),
                                             ("bfloat16", 8e-3)])
def test_half_precision_in_and_out(client, grad_dtype, atol):
    s, t = problem(5, 300, seed=9)
    r = client.compute_loss(s.astype(np.float16), t.astype(np.float16), want_grad=True,
                            grad_dtype=grad_dtype)
    loss, grad = reference(s.astype(np.float16), t.astype(np.float16))
    np.testing.assert_allclose(r.loss, loss, rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(r.grad.astype(np.float64), grad, atol=atol)
    assert r.grad.dtype == (np.float16 if grad_dtype == "float16" else np.float32)


def test_predict_labels_probabilities_and_caps(client):
    s = np.array([[2.0, -1.0, 0.5, 3.0], [-2.0, -3.0, -1.0, -0.5]], dtype=np.float32)
    p = client.predict(s, want_probs=True)
    assert [l.tolist() for l in p.labels] == [[3, 0, 2], []]
    np.testing.assert_allclose(p.label_probs[0], 1 / (1 + np.exp(-2 * s[0, [3, 0, 2]])),
                               rtol=1e-6)
    np.testing.assert_allclose(p.probs, 1 / (1 + np.exp(-2 * s)), rtol=1e-6)
    capped = client.predict(s, top_k=1, min_labels=2)
    assert [l.tolist() for l in capped.labels] == [[3, 0], [3, 2]]  # capped, then topped up
    per_label = client.predict(s, label_thresholds=[0.99, 0.5, 0.5, 0.5])
    assert per_label.labels[0].tolist() == [3, 2]
    hostile = client.predict(s, top_k=2**32 - 1, min_labels=2**32 - 1)
    assert [len(l) for l in hostile.labels] == [4, 4]


def test_errors_carry_the_code_and_the_servers_message(client):
    s, t = problem(2, 3)
    s[1, 2] = np.nan
    with pytest.raises(zlpr.ZlprError) as e:
        client.compute_loss(s, t)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.message == "scores[1, 2] is NaN"
    with pytest.raises(zlpr.ZlprError) as e:
        client.predict(problem(1, 3)[0], threshold=1.5)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(ValueError):
        client.compute_loss(np.zeros(3, np.float32), np.zeros(3, np.float32))


def test_a_call_over_the_message_limit_is_split_and_bit_identical(target, client):
    s, t = problem(300, 700, seed=11, soft=True)
    whole = client.compute_loss(s, t, want_grad=True)
    with zlpr.Client(target, max_message_bytes=200_000, transport=client.transport) as small:
        split = small.compute_loss(s, t, want_grad=True)  # ~12 requests of ~25 rows
        np.testing.assert_array_equal(split.loss, whole.loss)
        np.testing.assert_array_equal(split.grad, whole.grad)
        assert split.loss_sum == whole.loss_sum and split.loss_mean == whole.loss_mean
        pw = client.predict(s, want_probs=True, top_k=3)
        ps = small.predict(s, want_probs=True, top_k=3)
        np.testing.assert_array_equal(ps.probs, pw.probs)
        assert all(np.array_equal(a, b) for a, b in zip(ps.labels, pw.labels))


def test_a_batch_over_the_servers_limit_works_learning_the_limit(server_binary, transport):
    proc, address = start_server(server_binary, "--max_message_bytes=1048576")
    try:
        s, t = problem(256, 2000, seed=12)  # 4 MB of scores and labels
        with zlpr.Client(address, transport=transport) as c:
            assert c.message_limit() == 1048576
            r = c.compute_loss(s, t, want_grad=True)
        loss, grad = reference(s, t)
        np.testing.assert_allclose(r.loss, loss, rtol=2e-6, atol=1e-6)
        np.testing.assert_allclose(r.grad, grad, atol=2e-6)
    finally:
        stop_server(proc)


def test_stream_answers_in_order_with_errors_in_place(client):
    stream = client.loss_stream(window=8)
    s, t = problem(3, 20, seed=13)
    bad = s.copy()
    bad[0, 0] = np.inf
    for i in range(6):
        stream.send(bad if i == 3 else s, t, want_grad=True, request_id=str(i))
    stream.close()
    got = []
    for i in range(6):
        try:
            got.append(stream.receive().request_id)
        except zlpr.ZlprError as e:
            assert e.code == grpc.StatusCode.INVALID_ARGUMENT and "scores[0, 0]" in e.message
            got.append("error")
    assert got == ["0", "1", "2", "error", "4", "5"]
    assert stream.receive() is None


def test_predict_stream_one_request_after_another(client):
    stream = client.predict_stream(window=1)
    s = np.array([[1.0, -1.0, 2.0]], dtype=np.float32)
    for i in range(50):
        stream.send(s if i != 7 else np.full((1, 3), np.nan, np.float32), top_k=1,
                    request_id=str(i))
        if i == 7:
            with pytest.raises(zlpr.ZlprError) as e:
                stream.receive()
            assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
            continue
        r = stream.receive()
        assert r.request_id == str(i) and r.labels[0].tolist() == [2]
    stream.close()
    assert stream.receive() is None


def test_server_info_and_health(client):
    info = client.server_info()
    assert info.backend == "cpu" and info.max_message_bytes == 64 << 20
    assert info.max_inflight_bytes > 0
    assert client.health() and client.health("zlpr.v1.ZlprService")
    assert not client.health("no.such.Service")


def test_the_bearer_token_is_sent(server_binary, tmp_path, transport):
    token = tmp_path / "token"
    token.write_text("py-token\n")
    proc, address = start_server(server_binary, f"--auth_token_file={token}")
    try:
        with zlpr.Client(address, max_message_bytes=1 << 20, transport=transport) as anonymous:
            with pytest.raises(zlpr.ZlprError) as e:
                anonymous.predict(np.zeros((1, 2), np.float32))
            assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
        with zlpr.Client(address, token="py-token", transport=transport) as c:
            assert c.predict(np.ones((1, 2), np.float32)).labels[0].tolist() == [0, 1]
    finally:
        stop_server(proc)


def test_asyncio_client(target):
    async def main():
        async with zlpr.aio.Client(target, max_message_bytes=100_000) as c:
            s, t = problem(40, 600, seed=14)
            results = await asyncio.gather(c.compute_loss(s, t, want_grad=True),
                                           c.predict(s, top_k=2))
            loss, grad = reference(s, t)
            np.testing.assert_allclose(results[0].loss, loss, rtol=2e-6, atol=1e-6)
            np.testing.assert_allclose(results[0].grad, grad, atol=2e-6)
            assert all(len(l) == 2 for l in results[1].labels)
            with pytest.raises(zlpr.ZlprError):
                await c.predict(s, threshold=0.0)
    asyncio.run(main())


def test_tls_and_mutual_tls(server_binary, tmp_path, transport):
    import shutil
    import subprocess
    if not shutil.which("openssl"):
        pytest.skip("openssl missing")
    d = str(tmp_path)
    script = f"""set -e; cd {d}
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > san.ext
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=ca -keyout ca.key -out ca.pem
openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key -out server.csr
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile san.ext -out server.pem
openssl req -newkey rsa:2048 -nodes -subj /CN=client -keyout client.key -out client.csr
openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -out client.pem
"""
    subprocess.run(["bash", "-c", script], check=True, capture_output=True)
    read = lambda name: (tmp_path / name).read_bytes()  # noqa: E731
    proc, address = start_server(server_binary, f"--tls_cert={d}/server.pem",
                                 f"--tls_key={d}/server.key", f"--tls_client_ca={d}/ca.pem")
    port = address.split(":")[1]
    try:
        s = np.ones((1, 2), np.float32)
        with zlpr.Client(f"localhost:{port}", tls=True, tls_root_certs=read("ca.pem"),
                         tls_client_cert=read("client.pem"), tls_client_key=read("client.key"),
                         max_attempts=1, transport=transport) as c:
            assert c.predict(s).labels[0].tolist() == [0, 1]
        # Paths work too (as zlpr-cli's flags take them), str or pathlib.
        with zlpr.Client(f"localhost:{port}", tls=True, tls_root_certs=f"{d}/ca.pem",
                         tls_client_cert=tmp_path / "client.pem",
                         tls_client_key=f"{d}/client.key", max_attempts=1,
                         transport=transport) as c:
            assert c.predict(s).labels[0].tolist() == [0, 1]
        with pytest.raises(ValueError, match="tls_root_certs='/no/such.pem': neither PEM bytes "
                                             "nor a readable PEM file"):
            zlpr.Client(f"localhost:{port}", tls=True, tls_root_certs="/no/such.pem")
        with zlpr.Client(f"localhost:{port}", tls=True, tls_root_certs=read("ca.pem"),
                         max_attempts=1, deadline_s=5, max_message_bytes=1 << 20,
                         transport=transport) as no_cert:
            with pytest.raises(zlpr.ZlprError) as e:
                no_cert.predict(s)
            assert e.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        stop_server(proc)


def test_a_deadline_ends_a_call_with_deadline_exceeded(client):
    s, t = problem(512, 4000, seed=15)  # 16 MB of scores: far longer than the deadline
    client.message_limit()  # asked once, under the client's own deadline
    with pytest.raises(zlpr.ZlprError) as e:
        client.compute_loss(s, t, want_grad=True, deadline_s=1e-4)
    assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_a_closed_client_refuses_calls(target, transport):
    c = zlpr.Client(target, transport=transport, max_message_bytes=1 << 20)
    assert c.predict(np.ones((1, 2), np.float32)).labels[0].tolist() == [0, 1]
    c.close()
    with pytest.raises(ValueError, match="closed"):
        c.predict(np.ones((1, 2), np.float32))
    with pytest.raises(ValueError, match="closed"):
        c.predict_stream()


def test_threads_share_one_client(client):
    import concurrent.futures
    rng = np.random.default_rng(16)
    inputs = [(rng.standard_normal((1 + i % 5, 300)) * 3).astype(np.float32) for i in range(64)]
    want = [client.predict(s, top_k=3).labels for s in inputs]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda s: client.predict(s, top_k=3).labels, inputs))
    for g, w in zip(got, want):
        assert all(np.array_equal(a, b) for a, b in zip(g, w))


def test_the_transport_is_chosen_and_checked(target, monkeypatch):
    from zlpr import _client
    with pytest.raises(ValueError, match="transport"):
        zlpr.Client(target, transport="carrier-pigeon")
    for bad in [("grpc.keepalive_time_ms", 1.5), ("grpc.primary_user_agent",), "grpc.x=1"]:
        with pytest.raises(ValueError, match="options"):
            zlpr.Client(target, options=[bad])
    with zlpr.Client(target, options=[("grpc.primary_user_agent", "zlpr-test"),
                                      ("grpc.keepalive_time_ms", 60000)]) as c:
        assert c.health()
    with zlpr.Client(target) as c:
        assert c.transport == ("native" if zlpr.native_available() else "grpcio")
    monkeypatch.setattr(_client, "_native", None)  # as a wheel built without gRPC C++
    with zlpr.Client(target) as c:
        assert c.transport == "grpcio"
    with pytest.raises(ValueError, match="without zlpr._native"):
        zlpr.Client(target, transport="native")


def test_ctrl_c_cancels_a_blocked_native_call(request):
    """A call to a server that never answers blocks until its deadline; SIGINT must raise
    KeyboardInterrupt in the caller at once, as it does for Python code."""
    import os
    import signal
    import socket
    import threading
    import time
    native_or_skip(request.config)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)  # accepts connections, never speaks HTTP/2
    try:
        with zlpr.Client(f"127.0.0.1:{silent.getsockname()[1]}", transport="native",
                         max_message_bytes=1 << 20, deadline_s=60, max_attempts=1) as c:
            timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
            timer.start()
            t0 = time.monotonic()
            with pytest.raises(KeyboardInterrupt):
                c.predict(np.ones((1, 2), np.float32))
            assert time.monotonic() - t0 < 5
            timer.join()
    finally:
        silent.close()


def test_a_priority_asks_for_a_class_and_gives_the_same_answer(client, target):
    s, t = problem(5, 40, seed=9)
    whole = client.compute_loss(s, t, want_grad=True)
    labels = client.predict(s, top_k=3).labels
    for priority in (None, "interactive", "bulk"):
        r = client.compute_loss(s, t, want_grad=True, priority=priority)
        np.testing.assert_array_equal(r.loss, whole.loss)
        np.testing.assert_array_equal(r.grad, whole.grad)
        p = client.predict(s, top_k=3, priority=priority)
        assert [l.tolist() for l in p.labels] == [l.tolist() for l in labels]
    with pytest.raises(ValueError, match="priority='urgent': use None, 'interactive' or 'bulk'"):
        client.predict(s, priority="urgent")

    async def main():
        async with zlpr.aio.Client(target) as c:
            r = await c.compute_loss(s, t, priority="interactive")
            p = await c.predict(s, top_k=3, priority="bulk")
            np.testing.assert_array_equal(r.loss, whole.loss)
            assert [l.tolist() for l in p.labels] == [l.tolist() for l in labels]
    asyncio.run(main())
