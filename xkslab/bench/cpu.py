"""CPU of service processes from /proc, and its split into a cost per second and a cost per request."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def switches(pid: int) -> int:
    """Context switches, voluntary and not: how often the process gave up or lost its core."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return sum(int(line.split()[1]) for line in status if line.split(":")[0].endswith("ctxt_switches"))


@dataclass(frozen=True)
class CostSplit:
    gross_us: float  # CPU over the run per request served
    fixed_us: float  # the part the idle cost per second accounts for, spread over those requests
    net_us: float  # what is left: the cost of a request itself


def split_cost(used_s: float, idle_share: float, elapsed_s: float, requests: int) -> CostSplit:
    """Split the CPU a service used over a run (``used_s`` in ``elapsed_s``) into its fixed per-second
    cost (``idle_share``: CPU-seconds per second with no load: heartbeats, cache polls, timers) and the
    rest, per request. The fixed part weighs more per request the fewer requests a second are served,
    which is why two set-ups are compared at the same served rate and on the net figure."""
    if requests <= 0:
        raise ValueError("no request served: nothing to divide by")
    fixed = idle_share * elapsed_s
    return CostSplit(1e6 * used_s / requests, 1e6 * fixed / requests, 1e6 * (used_s - fixed) / requests)


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each live thread of ``pid`` (the scheduler's nanosecond runtime, not clock ticks).
    A thread that ended is missing: compare two snapshots on the threads both hold."""
    runtimes: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            runtimes[int(task.name)] = int((task / "schedstat").read_text().split()[0]) / 1e9
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue  # ended between the listing and the read, or no scheduler statistics here
    return runtimes


def loop_and_threads(before: dict[int, float], after: dict[int, float], pid: int) -> tuple[float, float]:
    """CPU seconds between two ``thread_cpu`` snapshots of ``pid``: its main thread (the event loop)
    and its other threads (the audit writer, the database drivers' threads) summed."""
    spent = {tid: after[tid] - before.get(tid, 0.0) for tid in after}
    main = spent.pop(pid, 0.0)
    return main, sum(spent.values())
