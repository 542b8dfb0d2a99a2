#!/usr/bin/env bash
# Installs missing Debian packages, builds the instanttensor command and loads a checkpoint:
# the PATHs given (files, index.json or directories), or else a sample 4-shard checkpoint it
# writes to build/demo-checkpoint. Loads to GPU 0 when there is one (and CUDA in
# /usr/local/cuda), else to host memory; prints the tensor table and what the load did.
#   scripts/demo.sh [PATH...]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh

ensure_packages "${INSTANTTENSOR_BUILD_PACKAGES[@]}"
configure build -DINSTANTTENSOR_BUILD_TESTS=OFF -DINSTANTTENSOR_BUILD_BENCHMARKS=OFF
echo "building the instanttensor command ([done/total seconds])" >&2
cmake --build build -j "$(nproc)" --target instanttensor_cli
cli=build/bin/instanttensor

paths=("$@")
if [ ${#paths[@]} -eq 0 ]; then
  sample=build/demo-checkpoint
  if [ ! -f "$sample/model.safetensors.index.json" ]; then
    echo "writing a sample checkpoint to $sample" >&2
    "$cli" sample "$sample" --shards 4 --size-mib 64
  fi
  paths=("$sample")
fi

# The tensor table (first rows and the summary), then the load itself: to GPU 0 when this
# machine has one and the build has CUDA, else to host memory.
"$cli" inspect "${paths[@]}" > build/demo-inspect.txt
head -n 8 build/demo-inspect.txt
echo "..."
tail -n 3 build/demo-inspect.txt
echo
"$cli" load --device auto "${paths[@]}"
