#!/usr/bin/env python3
"""Loads one checkpoint from an HTTP server on this machine, side by side with the ceiling.

    bench/remote_side_by_side.py CHECKPOINT_DIR [--runs 5] [--connections 16] [--slot-mib 4]
                                 [--bin build/bin] [--work /tmp/remote-bench]

nginx (tests/remote/servers.py) serves CHECKPOINT_DIR (an index and its shards) on 127.0.0.1, its
files in the page cache, so that the figures are those of the server, loopback and client. Each
run times, in one process each, alternating run by run:
  ceiling            instanttensor_bench_remote_ceiling: libcurl fetching every byte of the shards in
                     ranges of --slot-mib, --connections at once, bodies thrown away (no copy)
  ceiling_copy       the same, each body copied into a buffer of its range, as every client of
                     libcurl must (it hands bodies over from its own buffer)
  instanttensor      `instanttensor load --device cpu --json URL/` with the same --slot-mib and
                     --connections: the load's own seconds (headers read before, as a local load)
  download_then_load `curl --parallel` of the shards and the index into --work (one connection per
                     file), then `instanttensor load --device cpu` of that directory: the wall time
                     of both
Prints GB/s (tensor bytes / seconds; the ceiling's bytes are the files') per loader: the median,
the range, and the median's ratio to the ceiling's. The Run:ai streamer reads object stores through
S3 only, which instanttensor does not read yet: it is not in this table.
"""
import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests" / "remote"))
from lib.page_cache import checkpoint_files, fill_pages  # noqa: E402
from servers import Nginx  # noqa: E402

LOADERS = ["ceiling", "ceiling_copy", "instanttensor", "download_then_load"]


def run_json(command):
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"failed ({out.returncode}): {' '.join(command)}: {out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_once(loader, base, shards, index, args):
    bin_dir = Path(args.bin)
    if loader.startswith("ceiling"):
        copy = ["--copy"] if loader == "ceiling_copy" else []
        return run_json([str(bin_dir / "instanttensor_bench_remote_ceiling"), "--connections", str(args.connections),
                         "--range-mib", str(args.slot_mib), *copy, *(base + s.name for s in shards)])["gbps"]
    if loader == "instanttensor":
        return run_json([str(bin_dir / "instanttensor"), "load", "--device", "cpu", "--json", "--slot-mib", str(args.slot_mib),
                         "--connections", str(args.connections), base])["gbps"]
    target = Path(args.work) / "download"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    start = time.perf_counter()
    fetch = ["curl", "-sS", "--no-progress-meter", "--fail", "--parallel", "--parallel-max", str(args.connections)]
    for f in [index, *shards]:
        fetch += [base + f.name, "-o", str(target / f.name)]
    if subprocess.run(fetch).returncode != 0:
        sys.exit("curl failed")
    report = run_json([str(bin_dir / "instanttensor"), "load", "--device", "cpu", "--json", str(target)])
    seconds = time.perf_counter() - start
    shutil.rmtree(target)
    return report["bytes"] / seconds / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--slot-mib", type=int, default=4)
    parser.add_argument("--bin", default=str(ROOT / "build" / "bin"))
    parser.add_argument("--work", default="/tmp/remote-bench")
    args = parser.parse_args()
    directory = Path(args.checkpoint).resolve()
    shards = checkpoint_files(directory)
    index = next(directory.glob("*.safetensors.index.json"))
    fill_pages(shards)
    figures = {loader: [] for loader in LOADERS}
    with Nginx(args.work, lambda port: f"server {{ listen 127.0.0.1:{port()}; root {directory}; }}") as server:
        base = f"http://127.0.0.1:{server.ports[0]}/"
        for loader in LOADERS:  # once untimed: connections, caches
            run_once(loader, base, shards, index, args)
        for run in range(args.runs):
            for loader in LOADERS:
                figures[loader].append(run_once(loader, base, shards, index, args))
                print(f"run {run + 1}: {loader} {figures[loader][-1]:.2f} GB/s", file=sys.stderr, flush=True)
    size = sum(s.stat().st_size for s in shards)
    print(f"{directory.name}: {size / 1e9:.2f} GB in {len(shards)} files over http://127.0.0.1, "
          f"{args.connections} connections, ranges of {args.slot_mib} MiB, {args.runs} runs")
    ceiling = statistics.median(figures["ceiling"])
    print(f"{'loader':<20} {'median GB/s':>12} {'range':>14} {'x ceiling':>10}")
    for loader in LOADERS:
        values = figures[loader]
        median = statistics.median(values)
        print(f"{loader:<20} {median:>12.2f} {min(values):>6.2f}-{max(values):<7.2f} {median / ceiling:>10.2f}")


if __name__ == "__main__":
    main()
