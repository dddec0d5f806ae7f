#!/usr/bin/env bash
# Every GPU check in one call, on a machine with an NVIDIA GPU, from the repository root, with
# the binaries of a CUDA build carried in .devbundle/ (scripts/device-bundle.sh --gpu-checks
# BUILD; a build with -DCMAKE_CUDA_ARCHITECTURES=90 is 39 MiB, under the 64 MiB a device call
# carries; one for both architectures no longer is): builds nothing. In order, each step's log
# under $OUT (default /tmp/zlpr-device):
#   1. the CUDA kernel tests (zlpr_kernels_test --gtest_filter='Cuda*'), fault tests included
#   2. zlpr_cuda_bench: the device-to-device copy ceiling, then every kernel and shape, and a
#      backend round trip (host to host) beside its kernel alone
#   3. bench/torch_gpu.py: PyTorch eager, torch.compile and torch.topk (when PyTorch with CUDA
#      is installed)
#   4. the server on the GPU, driven by zlpr-bench: Predict 1x1000 at concurrency 64 with
#      batching on and off (--max_batch_rows=1), and ComputeLoss with gradient 256x16384 on the
#      GPU server and on a CPU server (Predict there too); each run with the server's own
#      count of kernel calls, rows per call and time per call (from /metrics)
#   5. compute-sanitizer memcheck and racecheck over the CUDA tests but the fault-injection
#      ones (when the machine has it), near the end because they are the slowest
#   6. Nsight Compute (ncu) over the kernels of two shapes, when the machine has it (NCU=0: not)
# and prints a short table last. A step that fails is reported and the next one still runs.
#   scripts/device-run.sh [SECONDS_PER_SERVER_RUN [SECONDS_PER_SANITIZER]]
set -uo pipefail
bundle=${BUNDLE:-.devbundle}
out=${OUT:-/tmp/zlpr-device}
secs=${1:-5}
san_secs=${2:-120}
mkdir -p "$out"
declare -a rows
row() { rows+=("| $1 | $2 |"); }

gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null \
  | head -1 || true)
gpu=${gpu:-"no nvidia-smi"}
echo "device-run: $gpu"; row "GPU" "$gpu"

echo "device-run: 1. CUDA tests"
timeout 240 "$bundle/run" zlpr_kernels_test --gtest_filter='Cuda*' > "$out/cuda_test.txt" 2>&1
row "CUDA tests" "$(grep -E '^\[ +(PASSED|FAILED|SKIPPED) +\] [0-9]+ tests?' "$out/cuda_test.txt" | tr '\n' ' ')"

echo "device-run: 2. zlpr_cuda_bench"
timeout 180 "$bundle/run" zlpr_cuda_bench 50 > "$out/cuda_bench.txt" 2>&1
row "zlpr_cuda_bench" "exit $?; $(wc -l < "$out/cuda_bench.txt") lines in cuda_bench.txt"

echo "device-run: 3. PyTorch"
if python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  PYTHONUNBUFFERED=1 timeout 200 python3 bench/torch_gpu.py > "$out/torch_gpu.txt" 2>&1
  row "bench/torch_gpu.py" "exit $?"
else
  row "bench/torch_gpu.py" "no PyTorch with CUDA on this machine"
fi

