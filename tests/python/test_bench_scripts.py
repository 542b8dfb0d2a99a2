"""The benchmark scripts scripts/gpu-check.sh runs once on a machine lent for minutes:
bench/python_side_by_side.py (its table, the command's time breakdown, a loader that fails while
the others are measured, a time budget that cuts the runs short rather than losing the table) and
bench/load_variants.py (the command under several sets of options)."""
import subprocess
import sys
from pathlib import Path

from command import COMMAND, run

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "python_side_by_side.py"
VARIANTS = ROOT / "bench" / "load_variants.py"


def side_by_side(checkpoint, *args, commands=COMMAND.parent):
    return subprocess.run([sys.executable, str(BENCH), str(checkpoint), "--bin", str(commands), *map(str, args)],
                          capture_output=True, text=True, timeout=600)


def sample(tmp_path):
    run("sample", tmp_path / "ckpt", "--size-mib", 8, "--shards", 2)
    return tmp_path / "ckpt"


def test_table_and_breakdown(tmp_path):
    out = side_by_side(sample(tmp_path), "--loaders", "command,command_keep", "--runs", 3, "--table-file", tmp_path / "t.md")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "t.md").read_text() == out.stdout  # written after each round, the last one whole
    assert "3 warm and 3 cold runs of each" in out.stdout
    for cache in ("warm", "cold"):
        for loader in ("command", "command_keep"):
            assert f"| {cache} | {loader} | " in out.stdout
            # each run said as it came: the warm-up run too
            assert out.stderr.count(f"{cache}: {loader} ") == (4 if cache == "warm" else 3), out.stderr
    breakdown = out.stdout.split("Where the command's time went")[1]
    rows = [line for line in breakdown.splitlines() if line.startswith("| warm | command |")]
    assert len(rows) == 1, breakdown
    shares = [float(x) for x in rows[0].strip("|").split("|")[2:]]
    assert len(shares) == 7 and all(0 <= x <= 1 for x in shares), rows


def test_a_failing_loader_leaves_the_others_measured(tmp_path):
    out = side_by_side(sample(tmp_path), "--loaders", "fresh_memory,command", "--runs", 2, commands=tmp_path / "nowhere")
    assert out.returncode == 1
    assert "| warm | command | failed |" in out.stdout and "| cold | command | failed |" in out.stdout
    assert "| warm | fresh_memory | " in out.stdout and "| cold | fresh_memory | " in out.stdout
    assert "command failed: warm: " in out.stdout and "nowhere" in out.stdout
    assert out.stderr.count("cold: fresh_memory ") == 2, out.stderr  # measured to the end
    assert out.stderr.count("command failed") == 1, out.stderr  # and the failed one tried once


def test_budget_cuts_the_runs_short(tmp_path):
    out = side_by_side(sample(tmp_path), "--loaders", "command", "--runs", 100000, "--budget-s", 2)
    assert out.returncode == 0, out.stderr
    assert "runs fit in the budget" in out.stderr
    warm = int(out.stdout.split(" warm and ")[0].split()[-1])
    cold = int(out.stdout.split(" warm and ")[1].split()[0])
    assert 1 <= warm < 100000 and 1 <= cold < 100000


def test_variants_side_by_side(tmp_path):
    checkpoint = sample(tmp_path)
    out = subprocess.run([sys.executable, str(VARIANTS), str(checkpoint), "--bin", str(COMMAND.parent), "--runs", "2",
                          "defaults=", "small=--staging-mib 2 --slot-mib 1", "refused=--staging-mib 1 --slot-mib 3"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 1, out.stderr  # the refused variant
    assert "2 runs each" in out.stdout
    rows = {line.split("|")[1].strip(): line for line in out.stdout.splitlines() if line.startswith("| ") and "---" not in line}
    assert "queue full" in rows["variant"]
    for label in ("defaults", "small"):
        cells = [c.strip() for c in rows[label].strip("|").split("|")]
        assert float(cells[2]) > 0 and len(cells) == 4 + 7, rows[label]
        assert all(0 <= float(x) <= 1 for x in cells[4:]), rows[label]
    assert "| refused | `--staging-mib 1 --slot-mib 3` | failed |" in rows["refused"]
    assert "refused failed: --slot-mib: must be at most half of --staging-mib" in out.stdout
    assert out.stderr.count("small: ") == 3  # the untimed warm run and two timed ones


def test_ceilings_are_checked_before_any_run(tmp_path):
    for wrong in (",", "55,0", "fast,slow"):
        out = side_by_side(tmp_path, "--ceilings", wrong)
        assert out.returncode == 2 and "--ceilings" in out.stderr, out.stderr
