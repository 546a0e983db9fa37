"""The framed proxy-DSM link (xkslab_shared/link_frames.py): the key manager's real LinkServer on a real Unix
socket or TCP port, the proxy's real DsmClient and LinkNode, and raw sockets for what a broken peer sends.

The server's handler is a small stand-in for the key manager's (which tests/integration run end to end): it
answers each call by the key id it names, so a test can hold one call while others pass it."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from dsm_emulator.api.link import LinkServer
from xks_frontend.dsm_client import DsmClient, DsmTimeout, DsmUnreachable
from xkslab_shared.link_frames import (
    HEADER,
    FrameBuffer,
    FrameError,
    LinkAddress,
    decode,
    frame,
    parse_link_url,
)
from xkslab_shared.proxy_link import ForwardedCall

TOKEN = "t" * 40
MAX_PAYLOAD = 64 * 1024
TIMEOUT_S = 5.0  # generous: a loaded machine must not decide an outcome


def _call(key_id: str = "k1") -> ForwardedCall:
    return ForwardedCall(
        app_id="a",
        operation="encrypt",
        key_id=key_id,
        method="POST",
        path=f"/p/kms/xks/v1/keys/{key_id}/encrypt",
        query="",
        headers={"authorization": "AWS4-HMAC-SHA256 x", "x-amz-date": "20260101T000000Z"},
        body=b"{}",
        max_plaintext_bytes=4300,
        max_aad_bytes=8192,
    )


class Node:
    """A LinkServer whose calls answer {"result": {"key": <key id>}}; a key id in ``held`` waits for its
    event, "huge" answers past the client's bound, "never" never answers."""

    def __init__(self, address: LinkAddress) -> None:
        self.address = address
        self.held: dict[str, asyncio.Event] = {}
        self.started: dict[str, asyncio.Event] = {}
        self.server = LinkServer(TOKEN, MAX_PAYLOAD, self.handle)
        self.url = ""

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        if request.get("op") == "prefixes":
            return {"prefixes": {"/p": "a"}}
        key = ForwardedCall.from_json(request["call"]).key_id or ""
        self.started.setdefault(key, asyncio.Event()).set()
        if key in self.held:
            await self.held[key].wait()
        if key == "never":
            await asyncio.Event().wait()
        if key == "huge":
            return {"result": {"key": "x" * (2 * MAX_PAYLOAD)}}
        return {"result": {"key": key}}

    async def start(self) -> Node:
        self.url = await self.server.listen(self.address)
        return self

    async def stop(self) -> None:
        await self.server.close(grace_s=0.1)


@pytest.fixture(params=["unix", "tcp"])
async def node(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Node]:
    address = (
        LinkAddress(path=tmp_path / "run" / "dsm-link.sock")
        if request.param == "unix"
        else LinkAddress(host="127.0.0.1", port=0)
    )
    started = await Node(address).start()
    try:
        yield started
    finally:
        await started.stop()


def _client(urls: list[str], token: str = TOKEN, connections: int = 1) -> DsmClient:
    return DsmClient(
        urls,
        token,
        timeout_s=TIMEOUT_S,
        ssl_context=None,
        link_connections=connections,
        link_max_answer_bytes=MAX_PAYLOAD,
    )


async def _raw(node: Node) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if node.address.path is not None:
        return await asyncio.open_unix_connection(str(node.address.path))
    address = parse_link_url(node.url)
    assert address is not None
    return await asyncio.open_connection(address.host, address.port)


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, dict[str, Any]]:
    length, request_id = HEADER.unpack(await reader.readexactly(HEADER.size))
    return request_id, decode(await reader.readexactly(length))


# ------------------------------------------------------------------------------------------ framing


def test_frames_are_reassembled_from_any_split() -> None:
    wire = frame(7, {"a": 1}) + frame(8, {"b": "é"}) + frame(9, {})
    for cut in range(len(wire) + 1):
        buffer = FrameBuffer(1024)
        got = buffer.feed(wire[:cut]) + buffer.feed(wire[cut:])
        assert [(i, decode(p)) for i, p in got] == [(7, {"a": 1}), (8, {"b": "é"}), (9, {})]
        assert buffer.buffered == 0


def test_an_oversized_header_is_refused_before_its_payload_arrives() -> None:
    buffer = FrameBuffer(100)
    with pytest.raises(FrameError, match="past the link's bound of 100"):
        buffer.feed(struct.pack(">II", 101, 1))
    assert FrameBuffer(100).feed(struct.pack(">II", 100, 1) + b"x" * 99) == []


@pytest.mark.parametrize("payload", [b"not json", b"[1, 2]", b'"text"', b"\xff\xfe"])
def test_a_payload_that_is_not_a_json_object_is_a_frame_error(payload: bytes) -> None:
    with pytest.raises(FrameError):
        decode(payload)


@pytest.mark.parametrize(
    "url", ["link+unix://host/path", "link+unix://relative", "link://127.0.0.1", "link://:80", "link://h:1/x"]
)
def test_malformed_link_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        parse_link_url(url)
    assert parse_link_url("http://127.0.0.1:8500") is None
    assert parse_link_url("link://127.0.0.1:8501") == LinkAddress(host="127.0.0.1", port=8501)


