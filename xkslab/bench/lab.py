"""The processes a benchmark measures: ``xkslab up`` in a temporary data directory on free ports (or a lab
that is already running), the anchor servers, and the peak memory of each."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

READY_TIMEOUT_S = 180.0


class BenchError(RuntimeError):
    pass


def descendants(pid: int) -> list[int]:
    """The pid and every process below it (from /proc; empty off Linux)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                todo += [int(child) for child in (task / "children").read_text().split()]
            except OSError:
                continue
    return found


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM: the most resident memory the process has had."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def process_name(pid: int) -> str:
    """``xkslab up``, ``anchors two-hop``...: the command without its options and their values."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return str(pid)
    words, skip = [], False
    for arg in (a.decode(errors="replace") for a in argv[1:] if a):
        if skip:
            skip = False
        elif arg in ("--set", "--data-dir", "-m"):
            skip = arg != "-m"
        elif not arg.startswith("-"):
            words.append(arg if ":" in arg or "/" in arg else arg.rsplit(".", 1)[-1])
    return " ".join(words) or str(pid)


def memory(pid: int) -> dict[str, float | None]:
    return {f"{process_name(p)} [{p}]": peak_rss_mb(p) for p in descendants(pid)}


class Lab:
    """``xkslab up`` as a subprocess on free ports, in ``data_dir`` (made if absent)."""

    def __init__(
        self,
        data_dir: Path,
        log_file: Path,
        settings: dict[str, str] | None = None,
        up_args: tuple[str, ...] = (),
    ) -> None:
        self.data_dir = data_dir
        self.up_args = up_args  # e.g. ("--workers", "2") or ("--fleet", "2,2")
        self.log_file = log_file
        self.settings = {
            "dsm.port": "0",
            "dsm.https_port": "0",
            "xks.port": "0",
            "xks.https_port": "0",
            "kms.port": "0",
            **(settings or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}
        self._log: IO[bytes] | None = None

    def __enter__(self) -> Lab:
        sets = [arg for name, value in self.settings.items() for arg in ("--set", f"{name}={value}")]
        command = [
            sys.executable,
            "-P",
            "-m",
            "xkslab",
            "--data-dir",
            str(self.data_dir),
            *sets,
            "up",
            *self.up_args,
        ]
        self._log = self.log_file.open("wb")
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        self.info = self._wait_ready()
        return self

    def _wait_ready(self) -> dict[str, Any]:
        assert self.process is not None
        path = self.data_dir / "up.json"
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"xkslab up exited with {self.process.returncode}; see {self.log_file}")
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                data = {}
            if "kms" in data:
                return dict(data)
            time.sleep(0.2)
        raise BenchError(f"xkslab up was not ready within {READY_TIMEOUT_S:g} s; see {self.log_file}")

    def memory(self) -> dict[str, float | None]:
        return memory(self.process.pid) if self.process else {}

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()


class Anchor:
    """One anchor (``python -m xkslab.bench.anchors ...``): ``moto``, or a chain of ``hops`` aiohttp
    processes, each forwarding to the next over keep-alive, on free ports."""

    def __init__(self, kind: str, hops: int = 1) -> None:
        self.kind = kind
        self.hops = hops
        self.processes: list[subprocess.Popen[str]] = []
        self.port = 0

    def _start(self, *args: str) -> int:
        process = subprocess.Popen(
            [sys.executable, "-P", "-m", "xkslab.bench.anchors", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.processes.append(process)
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            raise BenchError(f"the {self.kind} anchor did not start")
        return int(json.loads(line)["port"])

    def __enter__(self) -> Anchor:
        try:
            if self.kind == "moto":
                self.port = self._start("moto")
            else:
                self.port = self._start("leaf")
                for _ in range(self.hops - 1):
                    self.port = self._start("forward", f"http://127.0.0.1:{self.port}/")
        except BaseException:
            self.__exit__()
            raise
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def memory(self) -> dict[str, float | None]:
        found: dict[str, float | None] = {}
        for process in self.processes:
            found.update(memory(process.pid))
        return found

    def __exit__(self, *exc: object) -> None:
        for process in reversed(self.processes):
            if process.stdin is not None:
                process.stdin.close()
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
