#!/usr/bin/env python3
"""Runs every command a Markdown document shows with "$ " and checks that it prints what is quoted.

  check_commands.py --bin DIR DOC...     e.g. --bin build/bin README.md docs/*.md

In every fenced block, a line "$ COMMAND" is run from the repository root, and its output must
equal the lines that follow, up to the next "$ " line or the end of the block. The commands of a
block run in order, so one may write what the next reads. So that they run anywhere:
- `build/bin/` at the start of a command is DIR (the build being tested);
- a path under /tmp/ is moved into a temporary directory of this run (and moved back in the output).
A command that cannot run here is marked at its end with "# needs a GPU" and is only listed.
"""
import argparse
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

GPU_MARK = "# needs a GPU"
TMP_PATH = re.compile(r"(?<![\w/.])/tmp/")


def shown_commands(text):
    """(line number, command, quoted output) for each "$ " line of each fenced block."""
    in_block, command, output = False, None, []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("```"):
            if command is not None:
                yield command, output
            in_block, command, output = not in_block, None, []
        elif in_block and line.startswith("$ "):
            if command is not None:
                yield command, output
            command, output = (number, line[2:]), []
        elif command is not None:
            output.append(line)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bin", type=Path, required=True, help="where the build put instanttensor")
    parser.add_argument("docs", type=Path, nargs="+")
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[2]
    ran = listed = failures = 0
    with tempfile.TemporaryDirectory(prefix="instanttensor-docs-") as scratch:
        for doc in args.docs:
            for (line, command), expected in shown_commands(doc.read_text()):
                if command.rstrip().endswith(GPU_MARK):
                    listed += 1
                    continue
                ran += 1
                argv = [TMP_PATH.sub(scratch + "/", word) for word in shlex.split(command)]
                if argv[0].startswith("build/bin/"):
                    argv[0] = str(args.bin.resolve() / argv[0].removeprefix("build/bin/"))
                result = subprocess.run(argv, cwd=root, capture_output=True, text=True, check=False, timeout=120)
                actual = result.stdout.replace(scratch + "/", "/tmp/").rstrip("\n").splitlines()
                while expected and expected[-1] == "":
                    expected = expected[:-1]
                if result.returncode != 0 or actual != expected:
                    failures += 1
                    print(f"{doc}:{line}: '{command}' prints (status {result.returncode}):", *actual, result.stderr,
                          "but the document quotes:", *expected, sep="\n")
    print(f"{ran} command(s) run, {failures} differ from what the documents quote; {listed} need a GPU")
    return 1 if failures or ran == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
