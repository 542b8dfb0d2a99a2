#!/usr/bin/env bash
# On the GPU machine: runs the GPU tests (C++ and Python), writes a 16 GB bf16 checkpoint shaped
# like an 8B model in 4 shards with an index (and with --moe one file of 100,632 small tensors laid
# out as MoE experts), and measures every loader side by side, cold (page cache dropped) and warm,
# with bench/python_side_by_side.py --device cuda:0, each until every tensor is in device memory
# the caller keeps:
#   - the ceilings: pinned host→device copy (warm) and an O_DIRECT read of the same files (cold),
#   - Hugging Face safetensors, fastsafetensors (nogds), the Run:ai streamer, InstantTensor (its
#     defaults, and BUFFERED as its README advises for warm loads), instanttensor's Python API,
#     `instanttensor load --device 0` and the same as a group of one over NCCL (--ranks 1),
#   - the page cache's growth during a cold `instanttensor load`,
#   - warm `instanttensor load --device 0` under other staging, slot, stream and backend settings,
#     with where each one's time went (bench/load_variants.py),
#   - with --integrity, what verifying digests and decrypting cost (instanttensor_bench_integrity).
# The side-by-side table comes last: median and range of --runs runs, ratios to safetensors and to
# the ceiling, and where the command's time went in those runs (LoadStats::times: the storage or
# the copy engine idle, staging or the device ring full, the loader's thread landing reads).
# Needs root (drop_caches) and python3 with torch and safetensors.
# --budget-s is the seconds the whole script aims at (default 540, under the device tool's 10
# minutes a command): what the tests, checkpoints, ceilings and variants leave goes to the side by
# side (split between the checkpoints with --moe), which runs as many of --runs rounds of every
# loader as fit (a third for warm; one at least, so a budget spent early is overrun) and writes its
# table after every round: into $OUT when it is set (the device tool brings that folder back, also
# from a command that ran out of time), else into --data.
#   scripts/gpu-check.sh [--bin DIR] [--data DIR] [--size-mib N] [--runs N] [--budget-s S] [--skip-tests] [--moe] [--integrity]
# --bin takes what scripts/gpu-bundle.sh made (.device/bin beside .device/lib, .device/wheels and
# .device/peer); without it the script builds the command into build-gpu here and measures the
# loaders already installed.
set -euo pipefail
cd "$(dirname "$0")/.."

bin="" data=/tmp/instanttensor-gpu-check size_mib=16384 runs=3 budget=540 tests=1 moe=0 integrity=0
while [ $# -gt 0 ]; do
  case $1 in
    --bin) bin=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --size-mib) size_mib=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --budget-s) budget=$2; shift 2
      [[ $budget =~ ^[0-9]+$ ]] || { echo "gpu-check: --budget-s takes whole seconds, not '$budget'" >&2; exit 2; } ;;
    --skip-tests) tests=0; shift ;;
    --moe) moe=1; shift ;;
    --integrity) integrity=1; shift ;;
    *) echo "usage: scripts/gpu-check.sh [--bin DIR] [--data DIR] [--size-mib N] [--runs N] [--budget-s S] [--skip-tests] [--moe] [--integrity]" >&2
       exit 2 ;;
  esac
done

peer=""
if [ -z "$bin" ]; then
  source scripts/lib/common.sh
  BUILD_TYPE=Release configure build-gpu -DINSTANTTENSOR_WITH_CUDA=ON
  cmake --build build-gpu -j "$(nproc)" --target instanttensor_cli instanttensor_gpu_test instanttensor_bench_ceilings \
    instanttensor_bench_integrity
  bin=build-gpu/bin
else
  bundle=$(cd "$bin/.." && pwd)
  export LD_LIBRARY_PATH="$bundle/lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  # This project's package and the peers beside it; InstantTensor apart (it is `instanttensor` too).
  site=$data/site
  mkdir -p "$site" "$data/peer"
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" "$bundle"/wheels/*.whl
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$data/peer" "$bundle"/peer/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  peer=$data/peer
fi
cli=$bin/instanttensor
section() { echo "== $* (at ${SECONDS} s)"; }  # the seconds tell the next session what fits in its time on the machine

section machine
nvidia-smi --query-gpu=name,memory.total,pcie.link.gen.current,pcie.link.width.current --format=csv,noheader || true
echo "kernel $(uname -r), $(nproc) cores, commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
python3 -c "import torch, safetensors; print('torch', torch.__version__, 'safetensors', safetensors.__version__)"

# A failing test or check is said and makes the exit status 1, but the measurements still run: the
# machine is lent for minutes, and a second try costs a new start.
failed=0
fail() { echo "FAILED: $*" >&2; failed=1; }

