#!/usr/bin/env bash
# Collects built executables and the shared libraries they link (all but the C library, the C++
# runtime and the NVIDIA driver, which the GPU machine has) into one folder that can be carried
# to a GPU machine lacking gRPC, Protobuf, Abseil or prometheus-cpp. Binaries built on Debian 12
# run on newer distributions.
#   scripts/device-bundle.sh OUTDIR EXECUTABLE...      then there: OUTDIR/run NAME [ARGS...]
#   scripts/device-bundle.sh --gpu-checks [BUILD]      the bundle scripts/device-run.sh uses
set -euo pipefail
if [ "${1:-}" = --gpu-checks ]; then
  build=${2:-build}
  exec "$0" .devbundle "$build/kernels/zlpr_kernels_test" "$build/bench/zlpr_cuda_bench" \
    "$build/server/zlpr-server" "$build/bench/zlpr-bench"
fi
[ $# -ge 2 ] || { echo "usage: $0 OUTDIR EXECUTABLE... | --gpu-checks [BUILD]" >&2; exit 2; }
out=$1; shift
rm -rf "$out"
mkdir -p "$out/bin" "$out/lib"
for exe in "$@"; do
  [ -x "$exe" ] || { echo "device-bundle: not an executable: $exe" >&2; exit 2; }
  cp -L "$exe" "$out/bin/"
  strip --strip-all "$out/bin/$(basename "$exe")"  # a device call carries 64 MiB at most
  ldd "$exe" | awk '/=> \//{print $3}' | while read -r lib; do
    case "$(basename "$lib")" in
      libc.so*|libm.so*|libpthread.so*|libdl.so*|librt.so*|ld-linux*|libstdc++.so*|libgcc_s.so*) ;;
      libcuda.so*|libnvidia*) ;;
      *) cp -Ln "$lib" "$out/lib/" ;;
    esac
  done
done
cat > "$out/run" <<'RUN'
#!/usr/bin/env bash
here=$(cd "$(dirname "$0")" && pwd)
exe=$1; shift
LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$here/bin/$exe" "$@"
RUN
chmod +x "$out/run"
echo "device-bundle: $(du -sh "$out" | cut -f1) in $out"
