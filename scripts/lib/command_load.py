"""One `instanttensor load --json` run and where its time went, and rounds of runs within a time
budget, for the scripts that time loads side by side (bench/python_side_by_side.py,
bench/load_variants.py)."""
import json
import statistics
import subprocess
import sys
import time

# LoadStats::times, as `load --json` names them under "times", in the order tables show them.
TIMES = ("landing", "storage_idle", "copies_idle", "staging_full", "queue_full", "sink_full", "consumer")


class LoadFailed(Exception):
    """A run failed: the message says all the loader said, `summary` what a table's footnote shows."""

    def __init__(self, message, summary=None):
        super().__init__(message)
        self.summary = summary or message


def run_load(command, device, checkpoint, extra=()):
    """The report of `command load --device DEVICE EXTRA --json CHECKPOINT` (device: cpu or an ordinal)."""
    try:
        out = subprocess.run([str(command), "load", "--device", str(device), *extra, "--json", str(checkpoint)],
                             capture_output=True, text=True)
    except OSError as e:  # no command there
        raise LoadFailed(str(e)) from e
    if out.returncode != 0:  # the command says why in a line or two
        said = out.stderr.strip()[-2000:]
        raise LoadFailed(f"exit status {out.returncode}: {said}", " / ".join(said.splitlines())[:300])
    return read_report(out.stdout, ("bytes", "seconds", "total_seconds", "times"))


def read_report(text, keys):
    """The JSON object a run printed, which must hold `keys`; LoadFailed where it is not one (a
    command older than this script, a loader that printed something else)."""
    try:
        report = json.loads(text)
        missing = [k for k in keys if k not in report]
    except (ValueError, TypeError) as e:
        raise LoadFailed(f"no report: {e}: {text[-300:]!r}") from e
    if missing:
        raise LoadFailed(f"the report lacks {', '.join(missing)}: {text[-300:]!r}")
    return report


def time_shares(report):
    """Each of LoadStats::times over the load's seconds (None for a load that took none)."""
    return {k: report["times"][k] / report["seconds"] for k in TIMES} if report["seconds"] > 0 else None


def budgeted_rounds(runs, deadline=None, what=""):
    """Round numbers, `runs` of them, ending early once another round as long as the last would end
    past `deadline` (time.monotonic(); None: no bound), one round at least; says so on stderr,
    after `what`."""
    for number in range(runs):
        began = time.monotonic()
        yield number
        took = time.monotonic() - began
        if deadline is not None and number + 1 < runs and time.monotonic() + took > deadline:
            print(f"{what}{number + 1} of {runs} runs fit in the budget", file=sys.stderr, flush=True)
            return


def median_shares(runs):
    """Table cells: the median over `runs` (time_shares of each) of each of TIMES; empty without runs."""
    return " | ".join(f"{statistics.median(run[k] for run in runs):.2f}" if runs else "" for k in TIMES)


def exit_if_failed(failures):
    """Under a table, what each failed loader said ({name: summary}); exit status 1 if any failed."""
    if failures:
        print()
        for name, what in failures.items():
            print(f"{name} failed: {what}")
        sys.exit(1)
