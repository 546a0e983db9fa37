"""Running xkslab's aiohttp applications: each service on a plain-HTTP port and, when its certificate
exists, an HTTPS port, until SIGINT or SIGTERM. One place, so `dsm serve`, `xks serve` and `up` stop
the same clean way and share the same HTTP limits (``http.*`` settings): 3,000 clients that each sent
headers and one body byte used to hold a server's every file descriptor for ever.

- a connection cap per server: past ``http.max_connections`` open connections, a new one is answered
  503 and closed at once, instead of waiting in the kernel's backlog for a slot that may never free;
- a body deadline: a request whose body has not fully arrived ``http.body_timeout_ms`` after its handler
  started is answered 408 and its connection closed (aiohttp itself has no such timeout);
- ``http.keepalive_timeout_s``: an idle connection, including one that never sends a request line or
  stops in the middle of its headers, is closed (aiohttp arms this timer when the connection opens);
- a request aiohttp's parser refuses (a malformed request or header line) is answered in the service's
  own error shape (``MALFORMED_REQUEST_KEY``), not aiohttp's plain text, and never quotes the line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from xkslab_shared import parent, tls
from xkslab_shared.config import Settings

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Each service's answer to a request its parser refused, given the status (400 mostly), in the shape its
# clients parse: Fortanix's {"message"}, XKS's {"errorName", "errorMessage"}, KMS's {"__type", "message"}.
# No type argument to AppKey: it takes a class, and a Callable is not one (the annotation carries it).
MALFORMED_REQUEST_KEY: web.AppKey[Callable[[int], web.Response]] = web.AppKey("xkslab_malformed_request")
MALFORMED_MESSAGE = "malformed HTTP request: the request line or a header line could not be parsed"

_REFUSED = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


@dataclass(frozen=True)
class HttpLimits:
    max_connections: int = 1000
    body_timeout_s: float = 10.0
    keepalive_timeout_s: float = 15.0

    @classmethod
    def of(cls, settings: Settings) -> HttpLimits:
        http = settings.http
        return cls(http.max_connections, http.body_timeout_ms / 1000, http.keepalive_timeout_s)


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
    limits: HttpLimits = HttpLimits()
    # Told about the HTTPS listener's TLS once it is built (the proxy's TLS faults hook it).
    tls_setup: Callable[[tls.ServerTls], None] | None = None

    def tls_context(self) -> ssl.SSLContext | None:
        """The HTTPS listener's context; its certificate is reread when the files change (ServerTls)."""
        if self.https_port is None or self.tls_cert is None or self.tls_key is None:
            return None
        if not (self.tls_cert.is_file() and self.tls_key.is_file()):
            return None
        server_tls = tls.ServerTls(self.tls_cert, self.tls_key, client_ca=self.client_ca)
        if self.tls_setup is not None:
            self.tls_setup(server_tls)
        return server_tls.context


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
    limits = listener.limits
    if body_deadline not in listener.app.middlewares:
        # Innermost, so each service's own error middleware turns the 408 into its error shape.
        listener.app.middlewares.append(body_deadline)
    listener.app[BODY_TIMEOUT_KEY] = limits.body_timeout_s
    runner = web.AppRunner(
        listener.app, handle_signals=False, access_log=None, keepalive_timeout=limits.keepalive_timeout_s
    )
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    assert runner.server is not None
    capped = _ConnectionCap(runner.server, limits.max_connections, listener.app.get(MALFORMED_REQUEST_KEY))
    urls = [f"http://{listener.host}:{await _bind(stack, capped, listener.host, listener.port)}"]
    if context is not None and listener.https_port is not None:
        port = await _bind(stack, capped, listener.host, listener.https_port, context)
        urls.append(f"https://{listener.host}:{port}")
    for url in urls:
        echo(f"{listener.name} on {url}")
    return urls


async def _bind(
    stack: AsyncExitStack,
    factory: Callable[[], asyncio.Protocol],
    host: str,
    port: int,
    context: ssl.SSLContext | None = None,
) -> int:
    server = await asyncio.get_running_loop().create_server(factory, host, port, ssl=context, backlog=128)
    # Closed before the runner's cleanup (the stack unwinds in reverse): stop accepting, then drain.
    stack.callback(server.close)
    return int(server.sockets[0].getsockname()[1])


class _ConnectionCap:
    """The protocol factory of a server's sockets: aiohttp's own, until the server has ``limit`` open
    connections (HTTP and HTTPS together); then a protocol that answers 503 and closes."""

    def __init__(
        self, server: web.Server, limit: int, malformed: Callable[[int], web.Response] | None = None
    ) -> None:
        self._server = server
        self._limit = limit
        self._malformed = malformed

    def __call__(self) -> asyncio.Protocol:
        if len(self._server.connections) >= self._limit:
            return _Refuse()
        if self._malformed is None:
            return self._server()
        # As web.Server.__call__ builds aiohttp's own (the same arguments, the same class underneath).
        return _ShapedErrors(
            self._server,
            self._malformed,
            loop=self._server._loop,
            **self._server._kwargs,
        )


class _ShapedErrors(RequestHandler):
    """aiohttp's protocol, except that a request its parser refused gets the service's error shape."""

    __slots__ = ("_malformed",)

    def __init__(self, server: web.Server, malformed: Callable[[int], web.Response], **kwargs: Any) -> None:
        super().__init__(server, **kwargs)
        self._malformed = malformed

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        plain = super().handle_error(request, status, exc, message)  # logs it (filtered), checks state
        if status >= 500:
            return plain
        shaped = self._malformed(status)
        shaped.force_close()
        return shaped


class _Refuse(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(_REFUSED)
        transport.close()


BODY_TIMEOUT_KEY: web.AppKey[float] = web.AppKey("xkslab_body_timeout_s", float)


@web.middleware
async def body_deadline(request: web.Request, handler: Handler) -> web.StreamResponse:
    """408 and close when the body is still incomplete ``BODY_TIMEOUT_KEY`` seconds after the handler
    started. Only an incomplete body cancels: a handler that has its whole body may take as long as it
    needs (the services bound their own work)."""
    timeout = request.app.get(BODY_TIMEOUT_KEY)
    if timeout is None or not request.body_exists:
        return await handler(request)
    task = asyncio.current_task()
    assert task is not None
    expired = False

    def expire() -> None:
        nonlocal expired
        if not request.content.is_eof():
            expired = True
            task.cancel()

    timer = asyncio.get_running_loop().call_later(timeout, expire)
    try:
        return await handler(request)
    except asyncio.CancelledError:
        if not expired or task.uncancel() > 0:
            raise
        # Close once the 408 is written, and mark the body ended: aiohttp would otherwise linger reading
        # the rest of it for another 10 s before closing.
        if request.protocol is not None:
            request.protocol.close()
        request.content.feed_eof()
        raise web.HTTPRequestTimeout(text="request body not received in time") from None
    finally:
        timer.cancel()


async def wait_for_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Left installed until the loop closes (which removes them), so a second Ctrl-C during the clean
    # shutdown is absorbed instead of interrupting it.
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    parent.watch_parent(stop.set)  # a supervised service also stops when its supervisor dies
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
    parent.die_with_parent()
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
