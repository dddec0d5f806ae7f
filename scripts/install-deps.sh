#!/usr/bin/env bash
# Installs every build and test dependency of zlpr-serve, idempotently.
#   scripts/install-deps.sh           build + test dependencies (what `make test` needs)
#   scripts/install-deps.sh --bench   the same (PyTorch, the bench/ baseline, is now always in)
#   scripts/install-deps.sh --build   only what building the server and CLI needs (images)
# Debian packages come from apt (as root, or through sudo); Python test tools from pip.
set -euo pipefail


build_only=0
for arg in "$@"; do
  case "$arg" in
    --bench) ;;  # PyTorch (the bench/ baseline) is always installed now
    --build) build_only=1 ;;
    *) echo "unknown option: $arg" >&2; exit 2 ;;
  esac
done

packages=(
  build-essential cmake ninja-build pkg-config git ccache
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev prometheus-cpp-dev libhwy-dev nlohmann-json3-dev libboost-dev
  libgtest-dev libgmock-dev googletest libbenchmark-dev
  libssl-dev zlib1g-dev curl openssl
  python3 python3-dev python3-pip python3-numpy python3-venv python3-torch prometheus
  clang libclang-rt-14-dev clang-format clang-tidy libb64-0d
)
if [ "$build_only" = 1 ]; then
  packages=(build-essential cmake ninja-build pkg-config
            libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
            libabsl-dev prometheus-cpp-dev libhwy-dev nlohmann-json3-dev libboost-dev libgtest-dev libgmock-dev
            libbenchmark-dev
            libssl-dev zlib1g-dev)
fi

sudo_cmd=()
if [ "$(id -u)" != 0 ]; then sudo_cmd=(sudo); fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "install-deps: all Debian packages present"
fi

[ "$build_only" = 1 ] && exit 0

# Python test tools (the client suite in tests/python), for the python3 on PATH.
here=$(cd "$(dirname "$0")/.." && pwd)
if ! python3 -c "import grpc, grpc_tools, grpc_health, grpc_reflection, numpy, pytest, kubernetes_validate, yaml" 2>/dev/null; then
  echo "install-deps: installing Python test tools"
  python3 -m pip install --quiet --disable-pip-version-check -r "$here/tests/python/requirements.txt"
fi
