"""Start-up as a user meets it, with real ``xkslab up`` processes: a port that cannot be bound is one line
that names its setting, and a first start that fails leaves no half-built data directory; ``--free-ports``
takes every port from the system; Ctrl-C at any moment of a start stops it with one line at most and no
traceback, and nothing left running; a second ``dsm serve`` beside a lab is refused in the user's words."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests import deadlines
from tests.integration.test_detach import FREE_PORTS, HANG_S, cleanup, lab_processes, xkslab

__all__ = ["cleanup"]  # the fixture, used here by name

POLL_S = 0.02
XKSLAB = [sys.executable, "-m", "xkslab"]
# The services' own log lines (Logs and health in README: "2026-12-07T08:26:57.006Z INFO dsm: ...").
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z (DEBUG|INFO|WARNING) ")


def said(stderr: str) -> list[str]:
    """What the command itself says on stderr, beside the services' informational log lines."""
    return [line for line in stderr.strip().splitlines() if not LOG_LINE.match(line)]


def ports_of(data: dict[str, object]) -> set[int]:
    urls = [
        url
        for service in ("dsm", "xks", "kms")
        for key in ("url", "https_url", "endpoint_url")
        if isinstance(url := (data[service] or {}).get(key), str)  # type: ignore[union-attr]
    ]
    return {int(urlsplit(url).port or 0) for url in urls}


