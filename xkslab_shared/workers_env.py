"""How a ``serve --workers N`` worker learns N: its supervisor (xkslab/lab/workers.py) sets
``XKSLAB_WORKER_COUNT`` in every worker's environment. A service that divides something among its
workers without a registry row to count them by (the KMS emulator's per-store quota) reads it here."""

from __future__ import annotations

import os

WORKER_COUNT_ENV = "XKSLAB_WORKER_COUNT"


def worker_count() -> int:
    """The number of workers this process is one of: 1 outside ``--workers`` (or on a value that is not a
    positive number, which only a hand-set environment can give)."""
    text = os.environ.get(WORKER_COUNT_ENV, "1")
    return int(text) if text.isdigit() and int(text) > 0 else 1
