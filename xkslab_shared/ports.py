"""Binding a service's port, and saying in the user's words why it could not be bound: the setting to
change is named (``dsm.port 8443 is in use (set dsm.port or use --free-ports)``), never the errno alone."""

from __future__ import annotations

import asyncio
import errno
import ssl
from collections.abc import Callable
from contextlib import AsyncExitStack

__all__ = ["ListenError", "bind"]


class ListenError(Exception):
    """A listener could not bind its port: the message names the setting to change, for the user."""

    @classmethod
    def of(cls, exc: OSError, host: str, port: int, setting: str | None) -> ListenError:
        where = f"{setting} {port}" if setting else f"{host}:{port}"
        fix = f"set {setting} or use --free-ports" if setting else "choose another port"
        if exc.errno == errno.EADDRINUSE:
            return cls(f"{where} is in use ({fix})")
        if exc.errno == errno.EACCES:
            return cls(f"{where} needs privileges to listen on ({fix})")
        # Mostly a host that is not an address of this machine (EADDRNOTAVAIL).
        named = f" ({setting})" if setting else ""
        return cls(f"cannot listen on {host}:{port}{named}: {exc.strerror or exc}")


async def bind(
    stack: AsyncExitStack,
    factory: Callable[[], asyncio.Protocol],
    host: str,
    port: int,
    context: ssl.SSLContext | None = None,
    *,
    setting: str | None = None,
    reuse_port: bool = False,
) -> int:
    """Listen on ``host:port`` (0: a port the system chooses) until ``stack`` closes; the port bound.
    ``setting`` names the port's setting in the ListenError raised when it cannot be bound;
    ``reuse_port``: SO_REUSEPORT, so other processes that set it too may listen on the same port."""
    try:
        server = await asyncio.get_running_loop().create_server(
            factory, host, port, ssl=context, backlog=128, reuse_port=reuse_port or None
        )
    except OSError as exc:
        raise ListenError.of(exc, host, port, setting) from None
    # Closed before the runner's cleanup (the stack unwinds in reverse): stop accepting, then drain.
    stack.callback(server.close)
    return int(server.sockets[0].getsockname()[1])
