"""The key manager's end of the framed link (xkslab_shared/link_frames.py has the wire format): the XKS
proxy's calls over persistent connections, many at once on each, instead of one HTTP request per call.

An HTTP request cost the key manager about 40 % of its time per XKS call in aiohttp's request handling,
routing and middlewares, and the proxy as much again in its client; a frame is a header and a JSON object,
and the proxy's token is checked once per connection (constant time) instead of on every call. What a
call does is the same code as the HTTP endpoint's (api/xks.py ``run_call``): the key manager still
verifies the KMS SigV4 signature over the forwarded parts, and the token alone uses no key.

The link listens on a Unix socket in the data directory by default (``dsm.link``): no port to choose or
to collide with another lab's, and only this user can open it (0600), before the token is even read.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, cast

from aiohttp import web

from dsm_emulator.api.context import CORE_KEY
from dsm_emulator.api.xks import PROXY_TOKEN_KEY, run_call
from dsm_emulator.errors import DsmError
from xkslab_shared import json_body, logs
from xkslab_shared.config import Settings
from xkslab_shared.link_frames import HELLO_ID, FrameBuffer, FrameError, FrameWriter, LinkAddress, frame
from xkslab_shared.ports import ListenError
from xkslab_shared.proxy_link import CALL_PATH, PREFIXES_PATH

log = logging.getLogger(__name__)

Handle = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
# Calls in flight on one connection before the key manager stops reading from it (resumed below half).
MAX_IN_FLIGHT = 1024
_REFUSED_TOKEN = "this link is for XKS proxies: present the proxy token"


class LinkStats:
    """Calls answered over the link, by operation and outcome, read by /metrics when scraped (plain
    integers here: nothing on the call's path but a dictionary update)."""

    def __init__(self) -> None:
        self.calls: dict[tuple[str, str], int] = {}
        self.connections = 0
        self.refused_connections = 0

    def count(self, op: str, outcome: str) -> None:
        key = (op, outcome)
        self.calls[key] = self.calls.get(key, 0) + 1


LINK_STATS_KEY: web.AppKey[LinkStats] = web.AppKey("dsm_link_stats", LinkStats)


class _Connection(asyncio.Protocol):
    """One proxy connection: the token first, then calls, each run in a task of its own and answered
    when done, in whatever order they finish."""

    def __init__(self, server: LinkServer) -> None:
        self._server = server
        self._frames = FrameBuffer(server.max_payload)
        self._transport: asyncio.Transport | None = None
        # The answers: those finished in one loop turn (a group commit's worth) in one write.
        self._writer = FrameWriter(asyncio.get_running_loop())
        self._accepted = False
        self._in_flight: set[asyncio.Task[None]] = set()
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; they have the same methods.
        self._transport = self._writer.transport = cast(asyncio.Transport, transport)
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        # Calls in flight finish (each has its deadline and writes its audit row); their answers are
        # dropped, as an HTTP handler's are when its client goes away.
        self._transport = self._writer.transport = None
        self._server.connections.discard(self)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._frames.feed(data)
            for request_id, payload in frames:
                if self._transport is None:
                    return
                if not self._accepted:
                    self._hello(request_id, payload)
                    continue
                request = json_body.loads_object(payload)
                task = asyncio.get_running_loop().create_task(self._serve(request_id, request))
                self._in_flight.add(task)
                self._server.tasks.add(task)
                task.add_done_callback(self._done)
            if len(self._in_flight) >= MAX_IN_FLIGHT and not self._paused and self._transport is not None:
                self._paused = True
                self._transport.pause_reading()
        except (FrameError, json_body.JsonBodyError) as exc:
            log.warning("closing an XKS proxy link connection: %s", exc)
            self.close()

    def _hello(self, request_id: int, payload: bytes) -> None:
        assert self._transport is not None
        try:
            hello = json_body.loads_object(payload)
        except json_body.JsonBodyError:
            hello = {}
        token = hello.get("token")
        given = token.encode() if isinstance(token, str) else b""
        if request_id != HELLO_ID or not hmac.compare_digest(given, self._server.token):
            self._server.stats.refused_connections += 1
            log.warning("refused an XKS proxy link connection: no valid proxy token")
            self._transport.write(frame(HELLO_ID, {"refused": _REFUSED_TOKEN}))
            self._transport.close()
            self._transport = self._writer.transport = None  # nothing more is read from it, nor answered
            return
        self._accepted = True
        self._server.stats.connections += 1
        self._transport.write(frame(HELLO_ID, {"ok": True}))

    def _done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._server.tasks.discard(task)
        if self._paused and len(self._in_flight) < MAX_IN_FLIGHT // 2 and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()

    async def _serve(self, request_id: int, request: dict[str, Any]) -> None:
        try:
            answer = await self._server.handle(request)
        except Exception:
            log.exception("unexpected error in a call over the XKS proxy link")
            answer = {"refused": "internal error"}
        if self._transport is not None:
            self._writer.send(frame(request_id, answer))


LINK_SERVERS_KEY: web.AppKey[list[LinkServer]] = web.AppKey("dsm_link_servers")


class LinkServer:
    """The listener and its connections; ``handle`` answers one decoded request frame."""

    def __init__(self, token: str, max_payload: int, handle: Handle, stats: LinkStats | None = None) -> None:
        self.token = token.encode()
        self.max_payload = max_payload
        self.handle = handle
        self.connections: set[_Connection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.stats = stats if stats is not None else LinkStats()
        self._server: asyncio.Server | None = None
        self._address: LinkAddress | None = None

    async def listen(self, address: LinkAddress, *, reuse_port: bool = False) -> str:
        """Serve on ``address``; the URL the proxy reaches it at (the port really bound, for TCP)."""
        self._server = await address.listen(lambda: _Connection(self), reuse_port=reuse_port)
        if address.path is None:
            address = LinkAddress(host=address.host, port=int(self._server.sockets[0].getsockname()[1]))
        self._address = address
        return address.url

    async def close(self, grace_s: float = 10.0) -> None:
        """Stop accepting, close every connection, and let the calls in flight finish (within
        ``grace_s``) before the core they use is closed."""
        if self._server is not None:
            self._server.close()
        for _ in range(2):  # and those accepted just before, whose connection_made was still scheduled
            for connection in list(self.connections):
                connection.close()
            await asyncio.sleep(0)
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=grace_s)
        if self._address is not None and self._address.path is not None:
            self._address.path.unlink(missing_ok=True)


def link_address(settings: Settings) -> LinkAddress | None:
    """``dsm.link``: a Unix socket path (relative to the data directory), ``tcp:HOST:PORT``, or empty
    (no link)."""
    where = settings.dsm.link.strip()
    if not where:
        return None
    if where.startswith("tcp:"):
        host, _, port = where[4:].rpartition(":")
        return LinkAddress(host=host, port=int(port))
    return LinkAddress(path=settings.path(Path(where)).resolve())


def handler(app: web.Application, stats: LinkStats) -> Handle:
    """The link's requests, answered as the HTTP endpoints answer them (the same body), and counted."""
    access = logs.access_enabled

    async def handle(request: dict[str, Any]) -> dict[str, Any]:
        core = app[CORE_KEY]
        op = request.get("op")
        started = time.perf_counter()
        line: dict[str, Any] | None = {} if access() else None
        try:
            if op == "call":
                answer = await run_call(core, request.get("call"), line)
            elif op == "prefixes":
                answer = {"prefixes": await core.xks.prefixes()}
            else:
                answer = {"refused": "unknown operation on the XKS proxy link"}
        except DsmError as exc:  # a malformed call (BadRequest), or the database failing
            answer = {"refused": exc.message}
        error = answer.get("error")
        outcome = "refused" if "refused" in answer else error["code"] if error else "success"
        stats.count(str(op) if op in ("call", "prefixes") else "unknown", outcome)
        if line is not None:
            route = PREFIXES_PATH if op == "prefixes" else CALL_PATH
            status = 400 if "refused" in answer else 200
            logs.access_line("dsm", "LINK", route, status, time.perf_counter() - started, line)
        return answer

    return handle


async def serve_link(app: web.Application, settings: Settings) -> str | None:
    """The link on ``dsm.link`` for the DSM ``app``, which must be set up (its core open); stopped when the
    app shuts down, before its core is closed. Returns its URL (None when the link is off)."""
    address = link_address(settings)
    if address is None:
        return None
    stats = app[LINK_STATS_KEY]
    server = LinkServer(app[PROXY_TOKEN_KEY], settings.dsm.max_body_bytes, handler(app, stats), stats)
    try:
        url = await server.listen(address, reuse_port=settings.http.reuse_port)
    except OSError as exc:
        raise ListenError(f"cannot serve the XKS proxy link on {address.url} (dsm.link): {exc}") from None

    app[LINK_SERVERS_KEY].append(server)
    return url


async def close_links(app: web.Application) -> None:
    """The DSM app's on_shutdown hook (installed by create_app, before the app is frozen): its links
    stop before its core is closed, whoever cleans up the app."""
    servers = app[LINK_SERVERS_KEY]
    while servers:
        await servers.pop().close()


def starter(settings: Settings) -> Callable[[AsyncExitStack, web.Application], Awaitable[list[str]]]:
    """serve_link as serve.start runs it, beside the DSM's HTTP listeners (Listener.beside)."""

    async def start(stack: AsyncExitStack, app: web.Application) -> list[str]:
        url = await serve_link(app, settings)
        return [] if url is None else [url]

    return start
