#!/usr/bin/env python3
"""Checks that the output quoted in a Markdown document is what its commands print today.

  check_commands.py DOC PREFIX      e.g. docs/distributed.md 'scripts/distributed_model.py'

In every fenced block, a line "$ COMMAND" whose command starts with PREFIX is run from the
repository root, and its output must equal the lines that follow, up to the next "$ " line or the
end of the block. Other commands are left alone (they need data the tests do not have).
"""
import shlex
import subprocess
import sys
from pathlib import Path


def quoted_runs(text):
    """(command, expected output) for each "$ " line of each fenced block."""
    in_block, command, output = False, None, []
    for line in text.splitlines():
        if line.startswith("```"):
            if in_block and command is not None:
                yield command, output
            in_block, command, output = not in_block, None, []
        elif in_block and line.startswith("$ "):
            if command is not None:
                yield command, output
            command, output = line[2:], []
        elif in_block and command is not None:
            output.append(line)


def main():
    doc, prefix = Path(sys.argv[1]), sys.argv[2]
    root = Path(__file__).resolve().parents[2]
    checked = failures = 0
    for command, expected in quoted_runs(doc.read_text()):
        if not command.startswith(prefix):
            continue
        checked += 1
        result = subprocess.run(shlex.split(command), cwd=root, capture_output=True, text=True, check=False)
        actual = result.stdout.rstrip("\n").splitlines()
        while expected and expected[-1] == "":
            expected = expected[:-1]
        if result.returncode != 0 or actual != expected:
            failures += 1
            print(f"{doc}: '{command}' prints (status {result.returncode}):", *actual, result.stderr, "but the document quotes:",
                  *expected, sep="\n")
    if checked == 0:
        print(f"{doc}: no command starting with '{prefix}' found")
        return 1
    print(f"{doc}: {checked} quoted command(s) checked, {failures} differ")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
