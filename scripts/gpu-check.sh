#!/usr/bin/env bash
# On the GPU machine: runs the GPU tests, writes a 16 GB bf16 checkpoint shaped like an 8B model in
# 4 shards with an index, and measures side by side, cold (page cache dropped) and warm:
#   - Hugging Face safetensors.torch.load_file(device="cuda:0") for every shard,
#   - instanttensor load --device 0, and warm also as a group of one over NCCL (--ranks 1: pinned
#     staging, uploads into window buffers, device-to-device landing),
#   - the ceilings: pinned host→device copy (warm) and an O_DIRECT read of the same files (cold),
#   - what verifying digests and decrypting cost (instanttensor_bench_integrity --device 0).
# Prints one table: GB/s, ratio to safetensors, ratio to the ceiling, peak device memory, pinned
# staging, page-cache growth during the cold load. Needs root (drop_caches), python3 with torch
# and safetensors.
#   scripts/gpu-check.sh [--bin DIR] [--data DIR] [--size-mib N] [--runs N] [--skip-tests] [--warm-only]
# --bin takes binaries built elsewhere (scripts/gpu-bundle.sh makes .device/bin and .device/lib);
# without it the script builds into build-gpu here.
set -euo pipefail
cd "$(dirname "$0")/.."

bin="" data=/tmp/instanttensor-gpu-check size_mib=16384 runs=2 tests=1 cold=1
while [ $# -gt 0 ]; do
  case $1 in
    --bin) bin=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --size-mib) size_mib=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --skip-tests) tests=0; shift ;;
    --warm-only) cold=0; shift ;;
    *) echo "usage: scripts/gpu-check.sh [--bin DIR] [--data DIR] [--size-mib N] [--runs N] [--skip-tests] [--warm-only]" >&2; exit 2 ;;
  esac
done

if [ -z "$bin" ]; then
  source scripts/lib/common.sh
  BUILD_TYPE=Release configure build-gpu -DINSTANTTENSOR_WITH_CUDA=ON
  cmake --build build-gpu -j "$(nproc)" --target instanttensor_cli instanttensor_gpu_test instanttensor_bench_ceilings \
    instanttensor_bench_integrity
  bin=build-gpu/bin
else
  export LD_LIBRARY_PATH="$bin/../lib:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
cli=$bin/instanttensor

echo "== machine"
nvidia-smi --query-gpu=name,memory.total,pcie.link.gen.current,pcie.link.width.current --format=csv,noheader || true
echo "kernel $(uname -r), $(nproc) cores, commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"

if [ "$tests" = 1 ]; then
  echo "== GPU tests"
  INSTANTTENSOR_FIXTURES_DIR=$PWD/tests/fixtures "$bin/instanttensor_gpu_test"
fi

echo "== checkpoint"
mkdir -p "$data"
ckpt=$data/ckpt-$size_mib
[ -f "$ckpt/model.safetensors.index.json" ] || "$cli" sample "$ckpt" --size-mib "$size_mib" --shards 4
sync

if [ "$tests" = 1 ]; then
  echo "== group path bit-exact on the checkpoint (hash through a group of one over NCCL = hash through the plain loader)"
  "$cli" hash --device 0 "$ckpt" >"$data/hash.single"
  "$cli" hash --device 0 --ranks 1 --window-mib 64 "$ckpt" >"$data/hash.group"
  cmp "$data/hash.single" "$data/hash.group" && echo "identical: $(wc -l <"$data/hash.group") tensors"
fi

cached_kib() { awk '/^Cached:/ {print $2}' /proc/meminfo; }
drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }

hf_load() {  # prints GB/s of safetensors.torch.load_file over every shard
  python3 - "$ckpt" <<'PY'
import glob, sys, time, torch
from safetensors.torch import load_file
files = sorted(glob.glob(sys.argv[1] + "/*.safetensors"))
torch.zeros(1, device="cuda:0"); torch.cuda.synchronize()
start, n = time.perf_counter(), 0
for f in files:
    d = load_file(f, device="cuda:0")
    n += sum(t.numel() * t.element_size() for t in d.values())
    del d
torch.cuda.synchronize()
print(f"{n / (time.perf_counter() - start) / 1e9:.2f}")
PY
}

it_load() {  # prints the JSON report of instanttensor load --device 0
  "$cli" load --device 0 --json "$@" "$ckpt"
}
json() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }
best() { printf '%s\n' "$@" | sort -g | tail -n 1; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }

echo "== GPUDirect Storage (expected to be refused where nvidia-fs is missing)"
"$cli" load --device 0 --backend gds "$ckpt" || true

echo "== ceilings"
ceil=$("$bin/instanttensor_bench_ceilings" "$ckpt")
echo "$ceil"
h2d=$(echo "$ceil" | sed -n 's/^pinned_h2d_gbps=//p')
odirect=$(echo "$ceil" | sed -n 's/^odirect_read_gbps=//p')

