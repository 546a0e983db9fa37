"""Driving a lab from scripts: ``xkslab up --detach`` (a daemonized ``up``), ``xkslab down``, ``xkslab wait``
and what ``xkslab env`` reads.

Which process runs a data directory's lab is decided by the flock on ``up.lock`` (supervisor.py), not by
the PID file: a PID file outlives a killed lab and its pid may be reused, a lock dies with its holder. The
holder writes its pid into the lock file, so ``down`` finds the lab whoever started it (``--detach``, a
terminal, a test). ``up.json`` is trusted only while the pid it names is alive and is an xkslab process,
for the same reason. ``wait`` never probes the lock: its probe, repeated while an ``up`` starts, could
collide with that ``up`` taking the lock and make it refuse to start.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

from xkslab.lab.files import LOCK_FILE, UP_FILE, LabError

RUN_DIR = "run"
PID_FILE = "up.pid"
LOG_FILE = "up.log"
START_TIMEOUT_S = 600.0  # a bound, not a budget: the services' own start timeouts come first
STOP_TIMEOUT_S = 60.0  # up gives each of its three services 15 s to stop
KILL_TIMEOUT_S = 10.0
POLL_S = 0.1


def pid_file(data_dir: Path) -> Path:
    return data_dir / RUN_DIR / PID_FILE


def log_file(data_dir: Path) -> Path:
    return data_dir / RUN_DIR / LOG_FILE


# ------------------------------------------------------------------------------ processes


def alive(pid: int) -> bool:
    """Running (a zombie has finished: its parent just has not reaped it yet)."""
    if pid <= 0:  # os.kill would read 0 and -1 as groups: a corrupt file must not make them "alive"
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return not Path("/proc/self").exists()  # no /proc: os.kill's answer is all there is
    return "\nState:\tZ" not in status


def is_xkslab(pid: int) -> bool:
    """Whether ``pid`` is an xkslab process, so that a stale pid reused by something else is left alone."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return alive(pid) and not Path("/proc/self").exists()
    except OSError:
        return False
    return alive(pid) and any(b"xkslab" in arg for arg in argv)


def descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (from /proc; empty elsewhere)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            try:
                children = [int(child) for child in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue
            found += children
            todo += children
    return found


def signal_pid(pid: int, sig: int) -> None:
    if pid <= 0:  # 0 and -1 would signal a whole group, or everything this user may signal
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Poll until every pid has ended or ``timeout`` passes; the ones still running."""
    deadline = time.monotonic() + timeout
    while True:
        left = [pid for pid in pids if alive(pid)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(POLL_S)


# ------------------------------------------------------------------------------ what runs


def lab_holder(data_dir: Path) -> int | None:
    """The pid of the ``up`` that holds the data directory's lock, or None when no lab runs on it."""
    return _lock_holder(data_dir / LOCK_FILE)


def _lock_holder(path: Path) -> int | None:
    """The pid written in ``path`` by the process that holds its flock; None when nobody holds it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pass
        else:
            return None
        # The holder writes its pid just after taking the lock: give it that moment.
        deadline = time.monotonic() + KILL_TIMEOUT_S
        while True:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            if text.isdigit() and alive(int(text)):
                return int(text)
            if time.monotonic() >= deadline:
                raise LabError(f"{path} is locked but names no running process ({text or 'empty'})")
            time.sleep(POLL_S)
    finally:
        os.close(fd)


def running_services(data_dir: Path) -> list[int]:
    """The service processes (``xkslab dsm|xks|kms serve``) running on ``data_dir``, with or without an
    ``up`` above them: the holders of the per-service locks (``run/<service>.lock``, an embedded data
    directory) and the writers of live ready files (``run/<service>.json``, which up's services write on
    PostgreSQL too) whose command line names this data directory, so a reused pid is left alone."""
    data_dir = data_dir.resolve()
    run_dir = data_dir / RUN_DIR
    found: set[int] = set()
    for lock in sorted(run_dir.glob("*.lock")):
        try:
            pid = _lock_holder(lock)
        except LabError:
            continue
        if pid is not None and is_xkslab(pid):
            found.add(pid)
    for ready in sorted(run_dir.glob("*.json")):
        try:
            pid = json.loads(ready.read_text()).get("pid")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(pid, int) and is_xkslab(pid) and _names(pid, data_dir):
            found.add(pid)
    return sorted(found)


def _names(pid: int, data_dir: Path) -> bool:
    """Whether ``pid``'s command line names ``data_dir`` (up passes it to every service it starts)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # no /proc: the ready file is all there is
    except OSError:
        return False
    return str(data_dir).encode() in argv


def read_up_json(data_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((data_dir / UP_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def ready_settings(data_dir: Path) -> dict[str, Any] | None:
    """up.json of a lab that is ready now: complete, and written by an ``up`` still running."""
    data = read_up_json(data_dir)
    if not data or "aws_env" not in data or not isinstance(data.get("pid"), int):
        return None
    return data if is_xkslab(data["pid"]) else None


def require_ready(data_dir: Path) -> dict[str, Any]:
    data = ready_settings(data_dir)
    if data is None:
        raise LabError(
            f"no xkslab lab is ready on {data_dir}: start one with `xkslab up --detach` (same --data-dir)"
        )
    return data


def _healthy(url: str) -> bool:
    """The service's ``GET /health`` answers 200: it listens, and what it needs (its database, the key
    manager) answers it."""
    import urllib.request  # here: `env` and `down` import this module and need no HTTP client

    request = urllib.request.Request(url.rstrip("/") + "/health")  # noqa: S310 (the lab's URL)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            return bool(response.status == 200)
    except (OSError, ValueError):  # HTTPError (a 503) is an OSError
        return False


def healthy(data: dict[str, Any]) -> bool:
    """The DSM, the proxy and the KMS all say they are healthy."""
    return all(_healthy(url) for url in (data["dsm"]["url"], data["xks"]["url"], data["kms"]["endpoint_url"]))


def wait_ready(data_dir: Path, timeout: float, health: bool = False) -> dict[str, Any]:
    """Until a lab on ``data_dir`` is ready (and, with ``health``, answers), or LabError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        data = ready_settings(data_dir)
        if data is not None and (not health or healthy(data)):
            return data
        if time.monotonic() >= deadline:
            break
        time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
    hint = ""
    pid = _read_pid(pid_file(data_dir))
    if data is not None:
        hint = f": the lab (pid {data['pid']}) does not answer its health checks"
    elif pid is not None and is_xkslab(pid):
        hint = f": xkslab up (pid {pid}) is still starting, see {log_file(data_dir)}"
    raise LabError(f"no xkslab lab ready on {data_dir} after {timeout:g} s{hint}")


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
