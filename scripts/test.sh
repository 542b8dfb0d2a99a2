#!/usr/bin/env bash
# Installs missing Debian packages, builds everything and runs every test (unit, command line,
# package consumers, include layers, the fuzz run, header self-containment, docs, benchmark smoke
# run). GPU tests are built where CUDA is and skip themselves (exit 77) on a machine without a GPU.
#   scripts/test.sh [CTEST_ARGS...]     e.g. scripts/test.sh -L pipeline
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh

ensure_packages "${INSTANTTENSOR_BUILD_PACKAGES[@]}" "${INSTANTTENSOR_TEST_PACKAGES[@]}"
configure build -DINSTANTTENSOR_BUILD_TESTS=ON -DINSTANTTENSOR_BUILD_BENCHMARKS=ON
jobs=$(nproc)
echo "building the library's tests, the command and the benchmarks ([done/total seconds])" >&2
cmake --build build -j "$jobs"
echo "checking that every public header compiles on its own" >&2
cmake --build build -j "$jobs" --target all_verify_interface_header_sets
echo "running the tests" >&2
ctest --test-dir build --output-on-failure -j "$jobs" "$@"
