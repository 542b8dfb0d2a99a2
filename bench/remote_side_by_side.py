#!/usr/bin/env python3
"""Loads one checkpoint from an HTTP server on this machine, side by side with the ceiling.

    bench/remote_side_by_side.py CHECKPOINT_DIR [--runs 5] [--connections 16] [--slot-mib 4] [--loaders A,B,...]
                                 [--rate-mib R] [--bin build/bin] [--python build/venv/bin/python] [--work /tmp/remote-bench]

nginx (tests/remote/servers.py) serves CHECKPOINT_DIR (an index and its shards) on 127.0.0.1, its
files in the page cache, so that the figures are those of the server, loopback and client. Each
run times, in one process each, alternating run by run:
  ceiling            instanttensor_bench_remote_ceiling: libcurl fetching every byte of the shards in
                     ranges of --slot-mib, --connections at once, bodies thrown away (no copy)
  ceiling_copy       the same, each body copied into a buffer of its range, as every client of
                     libcurl must (it hands bodies over from its own buffer)
  instanttensor      `instanttensor load --device cpu --json URL/` with the same --slot-mib and
                     --connections: the load's own seconds (headers read before, as a local load)
  instanttensor_s3   the same load of the index through the server's path-style S3 face (`s3://bucket/...` with
                     AWS_ENDPOINT_URL; requests signed, which nginx does not check)
  runai              the Run:ai streamer (runai-model-streamer and -s3, in --python) streaming the
                     shards through its S3 client from the same server (path-style, the same
                     signature), into tensors it hands out; timed in its process from the call to
                     the last tensor
  download_then_load `curl --parallel` of the shards and the index into --work (one connection per
                     file), then `instanttensor load --device cpu` of that directory: the wall time
                     of both
Prints GB/s (tensor bytes / seconds; the ceiling's bytes are the files') per loader: the median,
the range, and the median's ratio to the ceiling's. nginx serves CHECKPOINT_DIR's parent, so that
the checkpoint is also the S3 object prefix `s3://{parent's name}/{CHECKPOINT_DIR's name}/`.

--rate-mib R caps every response at R MiB/s (nginx `limit_rate`), as object stores cap each
connection (S3: on the order of 100 MB/s): the client's CPU is then not the limit, and the figures
show how well each loader keeps its connections busy.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests" / "remote"))
from lib.page_cache import checkpoint_files, fill_pages  # noqa: E402
from servers import Nginx  # noqa: E402

LOADERS = ["ceiling", "ceiling_copy", "instanttensor", "instanttensor_s3", "runai", "download_then_load"]

RUNAI = """
import json, sys, time
from runai_model_streamer import SafetensorsStreamer
start = time.perf_counter()
with SafetensorsStreamer() as streamer:
    streamer.stream_files(sys.argv[1:], device="cpu")
    nbytes = sum(t.numel() * t.element_size() for _, t in streamer.get_tensors())
print(json.dumps({"seconds": time.perf_counter() - start, "bytes": nbytes}))
"""


def run_json(command, env=None):
    out = subprocess.run(command, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"failed ({out.returncode}): {' '.join(command)}: {out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def s3_environment(base):
    """The environment that makes the server at `base` the S3 endpoint (any key signs: nginx does not check)."""
    endpoint = urlsplit(base)
    return dict(os.environ, AWS_ENDPOINT_URL=f"{endpoint.scheme}://{endpoint.netloc}", AWS_ACCESS_KEY_ID="bench",
                AWS_SECRET_ACCESS_KEY="bench", AWS_REGION="us-east-1", RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING="0",
                AWS_SHARED_CREDENTIALS_FILE="/nonexistent")


def run_once(loader, base, shards, index, args):
    bin_dir = Path(args.bin)
    s3_base = "s3:/" + urlsplit(base).path  # the URL's path: bucket/prefix/
    if loader.startswith("ceiling"):
        copy = ["--copy"] if loader == "ceiling_copy" else []
        return run_json([str(bin_dir / "instanttensor_bench_remote_ceiling"), "--connections", str(args.connections),
                         "--range-mib", str(args.slot_mib), *copy, *(base + s.name for s in shards)])["gbps"]
    if loader.startswith("instanttensor"):
        s3 = loader == "instanttensor_s3"
        return run_json([str(bin_dir / "instanttensor"), "load", "--device", "cpu", "--json", "--slot-mib", str(args.slot_mib),
                         "--connections", str(args.connections), s3_base + index.name if s3 else base],
                        env=s3_environment(base) if s3 else None)["gbps"]
    if loader == "runai":
        report = run_json([args.python, "-c", RUNAI, *(s3_base + s.name for s in shards)], env=s3_environment(base))
        return report["bytes"] / report["seconds"] / 1e9
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
    parser.add_argument("--rate-mib", type=int, default=0, help="cap each response at this many MiB/s (0: no cap)")
    parser.add_argument("--bin", default=str(ROOT / "build" / "bin"))
    parser.add_argument("--python", default=str(ROOT / "build" / "venv" / "bin" / "python"))
    parser.add_argument("--work", default="/tmp/remote-bench")
    parser.add_argument("--loaders", default=",".join(LOADERS), help="a comma-separated subset of " + ", ".join(LOADERS))
    args = parser.parse_args()
    loaders = args.loaders.split(",")
    if "ceiling" not in loaders or not set(loaders) <= set(LOADERS):
        parser.error(f"--loaders: a subset of {', '.join(LOADERS)} that holds ceiling")
    directory = Path(args.checkpoint).resolve()
    shards = checkpoint_files(directory)
    index = next(directory.glob("*.safetensors.index.json"))
    fill_pages(shards)
    figures = {loader: [] for loader in loaders}
    limit = f"limit_rate {args.rate_mib}m; " if args.rate_mib else ""
    with Nginx(args.work, lambda port: f"server {{ listen 127.0.0.1:{port()}; root {directory.parent}; {limit}}}") as server:
        base = f"http://127.0.0.1:{server.ports[0]}/{directory.name}/"
        for loader in loaders:  # once untimed: connections, caches
            run_once(loader, base, shards, index, args)
        for run in range(args.runs):
            for loader in loaders:
                figures[loader].append(run_once(loader, base, shards, index, args))
                print(f"run {run + 1}: {loader} {figures[loader][-1]:.2f} GB/s", file=sys.stderr, flush=True)
    size = sum(s.stat().st_size for s in shards)
    print(f"{directory.name}: {size / 1e9:.2f} GB in {len(shards)} files over http://127.0.0.1, "
          f"{args.connections} connections, ranges of {args.slot_mib} MiB, {args.runs} runs"
          + (f", each response capped at {args.rate_mib} MiB/s" if args.rate_mib else ""))
    ceiling = statistics.median(figures["ceiling"])
    print(f"{'loader':<20} {'median GB/s':>12} {'range':>14} {'x ceiling':>10}")
    for loader in loaders:
        values = figures[loader]
        median = statistics.median(values)
        print(f"{loader:<20} {median:>12.2f} {min(values):>6.2f}-{max(values):<7.2f} {median / ceiling:>10.2f}")


if __name__ == "__main__":
    main()
