"""zlpr-cli as a user runs it: a call that sets flags prints its JSON and nothing on stderr (no
flag library's bookkeeping lines), and -h / help / --help are help."""
import os
import re
import subprocess

import pytest


@pytest.fixture(scope="module")
def target(request):
    build = request.config.getoption("--build")
    server = subprocess.Popen([os.path.join(build, "server/zlpr-server"),
                               "--grpc_address=127.0.0.1:0", "--metrics_address=",
                               "--backend=cpu", "--threads=1"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    port = re.search(r"gRPC on port (\d+)", server.stdout.readline()).group(1)
    yield f"127.0.0.1:{port}"
    server.terminate()
    server.wait(timeout=30)


def cli(request, *args):
    build = request.config.getoption("--build")
    return subprocess.run([os.path.join(build, "cli/zlpr-cli"), *args], capture_output=True,
                          text=True, timeout=60)


def test_a_call_with_flags_prints_json_and_nothing_else(request, target, tmp_path):
    (tmp_path / "s.json").write_text("[[2.0, -1.0, 0.5]]")
    for args in (["info"], ["health", "--service=", "--deadline_ms=5000"],
                 ["predict", f"--scores={tmp_path}/s.json", "--top_k=2", "--priority=bulk"]):
        r = cli(request, f"--target={target}", *args)
        assert r.returncode == 0, (args, r.stderr)
        assert r.stderr == "", (args, r.stderr)
        assert r.stdout.startswith("{") and r.stdout.endswith("}\n"), r.stdout


@pytest.mark.parametrize("ask", ["-h", "help", "--help"])
def test_help_in_every_spelling(request, ask):
    r = cli(request, ask)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.startswith("usage: zlpr-cli COMMAND") and "--target" in r.stdout
