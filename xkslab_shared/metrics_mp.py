"""One ``/metrics`` scrape for the whole service when it runs as several workers (``serve --workers N``,
xkslab/lab/workers.py): the supervisor gives its workers a directory of their own in
``PROMETHEUS_MULTIPROC_DIR`` (made at start, removed at stop), prometheus_client then keeps every
Counter, Histogram and Gauge of a worker in a file there, and a scrape of any worker reads them all:
counters and histograms summed over the workers (a worker that exited still counts what it served),
gauges as each one's ``multiprocess_mode`` says.

Figures a service reads from its own memory at scrape time (custom collectors, e.g. the DSM's audit
writer and cache counters) are not in those files: they stay the answering worker's own. Without the
variable (one process, the default) a scrape is the process's registry, as before.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def render(registry: CollectorRegistry, own: Iterable[Collector] = ()) -> bytes:
    """The scrape: ``registry`` alone, or with workers every worker's metrics and this one's ``own``
    collectors (those of ``registry`` that read memory at scrape time)."""
    path = multiprocess_dir()
    if path is None:
        return generate_latest(registry)
    combined = CollectorRegistry()
    MultiProcessCollector(combined, path)  # type: ignore[no-untyped-call]
    for collector in own:
        combined.register(collector)
    return generate_latest(combined)
