#!/usr/bin/env bash
# The tree's C++ is clean: clang-format (.clang-format) leaves every file as it is, and
# clang-tidy (.clang-tidy) finds nothing in the sources the build compiles with g++ (CUDA files
# and the clang-only fuzzers aside: they are formatted, not tidied).
#   scripts/check-style.sh BUILD     BUILD: a build directory configured with compile commands
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:?usage: scripts/check-style.sh BUILD}

mapfile -t sources < <(git ls-files '*.h' '*.cc' '*.cu' '*.cuh')
if ! clang-format --dry-run -Werror "${sources[@]}"; then
  echo "check-style: run 'make format' (clang-format) and commit the result" >&2
  exit 1
fi
echo "check-style: clang-format: ${#sources[@]} files clean"

if [ ! -f "$build/compile_commands.json" ]; then
  echo "check-style: $build/compile_commands.json is missing (configure with" \
       "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON)" >&2
  exit 1
fi
# The project's own translation units (generated protobuf code and the Python extension's
# pybind11 module are not ours to tidy).
run-clang-tidy -p "$build" -quiet -j "$(nproc)" \
  "$(pwd)/(bench|cli|client|common|kernels|server)/[^/]*(/[^/]*)?\\.cc\$" > "$build/clang-tidy.log" 2>&1 \
  || true
if grep -E "(warning|error): " "$build/clang-tidy.log" | grep -v "^Suppressed" ; then
  echo "check-style: clang-tidy found the above (whole log: $build/clang-tidy.log)" >&2
  exit 1
fi
echo "check-style: clang-tidy: clean"
