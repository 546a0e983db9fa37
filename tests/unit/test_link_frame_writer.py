"""The link's FrameWriter (xkslab_shared/link_frames.py): the frames of one loop turn in one write, in the
order sent, over a real socket pair; nothing after the connection is gone; and many calls at once on one
real link connection, each paired with its own answer."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any, cast

from dsm_emulator.api.link import LinkServer
from xks_frontend.dsm_client import DsmClient
from xkslab_shared.link_frames import FrameBuffer, FrameWriter, LinkAddress, decode, frame
from xkslab_shared.proxy_link import ForwardedCall

TOKEN = "t" * 40


class _Counted:
    """A real transport whose writes are counted (the bytes still go to the socket)."""

    def __init__(self, transport: asyncio.WriteTransport) -> None:
        self.transport = transport
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.transport.write(data)

    def is_closing(self) -> bool:
        return self.transport.is_closing()


async def _pair() -> tuple[asyncio.WriteTransport, socket.socket]:
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    transport, _ = await asyncio.get_running_loop().create_connection(asyncio.Protocol, sock=ours)
    return cast(asyncio.WriteTransport, transport), theirs


async def _receive(sock: socket.socket, size: int) -> bytes:
    loop, data = asyncio.get_running_loop(), b""
    while len(data) < size:
        data += await asyncio.wait_for(loop.sock_recv(sock, 65536), 5)
    return data


async def test_the_frames_of_one_turn_go_in_one_write_in_order() -> None:
    transport, theirs = await _pair()
    counted = _Counted(transport)
    writer = FrameWriter(asyncio.get_running_loop())
    writer.transport = cast(asyncio.WriteTransport, counted)
    sent = [frame(i, {"n": i}) for i in range(1, 6)]
    for data in sent:
        writer.send(data)
    assert counted.writes == 0  # queued until the turn ends
    await asyncio.sleep(0)
    assert counted.writes == 1
    writer.send(frame(9, {"n": 9}))
    await asyncio.sleep(0)
    assert counted.writes == 2
    wire = await _receive(theirs, sum(map(len, sent)) + len(frame(9, {"n": 9})))
    got = FrameBuffer(1024).feed(wire)
    assert [(i, decode(p)) for i, p in got] == [(i, {"n": i}) for i in (1, 2, 3, 4, 5, 9)]
    transport.close()
    theirs.close()


async def test_frames_queued_when_the_connection_goes_are_dropped() -> None:
    transport, theirs = await _pair()
    counted = _Counted(transport)
    writer = FrameWriter(asyncio.get_running_loop())
    writer.transport = cast(asyncio.WriteTransport, counted)
    writer.send(frame(1, {}))
    writer.transport = None  # connection_lost
    await asyncio.sleep(0)
    assert counted.writes == 0
    writer.transport = cast(asyncio.WriteTransport, counted)
    transport.close()
    writer.send(frame(2, {}))
    await asyncio.sleep(0)
    assert counted.writes == 0  # closing: not written
    theirs.close()


async def test_many_calls_at_once_on_one_connection_each_get_their_answer(tmp_path: Path) -> None:
    async def handle(request: dict[str, Any]) -> dict[str, Any]:
        key = ForwardedCall.from_json(request["call"]).key_id or ""
        await asyncio.sleep(0.001 * (hash(key) % 5))  # finish in an order of their own
        return {"result": {"key": key}}

    server = LinkServer(TOKEN, 64 * 1024, handle)
    url = await server.listen(LinkAddress(path=tmp_path / "dsm-link.sock"))
    client = DsmClient([url], TOKEN, timeout_s=5.0, ssl_context=None, link_connections=1)
    try:
        keys = [f"k{i}" for i in range(200)]
        answers = await asyncio.gather(*(client.call(_call(key)) for key in keys))
        assert [answer["key"] for answer in answers] == keys
    finally:
        await client.close()
        await server.close(grace_s=0.1)


def _call(key_id: str) -> ForwardedCall:
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
