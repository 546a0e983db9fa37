"""Running xkslab's aiohttp applications: each service on a plain-HTTP port and, when its certificate
exists, an HTTPS port, until SIGINT or SIGTERM. One place, so `dsm serve`, `xks serve` and `up` stop
the same clean way and share the same HTTP limits (``http.*`` settings): 3,000 clients that each sent
headers and one body byte used to hold a server's every file descriptor for ever.

- a connection cap per server: past ``http.max_connections`` open connections, or past
  ``http.max_connections_per_client`` from one client address, a new one is answered 503 in the service's
  error shape and closed at once, instead of waiting in the kernel's backlog for a slot that may never
  free; refusals are logged as one counted line per interval;
- a body deadline: a request whose body has not fully arrived ``http.body_timeout_ms`` after its handler
  started is answered 408 and its connection closed (aiohttp itself has no such timeout);
- ``http.keepalive_timeout_s``: an idle connection, including one that never sends a request line or
  stops in the middle of its headers, is closed (aiohttp arms this timer when the connection opens);
- a request aiohttp's parser refuses (a malformed request or header line) is answered in the service's
  own error shape (``MALFORMED_REQUEST_KEY``), not aiohttp's plain text, and never quotes the line; a
  Content-Encoding the parser cannot decode is given status 415 for the service to shape as a refusal.
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
from typing import Any, TypeVar, cast

from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError
from aiohttp.web_protocol import RequestHandler

from xkslab_shared import body_encoding, heap, logs, parent, tls
from xkslab_shared.body_deadline import BODY_TIMEOUT_KEY, body_deadline
from xkslab_shared.config import Settings
from xkslab_shared.ports import bind

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Each service's answer to a request its parser refused, given the status (400 mostly, 415 for a body
# encoding, 503 for a refused connection), in the shape its clients parse: Fortanix's {"message"}, XKS's
# {"errorName", "errorMessage"}, KMS's {"__type", "message"}; the words come from refusal_message().
# No type argument to AppKey: it takes a class, and a Callable is not one (the annotation carries it).
MALFORMED_REQUEST_KEY: web.AppKey[Callable[[int], web.Response]] = web.AppKey("xkslab_malformed_request")
# Where a server tells its application the URLs it really bound (filled in once it listens): a list the
# application creates, e.g. for its row in the node registry (xkslab_shared/nodes.py).
BOUND_URLS_KEY: web.AppKey[list[str]] = web.AppKey("xkslab_bound_urls", list)
MALFORMED_MESSAGE = "malformed HTTP request: the request line or a header line could not be parsed"
BUSY_MESSAGE = "too many open connections (in all, or from this client address): try again shortly"


def refusal_message(status: int, accepted_encodings: frozenset[str]) -> str:
    """What MALFORMED_REQUEST_KEY's response says for each status it is asked for: 503 a refused
    connection, 415 a Content-Encoding refused while parsing, anything else a malformed request."""
    if status == 503:
        return BUSY_MESSAGE
    if status == 415:
        return body_encoding.refused_message(accepted_encodings)
    return MALFORMED_MESSAGE


_REFUSED = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
# Refused connections are logged as one line per interval with their count (a line per refusal filled
# a disk under a flood); how long a refused socket may stay open for the client to read its 503.
REFUSAL_LOG_INTERVAL_S = 10.0
REFUSAL_LINGER_S = 1.0

log = logging.getLogger("xkslab.serve")


@dataclass(frozen=True)
class HttpLimits:
    max_connections: int = 1000
    body_timeout_s: float = 10.0
    keepalive_timeout_s: float = 15.0
    max_connections_per_client: int = 300
    reuse_port: bool = False

    @classmethod
    def of(cls, settings: Settings) -> HttpLimits:
        http = settings.http
        return cls(
            http.max_connections,
            http.body_timeout_ms / 1000,
            http.keepalive_timeout_s,
            http.max_connections_per_client,
            http.reuse_port,
        )


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
    client_subject: str = ""  # with client_ca: the name a client certificate must carry (in the handshake)
    limits: HttpLimits = HttpLimits()
    # Told about the HTTPS listener's TLS once it is built (the proxy's TLS faults hook it).
    tls_setup: Callable[[tls.ServerTls], None] | None = None
    # The service's short name in its log lines ("dsm", "xks", "kms"), and whether it writes an access
    # line per request (log.access).
    service: str = "lab"
    access_log: bool = True
    # The settings section of host, port and https_port ("dsm"), so that a port that cannot be bound is
    # named by its setting; None: named by host and port only.
    section: str | None = None
    # Servers beside the HTTP ones, started once the app is set up (its resources open) and stopped
    # before it is cleaned up; each returns the URLs it serves (the key manager's framed link).
    beside: tuple[Callable[[AsyncExitStack, web.Application], Awaitable[list[str]]], ...] = ()

    def tls_context(self) -> ssl.SSLContext | None:
        """The HTTPS listener's context; its certificate is reread when the files change (ServerTls)."""
        cert, key = self.tls_cert, self.tls_key
        if self.https_port is None or cert is None or key is None or not (cert.is_file() and key.is_file()):
            return None
        server_tls = tls.ServerTls(cert, key, client_ca=self.client_ca, client_subject=self.client_subject)
        if self.tls_setup is not None:
            self.tls_setup(server_tls)
        return server_tls.context


