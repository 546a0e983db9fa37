"""Running xkslab's aiohttp applications: each service on a plain-HTTP port and, when its certificate
exists, an HTTPS port, until SIGINT or SIGTERM. One place, so `dsm serve`, `xks serve` and `up` stop
the same clean way."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import ssl
from collections.abc import Callable, Coroutine
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from xkslab_shared import tls

T = TypeVar("T")


@dataclass(frozen=True)
class Listener:
    name: str  # "DSM REST API", "XKS proxy"
    app: web.Application
    host: str
    port: int
    # None: plain HTTP only.
    https_port: int | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = None

    def tls_context(self) -> ssl.SSLContext | None:
        if self.https_port is None or self.tls_cert is None or self.tls_key is None:
            return None
        if not (self.tls_cert.is_file() and self.tls_key.is_file()):
            return None
        return tls.server_context(self.tls_cert, self.tls_key, client_ca=self.client_ca)


class HideMalformedRequests(logging.Filter):
    """aiohttp logs a request it cannot parse with the parser's exception, whose message quotes the
    offending line (a header line whole, an overlong one by its first 100 bytes): an Authorization
    header with one stray byte put its API key in the log. Such records keep their message and the
    exception's class name, never its text or traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg = f"{record.msg} ({type(exc).__name__}: the request line and headers are not logged)"
            record.exc_info = None
            record.exc_text = None
        return True


def hide_malformed_requests() -> None:
    """Install HideMalformedRequests on aiohttp's server logger, once per process."""
    logger = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, HideMalformedRequests) for f in logger.filters):
        logger.addFilter(HideMalformedRequests())


async def start(stack: AsyncExitStack, listener: Listener, echo: Callable[[str], None]) -> list[str]:
    """Start one listener; its runner is cleaned up when ``stack`` closes. Returns the URLs it serves,
    with the ports really bound (a port setting of 0 takes a free port from the system)."""
    hide_malformed_requests()
    context = listener.tls_context()
    runner = web.AppRunner(listener.app, handle_signals=False, access_log=None)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    urls = [f"http://{listener.host}:{await _bind(runner, listener.host, listener.port)}"]
    if context is not None and listener.https_port is not None:
        port = await _bind(runner, listener.host, listener.https_port, context)
        urls.append(f"https://{listener.host}:{port}")
    for url in urls:
        echo(f"{listener.name} on {url}")
    return urls


async def _bind(runner: web.AppRunner, host: str, port: int, context: ssl.SSLContext | None = None) -> int:
    before = len(runner.addresses)
    await web.TCPSite(runner, host, port, ssl_context=context).start()
    return int(runner.addresses[before][1])


async def wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Left installed until the loop closes (which removes them), so a second Ctrl-C during the clean
    # shutdown is absorbed instead of interrupting it.
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def write_ready_file(path: Path, data: dict[str, object]) -> None:
    """Atomically, so a reader never sees half a file: the signal that a service is listening."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data) + "\n")
    tmp.replace(path)


async def serve(
    listeners: list[Listener], echo: Callable[[str], None], ready_file: Path | None = None
) -> None:
    """Serve until SIGINT or SIGTERM. With ``ready_file``, write ``{"pid", "urls"}`` there once every
    listener is bound (the ports really bound: a supervisor that asked for port 0 learns them here)."""
    async with AsyncExitStack() as stack:
        urls: list[str] = []
        for listener in listeners:
            urls += await start(stack, listener, echo)
        if ready_file is not None:
            write_ready_file(ready_file, {"pid": os.getpid(), "urls": urls})
        await wait_for_signal()
        echo("stopping")


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run a server's coroutine on uvloop when it is installed (a faster event loop for the same code),
    else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
