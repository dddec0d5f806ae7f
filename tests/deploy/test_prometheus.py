"""Observability for real: promtool checks the shipped config and alert rules and runs their
unit tests; then a Prometheus server on loopback scrapes a running zlpr-server under load, and
its HTTP query API must return sane values for a rate over zlpr_requests_total and a
histogram_quantile over zlpr_request_duration_seconds."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(ROOT, "deploy", "prometheus")


def build_dir(request):
    return request.config.getoption("--build")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def promtool():
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail("promtool not found: scripts/install-deps.sh installs Debian's prometheus")
    return tool


def test_config_and_rules_pass_promtool(promtool):
    for args in (["check", "config", os.path.join(DEPLOY, "prometheus.yml")],
                 ["check", "rules", os.path.join(DEPLOY, "alerts.yml")]):
        r = subprocess.run([promtool, *args], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr


def test_alert_rules_unit_tests(promtool):
    r = subprocess.run([promtool, "test", "rules", "alerts_test.yml"], cwd=DEPLOY, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout + r.stderr


def query(port, expr):
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as resp:
        body = json.load(resp)
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_prometheus_scrapes_a_running_server(request):
    build = build_dir(request)
    prometheus = shutil.which("prometheus")
    assert prometheus, "prometheus not found: scripts/install-deps.sh installs it"
    tmp = tempfile.mkdtemp(prefix="zlpr_prom_")
    server = subprocess.Popen([os.path.join(build, "server/zlpr-server"), "--grpc_address=127.0.0.1:0",
                               "--metrics_address=127.0.0.1:0", "--backend=cpu", "--threads=1"],
                              stdout=subprocess.PIPE, text=True)
    prom = None
    try:
        m = re.search(r"gRPC on port (\d+).*metrics on port (\d+)", server.stdout.readline())
        grpc_port, metrics_port = int(m.group(1)), int(m.group(2))
        with open(os.path.join(tmp, "prometheus.yml"), "w") as f:
            f.write(f"""global: {{scrape_interval: 1s, evaluation_interval: 1s}}
scrape_configs:
  - job_name: zlpr
    static_configs: [{{targets: ["127.0.0.1:{metrics_port}"]}}]
""")
        prom_port = free_port()
        prom = subprocess.Popen([prometheus, f"--config.file={tmp}/prometheus.yml", f"--storage.tsdb.path={tmp}/data",
                                 f"--web.listen-address=127.0.0.1:{prom_port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if any(r["value"][1] == "1" for r in query(prom_port, 'up{job="zlpr"}')):
                    break
            except OSError:
                pass
            time.sleep(0.2)
        else:
            pytest.fail("Prometheus never scraped zlpr-server")
        # Traffic for a few scrapes.
        subprocess.run([os.path.join(build, "bench/zlpr-bench"), f"--target=127.0.0.1:{grpc_port}", "--rpc=predict",
                        "--rows=4", "--cols=200", "--concurrency=4", "--duration_s=5", "--warmup_s=0",
                        "--progress=false"], check=True, stdout=subprocess.DEVNULL)
        time.sleep(2.5)  # the last scrapes after the load
        rate = query(prom_port, 'sum(rate(zlpr_requests_total{method="Predict",code="OK"}[10s]))')
        assert rate and float(rate[0]["value"][1]) > 10, rate
        p99 = query(prom_port, 'histogram_quantile(0.99, sum by (le) (rate(zlpr_request_duration_seconds_bucket{method="Predict"}[10s])))')
        assert p99, p99
        value = float(p99[0]["value"][1])
        assert 0 < value < 1.0, f"p99 {value} s is not a sane latency"
        batch = query(prom_port, 'sum(rate(zlpr_batch_rows_sum{op="predict"}[10s])) / sum(rate(zlpr_batch_rows_count{op="predict"}[10s]))')
        assert float(batch[0]["value"][1]) >= 4
    finally:
        if prom:
            prom.send_signal(signal.SIGTERM)
            prom.wait(timeout=30)
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
        shutil.rmtree(tmp, ignore_errors=True)
