"""The proxy's DSM client against real servers on loopback: fail-over across nodes within one deadline.

The first node is a real stalled server (it accepts and reads, and never answers); the second a small
aiohttp server that answers as the DSM does and records the deadline it was given. Assertions are on the
deadline arithmetic (what each attempt was given), not on a tight wall clock."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp import web

from xks_frontend.dsm_client import DsmClient, DsmTimeout
from xkslab_shared.proxy_link import CALL_PATH, ForwardedCall

TIMEOUT_MS = 2000  # generous: a loaded machine must not decide the outcome


def _call() -> ForwardedCall:
    return ForwardedCall(
        app_id="a",
        operation="encrypt",
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

    async def handle(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = await request.json()
        self.seen.append((time.monotonic(), int(body["budget_ms"])))
        return web.json_response({"result": {"ok": True}})


@pytest.fixture
async def answering() -> AsyncIterator[Answering]:
    node = Answering()
    app = web.Application()
    app.router.add_post(CALL_PATH, node.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    assert site._server is not None
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    node.url = f"http://127.0.0.1:{port}"
    try:
        yield node
    finally:
        await runner.cleanup()


async def _client(urls: list[str]) -> DsmClient:
    client = DsmClient(urls, "t" * 32, timeout_s=TIMEOUT_MS / 1000, ssl_context=None)
    await client.open()
    return client


async def test_fail_over_past_a_stalled_node_stays_within_the_one_budget(
    stalled: str, answering: Answering
) -> None:
    client = await _client([stalled, answering.url])
    try:
        started = time.monotonic()
        assert await client.call(_call()) == {"ok": True}  # the second node answered
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
