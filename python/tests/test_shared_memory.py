"""zlpr.Client(shared_memory=True): the loss through system shared memory on the server's host,
bit-identical to the same call over gRPC bytes, its regions made once and reused, removed at
close(), and a clear error where the server does not allow it."""
import os
import threading

import numpy as np
import pytest

import zlpr
from conftest import reference, start_server, stop_server


def objects():
    """This process's shared-memory objects that have a name (none should)."""
    return sorted(f for f in os.listdir("/dev/shm") if f.startswith(f"zlpr_{os.getpid()}_"))


def regions_of(client):
    """The regions the server has registered (those of every client of the test server)."""
    from zlpr._shm import registered_regions
    return registered_regions(client._unary(
        "/inference.GRPCInferenceService/SystemSharedMemoryStatus", b"", 10))


@pytest.fixture(scope="module")
def shm_target(server_binary):
    proc, address = start_server(server_binary, "--allow_client_shm")
    yield address
    stop_server(proc)


def problem(rows, cols, seed):
    rng = np.random.default_rng(seed)
    s = (rng.standard_normal((rows, cols)) * 3).astype(np.float32)
    t = rng.random((rows, cols)).astype(np.float32)
    m = (rng.random((rows, cols)) < 0.9).astype(np.uint8)
    return s, t, m


def test_the_loss_through_shared_memory_is_the_loss_through_grpc(shm_target, transport):
    with zlpr.Client(shm_target, transport=transport) as plain, \
            zlpr.Client(shm_target, transport=transport, shared_memory=True) as shm:
        for rows, cols, seed in ((1, 1, 0), (3, 7, 1), (64, 4099, 2), (256, 16384, 3)):
            s, t, m = problem(rows, cols, seed)
            for mask in (None, m):
                a = plain.compute_loss(s, t, mask=mask, want_grad=True)
                b = shm.compute_loss(s, t, mask=mask, want_grad=True, request_id="r")
                assert np.array_equal(a.loss, b.loss) and np.array_equal(a.grad, b.grad)
                assert a.loss_sum == b.loss_sum and a.loss_mean == b.loss_mean
                assert b.request_id == "r"
                if mask is None and rows * cols <= 64 * 4099:
                    np.testing.assert_allclose(b.loss, reference(s, t)[0], rtol=2e-6, atol=1e-6)
        # Without the gradient, with float16 scores, float64 labels, and a priority.
        s, t, _ = problem(8, 300, 4)
        for scores, labels in ((s, t), (s.astype(np.float16), t.astype(np.float64))):
            a = plain.compute_loss(scores, labels, priority="interactive")
            b = shm.compute_loss(scores, labels, priority="interactive")
            assert b.grad is None and np.array_equal(a.loss, b.loss)
        # Sparse labels and narrow gradients take the usual path (the same answer).
        sparse = zlpr.SparseLabels(row_splits=[0, 2, 3], indices=[4, 9, 1], values=None)
        s3 = s[:2, :10]
        assert np.array_equal(plain.compute_loss(s3, sparse).loss,
                              shm.compute_loss(s3, sparse).loss)
        g16 = shm.compute_loss(s, t, want_grad=True, grad_dtype="float16").grad
        assert g16.dtype == np.float16


def test_regions_are_made_once_reused_and_unregistered_at_close(shm_target):
    s, t, _ = problem(32, 1000, 5)
    client = zlpr.Client(shm_target, shared_memory=True)
    client.compute_loss(s, t, want_grad=True)
    assert regions_of(client) == 2  # inputs and gradient
    assert objects() == []  # their names are gone already: nothing can leak
    for _ in range(5):
        client.compute_loss(s, t, want_grad=True)
    assert regions_of(client) == 2
    # A larger call replaces the pair; concurrent calls get a pair each.
    big = problem(256, 8192, 6)
    client.compute_loss(big[0], big[1], want_grad=True)
    assert regions_of(client) == 2
    errors = []

    def steps(seed):
        try:
            for k in range(5):
                x, y, _ = problem(16, 500, 10 * seed + k)
                r = client.compute_loss(x, y, want_grad=True)
                np.testing.assert_allclose(r.loss, reference(x, y)[0], rtol=2e-6, atol=1e-6)
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=steps, args=(i,)) for i in range(4)]  # 4 calls at once
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    assert 2 <= regions_of(client) <= 8  # at most a pair per call in flight
    probe = zlpr.Client(shm_target)
    client.close()
    assert regions_of(probe) == 0 and objects() == []
    probe.close()


