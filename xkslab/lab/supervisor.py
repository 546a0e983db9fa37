"""The lab's services as child processes (``xkslab <service> serve``), one per service, so the key manager,
the proxy and the KMS each have a core's worth of event loop instead of sharing one; and the lock that
makes a data directory belong to one running lab.

Each child is told where to write its ready file; the supervisor learns from it the ports really bound
(any port setting may be 0), and a child that exits before it is ready, or while the lab runs, stops the
whole lab with its exit status. The other way round, each child stops when the supervisor dies, even by
SIGKILL (xkslab_shared/parent.py), so a killed ``up`` leaves no service behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from xkslab.lab.files import LOCK_FILE, LabError
from xkslab_shared.parent import ParentLink

READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 15.0


@contextlib.contextmanager
def _hold_lock(path: Path, refusal: Callable[[str], str]) -> Iterator[None]:
    """An exclusive flock on ``path`` for as long as the block runs, with this process's pid in the file;
    the kernel drops it when the process dies, so a crash never leaves it held. LabError(refusal(pid of
    the holder)) when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise LabError(refusal(holder)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def hold_data_dir(data_dir: Path) -> Iterator[None]:
    """An exclusive lock on the data directory for as long as this lab runs."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with _hold_lock(
        data_dir / LOCK_FILE,
        lambda pid: (
            f"another xkslab up (pid {pid}) is using {data_dir}: stop it, or give this one another --data-dir"
        ),
    ):
        yield


@contextlib.contextmanager
def hold_service(data_dir: Path, service: str, *, embedded: bool) -> Iterator[None]:
    """One process per service on an embedded (SQLite) data directory: a second ``xkslab <service>
    serve`` on it, beside ``up`` or another serve, is refused naming the pid that serves it. Different
    services may still run from one data directory in separate terminals; with PostgreSQL (``embedded``
    false) replicas may share a data directory, so nothing is held."""
    if not embedded:
        yield
        return
    run_dir = data_dir / "run"
    run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with _hold_lock(
        run_dir / f"{service}.lock",
        lambda pid: (
            f"the {service} service of {data_dir} is already running (pid {pid}): stop it, or give "
            "this one another --data-dir"
        ),
    ):
        yield


class Supervisor:
    """Starts the services in order and stops them in reverse; ``wait()`` returns on SIGINT/SIGTERM and
    raises LabError when a service exits on its own."""

    def __init__(
        self,
        data_dir: Path,
        overrides: dict[str, str],
        echo: Callable[[str], None],
        log_dir: Path | None = None,
        *,
        serve_args: dict[str, list[str]] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self._data_dir = data_dir.resolve()
        # Added to a service's ``serve`` command line (``--workers N``), and to every child's environment.
        self._serve_args = serve_args or {}
        self._env = env or {}
        # The worker processes each service reported in its ready file (``serve --workers``).
        self.workers: dict[str, list[int]] = {}
        # None: the services log to up's own stderr; else each to <log_dir>/<service>.log.
        self._log_dir = log_dir
        self._overrides = overrides
        self._echo = echo
        self._run_dir = self._data_dir / "run"
        self._children: list[tuple[str, asyncio.subprocess.Process]] = []
        self._link: ParentLink | None = None
        self._stop: asyncio.Event | None = None

    async def __aenter__(self) -> Supervisor:
        self._run_dir.mkdir(mode=0o700, exist_ok=True)
        self._link = ParentLink()
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.stop()
        finally:
            if self._link is not None:
                self._link.close()
                self._link = None

    async def start(
        self, service: str, extra: dict[str, str] | None = None, name: str | None = None
    ) -> list[str]:
        """Start ``xkslab <service> serve`` and return the URLs it serves once it is listening. ``name``
        (default: the service) names its ready file, its log and its entry in ``pids``: a fleet runs
        several nodes of one service (``dsm-1``, ``dsm-2``)."""
        name = name or service
        ready = self._run_dir / f"{name}.json"
        ready.unlink(missing_ok=True)
        settings = {**self._overrides, **(extra or {})}
        sets = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
        assert self._link is not None, "use the Supervisor as an async context manager"
        log = None if self._log_dir is None else _open_log(self._log_dir / f"{name}.log")
        try:
            process = await self._spawn(service, sets, ready, log)
        finally:
            if log is not None:
                os.close(log)
        self._children.append((name, process))
        service = name
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT_S
        while loop.time() < deadline:
            exited = process.returncode is not None  # before the read: an error it wrote is then seen
            data = _read_json(ready)
            mine = data is not None and data.get("pid") == process.pid
            if mine and data is not None and "error" in data:
                await process.wait()
                raise LabError(str(data["error"]))  # the service's own one line (common.serve_service)
            if exited:
                raise LabError(
                    f"the {service} service exited with status {process.returncode} while starting"
                    f"{self._reason(service)}"
                )
            if mine and data is not None:
                workers = data.get("workers")
                if isinstance(workers, list):
                    self.workers[service] = [int(pid) for pid in workers]
                return [str(url) for url in data["urls"]]
            try:
                await asyncio.wait_for(process.wait(), 0.05)
            except TimeoutError:
                pass
        raise LabError(f"the {service} service did not start within {READY_TIMEOUT_S:g} s")

    async def _spawn(
        self, service: str, sets: list[str], ready: Path, log: int | None
    ) -> asyncio.subprocess.Process:
        assert self._link is not None
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-P",  # not the current directory first on the path: its own xkslab/, if any, is not ours
            "-m",
            "xkslab",
            "--data-dir",
            str(self._data_dir),
            *sets,
            service,
            "serve",
            "--ready-file",
            str(ready),
            *self._serve_args.get(service, []),
            stdin=asyncio.subprocess.DEVNULL,
            env={**self._link.child_env(), **self._env},
            pass_fds=self._link.pass_fds,
            stdout=log,
            stderr=log,
            # A process group of its own: Ctrl-C in the terminal reaches up alone, which stops the
            # services in order, instead of every child printing its own interruption at once.
            process_group=0,
        )

    async def start_program(self, name: str, argv: list[str], pass_fds: tuple[int, ...] = ()) -> None:
        """Start a program that is not an xkslab service (HAProxy): supervised like the services (its
        exit stops the lab, ``stop`` stops it), and killed by the kernel if this process dies."""
        log = None if self._log_dir is None else _open_log(self._log_dir / f"{name}.log")
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                pass_fds=pass_fds,
                process_group=0,
                preexec_fn=_die_with_parent,
            )
        finally:
            if log is not None:
                os.close(log)
        self._children.append((name, process))

    def _reason(self, service: str) -> str:
        """Why a service logging to a file failed, from its one-line errors (on a terminal the user has
        read them already): ": <error>", or nothing."""
        if self._log_dir is None:
            return ""
        try:
            text = (self._log_dir / f"{service}.log").read_text(errors="replace")
        except OSError:
            return ""
        errors = [line.removeprefix("Error: ") for line in text.splitlines() if line.startswith("Error: ")]
        return f": {'; '.join(errors)}" if errors else f" (log: {self._log_dir / f'{service}.log'})"

    def raise_if_exited(self) -> None:
        """LabError naming the first child that has exited (while the lab starts)."""
        for name, process in self._children:
            if process.returncode is not None:
                raise LabError(f"the {name} process exited with status {process.returncode} while starting")

    @property
    def pids(self) -> dict[str, int]:
        return {service: process.pid for service, process in self._children}

    def catch_signals(self) -> None:
        """From now on SIGINT and SIGTERM stop the lab the normal way (``wait`` returns). Called before
        the lab says it is ready, so that a Ctrl-C the moment up.json appears is a normal stop."""
        if self._stop is None:
            self._stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self._stop.set)

    async def wait(self, survivable: frozenset[str] = frozenset()) -> None:
        """Until SIGINT or SIGTERM (returns), or a service exits by itself (LabError). A child named in
        ``survivable`` (a node of a fleet, whose balancer sends its work to the others) may exit: that
        is told through ``echo`` and the lab goes on while any of them is left."""
        self.catch_signals()
        assert self._stop is not None
        stopper = asyncio.ensure_future(self._stop.wait())
        watchers = {asyncio.ensure_future(process.wait()): service for service, process in self._children}
        try:
            while True:
                done, _ = await asyncio.wait([stopper, *watchers], return_when=asyncio.FIRST_COMPLETED)
                if stopper in done:
                    return
                for task in done:
                    exited = watchers.pop(task)
                    left = [name for name in watchers.values() if name in survivable]
                    if exited not in survivable or not left:
                        raise LabError(f"the {exited} service stopped unexpectedly; stopping the lab")
                    status = task.result()
                    self._echo(
                        f"the {exited} node stopped (status {status}); the fleet goes on: {', '.join(left)}"
                    )
        finally:
            for task in [stopper, *watchers]:
                task.cancel()

    async def stop(self) -> None:
        for service, process in reversed(self._children):
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
                except TimeoutError:
                    self._echo(f"the {service} service did not stop in {STOP_TIMEOUT_S:g} s: killed")
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    await process.wait()
            (self._run_dir / f"{service}.json").unlink(missing_ok=True)
        self._children.clear()


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the parent (up) dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _open_log(path: Path) -> int:
    """A service's log file, new for each start; 0600 like the rest of the run directory."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    return fd


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