if [ "$tests" = 1 ]; then
  section "GPU tests"
  INSTANTTENSOR_FIXTURES_DIR=$PWD/tests/fixtures "$bin/instanttensor_gpu_test" || fail "the C++ GPU tests"
  if python3 -c "import instanttensor" 2>/dev/null; then
    python3 -m pytest -q -m gpu -p no:cacheprovider tests/python || fail "the Python GPU tests"
  else
    fail "the Python package is not installed here: its GPU tests did not run"
  fi
fi

section "checkpoints"
mkdir -p "$data"
ckpt=$data/ckpt-$size_mib
[ -f "$ckpt/model.safetensors.index.json" ] || "$cli" sample "$ckpt" --size-mib "$size_mib" --shards 4
moe_ckpt=$data/moe-4096
[ "$moe" = 0 ] || [ -f "$moe_ckpt/model.safetensors.index.json" ] ||
  "$cli" sample "$moe_ckpt" --size-mib 4096 --experts 1240 --shards 1
sync

if [ "$tests" = 1 ]; then
  section "group path bit-exact on the checkpoint (hash through a group of one over NCCL = hash through the plain loader)"
  if ! "$cli" hash --device 0 "$ckpt" >"$data/hash.single"; then fail "hash --device 0"
  elif ! "$cli" hash --device 0 --ranks 1 --window-mib 64 "$ckpt" >"$data/hash.group"; then fail "hash --device 0 --ranks 1"
  elif cmp "$data/hash.single" "$data/hash.group"; then echo "identical: $(wc -l <"$data/hash.group") tensors"
  else fail "the group path's hashes differ from the plain loader's"; fi
fi

section "GPUDirect Storage (expected to be refused where nvidia-fs is missing)"
"$cli" load --device 0 --backend gds "$ckpt" || true

section "ceilings"
ceil=$("$bin/instanttensor_bench_ceilings" "$ckpt") || fail "the ceilings"
echo "$ceil"
h2d=$(echo "$ceil" | sed -n 's/^pinned_h2d_gbps=//p')
odirect=$(echo "$ceil" | sed -n 's/^odirect_read_gbps=//p')
ceilings=()  # the side by side's column of ratios, where both ceilings were measured
if awk -v w="$h2d" -v c="$odirect" 'BEGIN { exit !(w + 0 > 0 && c + 0 > 0) }'; then ceilings=(--ceilings "$h2d,$odirect"); fi

section "page cache during a cold load (instanttensor load --device 0)"
sync; echo 3 >/proc/sys/vm/drop_caches
before=$(awk '/^Cached:/ {print $2}' /proc/meminfo)
cold_json=$("$cli" load --device 0 --json "$ckpt") || fail "load --device 0, cold"
after=$(awk '/^Cached:/ {print $2}' /proc/meminfo)
echo "$cold_json"
echo "page cache +$(( (after - before) / 1024 )) MiB (target: at most 64)"

if [ "$integrity" = 1 ]; then
  section "verifying: a plain load and verified ones side by side (docs/benchmarks.md#verify)"
  "$bin/instanttensor_bench_integrity" --device 0 --runs "$runs" --threads 2 --threads 4 --decrypt-threads 8 \
    --decrypt-threads 15 "$ckpt" || fail "the integrity benchmark"
fi

section "warm loads under other options, and where their time goes (bench/load_variants.py)"
python3 bench/load_variants.py "$ckpt" --device 0 --bin "$bin" --runs 3 --budget-s 60 "defaults=" \
  "one copy stream=--copy-streams 1" "64 MiB in 2 MiB slots=--staging-mib 64 --slot-mib 2" \
  "64 MiB in 4 MiB slots=--staging-mib 64 --slot-mib 4" "256 MiB in 4 MiB slots=--staging-mib 256 --slot-mib 4" \
  "256 MiB in 8 MiB slots=--staging-mib 256 --slot-mib 8" "pread=--backend pread" | tee "${OUT:-$data}/variants.md" ||
  fail "a variant of the warm load"

side_by_side() {  # CHECKPOINT SECONDS: every loader, cold and warm, the table last
  # A loader that fails is in the table as failed; the next checkpoint is still measured.
  python3 bench/python_side_by_side.py "$1" --device cuda:0 --runs "$runs" --budget-s "$(( $2 > 1 ? $2 : 1 ))" \
    --bin "$bin" "${ceilings[@]}" ${peer:+--peer-path "$peer"} --table-file "${OUT:-$data}/side-by-side-$(basename "$1").md" ||
    fail "a loader of the side by side of $1"
}
section "every loader side by side"
left=$(( budget - SECONDS ))
echo "$left s of the budget left for it"
[ "$moe" = 0 ] || { side_by_side "$moe_ckpt" $(( left / 2 )); left=$(( budget - SECONDS )); }
side_by_side "$ckpt" "$left"
echo "targets: warm >= 0.92 x the pinned ceiling, cold >= 0.95 x O_DIRECT and >= the best peer, page cache <= 64 MiB"
exit "$failed"
