"""The lab comes from xkslab's pytest plugin: one per session, so one per pytest-xdist worker. Where
xkslab is installed the plugin is loaded by its entry point already; naming it here too is harmless and
keeps the suite working from a source checkout."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = ["xkslab.pytest_plugin"]


@pytest.fixture(scope="session")
def lab_records_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where each worker notes which lab it got: ENVELOPE_APP_LAB_RECORDS, else the run's temporary
    directory, which xdist's workers share (each has its own below it)."""
    chosen = os.environ.get("ENVELOPE_APP_LAB_RECORDS")
    base = tmp_path_factory.getbasetemp()
    directory = Path(chosen) if chosen else base.parent if hasattr(request.config, "workerinput") else base
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture(scope="session", autouse=True)
def lab_record(xkslab_lab: Any, lab_records_dir: Path, request: pytest.FixtureRequest) -> dict[str, Any]:
    worker = getattr(request.config, "workerinput", {}).get("workerid", "main")
    record = {
        "worker": worker,
        "kms_endpoint": xkslab_lab.kms_endpoint,
        "data_dir": str(xkslab_lab.data_dir),
        "pids": sorted({xkslab_lab.data["pid"], *xkslab_lab.data["service_pids"].values()}),
    }
    tmp = lab_records_dir / f".lab-{worker}.json.tmp"
    tmp.write_text(json.dumps(record))
    # Whole or not at all: the other workers read these while this one writes.
    tmp.replace(lab_records_dir / f"lab-{worker}.json")
    return record
