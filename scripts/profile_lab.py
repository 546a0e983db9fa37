#!/usr/bin/env python
"""Where a lab spends its time under load: CPU per request of each service process, and (with --py-spy)
the busiest functions of each, from py-spy's raw samples.

    python scripts/profile_lab.py xks-encrypt --connections 32 --seconds 10 [--py-spy] [--rate 300]

Starts `xkslab up` on free ports in a temporary data directory (as `xkslab bench` does), warms it, then
drives one bench scenario with wrk. CPU per request (utime + stime from /proc over the requests served)
is a steadier figure than requests/s on a shared machine: it does not depend on what else runs there.
It does depend on the rate served (a fixed cost per second is spread over fewer requests at a lower
rate), so `--rate R` offers R requests/s in total (wrk paced per thread) to compare two set-ups at the
same served rate, and each service's idle cost per second is printed apart from its net cost per
request. The last line is the run's figures as JSON.
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

from xkslab.bench import SCENARIOS, wrk
from xkslab.bench.cpu import cpu_seconds, loop_and_threads, split_cost, switches, thread_cpu
from xkslab.bench.lab import Lab
from xkslab.bench.run import _create_pg_database, _drop_pg_database, _pool_for

# Leaf frames that are waiting, not working: the event loop in epoll, aiosqlite's idle queue get.
IDLE_FRAMES = ("Runner.run (asyncio/runners.py:", "_connection_worker_thread (aiosqlite/core.py:59)")
IDLE_S = 3.0


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
    parser.add_argument(
        "--rate", type=float, default=0.0, help="offer this many requests/s in total (0: full rate)"
    )
    parser.add_argument("--py-spy", action="store_true", help="also sample each service with py-spy")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument(
        "--workers", type=int, default=1, help="`up --workers N`: each figure is the sum over its workers"
    )
    parser.add_argument(
        "--postgres-dsn", default="", help="run the lab on a scratch database of this server (dropped after)"
    )
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a lab setting")
    args = parser.parse_args()
    settings = dict(item.split("=", 1) for item in args.set)
    scratch = None
    if args.postgres_dsn:
        scratch, settings["database.url"] = _create_pg_database(args.postgres_dsn)
    try:
        profile(args, settings)
    finally:
        if scratch is not None:
            _drop_pg_database(args.postgres_dsn, scratch)


def profile(args: argparse.Namespace, settings: dict[str, str]) -> None:
    work = Path(tempfile.mkdtemp(prefix="xkslab-profile-"))
    up_args = ("--workers", str(args.workers)) if args.workers > 1 else ()
    with Lab(work / "data", work / "lab.log", settings, up_args) as lab:
        url, pool = _pool_for(args.scenario, lab.info, 64)
        pids: dict[str, int] = lab.info["service_pids"]
        # With --workers a service is its supervisor and its workers: its CPU is theirs summed.
        group = {name: [pid, *lab.info.get("worker_pids", {}).get(name, [])] for name, pid in pids.items()}
        warm = wrk.WrkSettings(threads=2, connections=args.connections, duration_s=2)
        wrk.run(url, pool, warm)
        # What each service spends with no load at all (heartbeats, cache polls): a cost per second,
        # not per request, which weighs more per request the fewer requests a second are served.
        quiet = {name: sum(cpu_seconds(p) for p in members) for name, members in group.items()}
        time.sleep(IDLE_S)
        idle = {name: sum(cpu_seconds(p) for p in members) - quiet[name] for name, members in group.items()}
        spies = {}
        if args.py_spy:
            for name, pid in pids.items():
                command = ["py-spy", "record", "-r", "200", "-f", "raw", "--nonblocking", "-p", str(pid)]
                command += ["-d", str(int(args.seconds) + 1), "-o", str(work / f"{name}.txt")]
                command += ["--subprocesses"] if args.workers > 1 else []
                spies[name] = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        before = {name: sum(cpu_seconds(p) for p in members) for name, members in group.items()}
        switched = {name: sum(switches(p) for p in members) for name, members in group.items()}
        threads = {p: thread_cpu(p) for members in group.values() for p in members}
        started = time.monotonic()
        measured = wrk.WrkSettings(
            threads=2, connections=args.connections, duration_s=args.seconds, rate=args.rate
        )
        result = wrk.run(url, pool, measured)
        elapsed = time.monotonic() - started
        after = {name: sum(cpu_seconds(p) for p in members) for name, members in group.items()}
        split = {p: loop_and_threads(threads[p], thread_cpu(p), p) for p in threads}
        switched = {
            name: sum(switches(p) for p in members) - switched[name] for name, members in group.items()
        }
        for spy in spies.values():
            spy.wait()
    summary = {k: result[k] for k in ("requests", "rps", "p50_ms", "p90_ms", "p99_ms", "non2xx")}
    summary["offered_rps"] = args.rate or None
    print(json.dumps(summary))
    figures: dict[str, dict[str, float]] = {}
    for name in pids:
        used = after[name] - before[name]
        cost = split_cost(used, idle[name] / IDLE_S, elapsed, max(1, result["requests"]))
        processes = len(group[name])
        per_switch = switched[name] / max(1, result["requests"])
        # Each process's event loop and its other threads (the audit writer's, the drivers'), by the
        # scheduler's runtime: where a second process's extra CPU goes.
        loop_us = 1e6 * sum(split[p][0] for p in group[name]) / max(1, result["requests"])
        other_us = 1e6 * sum(split[p][1] for p in group[name]) / max(1, result["requests"])
        figures[name] = {
            "us_per_request": round(cost.gross_us, 1),
            "net_us_per_request": round(cost.net_us, 1),
            "fixed_us_per_request": round(cost.fixed_us, 1),
            "idle_core_pct": round(100 * idle[name] / IDLE_S, 2),
            "core_pct": round(100 * used / elapsed, 1),
            "switches_per_request": round(per_switch, 2),
            "loop_us_per_request": round(loop_us, 1),
            "threads_us_per_request": round(other_us, 1),
        }
        print(
            f"{name}: {100 * used / elapsed:5.1f}% of a core, {cost.gross_us:6.0f} us CPU per request"
            f" = {cost.net_us:6.0f} net + {cost.fixed_us:4.0f} fixed"
            f" ({processes} process{'es' if processes > 1 else ''};"
            f" idle {100 * idle[name] / IDLE_S:.1f}% of a core;"
            f" {per_switch:.2f} context switches per request;"
            f" event loops {loop_us:.0f} us, other threads {other_us:.0f} us)"
        )
    for name in spies:
        print(f"== {name} (py-spy, busy samples only)")
        print("\n".join(busiest(work / f"{name}.txt", args.top)))
    load = os.getloadavg()[0]
    print(json.dumps({**summary, "workers": args.workers, "load1": round(load, 2), "services": figures}))


if __name__ == "__main__":
    main()
