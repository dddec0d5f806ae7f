"""Fixtures for the Python client suite: stubs generated from the project's .proto at test
time, and a real zlpr-server on loopback (port 0) started for the session."""
import os
import re
import signal
import subprocess
import sys
import tempfile

import grpc
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def pytest_addoption(parser):
    parser.addoption("--server", default=os.environ.get("ZLPR_SERVER", os.path.join(ROOT, "build/server/zlpr-server")),
                     help="path of the zlpr-server binary")


@pytest.fixture(scope="session")
def pb():
    """zlpr_pb2 and zlpr_pb2_grpc, generated now from proto/zlpr/v1/zlpr.proto."""
    from grpc_tools import protoc
    out = tempfile.mkdtemp(prefix="zlpr_stubs_")
    proto_dir = os.path.join(ROOT, "proto")
    rc = protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}",
                      os.path.join(proto_dir, "zlpr/v1/zlpr.proto")])
    assert rc == 0, "protoc failed"
    sys.path.insert(0, out)
    from zlpr.v1 import zlpr_pb2, zlpr_pb2_grpc  # noqa: E402
    return zlpr_pb2, zlpr_pb2_grpc


@pytest.fixture(scope="session")
def server(request):
    binary = request.config.getoption("--server")
    if not os.path.exists(binary):
        pytest.fail(f"{binary} not found: build first (make build)")
    proc = subprocess.Popen([binary, "--grpc_address=127.0.0.1:0", "--metrics_address=127.0.0.1:0",
                             "--backend=cpu", "--threads=2"], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    m = re.search(r"gRPC on port (\d+).*metrics on port (\d+)", line)
    assert m, f"unexpected start-up line: {line!r}"
    yield {"grpc": int(m.group(1)), "metrics": int(m.group(2))}
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, "zlpr-server did not exit 0 on SIGTERM"


@pytest.fixture(scope="session")
def channel(server):
    ch = grpc.insecure_channel(f"127.0.0.1:{server['grpc']}",
                               options=[("grpc.max_receive_message_length", 64 << 20),
                                        ("grpc.max_send_message_length", 64 << 20)])
    grpc.channel_ready_future(ch).result(timeout=10)
    yield ch
    ch.close()


@pytest.fixture(scope="session")
def stub(pb, channel):
    return pb[1].ZlprServiceStub(channel)
