"""Small network checks the integration tests share."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path
from typing import Any


def refused(url: str) -> bool:
    """Whether nothing listens at ``url``'s host and port any more (a stopped server's socket is gone)."""
    host, port = url.rsplit("/", 1)[-1].rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def wait_ready(ready: Path, proc: subprocess.Popen[Any], log: Path, timeout_s: float = 120.0) -> list[str]:
    """The URLs a ``serve --ready-file`` child really bound (it asked for port 0), once it wrote them.
    The timeout only turns a hang into a failure; it is far above any start on a loaded machine."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited early with status {proc.returncode}: {log.read_text()}")
        if ready.exists():  # written atomically, after every listener is bound
            found = json.loads(ready.read_text())
            if "urls" not in found:  # {"pid", "error"}: the start failed
                raise AssertionError(f"server failed to start: {found.get('error')}: {log.read_text()}")
            urls: list[str] = found["urls"]
            return urls
        time.sleep(0.05)
    raise AssertionError(f"server did not get ready: {log.read_text()}")


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])
