#!/usr/bin/env python3
"""Time and resident memory of the command on the largest legal headers (100 MB cap).

Writes checkpoints whose headers are as large as the format allows, each in one direction: a
million tensors, 1.6 million empty tensors, one shape of 49 million dimensions, 4 million
metadata keys, and a 400 MiB checkpoint planned for 4096 ranks. Runs each command on them and
prints wall time and peak resident memory per run (os.wait4, so the figure is the command's own),
then judges them against the targets: at most --max-mib MiB and --max-seconds seconds each.
Exits 1 when one is over; the test suite runs it as bench.large_headers (--quick: the
million-tensor and metadata files only). A shape of more than 1024 dimensions is refused (format/header.hpp), so the
49-million-dimension file must fail, at once: its row expects exit 1.

    bench/large_headers.py --bin build/bin [--quick] [--keep DIR]
"""
import argparse
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time


def write_checkpoint(path, entries, metadata=None, data_size=0):
    """Writes a safetensors file: `entries` is an iterable of JSON fragments '"name":{...}'."""
    parts = []
    if metadata is not None:
        parts.append('"__metadata__":' + metadata)
    parts.extend(entries)
    header = ("{" + ",".join(parts) + "}").encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        f.truncate(8 + len(header) + data_size)  # tensor bytes: zeros, as a hole
    return len(header)


def million_tensors(path, count=1_000_000):
    # Named like an MoE checkpoint's experts; two bytes each.
    projections = ("gate_proj", "up_proj", "down_proj")

    def entries():
        for i in range(count):
            name = f"layers.{i // 768}.experts.{i // 3 % 256}.{projections[i % 3]}"
            yield f'"{name}":{{"dtype":"U8","shape":[2],"data_offsets":[{2 * i},{2 * i + 2}]}}'

    return write_checkpoint(path, entries(), data_size=2 * count)


def empty_tensors(path, count=1_600_000):
    return write_checkpoint(path, (f'"t{i}":{{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}' for i in range(count)))


def long_shape(path, dims=49_000_000):
    shape = "[" + ",".join(["1"] * dims) + "]"
    return write_checkpoint(path, [f'"w":{{"dtype":"U8","shape":{shape},"data_offsets":[0,1]}}'], data_size=1)


def many_metadata_keys(path, keys=4_000_000):
    metadata = "{" + ",".join(f'"k{i}":"v"' for i in range(keys)) + "}"
    return write_checkpoint(path, ['"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}'], metadata, data_size=1)


MAKERS = {"million": million_tensors, "empty": empty_tensors, "shape": long_shape, "metadata": many_metadata_keys}


def make(kind, path):
    """Writes the file in a child process: the commands measured next are forked from this one, and
    a fork's peak resident memory counts the parent's at the time (kernel: exec keeps the hiwater)."""
    subprocess.run([sys.executable, __file__, "--make", kind, path], check=True)


def run(command):
    """Runs `command` with stdout discarded; returns (seconds, peak resident MiB, exit status, stderr)."""
    start = time.monotonic()
    with tempfile.TemporaryFile() as err:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.monotonic() - start
        err.seek(0)
        message = err.read().decode(errors="replace").strip()
    return seconds, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status), message


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bin", help="directory holding the instanttensor command (required)")
    parser.add_argument("--quick", action="store_true", help="the million-tensor and metadata files only")
    parser.add_argument("--max-mib", type=float, default=640, help="peak resident memory allowed per command")
    parser.add_argument("--max-seconds", type=float, default=10, help="wall time allowed per command")
    parser.add_argument("--keep", help="write the files into this directory and keep them (reused when present)")
    parser.add_argument("--make", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make:
        MAKERS[args.make[0]](args.make[1])
        return 0
    if not args.bin:
        parser.error("--bin is required")
    command = os.path.join(args.bin, "instanttensor")

    directory = args.keep or tempfile.mkdtemp(prefix="instanttensor-large-headers-")
    os.makedirs(directory, exist_ok=True)
    cases = [("1M tensors", "million.safetensors", "million",
              [["inspect", "--json"], ["inspect"], ["hash"], ["load", "--device", "cpu"], ["plan", "--ranks", "4096"],
               ["plan", "--ranks", "8", "--split-rows", "proj"]]),
             ("4M metadata keys", "metadata.safetensors", "metadata", [["inspect", "--json"], ["inspect"]])]
    if not args.quick:
        cases[1:1] = [
            ("1.6M empty tensors", "empty.safetensors", "empty", [["inspect", "--json"], ["inspect"]]),
            ("49M dimensions", "shape.safetensors", "shape", [["inspect", "--json"], ["inspect"], ["hash"]],
             "shape has more than 1024 dimensions"),
        ]
    try:
        rows = []
        for label, name, kind, commands, *refusal in cases:
            path = os.path.join(directory, name)
            if not os.path.exists(path):
                make(kind, path)
            header_mb = struct.unpack("<Q", open(path, "rb").read(8))[0] / 1e6
            for arguments in commands:
                seconds, mib, code, message = run([command, *arguments, path])
                if refusal and code == 1 and refusal[0] in message:
                    code, message = 0, "refused"  # the outcome expected
                rows.append((f"{label} ({header_mb:.0f} MB header)", " ".join(arguments), seconds, mib, code, message))
        if not args.quick:
            sample = os.path.join(directory, "sample400")
            if not os.path.exists(sample):
                subprocess.run([command, "sample", sample, "--size-mib", "400", "--sparse"], check=True,
                               stdout=subprocess.DEVNULL)
            for arguments in (["plan", "--ranks", "4096"], ["plan", "--ranks", "4096", "--split-rows", "proj"],
                              ["plan", "--ranks", "4096", "--json"]):
                seconds, mib, code, message = run([command, *arguments, sample])
                rows.append(("400 MiB sample", " ".join(arguments), seconds, mib, code, message))
    finally:
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)

    print(f"| checkpoint | command | seconds | peak MiB | within {args.max_seconds:g} s and {args.max_mib:g} MiB |")
    print("|---|---|---:|---:|---|")
    failed = False
    for label, arguments, seconds, mib, code, message in rows:
        ok = code == 0 and seconds <= args.max_seconds and mib <= args.max_mib
        failed |= not ok
        verdict = ("yes" + (" (refused)" if message == "refused" else "")) if ok else ("no" if code == 0 else f"no: exit {code}: {message.splitlines()[-1] if message else ''}")
        print(f"| {label} | `{arguments}` | {seconds:.2f} | {mib:.0f} | {verdict} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