def test_shared_tensors_are_read_and_written_in_place_with_the_grpc_answer(shm_target):
    """Arrays made by client.shared_tensors: the call sends no tensor (the request names their
    places), its gradient is the set's own `grad` rows, and every answer is gRPC's, bit for bit:
    whole, a block of rows, with a mask, in float16, and arrays elsewhere beside them (the
    copying path)."""
    with zlpr.Client(shm_target) as plain, zlpr.Client(shm_target, shared_memory=True) as shm:
        s, t, m = problem(300, 2053, 11)
        ts = shm.shared_tensors(300, 2053, mask=True)
        assert regions_of(shm) == 1 and objects() == []
        ts.scores[:] = s
        ts.labels[:] = t
        ts.mask[:] = m
        want = plain.compute_loss(s, t, want_grad=True)
        r = shm.compute_loss(ts.scores, ts.labels, want_grad=True)
        assert np.shares_memory(r.grad, ts.grad)
        assert np.array_equal(r.loss, want.loss) and np.array_equal(r.grad, want.grad)
        assert r.loss_sum == want.loss_sum
        assert regions_of(shm) == 1  # no copying pair was made
        block = shm.compute_loss(ts.scores[100:164], ts.labels[100:164], want_grad=True)
        assert np.shares_memory(block.grad, ts.grad[100:164])
        assert np.array_equal(block.grad, want.grad[100:164])
        masked = shm.compute_loss(ts.scores, ts.labels, mask=ts.mask, want_grad=True)
        assert np.array_equal(masked.grad,
                              plain.compute_loss(s, t, mask=m, want_grad=True).grad)
        no_grad = shm.compute_loss(ts.scores, ts.labels)
        assert no_grad.grad is None and np.array_equal(no_grad.loss, want.loss)
        # Labels outside the set: copied like any array, the same answer.
        mixed = shm.compute_loss(ts.scores, t, want_grad=True)
        assert not np.shares_memory(mixed.grad, ts.grad)
        assert np.array_equal(mixed.grad, want.grad)
        with shm.shared_tensors(4, 9, dtype=np.float16) as half:
            x, y, _ = problem(4, 9, 12)
            half.scores[:] = x
            half.labels[:] = y
            a = plain.compute_loss(x.astype(np.float16), y.astype(np.float16), want_grad=True)
            b = shm.compute_loss(half.scores, half.labels, want_grad=True)
            assert np.array_equal(a.grad, b.grad) and np.shares_memory(b.grad, half.grad)
        assert regions_of(shm) == 3  # ts, and the copying pair of `mixed`; `half` is closed
        with pytest.raises(ValueError, match="float32 or float16"):
            shm.shared_tensors(2, 2, dtype=np.int32)
        with pytest.raises(ValueError, match="1 or more"):
            shm.shared_tensors(0, 5)
    with zlpr.Client(shm_target) as plain:
        assert regions_of(plain) == 0  # the client's close() unregistered the set too
        with pytest.raises(ValueError, match="shared_memory=True"):
            plain.shared_tensors(2, 2)
    assert objects() == []


def test_errors_keep_their_codes_and_the_region_stays_usable(shm_target):
    with zlpr.Client(shm_target, shared_memory=True) as client:
        s, t, _ = problem(4, 10, 7)
        bad = s.copy()
        bad[2, 3] = np.nan
        with pytest.raises(zlpr.ZlprError) as e:
            client.compute_loss(bad, t)
        assert e.value.code.name == "INVALID_ARGUMENT" and "scores[2, 3] is NaN" in e.value.message
        with pytest.raises(ValueError, match="does not match scores"):
            client.compute_loss(s, t[:, :5])
        assert np.isfinite(client.compute_loss(s, t).loss_sum)


def test_a_server_without_shared_memory_says_how_to_allow_it(target):
    with zlpr.Client(target, shared_memory=True) as client:
        s, t, _ = problem(2, 5, 8)
        with pytest.raises(zlpr.ZlprError) as e:
            client.compute_loss(s, t)
        assert e.value.code.name == "FAILED_PRECONDITION"
        assert "--allow_client_shm" in e.value.message
    assert objects() == []  # nothing is left behind
