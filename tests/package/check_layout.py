#!/usr/bin/env python3
"""Checks the layout docs/architecture.md draws: includes run one way, down the layers, and
machinery lives in one namespace.

  check_layout.py INCLUDE_DIR

Each header (and *.inl) of INCLUDE_DIR/instanttensor belongs to a layer; it may include headers of
lower layers, and of its own folder in its own layer, never one above it. No header may include
one that includes it back, directly or through others. A `detail` namespace may open only as
instanttensor::detail, so that no nested one shadows it. Prints every offence; exits 1 if any.
"""
import re
import sys
from pathlib import Path

# Lowest first. A header's layer is the first pattern its path (relative to instanttensor/) matches.
LAYERS = [
    ("base", [r"io\.hpp", r"error\.hpp", r"config\.hpp"]),
    ("detail", [r"detail/.*"]),
    ("format", [r"format/.*"]),
    ("plan", [r"pipeline/(plan|share|group_plan|options)\.hpp"]),
    ("concepts", [r"concepts\.hpp"]),
    ("policies", [r"storage/.*", r"sink/.*", r"transport/.*"]),
    ("pipeline machinery", [r"pipeline/(open|staging|timeline|read_queue|destinations|group_link|verifier|decryptor)\.hpp"]),
    ("pipelines", [r"pipeline/(single|group)\.hpp"]),
    ("loader", [r"loader\.hpp"]),
]
INCLUDE = re.compile(r'^\s*#\s*include\s+[<"]instanttensor/([^">]+)[">]', re.MULTILINE)
OPEN = re.compile(r'^namespace ([\w:]+) \{')
CLOSE = re.compile(r'^\}  // namespace ([\w:]+)')


def shadowing_details(text):
    """Lines that open a detail namespace inside another than instanttensor."""
    stack, found = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if m := OPEN.match(line):
            full = "::".join(stack + [m.group(1)])
            if full.split("::")[-1] == "detail" and full != "instanttensor::detail":
                found.append((number, full))
            stack.append(m.group(1))
        elif CLOSE.match(line) and stack:
            stack.pop()
    return found


def layer_of(name):
    for rank, (_, patterns) in enumerate(LAYERS):
        if any(re.fullmatch(p, name) for p in patterns):
            return rank
    return None


def main():
    root = Path(sys.argv[1]) / "instanttensor"
    headers = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.suffix in (".hpp", ".inl"))
    includes = {h: INCLUDE.findall((root / h).read_text()) for h in headers}
    problems = []
    for h in headers:
        rank = layer_of(h)
        if rank is None:
            problems.append(f"{h}: in no layer (add it to LAYERS in {Path(__file__).name} and to docs/architecture.md)")
            continue
        for number, name in shadowing_details((root / h).read_text()):
            problems.append(f"{h}:{number}: namespace {name} shadows instanttensor::detail")
        for inc in includes[h]:
            if inc not in includes:
                problems.append(f"{h}: includes {inc}, which does not exist")
                continue
            other = layer_of(inc)
            same_folder = Path(inc).parts[:-1][:1] == Path(h).parts[:-1][:1]  # format/detail/ is format's
            if other is not None and (other > rank or (other == rank and not same_folder)):
                problems.append(f"{h} ({LAYERS[rank][0]}) includes {inc} ({LAYERS[other][0]}), which is not below it")
    # Cycles: a depth-first search that meets a header still on its path.
    state = {}

    def visit(h, path):
        state[h] = "open"
        for inc in includes.get(h, []):
            if state.get(inc) == "open":
                problems.append("include cycle: " + " -> ".join(path[path.index(inc):] + [inc]))
            elif inc not in state and inc in includes:
                visit(inc, path + [inc])
        state[h] = "done"

    for h in headers:
        if h not in state:
            visit(h, [h])
    for p in problems:
        print(p)
    print(f"{len(headers)} headers, {sum(len(v) for v in includes.values())} includes, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
