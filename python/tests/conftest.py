"""A real zlpr-server on loopback (port 0) for the package's tests, and the float64 reference
(tests/zlpr_reference.py, shared with the Open Inference Protocol's tests)."""
import os
import re
import signal
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from zlpr_reference import reference  # noqa: E402,F401  (the tests import it from here)


def pytest_addoption(parser):
    parser.addoption("--server", default=os.environ.get(
        "ZLPR_SERVER", os.path.join(ROOT, "build/server/zlpr-server")),
        help="path of the zlpr-server binary")
    parser.addoption("--require-native", action="store_true",
                     help="fail, rather than skip, the native transport's tests when this "
                          "installation of zlpr has no zlpr._native")
    parser.addoption("--require-torch-compile", action="store_true",
                     help="fail, rather than skip, the torch.compile tests on a PyTorch "
                          "without it")


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


def native_or_skip(config):
    """The test goes on only where zlpr._native is installed: it skips elsewhere, or fails
    with --require-native."""
    import zlpr
    if not zlpr.native_available():
        if config.getoption("--require-native"):
            pytest.fail("zlpr._native is missing: the wheel was built without gRPC C++")
        pytest.skip("this zlpr has no zlpr._native")


@pytest.fixture(scope="session", params=["native", "grpcio"])
def transport(request):
    """Each test that takes a client runs on both of zlpr.Client's transports."""
    if request.param == "native":
        native_or_skip(request.config)
    return request.param


@pytest.fixture(scope="session")
def client(target, transport):
    import zlpr
    with zlpr.Client(target, transport=transport) as c:
        assert c.transport == transport
        yield c
