#!/usr/bin/env bash
# Builds the image with the README's `docker build` line and runs it for real, through podman
# (docs/DEPLOY.md, "Testing the image without a Docker engine"): Debian base images made with
# debootstrap from the mirror apt is configured with, the docker CLI pointed at podman's
# socket. Then, from the host: zlpr-cli
# health/info/predict/loss against the container, the Open Inference Protocol over HTTP (port
# 8000), a /metrics scrape, the image's HEALTHCHECK, and a SIGTERM that must end the server
# gracefully with exit status 0. Then the CUDA image (--build-arg ZLPR_CUDA=ON: nvcc and the
# static CUDA runtime from PyPI, fetched on the host first): on this GPU-less machine it must
# start, say that it fell back to the CPU (log and GetServerInfo) and pass the same checks.
#   tests/deploy/container_test.sh BUILD_DIR
set -euo pipefail
build=$(cd "${1:-build}" && pwd)
root=$(cd "$(dirname "$0")/../.." && pwd)
cli="$build/cli/zlpr-cli"
[ -x "$cli" ] || { echo "container_test: $cli missing: build first" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "container_test: needs root (podman, debootstrap)" >&2; exit 2; }

export DEBIAN_FRONTEND=noninteractive
need=()
for p in podman runc debootstrap uidmap slirp4netns curl; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; fi

scratch=$(mktemp -d /var/tmp/zlpr-container.XXXXXX)
service_pid=""
cleanup() {
  set +e
  podman rm -f zlpr-test >/dev/null 2>&1
  podman rmi -f zlpr-serve:test zlpr-serve:cuda-test >/dev/null 2>&1
  rm -rf "$root/.cuda-wheels"
  [ -n "$service_pid" ] && kill "$service_pid" 2>/dev/null && wait "$service_pid" 2>/dev/null
  podman system reset -f >/dev/null 2>&1
  rm -rf "$scratch"
}
trap cleanup EXIT

cat > "$scratch/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
cat > "$scratch/storage.conf" <<CONF
[storage]
driver = "overlay"
graphroot = "$scratch/storage"
runroot = "$scratch/run"
CONF
export CONTAINERS_CONF="$scratch/containers.conf" CONTAINERS_STORAGE_CONF="$scratch/storage.conf"

# Base images: FROM lines must resolve locally.
# The Debian mirror apt uses (deb lines or deb822 URIs), not a security or third-party one.
mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
  | grep -E '^(deb |URIs:)' | grep -oE 'https?://[^ ]+/debian/?( |$)' | tr -d ' ' | head -1 || true)
if [ -z "$mirror" ]; then
  echo "container_test: apt has no Debian mirror configured (no deb line or URIs: entry ending in /debian" >&2
  echo "in /etc/apt/sources.list or /etc/apt/sources.list.d): cannot debootstrap the base images" >&2
  exit 1
fi
echo "container_test: debootstrap bookworm from $mirror"
debootstrap --variant=minbase bookworm "$scratch/rootfs" "$mirror" >/dev/null
tar -C "$scratch/rootfs" -c . | podman import - localhost/debian:bookworm >/dev/null
podman tag localhost/debian:bookworm docker.io/library/debian:bookworm
podman tag localhost/debian:bookworm docker.io/library/debian:bookworm-slim
rm -rf "$scratch/rootfs"

# The docker CLI, unchanged, through podman's socket.
podman system service --time=0 "unix://$scratch/podman.sock" &
service_pid=$!
export DOCKER_HOST="unix://$scratch/podman.sock"
for _ in $(seq 50); do [ -S "$scratch/podman.sock" ] && break; sleep 0.1; done
docker_cmd=(docker)
command -v docker >/dev/null || docker_cmd=(podman)

cd "$root"
echo "container_test: docker build"
start=$(date +%s)
DOCKER_BUILDKIT=0 "${docker_cmd[@]}" build -t zlpr-serve:test . > "$scratch/build.log" 2>&1 || { tail -50 "$scratch/build.log"; exit 1; }
echo "container_test: built in $(( $(date +%s) - start )) s; image size: $(podman image inspect zlpr-serve:test --format '{{.Size}}' | awk '{printf "%.0f MB", $1/1e6}')"

fail() { echo "container_test: FAILED: $*" >&2; "${docker_cmd[@]}" logs zlpr-test >&2 || true; exit 1; }