echo "== cold"
hf_cold=(0) it_cold=(0) it_cold_json='{"peak_device_bytes": 0, "staging_bytes": 0}' growth_kib=0
[ "$cold" = 1 ] && hf_cold=() it_cold=()
for r in $(seq $(( cold ? runs : 0 ))); do
  drop; hf_cold+=("$(hf_load)")
  drop; before=$(cached_kib)
  it_cold_json=$(it_load); after=$(cached_kib)
  it_cold+=("$(json "$it_cold_json" gbps)")
  growth_kib=$(( after - before > growth_kib ? after - before : growth_kib ))
  echo "run $r: safetensors ${hf_cold[-1]} GB/s, instanttensor ${it_cold[-1]} GB/s, page cache +$(( (after - before) / 1024 )) MiB"
done
echo "$it_cold_json"

echo "== warm"
cat "$ckpt"/*.safetensors >/dev/null
hf_warm=() it_warm=() it_warm_json=""
for r in $(seq "$runs"); do
  hf_warm+=("$(hf_load)")
  it_warm_json=$(it_load)
  it_warm+=("$(json "$it_warm_json" gbps)")
  echo "run $r: safetensors ${hf_warm[-1]} GB/s, instanttensor ${it_warm[-1]} GB/s"
done
echo "$it_warm_json"
echo "sweep (warm, GB/s, one run each):"
for args in "--copy-streams 1" "--staging-mib 256 --slot-mib 8" "--staging-mib 64 --slot-mib 2" "--backend pread"; do
  # shellcheck disable=SC2086
  printf '  %-32s %s %s\n' "$args" "$(json "$(it_load $args)" gbps)" "$(json "$(it_load $args)" gbps)"
done

echo "group of one over NCCL (warm):"
it_group=() it_group_json='{"peak_device_bytes": 0, "staging_bytes": 0}'
for r in $(seq "$runs"); do
  it_group_json=$(it_load --ranks 1) && it_group+=("$(json "$it_group_json" gbps)") || it_group+=(0)
  echo "run $r: ${it_group[-1]} GB/s"
done

echo "== verifying: a plain load and verified ones side by side (docs/benchmarks.md#verify)"
"$bin/instanttensor_bench_integrity" --device 0 --runs "$runs" --threads 2 --threads 4 --decrypt-threads 8 --decrypt-threads 15 $([ "$cold" = 1 ] || echo --warm-only) "$ckpt"

hfc=$(best "${hf_cold[@]}") itc=$(best "${it_cold[@]}") hfw=$(best "${hf_warm[@]}") itw=$(best "${it_warm[@]}")
itg=$(best "${it_group[@]}")
mib() { echo $(( $1 / 1048576 )); }
echo
echo "== results (best of $runs; $(json "$it_warm_json" bytes) bytes in $(json "$it_warm_json" tensors) tensors, 4 shards)"
printf '%-6s %-22s %9s %14s %12s %12s %12s %14s\n' cache path GB/s vs_safetensors vs_ceiling peak_dev_MiB pinned_MiB cache_growth
printf '%-6s %-22s %9.2f %14s %12s %12s %12s %14s\n' cold "O_DIRECT read ceiling" "$odirect" - 1.00 - - -
printf '%-6s %-22s %9.2f %14s %12.2f %12s %12s %14s\n' cold safetensors "$hfc" 1.00 "$(ratio "$hfc" "$odirect")" - - -
printf '%-6s %-22s %9.2f %14.2f %12.2f %12s %12s %14s\n' cold instanttensor "$itc" "$(ratio "$itc" "$hfc")" \
  "$(ratio "$itc" "$odirect")" "$(mib "$(json "$it_cold_json" peak_device_bytes)")" \
  "$(mib "$(json "$it_cold_json" staging_bytes)")" "$(( growth_kib / 1024 )) MiB"
printf '%-6s %-22s %9.2f %14s %12s %12s %12s %14s\n' warm "pinned H2D ceiling" "$h2d" - 1.00 - - -
printf '%-6s %-22s %9.2f %14s %12.2f %12s %12s %14s\n' warm safetensors "$hfw" 1.00 "$(ratio "$hfw" "$h2d")" - - -
printf '%-6s %-22s %9.2f %14.2f %12.2f %12s %12s %14s\n' warm instanttensor "$itw" "$(ratio "$itw" "$hfw")" \
  "$(ratio "$itw" "$h2d")" "$(mib "$(json "$it_warm_json" peak_device_bytes)")" \
  "$(mib "$(json "$it_warm_json" staging_bytes)")" -
printf '%-6s %-22s %9.2f %14.2f %12.2f %12s %12s %14s\n' warm "instanttensor, NCCL x1" "$itg" "$(ratio "$itg" "$hfw")" \
  "$(ratio "$itg" "$h2d")" "$(mib "$(json "$it_group_json" peak_device_bytes)")" \
  "$(mib "$(json "$it_group_json" staging_bytes)")" -
echo "device ring $(mib "$(json "$it_warm_json" ring_bytes)") MiB; targets: warm >= 0.85 x H2D, cold >= 0.95 x O_DIRECT, cache growth <= 64 MiB"
