"""The proxy's end of the framed link to a key manager (xkslab_shared/link_frames.py has the wire format):
a small pool of persistent connections to one node, each carrying many calls at once, paired with their
answers by request id.

A connection is opened when a call first needs it (one opening shared by every call waiting for it, so a
cancelled caller does not cancel it for the others) and presents the proxy token once. When it is lost,
or the node breaks the framing, every call in flight on it fails with LinkDown (the proxy answers it as
a key manager it cannot reach) and the next call opens a new one. A call that gives up (its deadline, or
its caller cancelled) forgets its id; the answer, if it comes, is dropped, and the other calls on the
connection are not disturbed.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any, cast

from xkslab_shared.link_frames import (
    HELLO_ID,
    MAX_ID,
    FrameBuffer,
    FrameError,
    FrameWriter,
    LinkAddress,
    decode,
    frame,
)

log = logging.getLogger(__name__)
# How long opening a connection (connect and the token's answer) may take, whatever the calls waiting
# for it: a node that accepts and never answers must not hold the slot for ever.
OPEN_TIMEOUT_S = 5.0


class LinkDown(Exception):
    """The call got no answer from the node: no connection, a lost one, a refused token, or garbage.
    ``refused`` when the node itself refused the proxy (its token)."""

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


class _Connection(asyncio.Protocol):
    def __init__(self, max_payload: int) -> None:
        loop = asyncio.get_running_loop()
        self._frames = FrameBuffer(max_payload)
        self.transport: asyncio.Transport | None = None
        # The calls' frames: those of one loop turn (a burst of requests) in one write.
        self.writer = FrameWriter(loop)
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.hello: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; they have the same methods.
        self.transport = self.writer.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            for request_id, payload in self._frames.feed(data):
                answer = decode(payload)
                if request_id == HELLO_ID:
                    if not self.hello.done():
                        self.hello.set_result(answer)
                    continue
                waiter = self.pending.pop(request_id, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(answer)
        except FrameError as exc:
            log.warning("the key manager's link broke its framing (%s): closing the connection", exc)
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.transport = self.writer.transport = None
        down = LinkDown("the connection to the key manager was lost")
        if not self.hello.done():
            self.hello.set_exception(down)
        pending, self.pending = self.pending, {}
        for waiter in pending.values():
            if not waiter.done():
                waiter.set_exception(down)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _expire(waiter: asyncio.Future[dict[str, Any]]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class LinkNode:
    """One key-manager node over the link: ``size`` connections, used in turn."""

    def __init__(self, address: LinkAddress, token: str, *, size: int, max_payload: int) -> None:
        self.address = address
        self._token = token
        self._max_payload = max_payload
        self._slots: list[_Connection | None] = [None] * size
        self._opening: list[asyncio.Task[_Connection] | None] = [None] * size
        self._turn = itertools.cycle(range(size))
        self._ids = itertools.cycle(range(1, MAX_ID + 1))

    async def request(self, payload: dict[str, Any], *, timeout_s: float | None = None) -> dict[str, Any]:
        """The node's answer to one request frame; LinkDown if none can come, TimeoutError when none
        came within ``timeout_s`` (None: the caller bounds the time). A request that gives up leaves its
        connection as it was."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        slot = next(self._turn)
        connection = self._slots[slot]
        if connection is None or connection.lost:
            async with asyncio.timeout_at(deadline):
                connection = await self._connection(slot)
        if connection.transport is None:  # lost between its opening and this call's turn
            raise LinkDown("the connection to the key manager was lost")
        request_id = next(self._ids)
        waiter: asyncio.Future[dict[str, Any]] = loop.create_future()
        connection.pending[request_id] = waiter
        connection.writer.send(frame(request_id, payload))
        # A timer on the answer rather than asyncio.timeout around the call: the same TimeoutError for
        # about 6 us less CPU per call (no Timeout object, no cancel and uncancel of the task).
        timer = None if deadline is None else loop.call_at(deadline, _expire, waiter)
        try:
            return await waiter
        finally:
            if timer is not None:
                timer.cancel()
            connection.pending.pop(request_id, None)

    async def _connection(self, slot: int) -> _Connection:
        current = self._slots[slot]
        if current is not None and not current.lost:
            return current
        opening = self._opening[slot]
        if opening is None:
            opening = self._opening[slot] = asyncio.get_running_loop().create_task(self._open(slot))
            # Every caller may have given up by the time it fails: its outcome is read here regardless.
            opening.add_done_callback(lambda task: task.cancelled() or task.exception())
        return await asyncio.shield(opening)

    async def _open(self, slot: int) -> _Connection:
        try:
            made: list[_Connection] = []

            def factory() -> _Connection:
                made.append(_Connection(self._max_payload))
                return made[-1]

            try:
                async with asyncio.timeout(OPEN_TIMEOUT_S):
                    await self.address.connect(factory)
                    protocol = made[0]
                    assert protocol.transport is not None
                    protocol.transport.write(frame(HELLO_ID, {"token": self._token}))
                    hello = await protocol.hello
            except BaseException as exc:  # closed whatever ends the opening, a cancellation included
                for connection in made:
                    connection.close()
                if isinstance(exc, OSError | TimeoutError):
                    raise LinkDown(f"cannot connect: {type(exc).__name__}") from None
                raise
            if hello.get("ok") is not True:
                protocol.close()
                raise LinkDown("the key manager refused the proxy's token", refused=True)
            self._slots[slot] = protocol
            return protocol
        finally:
            self._opening[slot] = None

    async def close(self) -> None:
        for task in self._opening:
            if task is not None:
                task.cancel()
        for connection in self._slots:
            if connection is not None:
                connection.close()
        self._slots = [None] * len(self._slots)
