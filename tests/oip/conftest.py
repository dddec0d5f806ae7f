"""A real zlpr-server on loopback (port 0) for the Open Inference Protocol tests."""
import os
import re
import signal
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests"))  # zlpr_reference, the float64 oracle


def pytest_addoption(parser):
    parser.addoption("--server", default=os.environ.get(
        "ZLPR_SERVER", os.path.join(ROOT, "build/server/zlpr-server")),
        help="path of the zlpr-server binary")


@pytest.fixture(scope="session")
def server(request):
    binary = request.config.getoption("--server")
    proc = subprocess.Popen([binary, "--grpc_address=127.0.0.1:0", "--metrics_address=127.0.0.1:0",
                             "--http_address=127.0.0.1:0", "--backend=cpu", "--threads=2",
                             "--max_batch_rows=128"],
                            stdout=subprocess.PIPE, text=True)
    m = re.search(r"gRPC on port (\d+).*metrics on port (\d+)", proc.stdout.readline())
    assert m
    h = re.search(r"HTTP \(Open Inference Protocol\) on port (\d+)", proc.stdout.readline())
    assert h
    yield {"grpc": f"127.0.0.1:{m.group(1)}", "metrics": int(m.group(2)),
           "http": f"127.0.0.1:{h.group(1)}", "proc": proc}
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
