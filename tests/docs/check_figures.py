#!/usr/bin/env python3
"""Checks that every measured figure of a document links to the benchmarks row it comes from.

  check_figures.py DOC BENCHMARKS         e.g. README.md docs/benchmarks.md

A measured figure is a number (or a range "a–b") followed by GB/s, MB/s, "times" or "minutes", or
a ratio written 0.dd. Outside fenced blocks and code spans, each must sit in the text of a link to
BENCHMARKS#ID, where `<a id="ID"></a>` marks a table row (the figures of that row) or starts a
paragraph (the figures of that paragraph and of the table that follows it), and each number of the
link's text must be one of those figures, rounded as the link writes it.
"""
import re
import sys
from pathlib import Path

NUMBER = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?")
FIGURE = re.compile(r"\d+(?:\.\d+)?(?:\s*[–-]\s*\d+(?:\.\d+)?)?\s*(?:GB/s|MB/s|times|minutes)\b|\b0\.\d\d\b")
ANCHOR = re.compile(r'<a id="([^"]+)"></a>')


def paragraphs(text):
    """(first line, text) of each paragraph outside fenced blocks, lines joined, code spans emptied."""
    in_block, first, lines = False, 0, []
    for number, line in enumerate(text.splitlines() + [""], start=1):
        if line.startswith("```"):
            in_block = not in_block
            line = ""
        if in_block or not line.strip():
            if lines:
                yield first, re.sub(r"`[^`]*`", "``", " ".join(lines))
            lines = []
        else:
            first = first if lines else number
            lines.append(line.strip())


def anchored_figures(text):
    """{id: [numbers]} for each anchor of the benchmarks document."""
    lines = text.splitlines()
    figures = {}
    for i, line in enumerate(lines):
        for match in ANCHOR.finditer(line):
            if line.lstrip().startswith("|"):
                element = [line]
            else:  # the paragraph, then the table after it
                end = i
                while end < len(lines) and lines[end].strip():
                    end += 1
                while end < len(lines) and not lines[end].strip():
                    end += 1
                while end < len(lines) and lines[end].lstrip().startswith("|"):
                    end += 1
                element = lines[i:end]
            body = ANCHOR.sub("", "\n".join(element))
            figures[match.group(1)] = [float(n.replace(",", "")) for n in NUMBER.findall(body)]
    return figures


def written_as(number, figures):
    """Whether one of `figures`, rounded to the decimals `number` is written with, is `number`."""
    decimals = len(number.partition(".")[2])
    value = float(number)
    return any(abs(f - value) <= 0.5 * 10**-decimals + 1e-9 for f in figures)


def main():
    doc, benchmarks = Path(sys.argv[1]), Path(sys.argv[2])
    figures = anchored_figures(benchmarks.read_text())
    link = re.compile(r"\[([^\]]*)\]\((?:[^)#]*/)?" + re.escape(benchmarks.name) + r"#([^)]+)\)")
    problems = []
    for line, paragraph in paragraphs(doc.read_text()):
        where = f"{doc}:{line}"
        for match in link.finditer(paragraph):
            text, anchor = match.groups()
            if anchor not in figures:
                problems.append(f"{where}: '{text}' links to #{anchor}, which {benchmarks} does not have")
                continue
            for number in NUMBER.findall(text):
                if not written_as(number, figures[anchor]):
                    problems.append(f"{where}: {number} (in '{text}') is not a figure of {benchmarks}#{anchor}")
        for figure in FIGURE.findall(link.sub("", paragraph)):
            problems.append(f"{where}: '{figure}' is a measured figure that links to no row of {benchmarks}")
    for problem in problems:
        print(problem)
    print(f"{doc}: {len(problems)} figure(s) without their benchmarks row")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
