#!/usr/bin/env python3
"""Times `instanttensor load` under several sets of options, side by side, and says where each one's
time went: to choose the defaults and to see what bounds a load.

    bench/load_variants.py CHECKPOINT [--device cpu|N] [--bin build/bin] [--runs 3] [--cache warm|cold]
                           [--budget-s S] LABEL=OPTIONS...

Each LABEL=OPTIONS is one variant: OPTIONS are the command's own, split on spaces, possibly none
("defaults="). Variants alternate run by run, so that the machine's drift hits all alike; warm
runs read the files through the page cache first and run each variant once untimed, cold runs drop
the files' pages before each run (posix_fadvise DONTNEED). With --budget-s, rounds stop once
another would overrun it (one round at least). Prints, per variant, the median and range of GB/s
(the load's own seconds, as `load` reports them) and the median share of those seconds of each of
LoadStats::times (README: "How a load runs"). A variant that fails shows as failed, what it said
printed last (exit status 1).
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from lib.command_load import (  # noqa: E402
    TIMES, LoadFailed, budgeted_rounds, exit_if_failed, median_shares, run_load, time_shares)
from lib.page_cache import checkpoint_files, drop_pages, fill_pages  # noqa: E402


def variant(text):
    label, sep, options = text.partition("=")
    if not sep or not label:
        raise argparse.ArgumentTypeError(f"'{text}': a variant is LABEL=OPTIONS")
    return label, options.split()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("variants", nargs="+", type=variant, metavar="LABEL=OPTIONS")
    parser.add_argument("--device", default="cpu", help="cpu or a GPU ordinal")
    parser.add_argument("--bin", default="build/bin", help="directory of the instanttensor command")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cache", choices=("warm", "cold"), default="warm")
    parser.add_argument("--budget-s", type=float, default=0, help="seconds for all the runs (0: no bound)")
    args = parser.parse_args()
    command = Path(args.bin) / "instanttensor"
    files = checkpoint_files(args.checkpoint)
    figures = {label: [] for label, _ in args.variants}
    shares = {label: [] for label, _ in args.variants}
    failures = {}
    started = time.monotonic()

    def run(label, options):
        if label in failures:
            return
        if args.cache == "cold":
            drop_pages(files)
        try:
            report = run_load(command, args.device, args.checkpoint, options)
        except LoadFailed as e:
            failures[label] = e.summary
            print(f"{label} failed: {e}", file=sys.stderr, flush=True)
            return
        gbps = report["bytes"] / report["seconds"] / 1e9
        print(f"{label}: {gbps:.2f} GB/s ({time.monotonic() - started:.0f} s in)", file=sys.stderr, flush=True)
        return gbps, time_shares(report)

    if args.cache == "warm":
        fill_pages(files)
        for label, options in args.variants:
            run(label, options)
    rounds = 0
    for _ in budgeted_rounds(args.runs, started + args.budget_s if args.budget_s else None):
        for label, options in args.variants:
            if got := run(label, options):
                figures[label].append(got[0])
                if got[1]:
                    shares[label].append(got[1])
        rounds += 1

    print(f"{args.checkpoint} to {args.device}, {args.cache}: `instanttensor load` under each set of options, "
          f"{rounds} runs each, alternating; GB/s, and the median share of the load's seconds of each of LoadStats::times")
    print()
    print("| variant | options | median GB/s | range | " + " | ".join(k.replace("_", " ") for k in TIMES) + " |")
    print("|---|---|---:|---|" + "---:|" * len(TIMES))
    for label, options in args.variants:
        values = figures[label]
        if not values:
            print(f"| {label} | `{' '.join(options)}` | failed | |" + " |" * len(TIMES))
            continue
        print(f"| {label} | `{' '.join(options)}` | {statistics.median(values):.2f} | {min(values):.2f}–{max(values):.2f} | "
              + median_shares(shares[label]) + " |")
    exit_if_failed(failures)


if __name__ == "__main__":
    main()
