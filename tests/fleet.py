"""Nodes of a fleet as real processes for the fleet tests: ``xkslab dsm serve`` / ``xks serve`` children
on free ports of one database, each with its own node id, stopped (or killed) at the end."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.net import wait_ready

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Node:
    name: str
    process: subprocess.Popen[bytes]
    urls: list[str]
    log: Path

    @property
    def url(self) -> str:
        return self.urls[0]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_node(data_dir: Path, service: str, name: str, settings: dict[str, str]) -> Node:
    """``xkslab <service> serve`` on free ports with ``settings``; returns once it listens."""
    run = data_dir.parent / "nodes"
    run.mkdir(exist_ok=True)
    ready, log = run / f"{name}.json", run / f"{name}.log"
    ready.unlink(missing_ok=True)
    # Nodes share the data directory, whose one link socket only one DSM may serve: they speak HTTP.
    settings = {"dsm.link": "", **settings} if service == "dsm" else settings
    sets = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
    command = [sys.executable, "-m", "xkslab", "--data-dir", str(data_dir), *sets, service, "serve"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*command, "--free-ports", "--ready-file", str(ready)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            start_new_session=True,
        )
    try:
        return Node(name, process, wait_ready(ready, process, log), log)
    except BaseException:
        process.kill()
        process.wait()
        raise


@contextlib.contextmanager
def nodes() -> Iterator[list[Node]]:
    """A list to append started nodes to; every one still running is stopped at the end."""
    started: list[Node] = []
    try:
        yield started
    finally:
        for node in reversed(started):
            node.stop()
