"""The deployment files are valid: Kubernetes manifests against the Kubernetes JSON schemas
(kubernetes-validate), the Grafana dashboard as JSON with every panel querying a zlpr metric,
and the compose file as YAML naming the three services."""
import glob
import json
import os

import kubernetes_validate
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
K8S = os.path.join(ROOT, "deploy", "k8s")
KUBERNETES_VERSION = "1.29.0"


def documents(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def test_every_kubernetes_manifest_validates_against_the_schemas():
    checked = 0
    for path in sorted(glob.glob(os.path.join(K8S, "*.yaml"))):
        for doc in documents(path):
            if doc["kind"] in ("Kustomization", "ServiceMonitor"):
                continue  # not core Kubernetes kinds: checked below
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
            checked += 1
    assert checked >= 6


def test_kustomization_lists_every_manifest_and_they_exist():
    kust = documents(os.path.join(K8S, "kustomization.yaml"))[0]
    on_disk = {os.path.basename(p) for p in glob.glob(os.path.join(K8S, "*.yaml"))} - {"kustomization.yaml"}
    assert set(kust["resources"]) == on_disk


def test_servicemonitor_scrapes_the_metrics_port_of_the_service():
    sm = documents(os.path.join(K8S, "servicemonitor.yaml"))[0]
    assert sm["apiVersion"] == "monitoring.coreos.com/v1" and sm["kind"] == "ServiceMonitor"
    services = documents(os.path.join(K8S, "service.yaml"))
    regular = next(s for s in services if s["spec"].get("clusterIP") != "None")
    assert sm["spec"]["selector"]["matchLabels"].items() <= regular["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] in {p["name"] for p in regular["spec"]["ports"]}


def test_deployments_probe_with_grpc_health_and_gpu_variant_requests_a_gpu():
    cpu = documents(os.path.join(K8S, "deployment-cpu.yaml"))[0]
    gpu = documents(os.path.join(K8S, "deployment-gpu.yaml"))[0]
    for d in (cpu, gpu):
        c = d["spec"]["template"]["spec"]["containers"][0]
        assert c["readinessProbe"]["grpc"]["port"] == 50051
        assert c["livenessProbe"]["grpc"]["port"] == 50051
        # Selectors of the two Deployments must not claim each other's pods.
        assert d["spec"]["selector"]["matchLabels"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
    assert cpu["spec"]["selector"]["matchLabels"] != gpu["spec"]["selector"]["matchLabels"]
    assert gpu["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    headless = next(s for s in documents(os.path.join(K8S, "service.yaml")) if s["spec"].get("clusterIP") == "None")
    assert headless["spec"]["ports"][0]["port"] == 50051


def test_kserve_runtime_and_inference_service_fit_together():
    """KServe's CRDs are not in the Kubernetes schemas: the fields KServe reads are checked here,
    and the runtime's container against the core Container schema."""
    runtime = documents(os.path.join(ROOT, "deploy", "kserve", "servingruntime.yaml"))[0]
    isvc = documents(os.path.join(ROOT, "deploy", "kserve", "inferenceservice.yaml"))[0]
    assert (runtime["apiVersion"], runtime["kind"]) == ("serving.kserve.io/v1alpha1", "ServingRuntime")
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"] == ["grpc-v2"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    container = runtime["spec"]["containers"][0]
    assert container["name"] == "kserve-container"
    port = container["ports"][0]
    assert port["name"] == "h2c" and f"--grpc_address=0.0.0.0:{port['containerPort']}" in container["args"]
    assert container["readinessProbe"]["grpc"]["port"] == port["containerPort"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"},
           "spec": {"containers": [container]}}
    kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)


def test_grafana_dashboard_panels_query_zlpr_metrics():
    with open(os.path.join(ROOT, "deploy", "grafana", "dashboards", "zlpr.json")) as f:
        dash = json.load(f)
    titles = [p["title"] for p in dash["panels"]]
    for needed in ("Throughput", "Errors", "Latency", "Queue depth", "Queue time", "batch", "Compute",
                   "Device memory", "Latency by class", "stood in"):
        assert any(needed.lower() in t.lower() for t in titles), needed
    for p in dash["panels"]:
        for t in p["targets"]:
            assert "zlpr_" in t["expr"], t["expr"]


def test_compose_runs_server_prometheus_and_grafana():
    compose = documents(os.path.join(ROOT, "deploy", "compose.yaml"))[0]
    assert set(compose["services"]) == {"zlpr-server", "prometheus", "grafana"}
    assert compose["services"]["zlpr-server"]["build"]["dockerfile"] == "Dockerfile"


def test_the_node_local_sidecar_shares_dev_shm_and_a_user_with_the_trainer():
    """deploy/node-local: the loss server beside a trainer, shared memory through one memory-backed
    /dev/shm, both containers as the same user, the server on loopback with shared memory on."""
    path = os.path.join(ROOT, "deploy", "node-local", "trainer-with-loss-sidecar.yaml")
    (job,) = documents(path)
    kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True)
    pod = job["spec"]["template"]["spec"]
    (server,) = pod["initContainers"]
    (trainer,) = pod["containers"]
    assert server["restartPolicy"] == "Always"  # a sidecar
    assert "--allow_client_shm" in server["args"] and "--grpc_address=127.0.0.1:50051" in server["args"]
    volume = next(v for v in pod["volumes"] if v["emptyDir"].get("medium") == "Memory")
    for c in (server, trainer):
        assert {"name": volume["name"], "mountPath": "/dev/shm"} in c["volumeMounts"]
        assert "runAsUser" not in c.get("securityContext", {})  # the pod's one user for both
    assert pod["securityContext"]["runAsUser"] == 10001
