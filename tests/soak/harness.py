"""Shared pieces of the soak and shutdown scripts: the project's committed Python stubs,
a zlpr-server process on loopback (port 0) with its resident memory and open descriptors, and
request builders."""
import os
import re
import subprocess
import sys
import threading

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def stubs():
    """zlpr_pb2 and zlpr_pb2_grpc: the Python package's committed stubs (python/src/zlpr/v1,
    kept fresh by python/tests/test_stubs.py)."""
    sys.path.insert(0, os.path.join(ROOT, "python", "src"))
    from zlpr.v1 import zlpr_pb2, zlpr_pb2_grpc  # noqa: E402
    return zlpr_pb2, zlpr_pb2_grpc


class Server:
    """zlpr-server on 127.0.0.1:0 (CPU backend); stderr is collected in `self.stderr_lines`."""

    def __init__(self, binary, *flags):
        self.proc = subprocess.Popen(
            [binary, "--grpc_address=127.0.0.1:0", "--metrics_address=127.0.0.1:0",
             "--backend=cpu", *flags],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        m = re.search(r"gRPC on port (\d+).*metrics on port (\d+)", line)
        if not m:
            self.proc.kill()
            raise RuntimeError(f"unexpected start-up line: {line!r} {self.proc.stderr.read()}")
        self.grpc_port, self.metrics_port = int(m.group(1)), int(m.group(2))
        self.http_port = None
        if any(f.startswith("--http_address=") and f != "--http_address=" for f in flags):
            line = self.proc.stdout.readline()
            m = re.search(r"HTTP \(Open Inference Protocol\) on port (\d+)", line)
            if not m:
                self.proc.kill()
                raise RuntimeError(f"unexpected HTTP start-up line: {line!r}")
            self.http_port = int(m.group(1))
        self.stdout_lines, self.stderr_lines = [], []
        for stream, into in ((self.proc.stdout, self.stdout_lines),
                             (self.proc.stderr, self.stderr_lines)):
            threading.Thread(target=lambda s=stream, i=into: i.extend(s), daemon=True).start()

    @property
    def target(self):
        return f"127.0.0.1:{self.grpc_port}"

    def rss_mib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def open_fds(self):
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def metrics(self):
        import urllib.request
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def stop(self, timeout=30):
        import signal
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)


def tensor(pb, array):
    a = np.ascontiguousarray(array, dtype=np.float32)
    return pb.Tensor(dtype=pb.FLOAT32, shape=list(a.shape), data=a.tobytes())


def channel_options(max_bytes=64 << 20):
    return [("grpc.max_receive_message_length", max_bytes),
            ("grpc.max_send_message_length", max_bytes)]
