"""The proxy's DSM client against real servers on loopback: calls spread over the nodes, fail-over within
one deadline, and which calls may be asked again on another node.

The nodes are real servers: a stalled one (it accepts and reads, and never answers), one that closes the
connection after reading a request, one that starts an answer and closes, and small aiohttp servers that
answer as the DSM does and record the deadline each call was given. Assertions are on the deadline
arithmetic (what each attempt was given) and on which node saw what, not on a tight wall clock."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp import web

from xks_frontend import node_spread
from xks_frontend.dsm_client import DsmClient, DsmTimeout, DsmUnreachable
from xkslab_shared.proxy_link import CALL_PATH, PREFIXES_PATH, ForwardedCall

TIMEOUT_MS = 2000  # generous: a loaded machine must not decide the outcome


def _call(operation: str = "encrypt") -> ForwardedCall:
    return ForwardedCall(
        app_id="a",
        operation=operation,
        key_id="k1",
        method="POST",
        path="/p/kms/xks/v1/keys/k1/encrypt",
        query="",
        headers={"authorization": "AWS4-HMAC-SHA256 x", "x-amz-date": "20260101T000000Z"},
        body=b"{}",
        max_plaintext_bytes=4300,
        max_aad_bytes=8192,
    )


@pytest.fixture
async def stalled() -> AsyncIterator[str]:
    """A node that accepts connections and reads requests but never answers."""
    held: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        while await reader.read(65536):
            pass

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


class Answering:
    def __init__(self) -> None:
        self.url = ""
        self.seen: list[tuple[float, int]] = []  # (monotonic time of arrival, budget_ms it was given)
        self.probes = 0
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = await request.json()
        self.seen.append((time.monotonic(), int(body["budget_ms"])))
        return web.json_response({"result": {"ok": True}})

    async def prefixes(self, request: web.Request) -> web.Response:
        self.probes += 1
        return web.json_response({"prefixes": {"/p": "a"}})

    async def start(self, sock: socket.socket | None = None) -> Answering:
        app = web.Application()
        app.router.add_post(CALL_PATH, self.handle)
        app.router.add_get(PREFIXES_PATH, self.prefixes)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = (
            web.SockSite(self.runner, sock) if sock is not None else web.TCPSite(self.runner, "127.0.0.1", 0)
        )
        await site.start()
        assert site._server is not None
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def answering() -> AsyncIterator[Answering]:
    node = await Answering().start()
    try:
        yield node
    finally:
        await node.stop()


@pytest.fixture
async def second() -> AsyncIterator[Answering]:
    node = await Answering().start()
    try:
        yield node
    finally:
        await node.stop()


async def _client(urls: list[str]) -> DsmClient:
    client = DsmClient(urls, "t" * 32, timeout_s=TIMEOUT_MS / 1000, ssl_context=None)
    await client.open()
    return client


async def test_a_read_fails_over_past_a_stalled_node_within_the_one_budget(
    stalled: str, answering: Answering
) -> None:
    client = await _client([stalled, answering.url])
    try:
        started = time.monotonic()
        assert await client.call(_call("decrypt")) == {"ok": True}  # the second node answered
    finally:
        await client.close()
    [(arrived, budget_ms)] = answering.seen
    waited_ms = (arrived - started) * 1000
    # The second node was given only what was left of the one deadline: the time already spent on the
    # stalled node plus the second node's budget fit in the proxy's timeout (before, each node was given
    # the whole timeout, so this was past 1.8 x TIMEOUT_MS).
    assert waited_ms + budget_ms <= TIMEOUT_MS
    # and the stalled node did not get all of it: the second one had a real turn
    assert budget_ms >= TIMEOUT_MS / 4


async def test_two_stalled_nodes_time_out_once(stalled: str) -> None:
    client = await _client([stalled, stalled])
    try:
        started = time.monotonic()
        with pytest.raises(DsmTimeout):
            await client.call(_call())
        elapsed_ms = (time.monotonic() - started) * 1000
    finally:
        await client.close()
    # One timeout for the whole call, not one per node (that would be at least 2 x TIMEOUT_MS).
    assert elapsed_ms < 2 * TIMEOUT_MS


@pytest.fixture
def refused() -> Iterator[str]:
    """A port bound but not listening: connecting is refused at once, and nobody else can take it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


