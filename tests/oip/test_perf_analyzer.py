"""perf_analyzer, Triton's load generator, runs unchanged against zlpr-server's Open Inference
Protocol endpoints (gRPC and HTTP) and reads their statistics. Its binary ships in the
tritonclient 2.51.0 wheel (`make test-oip` installs it in its own venv); the test skips where it
is absent."""
import json
import os
import re
import subprocess

import pytest

PERF_ANALYZER = os.environ.get("ZLPR_PERF_ANALYZER", "")


@pytest.mark.skipif(not os.path.exists(PERF_ANALYZER), reason="perf_analyzer is not installed")
@pytest.mark.parametrize("protocol", ["grpc", "http"])
# Shapes for the inputs the data names only: perf_analyzer sends no optional input (mask,
# label_thresholds) that its data file leaves out, whatever --shape says.
@pytest.mark.parametrize("model,shapes,data", [
    ("zlpr_predict", ["scores:1000"], {"scores": 1000}),
    ("zlpr_loss", ["scores:1000", "labels:1000"], {"scores": 1000, "labels": 1000}),
])
def test_perf_analyzer_measures_both_models(server, tmp_path, model, shapes, data, protocol):
    # Zero scores would be fine too; its "random" data would be NaN scores, which are refused.
    inputs = {name: [0.25 * ((i % 7) - 3) for i in range(n)] for name, n in data.items()}
    if "labels" in inputs:
        inputs["labels"] = [float(i % 5 == 0) for i in range(1000)]
    path = tmp_path / "input.json"
    path.write_text(json.dumps({"data": [inputs]}))
    cmd = [PERF_ANALYZER, "-m", model, "-u", server[protocol], "-i", protocol, "-b", "2",
           "--input-data", str(path), "--concurrency-range", "2",
           "--measurement-interval", "1000", "--stability-percentage", "100"]
    for s in shapes:
        cmd += ["--shape", s]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"Throughput: [\d.]+ infer/sec", r.stdout), r.stdout
    # Its server-side section comes from ModelStatistics.
    assert re.search(r"Server:\s+Inference count: \d+", r.stdout), r.stdout
