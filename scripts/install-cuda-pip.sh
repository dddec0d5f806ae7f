#!/usr/bin/env bash
# Installs a CUDA 13.0 compiler toolchain from PyPI into PREFIX, for building the CUDA backend
# where NVIDIA's packages or images are not available (the CUDA image's builder stage):
# nvcc, ptxas, nvlink and fatbinary (nvidia-cuda-nvcc), cicc and libdevice (nvidia-nvvm), the
# CUDA headers (nvidia-cuda-crt, nvidia-cuda-runtime), CUB/Thrust/libcu++ (nvidia-cuda-cccl) and
# the static CUDA runtime (libcudart_static.a, nvidia-cuda-runtime). The wheels unpack into one
# toolkit-shaped tree (bin, nvvm, include, lib); PREFIX/cuda links to it, so that
#   cmake -DCMAKE_CUDA_COMPILER=PREFIX/cuda/bin/nvcc ...
# builds as with a toolkit install. Needs python3 with venv (Debian: python3-venv).
#   scripts/install-cuda-pip.sh /opt/cuda-pip              # from the package index
#   scripts/install-cuda-pip.sh /opt/cuda-pip WHEEL_DIR    # offline, from `--download` wheels
#   scripts/install-cuda-pip.sh --download WHEEL_DIR        # fetch the wheels (e.g. on the host)
set -euo pipefail
usage="usage: install-cuda-pip.sh PREFIX [WHEEL_DIR] | --download WHEEL_DIR"
# One CUDA release, 13.0 (Update 2 for the compiler), each package at its version in it.
wheels=(
  "nvidia-cuda-nvcc==13.0.88"
  "nvidia-nvvm==13.0.88"
  "nvidia-cuda-crt==13.0.88"
  "nvidia-cuda-cccl==13.0.85"
  "nvidia-cuda-runtime==13.0.96"
)
if [ "${1:-}" = --download ]; then
  dir=${2:?$usage}
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --platform manylinux2014_x86_64 -d "$dir" "${wheels[@]}"
  exit 0
fi
prefix=${1:?$usage}
wheel_dir=${2:-}
python3 -m venv "$prefix/venv"
source=()
if [ -n "$wheel_dir" ] && ls "$wheel_dir"/nvidia_cuda_nvcc-*.whl >/dev/null 2>&1; then
  source=(--no-index --find-links "$wheel_dir")
fi
"$prefix/venv/bin/pip" install --quiet --disable-pip-version-check --no-deps "${source[@]}" \
  "${wheels[@]}"
root=$(echo "$prefix"/venv/lib/python3*/site-packages/nvidia/cu13)
[ -x "$root/bin/nvcc" ] && [ -x "$root/nvvm/bin/cicc" ] && [ -f "$root/lib/libcudart_static.a" ] \
  || { echo "install-cuda-pip: incomplete toolkit under $root" >&2; exit 1; }
# nvcc's profile links from lib64 (a toolkit install's name); the wheels put the libraries in lib,
# and ship libcudart only with its soname, where CMake's FindCUDAToolkit looks for libcudart.so.
ln -sfn lib "$root/lib64"
ln -sfn libcudart.so.13 "$root/lib/libcudart.so"
ln -sfn "$root" "$prefix/cuda"
"$prefix/cuda/bin/nvcc" --version | tail -1