async def start(stack: AsyncExitStack, listener: Listener, echo: Callable[[str], None]) -> list[str]:
    """Start one listener; its runner is cleaned up when ``stack`` closes. Returns the URLs it serves,
    with the ports really bound (a port setting of 0 takes a free port from the system), each told to
    ``echo`` as "listening on <url>"."""
    logs.hide_malformed_requests()
    context = listener.tls_context()
    limits = listener.limits
    if body_deadline not in listener.app.middlewares:
        # Innermost, so each service's own error middleware turns the 408 into its error shape.
        listener.app.middlewares.append(body_deadline)
    listener.app[BODY_TIMEOUT_KEY] = limits.body_timeout_s
    runner = web.AppRunner(
        listener.app,
        handle_signals=False,
        access_log=logs.ACCESS_LOGGER if listener.access_log else None,
        access_log_class=logs.AccessLine,
        access_log_format=listener.service,
        keepalive_timeout=limits.keepalive_timeout_s,
    )
    await runner.setup()
    # Registered first, so it runs last: once the runner has finished its requests, the refusals still
    # only counted in the open window are written, not lost with the process.
    stack.callback(lambda: logs.REFUSAL_LINES.flush())
    stack.push_async_callback(runner.cleanup)
    assert runner.server is not None
    gate = _Gate(listener.name, limits.max_connections, limits.max_connections_per_client)
    stack.callback(gate.close)
    capped = _ConnectionCap(runner.server, gate, listener.app.get(MALFORMED_REQUEST_KEY))
    section = listener.section
    reuse = limits.reuse_port
    http_port = await bind(
        stack, capped, listener.host, listener.port, setting=section and f"{section}.port", reuse_port=reuse
    )
    urls = [f"http://{listener.host}:{http_port}"]
    if context is not None and listener.https_port is not None:
        setting = section and f"{section}.https_port"
        port = await bind(
            stack, capped, listener.host, listener.https_port, context, setting=setting, reuse_port=reuse
        )
        urls.append(f"https://{listener.host}:{port}")
    for start_beside in listener.beside:
        urls += await start_beside(stack, listener.app)
    for url in urls:
        echo(f"listening on {url} ({listener.name})")
    bound = listener.app.get(BOUND_URLS_KEY)
    if bound is not None:
        bound.extend(urls)
    return urls


