#!/usr/bin/env python
"""How long the commands that do not serve take, as a user types them (a new process each time):

    python scripts/cli_startup.py [--runs 30] [--data-dir DIR] [--target-s 0.3]

Times ``xkslab --help``, ``--version``, ``env`` and ``wait`` against a running lab (the one on --data-dir,
or one this script starts with ``up --detach --free-ports`` in a temporary directory and stops at the
end), and ``down`` on a data directory where nothing runs (against a lab, ``down`` measures the lab's
stop, not the command line). Prints min, p50, p90 and max per command, and exits 1 when a p90 is over
--target-s (0.3 s: issue 20's target on a 2-core machine). Each run is the ``xkslab`` console script of
this interpreter's environment, as a shell would start it.

Where the time goes, for one command:

    python -X importtime -m xkslab env 2> imports.txt
    sort -t'|' -k2 -n imports.txt | tail -20        # cumulative microseconds, the slowest imports last

A command module imports the services, SQLAlchemy or aiohttp only inside the function that uses them
(tests/unit/test_cli_imports.py keeps it so).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

XKSLAB = Path(sys.executable).with_name("xkslab")


def run(*args: str, check: bool = True, program: str = str(XKSLAB)) -> subprocess.CompletedProcess[str]:
    return subprocess.run([program, *args], capture_output=True, text=True, check=check, timeout=900)


@contextlib.contextmanager
def lab(data_dir: Path | None) -> Iterator[Path]:
    if data_dir is not None:
        yield data_dir
        return
    with tempfile.TemporaryDirectory(prefix="xkslab-cli-startup-") as tmp:
        started = Path(tmp) / "lab"
        run("--data-dir", str(started), "up", "--detach", "--free-ports")
        try:
            yield started
        finally:
            run("--data-dir", str(started), "down", check=False)


def timed(args: list[str], runs: int, program: str = str(XKSLAB)) -> list[float]:
    run(*args, check=False, program=program)  # the first run fills the page cache; not counted
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run(*args, check=False, program=program)
        times.append(time.perf_counter() - start)
    return times


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--data-dir", type=Path, default=None, help="a running lab's (default: start one)")
    parser.add_argument("--target-s", type=float, default=0.3)
    options = parser.parse_args()
    with lab(options.data_dir) as data_dir, tempfile.TemporaryDirectory() as empty:
        commands = {
            "xkslab --help": ["--help"],
            "xkslab --version": ["--version"],
            "xkslab env": ["--data-dir", str(data_dir), "env"],
            "xkslab wait": ["--data-dir", str(data_dir), "wait", "--timeout", "10"],
            "xkslab down (nothing running)": ["--data-dir", empty, "down"],
        }
        print(f"{options.runs} runs each, {XKSLAB}")
        print(f"{'command':32} {'min':>7} {'p50':>7} {'p90':>7} {'max':>7}")
        # The floor under every command: the interpreter starting and exiting (not held to the target).
        bare = timed(["-c", "pass"], options.runs, program=sys.executable)
        print(
            f"{'python -c pass (the floor)':32} {min(bare):7.3f} {percentile(bare, 50):7.3f} "
            f"{percentile(bare, 90):7.3f} {max(bare):7.3f}"
        )
        over = []
        for name, args in commands.items():
            times = timed(args, options.runs)
            p90 = percentile(times, 90)
            print(f"{name:32} {min(times):7.3f} {percentile(times, 50):7.3f} {p90:7.3f} {max(times):7.3f}")
            if p90 > options.target_s:
                over.append(name)
    if over:
        print(f"over {options.target_s:g} s at p90: {', '.join(over)}")
        return 1
    print(f"every p90 under {options.target_s:g} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
