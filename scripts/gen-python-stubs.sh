#!/usr/bin/env bash
# Regenerates the Python package's committed gRPC stubs (python/src/zlpr/v1) from
# proto/zlpr/v1/zlpr.proto with protoc and grpc_python_plugin (Debian's protobuf-compiler and
# protobuf-compiler-grpc). python/tests/test_stubs.py fails when they are stale.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
protoc -I"$root/proto" --python_out="$root/python/src" --grpc_out="$root/python/src" \
  --plugin=protoc-gen-grpc="$(command -v grpc_python_plugin)" "$root/proto/zlpr/v1/zlpr.proto"