# Runs IMAGE, checks it (health, info, predict, loss, HTTP, metrics, HEALTHCHECK), stops it with
# SIGTERM (exit 0 required). Its info output is left in $info.
check_image() {
  local image=$1
  port=$(( 40000 + RANDOM % 10000 )); mport=$(( port + 1 )); hport=$(( port + 2 ))
  "${docker_cmd[@]}" run -d --name zlpr-test -p 127.0.0.1:$port:50051 -p 127.0.0.1:$mport:9464 \
    -p 127.0.0.1:$hport:8000 -e ZLPR_MAX_BATCH_ROWS=128 "$image" --shutdown_grace_s=5 >/dev/null
  for i in $(seq 100); do
    "$cli" --target=127.0.0.1:$port --deadline_ms=1000 health >/dev/null 2>&1 && break
    [ "$i" = 100 ] && { echo "server in the container never became healthy"; "${docker_cmd[@]}" logs zlpr-test; exit 1; }
    sleep 0.2
  done

  out=$("$cli" --target=127.0.0.1:$port health); echo "health: $out"
  [ "$out" = '{"service":"","status":"SERVING"}' ] || fail "health"
  info=$("$cli" --target=127.0.0.1:$port info); echo "info: $info"
  echo "$info" | grep -q '"backend":"cpu"' || fail "info backend"
  echo "$info" | grep -q '"max_batch_rows":128' || fail "ZLPR_MAX_BATCH_ROWS from the environment"
  echo '[[2.0, -1.0, 0.5], [0.1, 0.2, -3.0]]' > "$scratch/s.json"
  echo '[[1, 0, 1], [0, 0, 0]]' > "$scratch/t.json"
  out=$("$cli" --target=127.0.0.1:$port predict --scores="$scratch/s.json"); echo "predict: $out"
  echo "$out" | grep -q '"labels":\[0,2\]' || fail "predict labels"
  out=$("$cli" --target=127.0.0.1:$port loss --scores="$scratch/s.json" --labels="$scratch/t.json" --want_grad); echo "loss: $out"
  echo "$out" | grep -q '"loss":\[0.8682' || fail "loss value"
  # The Open Inference Protocol over HTTP, on by default in the image.
  curl -sf "127.0.0.1:$hport/v2/health/ready" >/dev/null || fail "HTTP readiness (port 8000)"
  out=$(curl -sf -X POST "127.0.0.1:$hport/v2/models/zlpr_predict/infer" \
    -d '{"inputs":[{"name":"scores","datatype":"FP32","shape":[2,3],"data":[[2,-1,0.5],[0.1,0.2,-3]]}],"outputs":[{"name":"labels"}]}') \
    || fail "HTTP infer"
  echo "http infer: $out"
  echo "$out" | grep -q '"data":\[0,2,1,0\]' || fail "HTTP infer labels"
  metrics=$(curl -sf "127.0.0.1:$mport/metrics") || fail "metrics scrape"
  echo "$metrics" | grep -q 'zlpr_requests_total{code="OK",method="Predict",protocol="zlpr_v1"} 1' || fail "metrics counters"
  echo "$metrics" | grep -q 'zlpr_requests_total{code="OK",method="ModelInfer",protocol="oip_http"} 1' || fail "HTTP counted"
  podman healthcheck run zlpr-test >/dev/null || fail "the image's HEALTHCHECK"
  echo "healthcheck: ok"

  "${docker_cmd[@]}" stop -t 20 zlpr-test >/dev/null
  code=$(podman inspect zlpr-test --format '{{.State.ExitCode}}')
  logs=$("${docker_cmd[@]}" logs zlpr-test 2>&1)
  echo "$logs" | grep -q "signal 15, shutting down" || fail "no graceful shutdown in the logs"
  [ "$code" = 0 ] || fail "exit status $code after SIGTERM"
  "${docker_cmd[@]}" rm zlpr-test >/dev/null
}

check_image zlpr-serve:test
echo "container_test: CPU image PASSED (SIGTERM -> exit 0)"

# The CUDA image: its toolchain's wheels fetched here (the host's package index settings), then
# installed offline in the builder.
scripts/install-cuda-pip.sh --download "$root/.cuda-wheels"
echo "container_test: docker build --build-arg ZLPR_CUDA=ON"
start=$(date +%s)
DOCKER_BUILDKIT=0 "${docker_cmd[@]}" build --build-arg ZLPR_CUDA=ON -t zlpr-serve:cuda-test . \
  > "$scratch/build-cuda.log" 2>&1 || { tail -50 "$scratch/build-cuda.log"; exit 1; }
rm -rf "$root/.cuda-wheels"
echo "container_test: CUDA image built in $(( $(date +%s) - start )) s; image size: $(podman image inspect zlpr-serve:cuda-test --format '{{.Size}}' | awk '{printf "%.0f MB", $1/1e6}')"
check_image zlpr-serve:cuda-test
echo "$logs" | grep -q "this build has the CUDA backend, but no CUDA device can be used" \
  || fail "the CUDA image did not log its CPU fallback"
echo "$info" | grep -q 'CUDA fallback: ' || fail "GetServerInfo does not show the CPU fallback"
echo "container_test: CUDA image PASSED (no GPU here: CPU fallback reported, SIGTERM -> exit 0)"
