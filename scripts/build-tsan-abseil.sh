#!/usr/bin/env bash
# Builds a ThreadSanitizer-instrumented copy of the abseil that is installed (same Debian source
# package and version, same patches and options), as shared libraries with the same SONAMEs,
# into OUTDIR/lib. Run the TSan tests with LD_LIBRARY_PATH=OUTDIR/lib: the process (our code
# and gRPC, whose grpc_core::Mutex is an absl::Mutex) then locks through instrumented
# absl::Mutex, which TSan can see. Debian's own build is not instrumented, so without this every
# absl::Mutex-guarded access reads to TSan as a race.
#   scripts/build-tsan-abseil.sh OUTDIR        (idempotent: does nothing when OUTDIR is built)
set -euo pipefail
out=$(mkdir -p "$1" && cd "$1" && pwd)
version=$(dpkg-query -W -f='${Version}' libabsl-dev)
stamp="$out/.built-$version"
[ -f "$stamp" ] && exit 0

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Source packages come from the Debian mirror apt is configured with: its deb entries (one-line
# or deb822), turned into deb-src entries in a private apt configuration.
mkdir -p "$work/apt/lists/partial" "$work/apt/sources"
{
  cat /etc/apt/sources.list 2>/dev/null || true
  cat /etc/apt/sources.list.d/*.list 2>/dev/null || true
} | awk '$1 == "deb" && $0 !~ /security/ { $1 = "deb-src"; print }' > "$work/apt/sources/src.list"
for f in /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] || continue
  # deb822 stanzas: keep those that serve the main archive (not security), as deb-src.
  awk 'BEGIN { RS = ""; ORS = "\n\n" } $0 !~ /security/ { sub(/Types:[^\n]*/, "Types: deb-src"); print }' "$f"
done > "$work/apt/sources/src.sources"
if ! grep -qE '^(deb-src |Types: *deb-src)' "$work/apt/sources/src.list" "$work/apt/sources/src.sources"; then
  echo "build-tsan-abseil: apt has no Debian mirror configured (no deb entries in /etc/apt): cannot fetch abseil's source" >&2
  exit 1
fi
apt_opts=(-o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts="$work/apt/sources"
          -o Dir::State::Lists="$work/apt/lists" -o APT::Sandbox::User=root)
echo "build-tsan-abseil: fetching the source of abseil $version"
apt-get "${apt_opts[@]}" -qq update >/dev/null
(cd "$work" && apt-get "${apt_opts[@]}" -qq source "abseil=$version" >/dev/null 2>&1) || {
  echo "build-tsan-abseil: apt-get source abseil=$version failed" >&2
  exit 1
}
src=$(find "$work" -maxdepth 1 -type d -name 'abseil-*' | head -1)
[ -n "$src" ] || { echo "build-tsan-abseil: no source tree unpacked" >&2; exit 1; }

# Debian's options (debian/rules): C++17, shared libraries; plus -fsanitize=thread.
echo "build-tsan-abseil: building with -fsanitize=thread"
cmake -S "$src" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_STANDARD=17 \
  -DBUILD_SHARED_LIBS=ON -DABSL_PROPAGATE_CXX_STD=ON -DCMAKE_INSTALL_PREFIX="$out" \
  -DCMAKE_CXX_FLAGS="-fsanitize=thread" -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=thread" >/dev/null
cmake --build "$work/build" -j "$(nproc)" >/dev/null
cmake --install "$work/build" >/dev/null
rm -rf "$out/include"  # the headers are the installed ones; only the libraries differ
touch "$stamp"
echo "build-tsan-abseil: $out/lib"
