"""Under pytest-xdist each worker has a lab of its own: its own KMS endpoint, data directory and
processes. Every worker notes its lab (conftest.py); this test waits, bounded, for the others' notes."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


def test_each_worker_has_its_own_lab(lab_record: dict[str, Any], lab_records_dir: Path) -> None:
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    deadline = time.monotonic() + 180
    records = []
    while time.monotonic() < deadline:
        records = [json.loads(path.read_text()) for path in sorted(lab_records_dir.glob("lab-*.json"))]
        if len(records) >= workers:
            break
        time.sleep(0.2)
    assert lab_record in records
    assert len(records) == workers, records
    for field in ("worker", "kms_endpoint", "data_dir"):
        assert len({record[field] for record in records}) == workers, (field, records)
    pids = [pid for record in records for pid in record["pids"]]
    assert len(pids) == len(set(pids)), records
