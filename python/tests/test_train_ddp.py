"""examples/train_ddp.py: two gloo processes train the same model with the remote loss and with
the package's local reference; per-step losses and final weights agree within 1e-5 relative,
and so does the held-out accuracy."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")
from conftest import ROOT  # noqa: E402


def run(loss, out, port, target=None, *extra):
    cmd = [sys.executable, os.path.join(ROOT, "examples", "train_ddp.py"), "--loss", loss,
           "--out", str(out), "--port", str(port), *extra]
    if target:
        cmd += ["--target", target]
    subprocess.run(cmd, check=True, timeout=600)
    with open(out) as f:
        return json.load(f)


def test_remote_and_local_training_agree(target, tmp_path):
    remote = run("remote", tmp_path / "remote.json", 29611, target)
    local = run("local", tmp_path / "local.json", 29612)
    np.testing.assert_allclose(remote["losses"], local["losses"], rtol=1e-5)
    for name, w in local["weights"].items():
        diff = np.max(np.abs(np.array(remote["weights"][name]) - np.array(w)))
        assert diff <= 1e-5 * np.max(np.abs(w)), name
    assert remote["accuracy"] == pytest.approx(local["accuracy"], abs=1e-3)
    assert remote["losses"][-1] < remote["losses"][0]


def test_the_loss_through_shared_memory_trains_as_the_local_one(server_binary, tmp_path):
    from conftest import start_server, stop_server
    proc, target = start_server(server_binary, "--allow_client_shm")
    try:
        shm = run("remote", tmp_path / "shm.json", 29613, target, "--shared_memory")
        remote = run("remote", tmp_path / "remote.json", 29614, target)
    finally:
        stop_server(proc)
    local = run("local", tmp_path / "local.json", 29615)
    np.testing.assert_allclose(shm["losses"], local["losses"], rtol=1e-5)
    # Through shared memory or the message, the server's answers are the same bits.
    assert shm["losses"] == remote["losses"]