echo "device-run: 4. the server on the GPU"
# Starts a server with the given flags: PORT and SERVER_PID are set; false if it did not start.
servers=0
start_server() {
  servers=$((servers + 1))
  SERVER_LOG="$out/server.$servers.txt"
  "$bundle/run" zlpr-server --grpc_address=127.0.0.1:0 --metrics_address=127.0.0.1:0 "$@" \
    > "$SERVER_LOG" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 300); do
    PORT=$(grep -o 'gRPC on port [0-9]*' "$SERVER_LOG" | grep -o '[0-9]*$')
    METRICS_PORT=$(grep -o 'metrics on port [0-9]*' "$SERVER_LOG" | grep -o '[0-9]*$')
    [ -n "$PORT" ] && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  cat "$SERVER_LOG" >&2
  kill "$SERVER_PID" 2>/dev/null
  return 1
}
# The server's own account of its kernel calls so far: "calls rows seconds" summed over ops.
server_calls() {
  curl -s "http://127.0.0.1:$METRICS_PORT/metrics" | awk '
    /^zlpr_compute_duration_seconds_count/ { n += $2 }
    /^zlpr_compute_duration_seconds_sum/ { t += $2 }
    /^zlpr_batch_rows_sum/ { r += $2 }
    END { printf "%d %d %.9f\n", n, r, t }'
}
bench() {  # LABEL PORT ARGS...: one zlpr-bench run; its table line into the summary
  local label=$1 port=$2; shift 2
  local before after
  before=$(server_calls)
  timeout $((secs + 60)) "$bundle/run" zlpr-bench --target=127.0.0.1:"$port" --duration_s="$secs" \
    --warmup_s=1 --progress=false "$@" > "$out/bench.$label.txt" 2>&1
  after=$(server_calls)
  row "zlpr-bench $label" "$(grep '^| zlpr' "$out/bench.$label.txt" | head -1)"
  row "server side, $label" "$(echo "$before $after" | awk '{ n = $4 - $1; r = $5 - $2; t = $6 - $3;
    if (n > 0) printf "%d kernel calls, %.1f rows each, %.1f us each (backend: copies and kernels)", n, r / n, 1e6 * t / n }')"
}
for batching in on off; do
  flags=(--backend=cuda)
  [ "$batching" = off ] && flags+=(--max_batch_rows=1)
  if start_server "${flags[@]}"; then
    bench "predict-c64-batching-$batching" "$PORT" --rpc=predict --rows=1 --cols=1000 --channels=8 \
      --concurrency=64
    if [ "$batching" = on ]; then
      bench "loss_grad-256x16384-gpu" "$PORT" --rpc=loss_grad --rows=256 --cols=16384 \
        --concurrency=8
    fi
    kill -TERM "$SERVER_PID"; wait "$SERVER_PID"
  else
    row "server ${flags[*]}" "did not start: $(tail -1 "$SERVER_LOG")"
  fi
done
if start_server --backend=cpu; then
  bench "predict-c64-cpu" "$PORT" --rpc=predict --rows=1 --cols=1000 --channels=8 --concurrency=64
  bench "loss_grad-256x16384-cpu" "$PORT" --rpc=loss_grad --rows=256 --cols=16384 --concurrency=8
  kill -TERM "$SERVER_PID"; wait "$SERVER_PID"
fi

echo "device-run: 5. compute-sanitizer"
cs=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null | head -1 || true)
if [ -n "$cs" ]; then
  for tool in memcheck racecheck; do
    LD_LIBRARY_PATH="$bundle/lib" timeout "$san_secs" "$cs" --tool "$tool" --error-exitcode 99 \
      "$bundle/bin/zlpr_kernels_test" --gtest_filter='Cuda*:-*Fault*' > "$out/$tool.txt" 2>&1
    rc=$?
    row "compute-sanitizer $tool" "exit $rc; $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$out/$tool.txt" | tail -1)"
  done
else
  row "compute-sanitizer" "not on this machine"
fi

echo "device-run: 6. Nsight Compute"
ncu_bin=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null | head -1 || true)
if [ -n "$ncu_bin" ] && [ "${NCU:-1}" != 0 ]; then
  # Speed of light and occupancy of the kernels at the two shapes that matter most: the
  # labeler and the wide-row loss (256x131072), the warp-per-row loss (8192x1024).
  for pick in "2 ClusterRowKernel|LabelKernel" "1 WarpRowKernel|LabelKernel"; do
    set -- $pick
    LD_LIBRARY_PATH="$bundle/lib" timeout 90 "$ncu_bin" --clock-control none \
      --section SpeedOfLight --section Occupancy --section LaunchStats --section MemoryWorkloadAnalysis \
      -k "regex:$2" -c 16 "$bundle/bin/zlpr_cuda_bench" 1 "$1" > "$out/ncu.shape$1.txt" 2>&1
    row "ncu shape $1" "exit $?; $(grep -c 'Duration' "$out/ncu.shape$1.txt") kernels profiled"
  done
else
  row "ncu" "not on this machine"
fi

echo
echo "| check | result |"
echo "|---|---|"
printf '%s\n' "${rows[@]}"
