#!/usr/bin/env bash
# Build prmon (HSF/prmon, the ATLAS/HSF process monitor) from source for benches/compare.py and benches/bench_node.py.
# prmon is not packaged for Debian. This needs cmake, a C++11 compiler and the Debian packages of its two
# dependencies (`apt-get install cmake g++ nlohmann-json3-dev libspdlog-dev`), so the git submodules holding its
# own copies are not needed.
#
#   tools/build-prmon.sh DIR            # clone into DIR/src, build in DIR/build, install into DIR/install
#   PRMON=DIR/install/bin/prmon make bench-node
#
# PRMON_SRC: where to clone from (default https://github.com/HSF/prmon.git; a local clone works too).
# PRMON_REF: the tag or commit to build (default v3.3.0, the version the numbers in docs/benchmarks.md used).
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 DIR   (prmon is cloned, built and installed below DIR)" >&2
    exit 2
fi
dir=$(mkdir -p "$1" && cd "$1" && pwd)
src=${PRMON_SRC:-https://github.com/HSF/prmon.git}
ref=${PRMON_REF:-v3.3.0}

for tool in git cmake make c++; do
    if ! command -v "$tool" >/dev/null; then
        echo "$0: $tool not found; on Debian: apt-get install git cmake make g++ nlohmann-json3-dev libspdlog-dev" >&2
        exit 1
    fi
done
for header in /usr/include/nlohmann/json.hpp /usr/include/spdlog/spdlog.h; do
    if [ ! -f "$header" ]; then
        echo "$0: $header not found; on Debian: apt-get install nlohmann-json3-dev libspdlog-dev" >&2
        exit 1
    fi
done

if [ ! -d "$dir/src/.git" ]; then
    git clone --quiet "$src" "$dir/src"
fi
git -C "$dir/src" fetch --quiet --tags "$src" || true
git -C "$dir/src" -c advice.detachedHead=false checkout --quiet "$ref"

# The packaged nlohmann-json and spdlog (USE_EXTERNAL_*=ON): configuring fails at once if either is missing, rather
# than falling back to submodules that a plain clone does not have.
cmake -S "$dir/src" -B "$dir/build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX="$dir/install" \
    -DUSE_EXTERNAL_NLOHMANN_JSON=ON -DUSE_EXTERNAL_SPDLOG=ON >"$dir/cmake.log" 2>&1 \
    || { echo "$0: cmake failed; see $dir/cmake.log" >&2; tail -20 "$dir/cmake.log" >&2; exit 1; }
make -C "$dir/build" -j"$(nproc)" >"$dir/make.log" 2>&1 \
    || { echo "$0: make failed; see $dir/make.log" >&2; tail -20 "$dir/make.log" >&2; exit 1; }
make -C "$dir/build" install >>"$dir/make.log" 2>&1
"$dir/install/bin/prmon" --help >/dev/null 2>&1 || true
echo "$dir/install/bin/prmon"
