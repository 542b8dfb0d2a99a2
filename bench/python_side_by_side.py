#!/usr/bin/env python3
"""Loads one checkpoint with every Python loader, side by side, warm and cold.

    bench/python_side_by_side.py CHECKPOINT [--runs 5] [--budget-s S] [--device cpu|cuda:0] [--bin build/bin] [--peer-path DIR]
                                 [--loaders fresh_memory,safetensors,fastsafetensors,runai,InstantTensor,
                                            InstantTensor_buffered,instanttensor,command,command_keep,command_group]
                                 [--ceilings WARM,COLD]

Each loader puts every tensor into memory the caller owns and keeps, on --device:
  fresh_memory     the ceiling of that on the host, no loader's work: every core reads the files
                   (pread, 4 MiB at a time) into memory the process has not touched yet, one
                   torch tensor per file (bytes: the files'); --device cpu only
  safetensors      Hugging Face `safetensors.torch.load_file` per file, each tensor cloned (its CPU
                   tensors are views of the file's mapping, read only when touched)
  fastsafetensors  `fastsafe_open(files, nogds=True, device=...)`, `get_tensor` of every name
  runai            the Run:ai streamer's `SafetensorsStreamer.stream_files(files, device=...)`
  InstantTensor    the peer this project is named after (PyPI `instanttensor` 0.2.x, GPU only):
                   `safe_open(files, framework="pt", device=N)` over every file at once, as its
                   README advises, each tensor kept (its default copy=True hands out tensors of
                   their own, cloned out of its ring); its defaults (O_DIRECT reads where it can)
  InstantTensor_buffered  the same with `backend=BackendPolicy.BUFFERED`, its README's advice for
                   a checkpoint loaded again while in the page cache
                   Its package is imported as `instanttensor` too: --peer-path names the directory
                   it is installed in (`pip install --target DIR`), put first on the path of its
                   runs alone.
  instanttensor    this project's `instanttensor.load_file(CHECKPOINT, device=...)`
  command          the C++ command `instanttensor load --device cpu|N --json`, into its ring (reused
                   as the load goes: no tensor is kept)
  command_keep     the same with --keep: every tensor into host memory of its own, kept, as the Python
                   loaders do (the reference for instanttensor's Python API); --device cpu only
  command_group    the command as a group of one over NCCL (`--ranks 1`: pinned staging, uploads into
                   window buffers, device-to-device landing); GPU only
Each run is a fresh process that imports torch and its loader (and on a GPU makes its CUDA context),
then times the load alone: from the call, the opening of the checkpoint included, to the last
tensor in memory. The command is timed the same way on the host (`"total_seconds"` of `--json`:
from the open); on a GPU by the load's own `"seconds"`, since its total includes making the CUDA
context, which the Python loaders make before the clock (the open is then left out: a few
milliseconds for a checkpoint of hundreds of tensors, a tenth of a second for 100,000). Warm runs read
the files through the page cache first and run each loader once untimed; cold runs drop the
files' pages before each run (posix_fadvise DONTNEED: no root needed). Loaders alternate run by
run, so that the machine's drift hits all alike; with --budget-s, rounds of runs stop once another
would overrun it (a third of it for warm runs), so that a machine lent for minutes still yields the
table. Each run's figure goes to stderr as it comes; a loader that fails is left out of the runs
after it, shows as failed in the table, and what it said is printed last (exit status 1). Prints
GB/s (tensor bytes / seconds) per loader: the median, the range, and the median's ratio to
safetensors' (and with --ceilings to the given warm and cold ceilings, GB/s); instanttensor's to
the command's (command_keep's on the host) and to fresh_memory's. Last, where the command's time went in the same runs (`"times"` of `--json`,
LoadStats::times: median shares of its seconds).
Needs the peers installed: pip install safetensors fastsafetensors runai-model-streamer.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from lib.command_load import (  # noqa: E402
    TIMES, LoadFailed, budgeted_rounds, median_shares, read_report, run_load, time_shares)
from lib.page_cache import checkpoint_files, drop_pages, fill_pages  # noqa: E402

LOADERS = ["fresh_memory", "safetensors", "fastsafetensors", "runai", "InstantTensor", "InstantTensor_buffered", "instanttensor",
           "command", "command_keep", "command_group"]
HOST_ONLY = ["fresh_memory", "command_keep"]
DEVICE_ONLY = ["InstantTensor", "InstantTensor_buffered", "command_group"]
PEERS_APART = ["InstantTensor", "InstantTensor_buffered"]  # imported from --peer-path


# ---- one load, in a child process ----------------------------------------------------------

def load_fresh_memory(checkpoint, files, device):
    import torch
    from concurrent.futures import ThreadPoolExecutor
    read = 4 << 20
    buffers, jobs, descriptors = {}, [], []
    for f in files:
        size = os.path.getsize(f)
        buffers[f] = torch.empty(size, dtype=torch.uint8)  # fresh pages: the allocator maps them anew
        descriptors.append(os.open(f, os.O_RDONLY))
        view = memoryview(buffers[f].numpy())
        jobs += [(descriptors[-1], view[at:at + read], at) for at in range(0, size, read)]

    def pread(job):
        fd, view, at = job
        while len(view) > 0:
            n = os.preadv(fd, [view], at)
            if n == 0:
                raise EOFError(f"{fd}: the file ended early")
            view, at = view[n:], at + n

    with ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(pread, jobs))
    for fd in descriptors:
        os.close(fd)
    return buffers


def load_safetensors(checkpoint, files, device):
    from safetensors.torch import load_file
    tensors = {}
    for f in files:
        tensors.update({k: v.clone() for k, v in load_file(f, device=device).items()})
    return tensors


def load_fastsafetensors(checkpoint, files, device):
    from fastsafetensors import fastsafe_open
    with fastsafe_open(files, nogds=True, device=device) as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def load_runai(checkpoint, files, device):
    from runai_model_streamer import SafetensorsStreamer
    with SafetensorsStreamer() as streamer:
        streamer.stream_files(files, device=device)
        return dict(streamer.get_tensors())


def load_InstantTensor(checkpoint, files, device, **options):
    from instanttensor import safe_open
    with safe_open(files, framework="pt", device=int(device.split(":")[-1]), **options) as f:
        return dict(f.tensors())


def load_InstantTensor_buffered(checkpoint, files, device):
    from instanttensor import BackendPolicy
    return load_InstantTensor(checkpoint, files, device, backend=BackendPolicy.BUFFERED)


def load_instanttensor(checkpoint, files, device):
    import instanttensor
    return instanttensor.load_file(checkpoint, device=device)


MODULES = {"safetensors": "safetensors.torch", "fastsafetensors": "fastsafetensors", "runai": "runai_model_streamer",
           "InstantTensor": "instanttensor", "InstantTensor_buffered": "instanttensor", "instanttensor": "instanttensor"}


def child(loader, checkpoint, device):
    import importlib
    import torch
    if loader in MODULES:  # imported before the clock starts, as the command's start is not timed either
        importlib.import_module(MODULES[loader])
    if device != "cpu":  # the CUDA context too
        torch.zeros(1, device=device)
        torch.cuda.synchronize()
    files = [str(f) for f in checkpoint_files(checkpoint)]
    load = globals()[f"load_{loader}"]
    start = time.perf_counter()
    tensors = load(checkpoint, files, device)
    if device != "cpu":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
    print(json.dumps({"seconds": seconds, "bytes": nbytes}))


# ---- the side by side ------------------------------------------------------------------------

def run_once(loader, checkpoint, device, command, peer_path):
    """GB/s of one run, and for the command the shares of its seconds in LoadStats::times (else
    None); LoadFailed with what the loader said."""
    if loader.startswith("command"):
        target = "cpu" if device == "cpu" else device.split(":")[-1]
        extra = {"command_keep": ["--keep"], "command_group": ["--ranks", "1"]}.get(loader, [])
        report = run_load(command, target, checkpoint, extra)
        return report["bytes"] / report["total_seconds" if device == "cpu" else "seconds"] / 1e9, time_shares(report)
    env = None
    if loader in PEERS_APART:  # the peer's package, not this project's, answers `import instanttensor`
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [peer_path, os.environ.get("PYTHONPATH")])))
    out = subprocess.run([sys.executable, __file__, "--child", loader, checkpoint, "--device", device],
                         capture_output=True, text=True, env=env)
    if out.returncode != 0:
        said = out.stderr.strip()[-2000:]  # a traceback: its last line is the exception
        raise LoadFailed(f"exit status {out.returncode}: {said}", said.splitlines()[-1] if said else None)
    report = read_report(out.stdout.strip().splitlines()[-1] if out.stdout.strip() else "", ("bytes", "seconds"))
    return report["bytes"] / report["seconds"] / 1e9, None


def ceilings_of(text):
    """WARM,COLD: two positive GB/s figures."""
    try:
        warm, cold = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}': expected WARM,COLD in GB/s") from None
    if warm <= 0 or cold <= 0:
        raise argparse.ArgumentTypeError(f"'{text}': the ceilings must be above 0")
    return {"warm": warm, "cold": cold}


def table(title, loaders, results, breakdowns, failures, ceilings):
    """The side by side of the runs so far, as markdown lines."""
    lines = [title, "", "| cache | loader | median GB/s | range | × safetensors |" + (" × ceiling |" if ceilings else ""),
             "|---|---|---:|---|---:|" + ("---:|" if ceilings else "")]
    for cache, figures in results.items():
        medians = {name: statistics.median(values) for name, values in figures.items() if values}
        if ceilings:
            lines.append(f"| {cache} | ceiling | {ceilings[cache]:.2f} | | | 1.00 |")
        for name, values in figures.items():
            if not values:
                lines.append(f"| {cache} | {name} | {'failed' if name in failures else 'no run yet'} | | |" + (" |" if ceilings else ""))
                continue
            ratio = f"{medians[name] / medians['safetensors']:.2f}" if "safetensors" in medians else ""
            of_ceiling = f" {medians[name] / ceilings[cache]:.2f} |" if ceilings else ""
            lines.append(f"| {cache} | {name} | {medians[name]:.2f} | {min(values):.2f}–{max(values):.2f} | {ratio} |{of_ceiling}")
    ratios = []
    for cache, figures in results.items():
        if not figures.get("instanttensor"):
            continue
        python = statistics.median(figures["instanttensor"])
        for name, what in (("command", "the command"), ("command_keep", "the command --keep"), ("fresh_memory", "fresh memory")):
            if figures.get(name):
                ratios.append(f"{cache}: instanttensor from Python / {what}: {python / statistics.median(figures[name]):.2f}")
    if ratios:
        lines += [""] + ratios
    # A group load counts only its consumer's time (LoadStats::times): its row would say nothing.
    commands = [name for name in loaders if name != "command_group" and any(b.get(name) for b in breakdowns.values())]
    if commands:
        lines += ["", "Where the command's time went (LoadStats::times), median share of its seconds:", "",
                  "| cache | loader | " + " | ".join(k.replace("_", " ") for k in TIMES) + " |",
                  "|---|---|" + "---:|" * len(TIMES)]
        for cache, shares in breakdowns.items():
            lines += [f"| {cache} | {name} | " + median_shares(shares[name]) + " |" for name in commands if shares.get(name)]
    if failures:
        lines += [""] + [f"{name} failed: {what}" for name, what in failures.items()]
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--runs", type=int, default=5, help="runs of each loader, warm and cold (at most, with --budget-s)")
    parser.add_argument("--budget-s", type=float, default=0,
                        help="seconds for the whole measurement: a round (each loader once) starts only while the "
                             "last one would fit again (a third for warm, the rest for cold); one round at least")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bin", default="build/bin", help="directory of the instanttensor command")
    parser.add_argument("--loaders", default=",".join(LOADERS))
    parser.add_argument("--peer-path", default="", help="where InstantTensor (PyPI instanttensor 0.2.x) is installed")
    parser.add_argument("--ceilings", type=ceilings_of, help="WARM,COLD: GB/s of the ceilings, for a column of ratios to them")
    parser.add_argument("--table-file", help="where the table of the runs so far is written after every round (a run cut "
                                             "short still leaves one)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.checkpoint, args.device)
        return
    loaders = args.loaders.split(",")
    unknown = set(loaders) - set(LOADERS)
    if unknown:
        parser.error(f"unknown loaders: {', '.join(sorted(unknown))}")
    for names, wrong, why in ((HOST_ONLY, args.device != "cpu", "measures host memory: --device cpu only"),
                              (DEVICE_ONLY, args.device == "cpu", "loads to GPUs only: --device cuda:N"),
                              (PEERS_APART, not args.peer_path, "needs --peer-path (it is imported as instanttensor too)")):
        for name in names:
            if wrong and name in loaders:
                if args.loaders != parser.get_default("loaders"):
                    parser.error(f"{name} {why}")
                loaders.remove(name)
    command = os.path.join(args.bin, "instanttensor")
    files = checkpoint_files(args.checkpoint)
    size = sum(os.path.getsize(f) for f in files)
    results, breakdowns, failures = {}, {}, {}
    started = time.monotonic()
    deadlines = {"warm": started + args.budget_s / 3, "cold": started + args.budget_s} if args.budget_s else {}

    def run(cache, name):
        """One run of `name`; its figure, or None once it failed (its first failure is kept)."""
        if name in failures:
            return None
        try:
            gbps, times = run_once(name, args.checkpoint, args.device, command, args.peer_path)
        except LoadFailed as e:  # its summary under the table, the whole of it here
            failures[name] = f"{cache}: {e.summary}"
            print(f"{cache}: {name} failed: {e}", file=sys.stderr, flush=True)
            return None
        print(f"{cache}: {name} {gbps:.2f} GB/s ({time.monotonic() - started:.0f} s in)", file=sys.stderr, flush=True)
        return gbps, times

    def side_by_side():
        runs = {cache: max((len(v) for v in figures.values()), default=0) for cache, figures in results.items()}
        title = (f"{args.checkpoint}: {len(files)} files, {size / 1e9:.2f} GB, to {args.device}; "
                 f"{runs.get('warm', 0)} warm and {runs.get('cold', 0)} cold runs of each, alternating; GB/s")
        return table(title, loaders, results, breakdowns, failures, args.ceilings)

    for cache in ("warm", "cold"):
        figures = results[cache] = {name: [] for name in loaders}
        shares = breakdowns[cache] = {name: [] for name in loaders}
        if cache == "warm":
            fill_pages(files)
            for name in loaders:
                run(cache, name)
        for _ in budgeted_rounds(args.runs, deadlines.get(cache), f"{cache}: "):
            for name in loaders:
                if cache == "cold":
                    drop_pages(files)
                if (got := run(cache, name)) is not None:
                    figures[name].append(got[0])
                    if got[1]:
                        shares[name].append(got[1])
            if args.table_file:
                Path(args.table_file).write_text("\n".join(side_by_side()) + "\n")

    print("\n".join(side_by_side()))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