async def test_a_node_that_fails_at_once_leaves_the_next_nearly_the_whole_budget(
    refused: str, answering: Answering
) -> None:
    client = await _client([refused, answering.url])
    try:
        started = time.monotonic()
        assert await client.call(_call()) == {"ok": True}
    finally:
        await client.close()
    [(arrived, budget_ms)] = answering.seen
    assert (arrived - started) * 1000 + budget_ms <= TIMEOUT_MS
    assert budget_ms > TIMEOUT_MS / 2  # not half: the refused node used (almost) none of its share


async def test_calls_are_spread_over_the_nodes(answering: Answering, second: Answering) -> None:
    client = await _client([answering.url, second.url])
    try:
        for _ in range(20):
            assert await client.call(_call()) == {"ok": True}
        held = [asyncio.create_task(client.call(_call("decrypt"))) for _ in range(20)]
        assert all(answer == {"ok": True} for answer in await asyncio.gather(*held))
    finally:
        await client.close()
    # One after another they take turns; side by side the fewest in flight goes first: both get a share.
    assert len(answering.seen) >= 10 and len(second.seen) >= 10
    assert len(answering.seen) + len(second.seen) == 40


async def test_an_encrypt_is_not_asked_again_after_a_timeout_and_the_node_is_then_left_out(
    stalled: str, answering: Answering
) -> None:
    """The stalled node may still be doing the Encrypt: the call times out (after the one deadline, all
    of it the stalled node's), the answering node never sees it; the next calls go to the answering node
    while the stalled one is in its back-off."""
    client = await _client([stalled, answering.url])
    try:
        started = time.monotonic()
        with pytest.raises(DsmTimeout):
            await client.call(_call())
        elapsed_ms = (time.monotonic() - started) * 1000
        assert answering.seen == []
        for _ in range(4):
            assert await client.call(_call()) == {"ok": True}
    finally:
        await client.close()
    assert elapsed_ms < 2 * TIMEOUT_MS  # the one deadline, not one per node
    assert len(answering.seen) == 4


@pytest.fixture
async def hangs_up() -> AsyncIterator[str]:
    """A node that reads a request and closes the connection without a byte of answer (as one that
    crashed)."""

    async def close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(close, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def half_answers() -> AsyncIterator[str]:
    """A node that starts an answer (status line and headers, part of the body) and closes."""

    async def half(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"res')
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(half, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


async def test_an_encrypt_goes_to_another_node_when_no_byte_of_answer_came_back(
    hangs_up: str, answering: Answering
) -> None:
    client = await _client([hangs_up, answering.url])
    try:
        assert await client.call(_call()) == {"ok": True}
    finally:
        await client.close()
    assert len(answering.seen) == 1


async def test_an_encrypt_whose_answer_had_begun_is_not_asked_again(
    half_answers: str, answering: Answering
) -> None:
    client = await _client([half_answers, answering.url])
    try:
        with pytest.raises(DsmUnreachable):
            await client.call(_call())
        assert answering.seen == []
        assert await client.call(_call("decrypt")) == {"ok": True}  # a read may be: the same answer twice
    finally:
        await client.close()
    assert len(answering.seen) == 1


async def test_a_failed_node_is_probed_and_back_in_the_spread_once_it_answers(
    answering: Answering, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first node's port is bound but not listening (refused) until a server starts on that very
    socket: the node is left out, probed with the prefix table once its back-off is over, and after the
    probe's answer takes calls again."""
    monkeypatch.setattr(node_spread, "BACKOFF_S", 0.05)
    monkeypatch.setattr(node_spread, "MAX_BACKOFF_S", 0.05)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    revived = Answering()
    client = await _client([f"http://127.0.0.1:{sock.getsockname()[1]}", answering.url])
    try:
        for _ in range(6):  # refused at once: an Encrypt may go to the other node
            assert await client.call(_call()) == {"ok": True}
        assert len(answering.seen) == 6
        await revived.start(sock)
        deadline = time.monotonic() + 60  # turns a hang into a failure only
        while not revived.seen:
            assert time.monotonic() < deadline, "the revived node never took a call again"
            assert await client.call(_call()) == {"ok": True}
            await asyncio.sleep(0.01)
    finally:
        await client.close()
        await revived.stop()
        sock.close()
    assert revived.probes >= 1  # it came back through a probe, not by risking a client's call
