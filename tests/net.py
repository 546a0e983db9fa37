"""Small network checks the integration tests share."""

from __future__ import annotations

import socket


def refused(url: str) -> bool:
    """Whether nothing listens at ``url``'s host and port any more (a stopped server's socket is gone)."""
    host, port = url.rsplit("/", 1)[-1].rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False