class _Gate:
    """Who may open a connection to one server (its HTTP and HTTPS listeners together): at most
    ``limit`` open connections, and at most ``per_client`` from one client address, so that one client's
    idle sockets cannot shut every other client out. A refused connection is answered at once in the
    service's shape (MALFORMED_REQUEST_KEY's answer to 503), and refusals are logged as one counted line
    per ``REFUSAL_LOG_INTERVAL_S``."""

    def __init__(self, name: str, limit: int, per_client: int) -> None:
        self._name = name
        self._limit = limit
        self._per_client = per_client
        self._open = 0
        self._by_client: dict[str, int] = {}
        self._refused = {"total": 0, "per_client": 0}
        self._flush: asyncio.TimerHandle | None = None

    def admit(self, client: str) -> bool:
        held = self._by_client.get(client, 0)
        if self._open >= self._limit:
            self._count("total")
            return False
        if held >= self._per_client:
            self._count("per_client")
            return False
        self._open += 1
        self._by_client[client] = held + 1
        return True

    def release(self, client: str) -> None:
        self._open -= 1
        held = self._by_client.pop(client, 1) - 1
        if held > 0:
            self._by_client[client] = held

    def _count(self, reason: str) -> None:
        first = self._flush is None
        self._refused[reason] += 1
        if first:  # the first refusal after a quiet interval is told at once, the rest in one line later
            self._report("refusing new connections")
            self._flush = asyncio.get_running_loop().call_later(REFUSAL_LOG_INTERVAL_S, self._flushed)

    def _flushed(self) -> None:
        self._flush = None
        if any(self._refused.values()):
            self._report(f"refused in the last {REFUSAL_LOG_INTERVAL_S:g} s")
            self._flush = asyncio.get_running_loop().call_later(REFUSAL_LOG_INTERVAL_S, self._flushed)

    def _report(self, what: str) -> None:
        total, per_client = self._refused["total"], self._refused["per_client"]
        log.warning(
            "%s: %s: %d connection(s) past http.max_connections (%d), %d past "
            "http.max_connections_per_client (%d); %d open",
            self._name,
            what,
            total,
            self._limit,
            per_client,
            self._per_client,
            self._open,
        )
        self._refused = {"total": 0, "per_client": 0}

    def close(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None


class _ConnectionCap:
    """The protocol factory of a server's sockets: aiohttp's own protocol, which asks the gate whether
    to serve the connection once its peer is known."""

    def __init__(self, server: web.Server, gate: _Gate, shape: Callable[[int], web.Response] | None) -> None:
        self._server = server
        self._gate = gate
        self._shape = shape

    def __call__(self) -> asyncio.Protocol:
        # As web.Server.__call__ builds aiohttp's own (the same arguments, the same class underneath).
        return _GatedHandler(
            self._server, self._gate, self._shape, loop=self._server._loop, **self._server._kwargs
        )


class _GatedHandler(RequestHandler):
    """aiohttp's protocol, admitted by the gate, and answering a request its parser refused in the
    service's error shape."""

    __slots__ = ("_client", "_gate", "_shape")

    def __init__(
        self,
        server: web.Server,
        gate: _Gate,
        shape: Callable[[int], web.Response] | None,
        **kwargs: Any,
    ) -> None:
        super().__init__(server, **kwargs)
        self._gate = gate
        self._shape = shape
        self._client: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        if not self._gate.admit(client):
            # Never registered with the server: nothing for connection_lost to undo, no data to parse.
            self._manager = None
            self._force_close = True
            _refuse(cast(asyncio.Transport, transport), self._shape)
            return
        self._client = client
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._client is not None:
            self._gate.release(self._client)
            self._client = None
        super().connection_lost(exc)

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        plain = super().handle_error(request, status, exc, message)  # logs it (filtered), checks state
        if status >= 500 or self._shape is None:
            return plain
        # A Content-Encoding aiohttp cannot decode (br, zstd) fails while the headers are parsed: the
        # request is not malformed, its encoding is refused (xkslab_shared/body_encoding.py).
        shaped = self._shape(415 if isinstance(exc, ContentEncodingError) else status)
        shaped.force_close()
        return shaped


def _refuse(transport: asyncio.Transport, shape: Callable[[int], web.Response] | None) -> None:
    """Answer 503 and close: the response first, then the write side (the client reads the whole
    answer, and its request, if it sent one, is not met with a reset), and the socket once the client
    closes its side or REFUSAL_LINGER_S has passed. Any transport with write() will do: uvloop's is not
    an asyncio.WriteTransport (asserting that one was reset every refused client)."""
    transport.write(_raw_response(shape(503)) if shape is not None else _REFUSED)
    if transport.can_write_eof():
        transport.write_eof()
        asyncio.get_running_loop().call_later(REFUSAL_LINGER_S, transport.close)
    else:  # TLS: no half-close; close() still sends what was written first
        transport.close()


def _raw_response(response: web.Response) -> bytes:
    body = response.body if isinstance(response.body, bytes) else b""
    head = [f"HTTP/1.1 {response.status} {response.reason}"]
    head += [
        f"{name}: {value}"
        for name, value in response.headers.items()
        if name.lower() not in ("content-length", "connection")
    ]
    head += [f"Content-Length: {len(body)}", "Connection: close"]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


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
    listeners: list[Listener],
    echo: Callable[[str], None],
    ready_file: Path | None = None,
    *,
    tune_heap: bool = True,
) -> None:
    """Serve until SIGINT or SIGTERM, telling ``echo`` when it is listening, stopping and stopped. With
    ``ready_file``, write ``{"pid", "urls"}`` there once every listener is bound (the ports really bound:
    a supervisor that asked for port 0 learns them here). With ``tune_heap``, the garbage collector is
    set for a long-running process once every listener is bound (xkslab_shared/heap.py)."""
    parent.die_with_parent()
    async with AsyncExitStack() as stack:
        urls: list[str] = []
        for listener in listeners:
            urls += await start(stack, listener, echo)
        if tune_heap:
            heap.settle_after_start()
        if ready_file is not None:
            write_ready_file(ready_file, {"pid": os.getpid(), "urls": urls})
        await wait_for_signal()
        echo("stopping")
    echo("stopped")


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run a server's coroutine on uvloop when it is installed (a faster event loop for the same code),
    else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
