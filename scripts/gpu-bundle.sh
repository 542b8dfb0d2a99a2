#!/usr/bin/env bash
# Builds, on this machine, what scripts/gpu-check.sh runs on the GPU machine, into .device/
# (ignored by git), for `scripts/gpu-check.sh --bin .device/bin` there:
#   bin/     the command, the GPU tests and the benchmarks of ceilings and integrity
#   lib/     the shared libraries these and the Python module link that the GPU machine lacks (it
#            has no liburing and no compiled Boost.JSON)
#   wheels/  this project's Python package built for the GPU machine's Python (3.12; the module is
#            built here with a Python 3.12, pyenv's if there is one), and the peers fastsafetensors
#            and the Run:ai streamer
#   peer/    InstantTensor (PyPI `instanttensor` 0.2.x), apart: it is imported as `instanttensor` too
# The peers' own needs (torch, numpy, typer, humanize) are on the GPU machine already.
#   scripts/gpu-bundle.sh [--python PYTHON3.12]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh

python=""
while [ $# -gt 0 ]; do
  case $1 in
    --python) python=$2; shift 2 ;;
    *) echo "usage: scripts/gpu-bundle.sh [--python PYTHON3.12]" >&2; exit 2 ;;
  esac
done
if [ -z "$python" ]; then
  for candidate in python3.12 "$HOME"/.pyenv/versions/3.12*/bin/python3.12; do  # (pyenv's shim answers but may not run)
    "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null && { python=$candidate; break; }
  done
fi
[ -n "$python" ] || { echo "gpu-bundle: needs a Python 3.12 to build the module for the GPU machine (--python)" >&2; exit 1; }

ensure_packages "${INSTANTTENSOR_BUILD_PACKAGES[@]}" "${INSTANTTENSOR_TEST_PACKAGES[@]}"
[ -x /usr/local/cuda/bin/nvcc ] || { echo "gpu-bundle: needs the CUDA toolkit in /usr/local/cuda" >&2; exit 1; }
# Without libcurl: the GPU machine measures local loads, and its libcurl is not known.
BUILD_TYPE=Release configure build-gpu -DINSTANTTENSOR_WITH_CUDA=ON -DINSTANTTENSOR_WITH_URING=ON -DINSTANTTENSOR_WITH_CURL=OFF
cmake --build build-gpu -j "$(nproc)" --target instanttensor_cli instanttensor_gpu_test instanttensor_bench_ceilings \
  instanttensor_bench_integrity

rm -rf .device && mkdir -p .device/bin .device/lib .device/wheels .device/peer
cp build-gpu/bin/instanttensor build-gpu/bin/instanttensor_gpu_test build-gpu/bin/instanttensor_bench_ceilings \
  build-gpu/bin/instanttensor_bench_integrity .device/bin/
strip .device/bin/*

# The Python package, built by its own Python 3.12 in a virtual environment under build/.
[ -x build/venv-gpu/bin/python ] || "$python" -m venv build/venv-gpu
build/venv-gpu/bin/pip install -q "nanobind>=2.4" "scikit-build-core>=0.10"
PATH=/usr/local/cuda/bin:$PATH build/venv-gpu/bin/pip wheel -q --no-build-isolation --no-deps -w .device/wheels \
  -C cmake.define.INSTANTTENSOR_WITH_CURL=OFF -C build-dir=build/python-gpu .

# The peers, as wheels for the GPU machine's Python.
download() {
  local into=$1
  shift
  "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$into" "$@"
}
download .device/wheels "fastsafetensors==0.5.*" "runai-model-streamer==0.17.*"
download .device/peer "instanttensor==0.2.*"

# Every library the binaries and the module link that is neither glibc's, the C++ runtime's nor CUDA's.
module=$(mktemp -d)
unzip -q -o .device/wheels/instanttensor-*.whl 'instanttensor/_core*.so' -d "$module"
ldd .device/bin/* "$module"/instanttensor/_core*.so | awk '/=> \// {print $3}' | sort -u |
  grep -Ev '/(libc|libm|libpthread|libdl|librt|libgcc_s|libstdc\+\+|libcuda|libcudart|libnccl)[.-]' |
  xargs -r cp -L -t .device/lib/
rm -rf "$module"
du -sh .device
