"""The fleet's node registry: every serving process (a DSM node, an XKS proxy) keeps one row in
``fleet_nodes`` (migration 0014) with what it is, where it listens, when it started and its last
heartbeat, renewed every ``fleet.heartbeat_s``. A node is live while its heartbeat is younger than
``fleet.node_timeout_s``; a node that stops cleanly marks its row stopped, one that is killed simply
stops beating. The row's id is the node's name (``audit.node_id`` for a DSM node, which is also its audit
chain; ``xks.node_id`` for a proxy): a node restarted under its name takes its row over.

Times are the nodes' own clocks (UTC): nodes of one fleet on several machines need synchronised clocks
(NTP) well within ``fleet.node_timeout_s``.

Registration and heartbeats never stop a node from serving: a database that cannot be written is logged
(once until it can be again) and tried again at the next beat.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, Text, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from xkslab_shared.db import NAMING

log = logging.getLogger("xkslab.nodes")

# Shared by every service, like the cache generation; migrations/metadata.py lists it.
metadata = MetaData(naming_convention=NAMING)
fleet_nodes = Table(
    "fleet_nodes",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("urls", Text, nullable=False),
    Column("started", DateTime(timezone=True), nullable=False),
    Column("heartbeat", DateTime(timezone=True), nullable=False),
    Column("stopped", DateTime(timezone=True), nullable=True),
)


@dataclass(frozen=True)
class NodeRow:
    id: str
    kind: str
    host: str
    pid: int
    urls: list[str]
    started: datetime
    heartbeat: datetime
    stopped: datetime | None
    live: bool

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "host": self.host,
            "pid": self.pid,
            "urls": self.urls,
            "started": _iso(self.started),
            "last_heartbeat": _iso(self.heartbeat),
            "stopped": None if self.stopped is None else _iso(self.stopped),
            "live": self.live,
        }


def _iso(moment: datetime) -> str:
    return _utc(moment).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _utc(moment: datetime) -> datetime:
    # SQLite gives back naive datetimes (what was stored, in UTC); PostgreSQL aware ones.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _now() -> datetime:
    return datetime.now(UTC)


async def list_nodes(
    sessions: async_sessionmaker[AsyncSession], node_timeout_s: float, kind: str | None = None
) -> list[NodeRow]:
    """Every registered node (of ``kind``), by id, each marked live or not."""
    now = _now()
    statement = select(fleet_nodes).order_by(fleet_nodes.c.id)
    if kind is not None:
        statement = statement.where(fleet_nodes.c.kind == kind)
    async with sessions() as session:
        rows = (await session.execute(statement)).mappings().all()
    nodes = []
    for row in rows:
        heartbeat = _utc(row["heartbeat"])
        stopped = None if row["stopped"] is None else _utc(row["stopped"])
        try:
            urls = [str(u) for u in json.loads(row["urls"])]
        except (ValueError, TypeError):
            urls = []
        live = stopped is None and now - heartbeat < timedelta(seconds=node_timeout_s)
        nodes.append(
            NodeRow(
                row["id"],
                row["kind"],
                row["host"],
                row["pid"],
                urls,
                _utc(row["started"]),
                heartbeat,
                stopped,
                live,
            )
        )
    return nodes


class LiveCount:
    """How many nodes of ``kind`` are live, read at most every ``ttl_s`` (the proxy's health answer asks
    for its fleet's size on every health check). 1 (this node) until a database is known, or when it
    cannot be read."""

    def __init__(self, kind: str, node_timeout_s: float, ttl_s: float) -> None:
        self._kind = kind
        self._node_timeout_s = node_timeout_s
        self._ttl_s = ttl_s
        self.sessions: async_sessionmaker[AsyncSession] | None = None
        self._value = 1
        self._read_at = -float("inf")
        self._stop = asyncio.Event()

    def peek(self) -> int:
        """The count as last read, without waiting (for a hot path; :meth:`follow` keeps it fresh)."""
        return self._value

    async def follow(self) -> None:
        """Read the count every ``ttl_s`` until :meth:`stop` (a task of the process that peeks). Stopped
        between two reads rather than cancelled in one: a query cancelled mid-flight leaves its aiosqlite
        connection's thread unclosed behind the engine's dispose."""
        while not self._stop.is_set():
            await self.get()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self._ttl_s)

    def stop(self) -> None:
        self._stop.set()

    async def get(self) -> int:
        sessions = self.sessions
        loop = asyncio.get_running_loop()
        if sessions is None or loop.time() - self._read_at < self._ttl_s:
            return self._value
        self._read_at = loop.time()
        try:
            nodes = await list_nodes(sessions, self._node_timeout_s, self._kind)
        except Exception as exc:
            log.warning("could not count the live %s nodes: %s", self._kind, type(exc).__name__)
            return self._value
        self._value = max(1, sum(1 for node in nodes if node.live))
        return self._value


class NodeRegistry:
    """This process's row: registered by ``start()``, renewed every ``heartbeat_s`` in the background,
    marked stopped by ``close()``. ``urls`` is read at every beat (a list the server fills in once it
    has bound its ports)."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        node_id: str,
        kind: str,
        urls: list[str],
        heartbeat_s: float,
    ) -> None:
        self._sessions = sessions
        self.node_id = node_id
        self.kind = kind
        self._urls = urls
        self._heartbeat_s = heartbeat_s
        self._started = _now()
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self.beats = 0

    async def start(self) -> None:
        await self._beat()
        self._task = asyncio.create_task(self._beats(), name=f"heartbeat-{self.node_id}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            async with self._sessions() as session, session.begin():
                await session.execute(
                    update(fleet_nodes)
                    .where(fleet_nodes.c.id == self.node_id, fleet_nodes.c.pid == os.getpid())
                    .values(stopped=_now())
                )
        except Exception as exc:
            log.warning("node %s: could not mark its row stopped: %s", self.node_id, type(exc).__name__)

    async def _beats(self) -> None:
        while True:
            # The first beat comes before the server has bound its ports: the next one soon after.
            soon = not self._urls and self.beats < 20
            await asyncio.sleep(min(0.1, self._heartbeat_s) if soon else self._heartbeat_s)
            await self._beat()

    async def _beat(self) -> None:
        now = _now()
        values = {
            "kind": self.kind,
            "host": socket.gethostname()[:255],
            "pid": os.getpid(),
            "urls": json.dumps(list(self._urls)),
            "started": self._started,
            "heartbeat": now,
            "stopped": None,
        }
        try:
            async with self._sessions() as session, session.begin():
                result = await session.execute(
                    update(fleet_nodes).where(fleet_nodes.c.id == self.node_id).values(**values)
                )
                if getattr(result, "rowcount", 0) == 0:
                    await session.execute(insert(fleet_nodes).values(id=self.node_id, **values))
        except IntegrityError:  # another process registered the same id in between: the next beat wins
            return
        except Exception as exc:
            if not self._failing:
                log.warning("node %s: heartbeat not written: %s", self.node_id, type(exc).__name__)
            self._failing = True
            return
        if self._failing:
            log.info("node %s: heartbeat written again", self.node_id)
        self._failing = False
        self.beats += 1
