#!/usr/bin/env bash
# Installs the project's client package into a temporary prefix, then configures, builds and
# runs client/consumer against it: proof that find_package(zlpr CONFIG) works outside the tree.
set -euo pipefail
build=$1 consumer=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/prefix" >/dev/null
cmake -S "$consumer" -B "$tmp/build" -G Ninja -DCMAKE_PREFIX_PATH="$tmp/prefix" >/dev/null
cmake --build "$tmp/build" >/dev/null
"$tmp/build/consumer"