# ------------------------------------------------------------------------------------------ calls


async def test_calls_and_prefixes_are_answered_over_the_link(node: Node) -> None:
    client = _client([node.url])
    try:
        assert await client.call(_call("k1")) == {"key": "k1"}
        assert await client.prefixes() == {"/p": "a"}
    finally:
        await client.close()
    assert node.server.stats.connections == 1  # both on the one connection, the token presented once


async def test_answers_come_back_out_of_order_on_one_connection(node: Node) -> None:
    node.held["slow"] = asyncio.Event()
    client = _client([node.url], connections=1)
    try:
        slow = asyncio.create_task(client.call(_call("slow")))
        await node.started.setdefault("slow", asyncio.Event()).wait()
        # Asked after the slow one, on the same connection, answered before it.
        fast = await asyncio.gather(*(client.call(_call(f"fast{n}")) for n in range(20)))
        assert fast == [{"key": f"fast{n}"} for n in range(20)]
        assert not slow.done()
        node.held["slow"].set()
        assert await slow == {"key": "slow"}
    finally:
        await client.close()
    assert node.server.stats.connections == 1


async def test_a_cancelled_call_does_not_disturb_the_others(node: Node) -> None:
    node.held["a"] = asyncio.Event()
    node.held["b"] = asyncio.Event()
    client = _client([node.url], connections=1)
    try:
        # Cancelled while the connection is still being opened: the opening is shared, not cancelled.
        first = asyncio.create_task(client.call(_call("a")))
        second = asyncio.create_task(client.call(_call("b")))
        await asyncio.sleep(0)
        first.cancel()
        await node.started.setdefault("b", asyncio.Event()).wait()
        # And one cancelled while its answer is pending on the open connection.
        third = asyncio.create_task(client.call(_call("a")))
        await node.started.setdefault("a", asyncio.Event()).wait()
        third.cancel()
        with pytest.raises(asyncio.CancelledError):
            await third
        node.held["a"].set()  # its answer arrives for nobody, and is dropped
        node.held["b"].set()
        assert await second == {"key": "b"}
        assert await client.call(_call("c")) == {"key": "c"}
        assert first.cancelled()
    finally:
        await client.close()


async def test_a_call_past_its_deadline_is_a_timeout_and_the_connection_stays(node: Node) -> None:
    client = DsmClient(
        [node.url],
        TOKEN,
        timeout_s=0.3,
        ssl_context=None,
        link_connections=1,
        link_max_answer_bytes=MAX_PAYLOAD,
    )
    try:
        assert await client.call(_call("warm")) == {"key": "warm"}
        with pytest.raises(DsmTimeout):
            await client.call(_call("never"))
        assert await client.call(_call("after")) == {"key": "after"}
    finally:
        await client.close()
    assert node.server.stats.connections == 1


async def test_a_wrong_token_is_refused_and_the_connection_closed(node: Node) -> None:
    client = _client([node.url], token="w" * 40)
    try:
        with pytest.raises(DsmUnreachable, match="refused the proxy's call"):
            await client.call(_call())
    finally:
        await client.close()
    reader, writer = await _raw(node)
    writer.write(frame(0, {"token": TOKEN[:-1] + "x"}))
    assert await _read_frame(reader) == (
        0,
        {"refused": "this link is for XKS proxies: present the proxy token"},
    )
    assert await reader.read() == b""  # closed by the key manager
    writer.close()
    assert node.server.stats.refused_connections == 2 and node.server.stats.connections == 0


async def test_a_call_before_the_token_is_refused(node: Node) -> None:
    reader, writer = await _raw(node)
    writer.write(frame(5, {"op": "call", "call": _call().to_json()}))
    assert (await _read_frame(reader))[1].keys() == {"refused"}
    assert await reader.read() == b""
    writer.close()


@pytest.mark.parametrize(
    "garbage",
    [
        struct.pack(">II", MAX_PAYLOAD + 1, 1),  # a header announcing a payload past the bound
        struct.pack(">II", 8, 1) + b"not json",
        struct.pack(">II", 2, 1) + b"[]",
    ],
)
async def test_garbage_after_the_token_closes_the_connection(node: Node, garbage: bytes) -> None:
    reader, writer = await _raw(node)
    writer.write(frame(0, {"token": TOKEN}))
    assert await _read_frame(reader) == (0, {"ok": True})
    writer.write(garbage)
    assert await reader.read() == b""
    writer.close()
    # and the node still serves everyone else
    client = _client([node.url])
    try:
        assert await client.call(_call()) == {"key": "k1"}
    finally:
        await client.close()


async def test_an_oversized_answer_fails_the_calls_on_it_and_the_next_call_reconnects(node: Node) -> None:
    client = _client([node.url], connections=1)
    try:
        with pytest.raises(DsmUnreachable):
            await client.call(_call("huge"))
        assert await client.call(_call("k2")) == {"key": "k2"}
    finally:
        await client.close()
    assert node.server.stats.connections == 2
