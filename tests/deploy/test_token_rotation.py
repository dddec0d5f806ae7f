"""The bearer token rotates without a restart: zlpr-server reads its token file again on SIGHUP
(which must not stop it) and on change, keeping the previous token for the grace period."""
import os
import re
import signal
import subprocess
import time

import grpc


def info(port, token):
    """The status code of GetServerInfo sent with `token` (raw bytes: no stubs needed)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        call = ch.unary_unary("/zlpr.v1.ZlprService/GetServerInfo")
        try:
            call(b"", timeout=5, metadata=[("authorization", f"Bearer {token}")])
            return grpc.StatusCode.OK
        except grpc.RpcError as e:
            return e.code()


def test_sighup_reloads_the_token_file_and_keeps_serving(request, tmp_path):
    build = request.config.getoption("--build")
    token = tmp_path / "token"
    token.write_text("old-token\n")
    proc = subprocess.Popen([os.path.join(build, "server/zlpr-server"), "--grpc_address=127.0.0.1:0",
                             "--metrics_address=", "--backend=cpu", f"--auth_token_file={token}",
                             "--auth_token_grace_s=0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = int(re.search(r"gRPC on port (\d+)", proc.stdout.readline()).group(1))
        assert info(port, "old-token") == grpc.StatusCode.OK
        assert info(port, "new-token") == grpc.StatusCode.UNAUTHENTICATED
        token.write_text("new-token\n")
        proc.send_signal(signal.SIGHUP)
        deadline = time.time() + 10
        while info(port, "new-token") != grpc.StatusCode.OK and time.time() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "SIGHUP stopped the server"
        assert info(port, "new-token") == grpc.StatusCode.OK
        assert info(port, "old-token") == grpc.StatusCode.UNAUTHENTICATED  # no grace here
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert "new bearer token from" in proc.stderr.read()
