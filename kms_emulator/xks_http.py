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

__all__ = ["AnswerTooLarge", "HttpPool", "MalformedAnswer", "ProxyDisconnected"]

MAX_CONNECTIONS = 100  # aiohttp's default limit, which the KMS had
KEEPALIVE_S = 15.0  # below the servers' own idle limits, so that a reused connection is seldom a closed one
MAX_HEAD_BYTES = 64 * 1024
CLOSE_WAIT_S = 1.0
_DECODERS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS}


class MalformedAnswer(Exception):
    """The proxy's answer is not HTTP/1.1 this client reads (or it ended before its body did)."""


class AnswerTooLarge(Exception):
    def __init__(self, status: int) -> None:
        super().__init__("the answer is larger than the limit")
        self.status = status


class ProxyDisconnected(ConnectionError):
    """The connection ended before an answer began (the cause, when there is one, says why)."""


class _Connection(asyncio.Protocol):
    """One connection to one endpoint; ``answer`` is the future of the call in flight."""

    def __init__(self, key: tuple[str, str, int], max_bytes: int) -> None:
        self.key = key
        self.max_bytes = max_bytes
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.not_after: float | None = None
        self.answer: asyncio.Future[tuple[int, bytes]] | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._buffer = bytearray()
        self._status = 0
        self._head_done = False
        self._length: int | None = None  # the body's, once the head is read; None: chunked or to EOF
        self._chunked = False
        self._encoding = ""
        self.reusable = True
        self._body = bytearray()

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
        self._buffer, self._body = bytearray(), bytearray()
        self._status, self._head_done, self._length, self._chunked, self._encoding = 0, False, None, False, ""
        self.reusable = True
        self.transport.write(data)
        return self.answer

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.answer is None or self.answer.done():
            self.close()  # nothing was asked: a server that speaks out of turn is not reused
            return
        self._buffer += data
        try:
            if not self._head_done and not self._read_head():
                return
            if self._chunked:
                done = self._read_chunks()
            elif self._length is not None:
                done = len(self._buffer) >= self._length
                if len(self._buffer) > self._length:
                    raise MalformedAnswer("more bytes than the Content-Length")
                if done:
                    self._body = self._buffer
            else:
                if len(self._buffer) > self.max_bytes:
                    raise AnswerTooLarge(self._status)
                return  # read to the end of the connection
            if done:
                self._finish()
        except (MalformedAnswer, AnswerTooLarge) as exc:
            self.reusable = False
            self.answer.set_exception(exc)
            self.close()

    def _read_head(self) -> bool:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEAD_BYTES:
                raise MalformedAnswer("the head is too large")
            return False
        lines = bytes(self._buffer[:end]).split(b"\r\n")
        del self._buffer[: end + 4]
        version, _, rest = lines[0].partition(b" ")
        code = rest[:3]
        if (
            version not in (b"HTTP/1.1", b"HTTP/1.0")
            or len(code) != 3
            or not code.isdigit()
            or rest[3:4] not in (b"", b" ")
        ):
            raise MalformedAnswer("not an HTTP/1.x status line")
        status = int(code)
        if 100 <= status < 200:  # an interim answer: the real one follows
            return self._read_head() if self._buffer else False
        self._status = status
        self.reusable = version == b"HTTP/1.1"
        lengths: set[bytes] = set()
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or name != name.strip():
                raise MalformedAnswer("a header line without a name")
            name, value = name.lower(), value.strip()
            if name == b"content-length":
                lengths.add(value)
            elif name == b"transfer-encoding":
                self._chunked = value.lower() == b"chunked"
                if not self._chunked:
                    raise MalformedAnswer("a transfer coding other than chunked")
            elif name == b"connection" and value.lower() == b"close":
                self.reusable = False
            elif name == b"content-encoding":
                self._encoding = value.lower().decode("latin-1")
        if self._encoding not in ("", "identity") and self._encoding not in _DECODERS:
            raise MalformedAnswer("an unknown Content-Encoding")
        if status in (204, 304):
            self._length = 0
        elif not self._chunked and lengths:
            if len(lengths) != 1 or not next(iter(lengths)).isdigit():
                raise MalformedAnswer("a bad Content-Length")
            self._length = int(next(iter(lengths)))
            if self._length > self.max_bytes:
                raise AnswerTooLarge(status)
        elif not self._chunked:
            self.reusable = False  # its end is the connection's
        self._head_done = True
        return True

    def _read_chunks(self) -> bool:
        buffer = self._buffer
        while True:
            line_end = buffer.find(b"\r\n")
            if line_end < 0:
                if len(buffer) > MAX_HEAD_BYTES:
                    raise MalformedAnswer("a chunk size line is too long")
                return False
            size_text = bytes(buffer[:line_end]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise MalformedAnswer("a bad chunk size") from None
            if size == 0:
                trailers_end = buffer.find(b"\r\n\r\n", line_end)
                if trailers_end == line_end:  # no trailers: the size line's CRLF and one more
                    return True
                if trailers_end < 0:
                    return False
                return True
            if len(buffer) < line_end + 2 + size + 2:
                return False
            if buffer[line_end + 2 + size : line_end + 4 + size] != b"\r\n":
                raise MalformedAnswer("a chunk without its CRLF")
            self._body += buffer[line_end + 2 : line_end + 2 + size]
            if len(self._body) > self.max_bytes:
                raise AnswerTooLarge(self._status)
            del buffer[: line_end + 4 + size]

    def _finish(self) -> None:
        body = bytes(self._body)
        if self._encoding in _DECODERS:
            decoder = zlib.decompressobj(_DECODERS[self._encoding])
            try:
                body = decoder.decompress(body, self.max_bytes + 1)
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
        if self._head_done and self._length is None and not self._chunked and exc is None:
            try:
                self._body = self._buffer
                self._finish()
            except (MalformedAnswer, AnswerTooLarge) as bad:
                answer.set_exception(bad)
            return
        if self._head_done or self._buffer:
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
