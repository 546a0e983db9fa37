"""``xkslab up`` as a child process, for test suites and scripts: started on free ports in a data
directory, ready once ``up.json`` appears, stopped with SIGINT (as a user's Ctrl-C) and, should that not
be enough, killed with everything it started; and a throw-away PostgreSQL database per lab."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from xkslab.lab.files import LabError
from xkslab.lab.info import FREE_PORTS, START_TIMEOUT_S, STOP_TIMEOUT_S, LabInfo
from xkslab.lab.up import up_file
from xkslab_shared.config import load_settings

__all__ = ["fresh_database", "lab_process"]


@contextlib.contextmanager
def lab_process(
    data_dir: Path | str,
    settings_overrides: Mapping[str, str] | None = None,
    *,
    log_file: Path | None = None,
    timeout: float = START_TIMEOUT_S,
    up_args: Sequence[str] = (),
) -> Iterator[LabInfo]:
    """``xkslab up [up_args]`` on ``data_dir`` for the duration of the block. Its output goes to
    ``log_file`` (default: ``up.log`` beside the data directory), which start-up errors quote."""
    data_dir = Path(data_dir).resolve()
    overrides = {**FREE_PORTS, **(settings_overrides or {})}
    settings = load_settings(data_dir, overrides)
    log_file = log_file or data_dir.parent / f"{data_dir.name}-up.log"
    sets = [arg for name, value in overrides.items() for arg in ("--set", f"{name}={value}")]
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-P", "-m", "xkslab", "--data-dir", str(data_dir), *sets, "up", *up_args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Its own process group: a Ctrl-C at the terminal reaches the test runner, whose clean-up
            # stops the lab in order, and the group is what to kill if the lab does not stop.
            start_new_session=True,
        )
    try:
        data = _wait_ready(process, up_file(settings), log_file, timeout)
        yield LabInfo(data_dir, settings, data, in_process=False)
    finally:
        _stop(process)


def _wait_ready(
    process: subprocess.Popen[bytes], path: Path, log_file: Path, timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LabError(f"xkslab up exited with status {process.returncode}:\n{_tail(log_file)}")
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = None
        # A stale up.json of a lab that was killed names another pid; up removes it before starting.
        if isinstance(data, dict) and data.get("pid") == process.pid:
            return data
        time.sleep(0.1)
    raise LabError(f"xkslab up was not ready within {timeout:g} s:\n{_tail(log_file)}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
    # up stops its services before it exits; whatever is left in its group (up itself when it hung, or a
    # service it could not stop) is killed, so a session never leaves a process behind.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _tail(log_file: Path, lines: int = 40) -> str:
    try:
        return "\n".join(log_file.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {log_file})"


@contextlib.contextmanager
def fresh_database(server_url: str, tag: str = "lab") -> Iterator[str]:
    """A new, empty PostgreSQL database on the server of ``server_url`` (a ``postgresql+asyncpg://`` URL;
    its own database is only where the new one is created from), dropped on exit. Labs in parallel each
    need their own: a lab's objects have fixed names, so two labs on one database would share them."""
    from sqlalchemy.engine import make_url

    url = make_url(server_url)
    if not url.drivername.startswith("postgresql"):
        raise LabError(f"not a PostgreSQL URL: {url.render_as_string(hide_password=True)}")
    name = f"xkslab_{''.join(c if c.isalnum() else '_' for c in tag)[:20]}_{secrets.token_hex(4)}".lower()
    admin_dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    asyncio.run(_execute(admin_dsn, f'CREATE DATABASE "{name}"'))
    try:
        yield url.set(drivername="postgresql+asyncpg", database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_execute(admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _execute(dsn: str, statement: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()
