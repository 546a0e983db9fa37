"""The HTTP/1.1 the KMS speaks to XKS proxies: one POST at a time per kept-alive connection, on asyncio
protocols, and nothing else of HTTP (no cookies, redirects, proxies or retries).

Why not aiohttp's client, which the KMS used before: per proxy call it cost 170-270 us of CPU more than
this (request and response objects, a task per request body, the cookie jar, its timers), a third of
the KMS's own CPU per GenerateDataKey on an XKS key (README, "The KMS's own hop"). What it did that
matters here is kept: connections are pooled per endpoint (at most ``MAX_CONNECTIONS`` calls in flight,
idle ones closed after ``KEEPALIVE_S``, ``Connection: close`` and HTTP/1.0 honoured); a connection a call
did not finish with (a timeout, a cancellation, a broken answer) is closed, never reused; answers are read
whole, by Content-Length, chunked or to the end of the connection, up to a bound, and a gzip or deflate
Content-Encoding is decoded.

The answers are parsed by httptools' HttpResponseParser (MagicStack's binding of llhttp, Node.js's
parser, which uvicorn uses; uvloop's authors), not by code of our own: the status line, headers, chunks,
Content-Length (one only, digits only, not with Transfer-Encoding) and keep-alive are what llhttp is
fuzzed and relied on for. It costs less CPU than the hand-written parser it replaced (3.4-4.7 against
5.0-9.8 us per answer, parsing alone). What is ours is what this client refuses or needs beyond parsing:
HTTP/1.x only, chunked the only transfer coding, the body's bound, the decoding, and the end of an answer
without a length, which only the end of the connection marks (httptools has no call for that end).

Failures leave as the exceptions xks_errors.transport_error classifies: OSError for the transport (a
lost TLS session carries the ssl.SSLError as its cause), ssl.SSLError for a handshake, MalformedAnswer
for an answer that is not HTTP, AnswerTooLarge past the bound.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
import zlib
from typing import cast

import httptools

__all__ = ["AnswerTooLarge", "HttpPool", "MalformedAnswer", "ProxyDisconnected"]

MAX_CONNECTIONS = 100  # aiohttp's default limit, which the KMS had
KEEPALIVE_S = 15.0  # below the servers' own idle limits, so that a reused connection is seldom a closed one
MAX_HEAD_BYTES = 64 * 1024
CLOSE_WAIT_S = 1.0
_DECODERS = {b"gzip": 16 + zlib.MAX_WBITS, b"deflate": zlib.MAX_WBITS, b"x-gzip": 16 + zlib.MAX_WBITS}


class MalformedAnswer(Exception):
    """The proxy's answer is not HTTP/1.1 this client reads (or it ended before its body did)."""


class AnswerTooLarge(Exception):
    def __init__(self, status: int) -> None:
        super().__init__("the answer is larger than the limit")
        self.status = status


class ProxyDisconnected(ConnectionError):
    """The connection ended before an answer began (the cause, when there is one, says why)."""


