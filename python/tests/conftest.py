"""A real zlpr-server on loopback (port 0) for the package's tests, and a float64 reference."""
import os
import re
import signal
import subprocess

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def pytest_addoption(parser):
    parser.addoption("--server", default=os.environ.get(
        "ZLPR_SERVER", os.path.join(ROOT, "build/server/zlpr-server")),
        help="path of the zlpr-server binary")


def start_server(binary, *flags):
    proc = subprocess.Popen([binary, "--grpc_address=127.0.0.1:0", "--metrics_address=",
                             "--backend=cpu", "--threads=2", *flags],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    m = re.search(r"gRPC on port (\d+)", line)
    assert m, f"unexpected start-up line: {line!r}"
    return proc, f"127.0.0.1:{m.group(1)}"


def stop_server(proc):
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


@pytest.fixture(scope="session")
def server_binary(request):
    binary = request.config.getoption("--server")
    if not os.path.exists(binary):
        pytest.fail(f"{binary} not found: build first (make build)")
    return binary


@pytest.fixture(scope="session")
def target(server_binary):
    proc, address = start_server(server_binary)
    yield address
    stop_server(proc)


@pytest.fixture(scope="session")
def client(target):
    import zlpr
    with zlpr.Client(target) as c:
        yield c


def reference(scores, labels, mask=None):
    """Per-row loss and gradient in float64 (docs/MATH.md)."""
    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(labels, dtype=np.float64)
    keep = s != -np.inf
    if mask is not None:
        keep &= np.asarray(mask) != 0
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.where(keep & (t > 0), -s + np.log(np.where(t > 0, t, 1)), -np.inf)
        y = np.where(keep & (t < 1), s + np.log1p(-np.where(t < 1, t, 0)), -np.inf)
    zero = np.zeros((s.shape[0], 1))
    p = np.logaddexp.reduce(np.concatenate([zero, x], 1), 1)
    n = np.logaddexp.reduce(np.concatenate([zero, y], 1), 1)
    grad = -np.exp(x - p[:, None]) + np.exp(y - n[:, None])
    return p + n, np.where(keep, grad, 0.0)
