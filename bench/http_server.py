"""Starts a zlpr-server binary with its Open Inference Protocol HTTP binding on a free loopback
port, for the HTTP benchmarks (http_before_after.py, http_large_json.py)."""
import contextlib
import re
import signal
import subprocess


@contextlib.contextmanager
def http_server(binary, *flags):
    """Yields the HTTP port of `binary` started with the CPU backend and `flags`; SIGTERM after."""
    proc = subprocess.Popen([binary, "--grpc_address=127.0.0.1:0", "--metrics_address=",
                             "--backend=cpu", "--http_address=127.0.0.1:0", *flags],
                            stdout=subprocess.PIPE, text=True)
    try:
        port = None
        while port is None:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{binary} exited before serving HTTP")
            m = re.search(r"HTTP \(Open Inference Protocol\) on port (\d+)", line)
            port = int(m.group(1)) if m else None
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
