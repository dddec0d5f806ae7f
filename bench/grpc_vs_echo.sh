#!/usr/bin/env bash
# The service against the transport's ceiling (issue 4 targets), in one run: zlpr-server and
# zlpr-server --echo pinned to core 0, zlpr-bench pinned to core 1, same flags for both servers.
#   bench/grpc_vs_echo.sh [build-dir] [seconds]
set -euo pipefail
build=${1:-build}
secs=${2:-10}
server=$build/server/zlpr-server
bench=$build/bench/zlpr-bench
delay=${ZLPR_BENCH_DELAY_US:-250}
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

start() {  # start NAME PORT METRICS_PORT FLAGS...
  local name=$1 port=$2 mport=$3; shift 3
  taskset -c 0 "$server" --grpc_address=127.0.0.1:$port --metrics_address=127.0.0.1:$mport \
    --backend=cpu --threads=1 --max_message_bytes=134217728 "$@" > "/tmp/zlpr-bench-$name.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do grep -q listening "/tmp/zlpr-bench-$name.log" && return; sleep 0.05; done
  echo "$name did not start" >&2; cat "/tmp/zlpr-bench-$name.log" >&2; exit 1
}
metric() {  # metric PORT SAMPLE
  curl -s "127.0.0.1:$1/metrics" | awk -v s="$2" 'index($0, s" ") == 1 {print $2}'
}
run() { taskset -c 1 "$bench" --progress=false --duration_s="$secs" --warmup_s=1 "$@"; }

start zlpr 50151 9564 --max_queue_delay_us="$delay"
start echo 50161 9565 --echo
start nobatch 50171 9566 --max_batch_rows=1

echo "== Predict 1x1000, concurrency 1 (target: p50 <= 1.3x echo)"
run --target=127.0.0.1:50151 --baseline=echo --echo_target=127.0.0.1:50161 --rpc=predict --rows=1 --cols=1000 --concurrency=1
echo
echo "== Predict 1x1000, concurrency 64 (target: throughput >= 0.7x echo)"
c0=$(metric 9564 'zlpr_batch_rows_count{op="predict"}'); s0=$(metric 9564 'zlpr_batch_rows_sum{op="predict"}')
run --target=127.0.0.1:50151 --baseline=echo --echo_target=127.0.0.1:50161 --rpc=predict --rows=1 --cols=1000 --concurrency=64 --json=/tmp/zlpr-c64.json
c1=$(metric 9564 'zlpr_batch_rows_count{op="predict"}'); s1=$(metric 9564 'zlpr_batch_rows_sum{op="predict"}')
echo "mean executed batch (batching on): $(echo "($s1 - $s0) / ($c1 - $c0)" | bc -l | cut -c1-6) rows"
echo
echo "== Predict 1x1000, concurrency 64, batching off (--max_batch_rows=1) (target: batching on >= 3x)"
run --target=127.0.0.1:50171 --rpc=predict --rows=1 --cols=1000 --concurrency=64 --json=/tmp/zlpr-nobatch.json
on=$(grep -o '"rps":[0-9.e+]*' /tmp/zlpr-c64.json | head -1 | cut -d: -f2)
off=$(grep -o '"rps":[0-9.e+]*' /tmp/zlpr-nobatch.json | head -1 | cut -d: -f2)
echo "batching on / off throughput: $(echo "$on / $off" | bc -l | cut -c1-5)x"
echo
echo "== ComputeLoss with gradient 256x16384 (16 MiB in, 16 MiB out), concurrency 2 (target: bytes/s >= 0.8x echo)"
run --target=127.0.0.1:50151 --baseline=echo --echo_target=127.0.0.1:50161 --rpc=loss_grad --rows=256 --cols=16384 --concurrency=2 --max_message_bytes=134217728
