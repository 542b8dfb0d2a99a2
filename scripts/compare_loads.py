#!/usr/bin/env python3
"""Times two builds of the `instanttensor` command loading one checkpoint, side by side.

  scripts/compare_loads.py [--runs N] [--device cpu|N] CHECKPOINT BEFORE AFTER [-- LOAD_ARGS...]

BEFORE and AFTER are `instanttensor` binaries (say, the commit before a refactor and the one
after). Warm runs come first (the files read through the page cache, then one load of each
untimed), then cold runs, each after
the checkpoint's pages were dropped with posix_fadvise(DONTNEED) (no root needed; a file that
stays resident, as on tmpfs, makes cold runs warm). The two alternate, run by run, so that drift
of the machine hits both alike. Prints, per cache state and binary, the median GB/s the command
reports (`load --json`: tensor bytes over the load's own seconds), the range, and AFTER/BEFORE of
the medians.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

from lib.page_cache import checkpoint_files, drop_pages, fill_pages


def load(binary, checkpoint, device, extra):
    out = subprocess.run([binary, "load", "--device", device, "--json", *extra, checkpoint],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.exit(f"{binary} load failed ({out.returncode}): {out.stderr.strip()}")
    return json.loads(out.stdout)["gbps"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("checkpoint")
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("load_args", nargs="*")
    args = parser.parse_args()
    files = checkpoint_files(args.checkpoint)
    binaries = {"before": args.before, "after": args.after}
    results = {}
    for cache in ("warm", "cold"):
        figures = {name: [] for name in binaries}
        if cache == "warm":
            fill_pages(files)
            for binary in binaries.values():
                load(binary, args.checkpoint, args.device, args.load_args)
        for _ in range(args.runs):
            for name, binary in binaries.items():
                if cache == "cold":
                    drop_pages(files)
                figures[name].append(load(binary, args.checkpoint, args.device, args.load_args))
        results[cache] = figures
    print(f"{args.runs} runs each, alternating; GB/s as `instanttensor load --json` reports")
    print(f"{'cache':<6}{'binary':<8}{'median':>8}{'min':>8}{'max':>8}{'after/before':>14}")
    for cache, figures in results.items():
        medians = {name: statistics.median(values) for name, values in figures.items()}
        for name, values in figures.items():
            ratio = f"{medians['after'] / medians['before']:.2f}" if name == "after" else ""
            print(f"{cache:<6}{name:<8}{medians[name]:>8.2f}{min(values):>8.2f}{max(values):>8.2f}{ratio:>14}")


if __name__ == "__main__":
    main()
