#!/usr/bin/env bash
# Installs missing Debian packages, builds the instanttensor command and loads a checkpoint:
# the PATHs given (files, index.json or directories), or else a sample 4-shard checkpoint it
# writes to build/demo-checkpoint. Prints the tensor table and the XXH3 of every tensor's bytes.
#   scripts/demo.sh [PATH...]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh

ensure_packages "${INSTANTTENSOR_BUILD_PACKAGES[@]}"
configure build -DINSTANTTENSOR_BUILD_TESTS=OFF -DINSTANTTENSOR_BUILD_BENCHMARKS=OFF
cmake --build build -j "$(nproc)" --target instanttensor_cli
cli=build/bin/instanttensor

paths=("$@")
if [ ${#paths[@]} -eq 0 ]; then
  sample=build/demo-checkpoint
  [ -f "$sample/model.safetensors.index.json" ] || "$cli" sample "$sample" --shards 4 --size-mib 64
  paths=("$sample")
fi

"$cli" inspect "${paths[@]}"
echo
start=$(date +%s%N)
"$cli" hash "${paths[@]}" > build/demo-hashes.txt
ms=$(( ($(date +%s%N) - start) / 1000000 ))
echo "read and hashed $(wc -l < build/demo-hashes.txt) tensors in ${ms} ms; hashes in build/demo-hashes.txt:"
head -n 5 build/demo-hashes.txt
