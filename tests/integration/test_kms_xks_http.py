"""The KMS's HTTP/1.1 client for XKS proxies (kms_emulator.xks_http) against small real servers on
loopback that answer with exact bytes: every way an answer can end (Content-Length, chunked, the end of
the connection), when a connection is reused and when it is not, and each way an answer is refused."""

from __future__ import annotations

import asyncio
import gzip
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from kms_emulator.xks_client import XksProxyClient, XksProxyConfig, XksProxyError
from kms_emulator.xks_http import AnswerTooLarge, HttpPool, MalformedAnswer, ProxyDisconnected

REQUEST = b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}"
OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'


@dataclass
class CannedServer:
    """Answers each request on a connection with the next of ``answers`` (then closes, if ``close``)."""

    answers: list[bytes]
    close: bool = False
    port: int = 0
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while self.answers:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                self.requests.append(head + await reader.readexactly(length))
                writer.write(self.answers.pop(0))
                await writer.drain()
                if self.close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def pool() -> AsyncIterator[HttpPool]:
    opened = HttpPool(ssl.create_default_context(), max_bytes=1000)
    try:
        yield opened
    finally:
        await opened.close()


async def serving(server: CannedServer) -> asyncio.Server:
    listening = await asyncio.start_server(server.serve, "127.0.0.1", 0)
    server.port = listening.sockets[0].getsockname()[1]
    return listening


async def post(pool: HttpPool, server: CannedServer) -> tuple[int, bytes]:
    status, body, not_after = await asyncio.wait_for(pool.post("http", "127.0.0.1", server.port, REQUEST), 5)
    assert not_after is None  # plain HTTP: no certificate
    return status, body


async def test_kept_alive_answers_reuse_one_connection(pool: HttpPool) -> None:
    server = CannedServer([OK, OK, OK])
    async with await serving(server):
        for _ in range(3):
            assert await post(pool, server) == (200, b'{"ok":true}')
    assert server.connections == 1
    assert server.requests == [REQUEST] * 3


@pytest.mark.parametrize(
    "answer",
    [
        b'HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 11\r\n\r\n{"ok":true}',
        b'HTTP/1.0 200 OK\r\nContent-Length: 11\r\n\r\n{"ok":true}',
        b'HTTP/1.1 200 OK\r\n\r\n{"ok":true}',  # no length: the body ends with the connection
    ],
    ids=["connection-close", "http-1.0", "to-eof"],
)
async def test_answers_that_end_their_connection_are_read_and_not_reused(
    pool: HttpPool, answer: bytes
) -> None:
    server = CannedServer([answer, answer], close=True)
    async with await serving(server):
        assert await post(pool, server) == (200, b'{"ok":true}')
        assert await post(pool, server) == (200, b'{"ok":true}')
    assert server.connections == 2


async def test_chunked_interim_and_compressed_answers_are_read_whole(pool: HttpPool) -> None:
    chunked = (
        b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\n{"ok\r\n7\r\n":true}\r\n0\r\n\r\n'
    )
    interim = b"HTTP/1.1 100 Continue\r\n\r\n" + OK
    packed = gzip.compress(b'{"ok":true}')
    compressed = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(packed)
    server = CannedServer([chunked, interim, compressed + packed, OK])
    async with await serving(server):
        for _ in range(4):
            assert await post(pool, server) == (200, b'{"ok":true}')
    assert server.connections == 1


async def test_an_answer_in_many_segments_is_read_whole(pool: HttpPool) -> None:
    server = CannedServer([])

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"{}")
        for i in range(len(OK)):
            writer.write(OK[i : i + 1])
            await writer.drain()
            await asyncio.sleep(0)
        writer.close()

    listening = await asyncio.start_server(trickle, "127.0.0.1", 0)
    server.port = listening.sockets[0].getsockname()[1]
    async with listening:
        assert await post(pool, server) == (200, b'{"ok":true}')


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", MalformedAnswer),
        (b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n", MalformedAnswer),
        (b"HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\n{}", MalformedAnswer),
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n", MalformedAnswer),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}garbage", MalformedAnswer),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n{}", MalformedAnswer),  # cut short
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}", MalformedAnswer),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", MalformedAnswer),
        (b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 2\r\n\r\n{}", MalformedAnswer),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1001\r\n\r\n", AnswerTooLarge),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3e9\r\n" + b"x" * 1001 + b"\r\n",
            AnswerTooLarge,
        ),
        (b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 1001, AnswerTooLarge),
        (b"", ProxyDisconnected),  # closed without a word
    ],
    ids=[
        "not-http",
        "bad-status",
        "http-2",
        "upgrade",
        "more-than-the-length",
        "truncated",
        "two-lengths",
        "bad-chunk",
        "unknown-encoding",
        "too-long",
        "too-long-chunked",
        "too-long-to-eof",
        "closed",
    ],
)
async def test_answers_that_cannot_be_read_fail_and_close_the_connection(
    pool: HttpPool, answer: bytes, error: type[Exception]
) -> None:
    server = CannedServer([answer, OK], close=True)
    async with await serving(server):
        with pytest.raises(error):
            await post(pool, server)
        assert await post(pool, server) == (200, b'{"ok":true}')  # on a new connection
    assert server.connections == 2


async def test_a_call_given_up_closes_its_connection(pool: HttpPool) -> None:
    server = CannedServer([])
    answered = asyncio.Event()

    async def late(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server.connections += 1
        await reader.readuntil(b"{}")
        await answered.wait()
        writer.write(OK)
        await writer.drain()
        assert await reader.read() == b""  # the client closed it instead of reading the late answer
        writer.close()

    listening = await asyncio.start_server(late, "127.0.0.1", 0)
    server.port = listening.sockets[0].getsockname()[1]
    async with listening:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(pool.post("http", "127.0.0.1", server.port, REQUEST), 0.2)
        answered.set()
        assert (await pool.post("http", "127.0.0.1", server.port, REQUEST))[:2] == (200, b'{"ok":true}')
    assert server.connections == 2


async def test_the_client_sends_the_signed_headers_and_the_body_as_one_request() -> None:
    server = CannedServer([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"])
    async with await serving(server):
        cfg = XksProxyConfig(
            uri_endpoint=f"http://127.0.0.1:{server.port}",
            uri_path="/p/kms/xks/v1",
            access_key_id="AKIAI2SFODNN7EXAMPLE",
            secret="FYtE5EFA5FT0mCc3DrGUe2sti527BitkQ0Zr9MO9fvE",
        )
        async with XksProxyClient(timeout_s=5.0) as client:
            with pytest.raises(XksProxyError):  # {} is no health answer; what was sent is the point
                await client.health(cfg, kms_operation="KmsHealthCheck", kms_request_id="r-1")
    (sent,) = server.requests
    head, _, body = sent.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /p/kms/xks/v1/health HTTP/1.1"
    names = [line.split(b":")[0].lower() for line in lines[1:]]
    assert sorted(names) == [b"authorization", b"content-length", b"content-type", b"host", b"x-amz-date"]
    assert f"host: 127.0.0.1:{server.port}".encode() in head.lower()
    assert body == b'{"requestMetadata":{"kmsOperation":"KmsHealthCheck","kmsRequestId":"r-1"}}'
