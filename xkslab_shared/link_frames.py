"""The framed link between the XKS proxy and the key manager: the wire format and the addresses, shared by
both ends (dsm_emulator/api/link.py serves it, xks_frontend/link_client.py calls it).

One persistent stream carries many calls at once. Every frame is an 8-byte header, the length of its
payload and a request id (two unsigned 32-bit big-endian integers), then the payload, one JSON object:

    proxy -> DSM   id 0   {"token": "<proxy token>"}            once, first, on every connection
    DSM -> proxy   id 0   {"ok": true} | {"refused": "..."}      (then the DSM closes the connection)
    proxy -> DSM   id n   {"op": "call", "call": ForwardedCall.to_json()} | {"op": "prefixes"}
    DSM -> proxy   id n   {"result": {...}} | {"error": {"code", "message"}} | {"refused": "..."}

Answers come in the order they are ready, not the order asked: the id pairs them. A payload longer than
the receiver's bound, a header that is not followed by a JSON object, or any frame before the token is
accepted makes the receiver close the connection; the calls in flight on it then fail, and the proxy
answers them as it answers a key manager it cannot reach.

Addresses are URLs: ``link+unix:///abs/path/dsm-link.sock`` (a Unix socket on the same machine) or
``link://HOST:PORT`` (TCP, for a trusted network; there is no TLS on the link: use an ``https://`` node
across anything else).
"""

from __future__ import annotations

import asyncio
import errno
import os
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

HEADER = struct.Struct(">II")
HELLO_ID = 0
MAX_ID = 2**32 - 1
UNIX_SCHEME = "link+unix"
TCP_SCHEME = "link"
# sun_path holds 108 bytes; a longer socket path is reached through /proc/self/fd (see _short_path).
_SUN_PATH_MAX = 100


class FrameError(ValueError):
    """The peer broke the framing (a payload past the bound, or one that is not a JSON object): the
    connection is closed, since nothing after it can be trusted to line up."""


def frame(request_id: int, payload: Mapping[str, Any]) -> bytes:
    body = orjson.dumps(payload)
    return HEADER.pack(len(body), request_id) + body


class FrameWriter:
    """Frames out, one write per loop turn: ``send`` queues a frame, and the frames queued in the same
    turn of the event loop go to the transport joined, in the order sent, in one write (one system call
    instead of one per frame, which was 9 % of the proxy's samples). What is queued when the connection
    goes away (``transport`` set to None) is dropped, as a write to a closed transport would be."""

    __slots__ = ("_loop", "_queued", "transport")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queued: list[bytes] = []
        self.transport: asyncio.WriteTransport | None = None

    def send(self, data: bytes) -> None:
        if not self._queued:
            self._loop.call_soon(self._flush)
        self._queued.append(data)

    def _flush(self) -> None:
        queued, self._queued = self._queued, []
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(queued[0] if len(queued) == 1 else b"".join(queued))


class FrameBuffer:
    """Bytes in, whole frames out: ``feed`` returns the (request id, payload) of every frame completed by
    ``data``, and raises FrameError as soon as a header announces a payload past ``max_payload``, before
    any of it is buffered."""

    __slots__ = ("_buffer", "_max")

    def __init__(self, max_payload: int) -> None:
        self._buffer = bytearray()
        self._max = max_payload

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buffer = self._buffer
        buffer += data
        frames: list[tuple[int, bytes]] = []
        start, size = 0, len(buffer)
        while size - start >= HEADER.size:
            length, request_id = HEADER.unpack_from(buffer, start)
            if length > self._max:
                raise FrameError(f"a frame of {length} bytes is past the link's bound of {self._max}")
            end = start + HEADER.size + length
            if end > size:
                break
            frames.append((request_id, bytes(buffer[start + HEADER.size : end])))
            start = end
        if start:
            del buffer[:start]
        return frames

    @property
    def buffered(self) -> int:
        return len(self._buffer)


def decode(payload: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise FrameError("a frame's payload is not JSON") from None
    if not isinstance(data, dict):
        raise FrameError("a frame's payload is not a JSON object")
    return data


@dataclass(frozen=True)
class LinkAddress:
    """Where a key manager serves the link: a Unix socket ``path``, or TCP ``host`` and ``port``."""

    path: Path | None = None
    host: str = ""
    port: int = 0

    @property
    def url(self) -> str:
        if self.path is not None:
            return f"{UNIX_SCHEME}://{self.path}"
        return f"{TCP_SCHEME}://{self.host}:{self.port}"

    async def connect(
        self, factory: Callable[[], asyncio.Protocol]
    ) -> tuple[asyncio.BaseTransport, asyncio.Protocol]:
        loop = asyncio.get_running_loop()
        if self.path is None:
            return await loop.create_connection(factory, self.host, self.port)
        with _short_path(self.path) as path:
            return await loop.create_unix_connection(factory, path)

    async def listen(
        self, factory: Callable[[], asyncio.Protocol], *, reuse_port: bool = False
    ) -> asyncio.Server:
        """Serve on this address. A Unix socket is made 0600 (only this user may connect), and a stale
        socket file left by a process that died is replaced; one a live server answers on is not.
        ``reuse_port`` (TCP only): SO_REUSEPORT, so the workers of one DSM share the link's port as they
        share the HTTP port."""
        loop = asyncio.get_running_loop()
        if self.path is None:
            return await loop.create_server(
                factory, self.host, self.port, backlog=128, reuse_port=reuse_port or None
            )
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with _short_path(self.path) as path:
            try:
                _reader, writer = await asyncio.open_unix_connection(path)
            except FileNotFoundError:
                pass
            except OSError:
                os.unlink(path)  # nothing listens on it: left by a process that died
            else:
                writer.close()
                raise OSError(errno.EADDRINUSE, f"{self.path} is served by another process")
            old = os.umask(0o177)
            try:
                return await loop.create_unix_server(factory, path, backlog=128)
            finally:
                os.umask(old)


def parse_link_url(url: str) -> LinkAddress | None:
    """The address of a ``link+unix://`` or ``link://`` URL; None for any other scheme (HTTP nodes).
    Raises ValueError for a link URL without a path, host or port."""
    parts = urlsplit(url)
    if parts.scheme == UNIX_SCHEME:
        if not parts.path.startswith("/") or parts.netloc:
            raise ValueError(f"{url}: a {UNIX_SCHEME} URL is {UNIX_SCHEME}:///absolute/path")
        return LinkAddress(path=Path(parts.path))
    if parts.scheme == TCP_SCHEME:
        if not parts.hostname or parts.port is None or parts.path not in ("", "/"):
            raise ValueError(f"{url}: a {TCP_SCHEME} URL is {TCP_SCHEME}://HOST:PORT")
        return LinkAddress(host=parts.hostname, port=parts.port)
    return None


class _short_path:
    """The socket's path as bind() and connect() can take it: itself when short enough, else through
    ``/proc/self/fd/N`` of its directory (sun_path holds 108 bytes; tests' temporary directories do not
    always fit)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd: int | None = None

    def __enter__(self) -> str:
        text = str(self._path)
        if len(text.encode()) <= _SUN_PATH_MAX:
            return text
        self._fd = os.open(self._path.parent, os.O_RDONLY | os.O_DIRECTORY)
        return f"/proc/self/fd/{self._fd}/{self._path.name}"

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
