#!/usr/bin/env bash
# Installs missing Debian packages, builds everything and runs every test (unit, command line,
# package consumers, the 60 s fuzz run, header self-containment, benchmark smoke run).
# GPU tests skip themselves (exit 77) on a machine without a GPU.
#   scripts/test.sh [CTEST_ARGS...]     e.g. scripts/test.sh -L format
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh

ensure_packages "${INSTANTTENSOR_BUILD_PACKAGES[@]}" "${INSTANTTENSOR_TEST_PACKAGES[@]}"
configure build -DINSTANTTENSOR_BUILD_TESTS=ON -DINSTANTTENSOR_BUILD_BENCHMARKS=ON
jobs=$(nproc)
cmake --build build -j "$jobs"
cmake --build build -j "$jobs" --target all_verify_interface_header_sets
ctest --test-dir build --output-on-failure -j "$jobs" "$@"
