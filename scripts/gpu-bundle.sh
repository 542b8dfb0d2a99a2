#!/usr/bin/env bash
# Builds, on this machine, what scripts/gpu-check.sh runs on the GPU machine, into .device/
# (ignored by git): the command, the GPU tests and the ceilings benchmark in bin/, and in lib/ the
# shared libraries the GPU machine lacks (it has no liburing and no compiled Boost.JSON).
#   scripts/gpu-bundle.sh      then carry .device to the GPU machine and run scripts/gpu-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh

ensure_packages "${INSTANTTENSOR_BUILD_PACKAGES[@]}" "${INSTANTTENSOR_TEST_PACKAGES[@]}"
[ -x /usr/local/cuda/bin/nvcc ] || { echo "gpu-bundle: needs the CUDA toolkit in /usr/local/cuda" >&2; exit 1; }
# Without libcurl: the GPU machine measures local loads, and its libcurl is not known.
BUILD_TYPE=Release configure build-gpu -DINSTANTTENSOR_WITH_CUDA=ON -DINSTANTTENSOR_WITH_URING=ON -DINSTANTTENSOR_WITH_CURL=OFF
cmake --build build-gpu -j "$(nproc)" --target instanttensor_cli instanttensor_gpu_test instanttensor_bench_ceilings \
  instanttensor_bench_integrity

rm -rf .device && mkdir -p .device/bin .device/lib
cp build-gpu/bin/instanttensor build-gpu/bin/instanttensor_gpu_test build-gpu/bin/instanttensor_bench_ceilings \
  build-gpu/bin/instanttensor_bench_integrity .device/bin/
strip .device/bin/*
# Every library the binaries link that is neither glibc's, the C++ runtime's nor CUDA's.
ldd .device/bin/* | awk '/=> \// {print $3}' | sort -u |
  grep -Ev '/(libc|libm|libpthread|libdl|librt|libgcc_s|libstdc\+\+|libcuda|libcudart|libnccl)[.-]' |
  xargs -r cp -L -t .device/lib/
du -sh .device
