"""``xkslab up --detach`` and ``xkslab down``: a lab in the background for scripts and CI, and its stop.

``--detach`` re-runs ``xkslab up`` as a child in a session of its own (no terminal, so closing the
terminal or the CI step's shell does not signal it), its output in ``<data-dir>/run/up.log``, and returns
once that child has written ``up.json``. A start that fails leaves nothing behind: the child's process
group (the child leads it, its services are in it) is stopped before the error is reported.

``down`` finds the lab through the data directory's lock (control.py), so it stops a lab whoever started
it, and waits, bounded, until the ``up`` and every service below it are gone; then it stops any service
still running on the data directory without an ``up`` (the per-service locks and ready files name them).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from xkslab.lab.control import (
    KILL_TIMEOUT_S,
    POLL_S,
    START_TIMEOUT_S,
    STOP_TIMEOUT_S,
    descendants,
    is_xkslab,
    lab_holder,
    log_file,
    pid_file,
    read_up_json,
    ready_settings,
    running_services,
    signal_pid,
    wait_gone,
)
from xkslab.lab.files import UP_FILE, LabError

__all__ = ["Stopped", "start_detached", "stop_lab"]


def group_members(pgid: int) -> list[int]:
    """The running xkslab processes of process group ``pgid`` (from /proc; empty elsewhere)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The command name (field 2) is in parentheses and may hold spaces: split after it.
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        pid = int(stat.parent.name)
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid and is_xkslab(pid):
            members.append(pid)
    return members


def _finish(pids: list[int]) -> None:
    """SIGTERM, then SIGKILL, whatever is left of ``pids``; LabError if something survives both."""
    for sig, timeout in ((signal.SIGTERM, KILL_TIMEOUT_S), (signal.SIGKILL, KILL_TIMEOUT_S)):
        left = [pid for pid in pids if is_xkslab(pid)]  # a pid that ended may since have been reused
        if not left:
            return
        for pid in left:
            signal_pid(pid, sig)
        pids = wait_gone(left, timeout)
    if pids:
        raise LabError(f"could not stop process(es) {', '.join(map(str, pids))}")


def _stop_child(process: subprocess.Popen[bytes]) -> None:
    """Stop a detached ``up`` that failed or was abandoned, and anything it left in its process group."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    _finish(group_members(process.pid))


def _failure_reason(log: Path) -> str:
    """The one-line errors the child and its services printed (a service's says why the lab's did not
    start), else the child's last line."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no output"
    errors = [line.removeprefix("Error: ") for line in lines if line.startswith("Error: ")]
    if errors:
        return "; ".join(dict.fromkeys(errors))
    return lines[-1] if lines else "no output"


def start_detached(
    data_dir: Path,
    overrides: dict[str, str],
    admin_password: str | None,
    log_dir: Path | None = None,
    timeout: float = START_TIMEOUT_S,
    *,
    fleet: str | None = None,
    workers: int = 1,
) -> tuple[Path, int]:
    """Start ``xkslab up`` in the background on ``data_dir`` and wait until it is ready; (up.json, pid).
    Each service logs to <log_dir>/<service>.log, by default beside up.log in the run directory."""
    data_dir = data_dir.resolve()
    # Checked here, before the log is opened: a second start must not truncate the running lab's log.
    holder = lab_holder(data_dir)
    if holder is not None:
        raise LabError(f"an xkslab lab already runs on {data_dir} (pid {holder}): `xkslab down` stops it")
    log = log_file(data_dir)
    log.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    sets = [arg for name, value in overrides.items() for arg in ("--set", f"{name}={value}")]
    services_log = str((log_dir or log.parent).resolve())
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # the log shows the banner as it is printed
    env.pop("XKSLAB_ADMIN_PASSWORD", None)
    if admin_password is not None:
        env["XKSLAB_ADMIN_PASSWORD"] = admin_password  # not on the command line, where ps shows it
    # 0600: the banner in the log holds the admin password and the SigV4 secret.
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    try:
        process = subprocess.Popen(
            [
                sys.executable,
                "-P",  # not the current directory first on the path: its own xkslab/, if any, is not ours
                "-m",
                "xkslab",
                "--data-dir",
                str(data_dir),
                *sets,
                "up",
                "--log-dir",
                services_log,
                *(["--fleet", fleet] if fleet is not None else []),
                *(["--workers", str(workers)] if workers > 1 else []),
            ],
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    finally:
        os.close(fd)
    pids = pid_file(data_dir)
    try:
        _write_pid(pids, process.pid)
        deadline = time.monotonic() + timeout
        while True:
            code = process.poll()
            if code is not None:
                raise LabError(
                    f"xkslab up failed to start (exit status {code}): {_failure_reason(log)} (log: {log})"
                )
            data = read_up_json(data_dir)
            if data is not None and data.get("pid") == process.pid and "aws_env" in data:
                return data_dir / UP_FILE, process.pid
            if time.monotonic() >= deadline:
                raise LabError(f"xkslab up was not ready within {timeout:g} s: stopped it (log: {log})")
            time.sleep(POLL_S)
    except BaseException:  # Ctrl-C too: the child must not outlive a start that did not succeed
        _stop_child(process)
        pids.unlink(missing_ok=True)
        raise


def _write_pid(path: Path, pid: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{pid}\n")
    tmp.replace(path)


@dataclass(frozen=True)
class Stopped:
    """What ``down`` stopped: the ``up`` holding the lab (None: none ran) and the services that ran on
    the data directory without one (left by an ``up`` that was killed, or started by hand)."""

    lab: int | None
    services: list[int]


def stop_lab(data_dir: Path) -> Stopped:
    """Stop the lab running on ``data_dir`` and every service still running on it, and wait until their
    processes are gone (when no lab was running, stale files are tidied)."""
    holder = lab_holder(data_dir)
    if holder is None:
        pid_file(data_dir).unlink(missing_ok=True)
        if read_up_json(data_dir) is not None and ready_settings(data_dir) is None:
            (data_dir / UP_FILE).unlink(missing_ok=True)  # left by a lab that was killed
    else:
        _stop_holder(data_dir, holder)
    # Services without their up: what the data directory's locks and ready files name. Children of a
    # killed up stop by themselves (xkslab_shared/parent.py); these are whatever did not.
    services = running_services(data_dir)
    _finish(services)
    return Stopped(holder, services)


def _stop_holder(data_dir: Path, holder: int) -> None:
    data = read_up_json(data_dir) or {}
    # Collected before the signal: once up has exited, its services (if any survived) have a new parent.
    pids = [holder, *descendants(holder)]
    if data.get("pid") == holder:
        pids += [pid for pid in data.get("service_pids", {}).values() if isinstance(pid, int)]
    with contextlib.suppress(ProcessLookupError):
        # A lab of ours (--detach) leads its own process group; one started in a terminal shares the
        # shell's, where only xkslab processes are fair game.
        if os.getpgid(holder) == holder:
            pids += group_members(holder)
    pids = sorted(set(pids) - {os.getpid()})
    signal_pid(holder, signal.SIGTERM)
    if wait_gone([holder], STOP_TIMEOUT_S):
        signal_pid(holder, signal.SIGKILL)
        wait_gone([holder], KILL_TIMEOUT_S)
    _finish(pids)
    pid_file(data_dir).unlink(missing_ok=True)
    if (read_up_json(data_dir) or {}).get("pid") == holder:
        # up removes it as it stops; not when it had to be killed.
        (data_dir / UP_FILE).unlink(missing_ok=True)
