#!/usr/bin/env bash
# Installs missing Debian packages, builds everything and runs every test (unit, command line,
# package consumers, include layers, the fuzz run, header self-containment, docs, benchmark smoke
# run), then the Python package's tests (pytest, in build/venv). GPU tests are built where CUDA is
# and skip themselves (exit 77; pytest: skipped) on a machine without a GPU.
#   scripts/test.sh [CTEST_ARGS...]     e.g. scripts/test.sh -L pipeline (CTEST_ARGS skip pytest)
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
[ $# -eq 0 ] || exit 0
echo "the Python package" >&2
ensure_python_env
echo "running the Python tests" >&2
build/venv/bin/python -m pytest -q tests/python