class _Connection(asyncio.Protocol):
    """One connection to one endpoint; ``answer`` is the future of the call in flight. llhttp (through
    httptools) reads the answer; this class keeps what the call needs of it."""

    def __init__(self, key: tuple[str, str, int], max_bytes: int) -> None:
        self.key = key
        self.max_bytes = max_bytes
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.not_after: float | None = None
        self.answer: asyncio.Future[tuple[int, bytes]] | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.reusable = True
        self._parser = httptools.HttpResponseParser(self)
        self._reset()

    def _reset(self) -> None:
        self._status = 0
        self._head_bytes = 0
        self._head_done = False
        self._complete = False
        self._sized = False  # a Content-Length or chunked; without either the body ends with the connection
        self._encoding = b""
        self._body: list[bytes] = []
        self._body_bytes = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport is not an asyncio.Transport subclass, but it is one.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        cert = transport.get_extra_info("peercert")
        if isinstance(cert, dict) and isinstance(cert.get("notAfter"), str):
            self.not_after = float(ssl.cert_time_to_seconds(cert["notAfter"]))

    def send(self, data: bytes) -> asyncio.Future[tuple[int, bytes]]:
        assert self.transport is not None
        self.answer = asyncio.get_running_loop().create_future()
        self._reset()
        self.reusable = True
        self.transport.write(data)
        return self.answer

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        answer = self.answer
        if answer is None or answer.done():
            self.close()  # nothing was asked: a server that speaks out of turn is not reused
            return
        try:
            try:
                self._parser.feed_data(data)
            except httptools.HttpParserError as exc:
                # What a callback raised is the parse error's context.
                if isinstance(exc.__context__, (MalformedAnswer, AnswerTooLarge)):
                    raise exc.__context__ from None
                raise MalformedAnswer(f"not an HTTP/1.x answer ({exc})") from None
            except httptools.HttpParserUpgrade:
                raise MalformedAnswer("a switch to another protocol") from None
            if not self._head_done:
                self._head_bytes += len(data)
                if self._head_bytes > MAX_HEAD_BYTES:
                    raise MalformedAnswer("the head is too large")
            if self._complete:
                self._finish()
        except (MalformedAnswer, AnswerTooLarge) as exc:
            self.reusable = False
            answer.set_exception(exc)
            self.close()

    # httptools' callbacks, in the order it calls them.

    def on_message_begin(self) -> None:
        if self._complete:
            raise MalformedAnswer("more bytes than the answer")

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-length":  # llhttp has checked it (digits, and one length only)
            self._sized = True
            if int(value) > self.max_bytes:  # refused before it is sent, not after
                raise AnswerTooLarge(self._parser.get_status_code())
        elif name == b"transfer-encoding":
            self._sized = True
            if value.lower() != b"chunked":
                raise MalformedAnswer("a transfer coding other than chunked")
        elif name == b"content-encoding":
            self._encoding = value.strip().lower()
            if self._encoding not in _DECODERS and self._encoding not in (b"", b"identity"):
                raise MalformedAnswer("an unknown Content-Encoding")

    def on_headers_complete(self) -> None:
        if self._parser.get_http_version() not in ("1.1", "1.0"):  # llhttp reads 0.9 and 2.0 heads too
            raise MalformedAnswer("not an HTTP/1.x answer")
        self._status = self._parser.get_status_code()
        self._head_done = True

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > self.max_bytes:
            raise AnswerTooLarge(self._status)
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._status < 200:  # an interim answer: the real one follows
            self._reset()
            return
        self._complete = True
        # Connection: close, HTTP/1.0 without keep-alive, or a body that ended with the connection.
        self.reusable = self._parser.should_keep_alive()

    def _finish(self) -> None:
        body = b"".join(self._body)
        wbits = _DECODERS.get(self._encoding)
        if wbits is not None:
            try:
                body = zlib.decompressobj(wbits).decompress(body, self.max_bytes + 1)
            except zlib.error:
                raise MalformedAnswer("a body that does not decode") from None
            if len(body) > self.max_bytes:
                raise AnswerTooLarge(self._status)
        assert self.answer is not None
        self.answer.set_result((self._status, body))

    def eof_received(self) -> bool:
        return False  # close: a half-closed connection is no use to the next call

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.lost.done():
            self.lost.set_result(None)
        answer = self.answer
        if answer is None or answer.done():
            return
        # httptools has no call for the end of the input (llhttp_finish): an answer with neither a
        # Content-Length nor chunks, whose body the end of the connection ends, is whole here.
        if self._head_done and not self._sized and self._status not in (204, 304) and exc is None:
            self.reusable = False
            try:
                self._finish()
            except (MalformedAnswer, AnswerTooLarge) as bad:
                answer.set_exception(bad)
            return
        if self._head_done or self._head_bytes:
            answer.set_exception(MalformedAnswer("the connection closed inside the answer"))
            return
        lost = ProxyDisconnected("the connection closed before an answer")
        lost.__cause__ = exc  # an ssl.SSLError here is a TLS failure (a refused client certificate)
        answer.set_exception(lost)


class HttpPool:
    """Kept-alive connections per (scheme, host, port), all with one TLS client context."""

    def __init__(self, context: ssl.SSLContext, max_bytes: int) -> None:
        self._context = context
        self._max_bytes = max_bytes
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        self._open: set[_Connection] = set()

    async def post(
        self, scheme: str, host: str, port: int, request: bytes
    ) -> tuple[int, bytes, float | None]:
        """(status, body, the notAfter of the proxy's certificate over HTTPS); the caller bounds the time."""
        async with self._slots:
            key = (scheme, host, port)
            connection = self._idle_connection(key) or await self._connect(key)
            try:
                status, body = await connection.send(request)
            except BaseException:
                self._drop(connection)
                raise
            if connection.reusable and not connection.closed:
                connection.idle_since = time.monotonic()
                connection.answer = None
                self._idle.setdefault(key, []).append(connection)
            else:
                self._drop(connection)
            return status, body, connection.not_after

    def _idle_connection(self, key: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if not connection.closed and now - connection.idle_since < KEEPALIVE_S:
                return connection
            self._drop(connection)
        return None

    async def _connect(self, key: tuple[str, str, int]) -> _Connection:
        scheme, host, port = key
        connection = _Connection(key, self._max_bytes)
        tls = scheme == "https"
        await asyncio.get_running_loop().create_connection(
            lambda: connection,
            host,
            port,
            ssl=self._context if tls else None,
            server_hostname=host if tls else None,
        )
        self._open.add(connection)
        return connection

    def _drop(self, connection: _Connection) -> None:
        connection.close()
        self._open.discard(connection)

    async def close(self) -> None:
        """Close every connection, and wait (a little) until their sockets are: a socket left for the
        garbage collector after its loop has gone is a ResourceWarning."""
        connections, self._open = list(self._open), set()
        self._idle.clear()
        for connection in connections:
            connection.closed = True
            if connection.transport is not None:
                connection.transport.abort()
        if connections:
            await asyncio.wait([c.lost for c in connections], timeout=CLOSE_WAIT_S)