def test_a_port_in_use_names_its_setting_and_free_ports_avoids_it(
    tmp_path: Path, cleanup: list[Path]
) -> None:
    lab = tmp_path / "lab"
    cleanup.append(lab)
    with socket.socket() as taken:  # held for the whole test: the lab must not get it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        started = xkslab(lab, *FREE_PORTS, "--set", f"dsm.port={port}", "up")
        assert started.returncode == 1
        assert said(started.stderr) == [
            f"Error: dsm.port {port} is in use (set dsm.port or use --free-ports)"
        ]
        assert not lab.exists(), "a first start that failed left a data directory behind"
        assert lab_processes(lab) == []

        # One switch: every port from the system, whatever the settings say.
        up = xkslab(lab, *deadlines.set_args(), "--set", f"dsm.port={port}", "up", "--detach", "--free-ports")
        assert up.returncode == 0, up.stderr
        data = json.loads((lab / "up.json").read_text())
        bound = ports_of(data)
        assert len(bound) == 5 and port not in bound and all(bound)
        env = json.loads(xkslab(lab, "env", "--format", "json").stdout)
        assert env["AWS_ENDPOINT_URL_KMS"] == data["kms"]["endpoint_url"]
        assert env["FORTANIX_API_ENDPOINT"] == data["dsm"]["https_url"]

        # A second DSM beside the running lab: the user's words, no class name.
        beside = xkslab(lab, "dsm", "serve", "--free-ports")
        assert beside.returncode == 1
        [line] = said(beside.stderr)
        assert line.startswith("Error: the dsm service of ") and "LabError" not in line
        assert f"is already running (pid {data['service_pids']['dsm']})" in line

        assert xkslab(lab, "down").returncode == 0
        # A lab that exists: its port taken, one line, and its data directory kept whole.
        files = sorted(p.name for p in lab.iterdir())
        again = xkslab(lab, *FREE_PORTS, "--set", f"kms.port={port}", "up")
        assert again.returncode == 1
        assert said(again.stderr) == [f"Error: kms.port {port} is in use (set kms.port or use --free-ports)"]
        assert sorted(p.name for p in lab.iterdir()) == files
        assert lab_processes(lab) == []

        # The same switch on a service alone: its ready file tells the ports really bound.
        ready, log = tmp_path / "kms.json", tmp_path / "kms.log"
        serve_args = ["kms", "serve", "--free-ports", "--ready-file", str(ready)]
        with log.open("wb") as out:
            alone = subprocess.Popen(
                [*XKSLAB, "--data-dir", str(lab), "--set", f"kms.port={port}", *serve_args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            _wait_until(alone, ready.exists)
            assert alone.poll() is None, log.read_text()
            [url] = json.loads(ready.read_text())["urls"]
            assert urlsplit(url).port not in (port, None)
        finally:
            alone.terminate()
            alone.wait(HANG_S)


def _wait_until(up: subprocess.Popen[bytes], condition: Callable[[], bool]) -> None:
    """Until ``condition`` holds or up has exited (bounded by up itself, and HANG_S for a hang)."""
    deadline = time.monotonic() + HANG_S
    while not condition() and up.poll() is None:
        assert time.monotonic() < deadline, "up neither got there nor exited"
        time.sleep(POLL_S)


# The moments of a first start at which Ctrl-C is pressed: as the interpreter starts, once the data
# directory has its config file (init under way), once the first service listens, and once ready.
STAGES: dict[str, Callable[[Path], bool]] = {
    "spawned": lambda lab: True,
    "initialising": lambda lab: (lab / "xkslab.toml").exists(),
    "a service listens": lambda lab: any((lab / "run" / f"{s}.json").exists() for s in ("dsm", "kms")),
    "ready": lambda lab: (lab / "up.json").exists(),
}


@pytest.mark.parametrize("stage", list(STAGES))
def test_ctrl_c_at_any_moment_of_start_up(stage: str, tmp_path: Path, cleanup: list[Path]) -> None:
    lab = tmp_path / "lab"
    cleanup.append(lab)
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        # A session of its own: the SIGINT below goes to its process group, as a terminal's Ctrl-C goes
        # to the foreground job.
        up = subprocess.Popen(
            [sys.executable, "-m", "xkslab", "--data-dir", str(lab), *FREE_PORTS, "up"],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
    try:
        _wait_until(up, lambda: STAGES[stage](lab))
        assert up.poll() is None, f"up exited before {stage}: {err.read_text()}"
        os.killpg(up.pid, signal.SIGINT)
        up.wait(HANG_S)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
    printed, stderr = out.read_text(), err.read_text()
    for text in (printed, stderr):
        assert "Traceback" not in text and "KeyboardInterrupt" not in text and "Aborted!" not in text
    assert lab_processes(lab) == []
    if stage == "ready":  # a lab stopped the normal way: kept for the next start
        assert up.returncode == 0, stderr
        assert said(stderr) == [] and (lab / "xkslab.toml").exists() and not (lab / "up.json").exists()
        return
    # SIGINT before Python's handler is in place ends the interpreter silently (status -2).
    assert up.returncode in (130, -signal.SIGINT), stderr
    assert said(stderr) in ([], ["xkslab: interrupted"])
    assert not lab.exists(), f"a first start interrupted at '{stage}' left {sorted(os.listdir(lab))}"


def test_up_started_from_a_directory_with_an_xkslab_of_its_own_runs_the_installed_one(
    tmp_path: Path, cleanup: list[Path]
) -> None:
    """A user's checkout or project may hold a directory named ``xkslab``: the services ``up`` starts
    import the installed package, not the one in the current directory (``python -P``)."""
    work, lab = tmp_path / "work", tmp_path / "lab"
    (work / "xkslab").mkdir(parents=True)
    (work / "xkslab" / "__init__.py").write_text('raise SystemExit("the xkslab of the current directory")\n')
    (work / "xkslab" / "__main__.py").write_text('raise SystemExit("the xkslab of the current directory")\n')
    cleanup.append(lab)
    up = subprocess.run(
        [sys.executable, "-P", "-m", "xkslab", "--data-dir", str(lab), *FREE_PORTS, "up", "--detach"],
        cwd=work,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=HANG_S,
    )
    assert up.returncode == 0, up.stderr
    assert "the xkslab of the current directory" not in up.stderr + (lab / "run" / "up.log").read_text()
    assert xkslab(lab, "down").returncode == 0
