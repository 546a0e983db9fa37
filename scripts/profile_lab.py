#!/usr/bin/env python
"""Where a lab spends its time under load: CPU per request of each service process, and (with --py-spy)
the busiest functions of each, from py-spy's raw samples.

    python scripts/profile_lab.py xks-encrypt --connections 32 --seconds 10 [--py-spy]

Starts `xkslab up` on free ports in a temporary data directory (as `xkslab bench` does), warms it, then
drives one bench scenario with wrk. CPU per request (utime + stime from /proc over the requests served)
is a steadier figure than requests/s on a shared machine: it does not depend on what else runs there.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

from xkslab.bench import wrk
from xkslab.bench.lab import Lab
from xkslab.bench.run import SCENARIOS, _pool_for

# Leaf frames that are waiting, not working: the event loop in epoll, aiosqlite's idle queue get.
IDLE_FRAMES = ("Runner.run (asyncio/runners.py:", "_connection_worker_thread (aiosqlite/core.py:59)")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def busiest(raw: Path, top: int) -> list[str]:
    """Self and inclusive shares of py-spy raw stacks, idle event-loop and driver-queue waits left out."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    busy = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        leaf = stack.rsplit(";", 1)[-1].strip()
        if not leaf or leaf.startswith(IDLE_FRAMES):
            continue
        frames = [re.sub(r":\d+\)", ")", f) for f in stack.split(";")]
        n = int(count)
        busy += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not busy:
        return ["  (no busy samples)"]
    lines = [f"  self {100 * n / busy:5.1f}%  {f[:120]}" for f, n in own.most_common(top)]
    lines += [f"  incl {100 * n / busy:5.1f}%  {f[:120]}" for f, n in inclusive.most_common(top * 3)]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("scenario", choices=[s for s in SCENARIOS if not s.endswith("-postgres")])
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--py-spy", action="store_true", help="also sample each service with py-spy")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument(
        "--idle-seconds",
        type=float,
        default=0.0,
        help="first measure each service idle this long and also print CPU per request net of it",
    )
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a lab setting")
    args = parser.parse_args()
    settings = dict(item.split("=", 1) for item in args.set)
    work = Path(tempfile.mkdtemp(prefix="xkslab-profile-"))
    with Lab(work / "data", work / "lab.log", settings) as lab:
        url, pool = _pool_for(args.scenario, lab.info, 64)
        pids: dict[str, int] = lab.info["service_pids"]
        warm = wrk.WrkSettings(threads=2, connections=args.connections, duration_s=2)
        wrk.run(url, pool, warm)
        idle: dict[str, float] = {}
        if args.idle_seconds > 0:
            # What a service spends with no request (cache polls, heartbeats, checkpoints), per second: at
            # a low request rate on a loaded machine it is a large and varying share of CPU per request.
            quiet = {name: cpu_seconds(pid) for name, pid in pids.items()}
            time.sleep(args.idle_seconds)
            idle = {name: (cpu_seconds(pid) - quiet[name]) / args.idle_seconds for name, pid in pids.items()}
        spies = {}
        if args.py_spy:
            for name, pid in pids.items():
                command = ["py-spy", "record", "-r", "200", "-f", "raw", "--nonblocking", "-p", str(pid)]
                command += ["-d", str(int(args.seconds) + 1), "-o", str(work / f"{name}.txt")]
                spies[name] = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        started = time.monotonic()
        result = wrk.run(
            url, pool, wrk.WrkSettings(threads=2, connections=args.connections, duration_s=args.seconds)
        )
        elapsed = time.monotonic() - started
        after = {name: cpu_seconds(pid) for name, pid in pids.items()}
        for spy in spies.values():
            spy.wait()
    summary = {k: result[k] for k in ("requests", "rps", "p50_ms", "p90_ms", "p99_ms", "non2xx")}
    print(json.dumps(summary))
    for name in pids:
        used = after[name] - before[name]
        per_request = 1e6 * used / max(1, result["requests"])
        net = ""
        if name in idle:
            net_us = 1e6 * (used - idle[name] * elapsed) / max(1, result["requests"])
            net = f", {net_us:6.0f} us net of {100 * idle[name]:.1f}% idle"
        print(f"{name}: {100 * used / elapsed:5.1f}% of a core, {per_request:6.0f} us CPU per request{net}")
    for name in spies:
        print(f"== {name} (py-spy, busy samples only)")
        print("\n".join(busiest(work / f"{name}.txt", args.top)))


if __name__ == "__main__":
    main()
