"""A killed `xkslab up` leaves nothing running: its services stop with it, `down` stops whatever the data
directory's locks still name, and the next `up` starts. Real processes on loopback, free ports.

Every wait here is bounded by the commands' own bounds (``down``'s) or by HANG_S, which only turns a
hang into a failure."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_detach import running, xkslab
from tests.net import refused

PORTS = ("dsm.port", "dsm.https_port", "xks.port", "xks.https_port", "kms.port")
FREE_PORTS = [arg for name in PORTS for arg in ("--set", f"{name}=0")]
HANG_S = 300


def gone(pids: list[int]) -> bool:
    """Until every pid has ended (bounded by HANG_S)."""
    deadline = time.monotonic() + HANG_S
    while any(running(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def start_up(lab: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "xkslab", "--data-dir", str(lab), *FREE_PORTS, "up"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_ready(up: subprocess.Popen[bytes], lab: Path, log: Path) -> dict[str, Any]:
    deadline = time.monotonic() + HANG_S
    while time.monotonic() < deadline:
        assert up.poll() is None, log.read_text()
        try:
            data = json.loads((lab / "up.json").read_text())
        except (OSError, ValueError):
            data = None
        if isinstance(data, dict) and data.get("pid") == up.pid and "aws_env" in data:
            return data
        time.sleep(0.1)
    raise AssertionError(f"xkslab up was not ready:\n{log.read_text()}")


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Path]:
    lab = tmp_path / "lab"
    yield lab
    xkslab(lab, "down")


def test_a_sigkilled_up_leaves_no_service_and_the_next_up_starts(lab: Path, tmp_path: Path) -> None:
    log = tmp_path / "up.log"
    up = start_up(lab, log)
    try:
        data = wait_ready(up, lab, log)
        services = list(data["service_pids"].values())
        urls = [data["dsm"]["url"], data["xks"]["url"], data["kms"]["endpoint_url"]]
        os.kill(up.pid, signal.SIGKILL)
        up.wait()
        # Each service saw its supervisor die and stopped (before: they ran on under PID 1).
        assert gone(services), [pid for pid in services if running(pid)]
        assert all(refused(url) for url in urls)
        down = xkslab(lab, "down")
        assert down.returncode == 0, down.stderr
        assert "no xkslab lab is running" in down.stdout
        assert not (lab / "up.json").exists()  # the killed up's stale file is tidied
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    again = start_up(lab, tmp_path / "again.log")
    try:
        data = wait_ready(again, lab, tmp_path / "again.log")  # before: "dsm service already running"
        down = xkslab(lab, "down")
        assert down.returncode == 0 and f"(pid {again.pid})" in down.stdout, down.stderr
        assert again.wait(HANG_S) == 0
        assert gone(list(data["service_pids"].values()))
    finally:
        if again.poll() is None:
            again.kill()
            again.wait()


def test_down_stops_services_left_running_without_their_up(lab: Path, tmp_path: Path) -> None:
    """Orphans left some other way (here: a service started alone and abandoned by its parent, as an
    older xkslab's killed up left them): no up holds the data directory, and down still stops them."""
    assert xkslab(lab, "init").returncode == 0
    ready = tmp_path / "dsm.json"
    # A shell that starts the service in the background and exits at once: the service is reparented,
    # as the services of a killed up were.
    subprocess.run(
        [
            "sh",
            "-c",
            '"$0" -m xkslab --data-dir "$1" --set dsm.port=0 --set dsm.https_port=0 dsm serve '
            '--ready-file "$2" </dev/null >"$3" 2>&1 &',
            sys.executable,
            str(lab),
            str(ready),
            str(tmp_path / "dsm.log"),
        ],
        check=True,
        timeout=HANG_S,
    )
    deadline = time.monotonic() + HANG_S
    while not ready.exists():
        assert time.monotonic() < deadline, (tmp_path / "dsm.log").read_text()
        time.sleep(0.1)
    served = json.loads(ready.read_text())
    orphan, url = served["pid"], served["urls"][0]
    assert running(orphan) and not refused(url)
    down = xkslab(lab, "down")
    assert down.returncode == 0, down.stderr
    assert f"without their lab (pid {orphan})" in down.stdout  # before: "no xkslab lab is running"
    assert not running(orphan) and refused(url)
    assert "Traceback" not in (tmp_path / "dsm.log").read_text()
