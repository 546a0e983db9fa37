"""The fault book shared by every proxy process of a fleet (workers and nodes alike): the faults are rows
of ``xks_faults`` (migration 0016), and each process applies them from memory (faults.py's FaultBook).

Setting or clearing faults (the admin endpoint, ``xkslab faults``) writes the rows and raises the cache
generation in the same transaction (xkslab_shared/generation.py); every proxy follows the generation (on
PostgreSQL its NOTIFY wakes the follower at once, on SQLite the poll finds it within
``database.cache_poll_ms``) and loads the rows again. So the hot path reads no database: a request asks
the in-memory book, as before.

What is counted where:

* a fault with a ``count`` ("the next N requests") is counted fleet-wide exactly: each application is
  claimed first by one conditional UPDATE (``left_count > 0``), the only database write on the request
  path, and only for such faults. TLS faults are the exception: a handshake cannot wait for the
  database, so each process counts its own handshakes against the count it last read and writes them
  at its next follow tick (``database.cache_poll_ms``): with several processes taking handshakes in
  the same tick, a TLS fault's count can be exceeded by up to one per process;
* the ``applied`` figure of other faults is counted in memory and added to the row at each follow tick;
* start and end times are wall-clock (``starts_at``, seconds since the epoch), so every node of a fleet
  needs a synchronised clock (NTP), as the node registry does.

A proxy that starts while no other proxy is live clears the table (a restarted lab starts with no
faults); one that joins a live fleet takes the fleet's. Without a database (a proxy with a data
directory but none), the book is this process's alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Integer,
    MetaData,
    Table,
    Text,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from xkslab_shared.db import NAMING
from xkslab_shared.faults_wire import MAX_FAULTS, Fault, FaultSpecError, parse_fault
from xkslab_shared.generation import Generation, bump

if TYPE_CHECKING:
    # faults.py imports aiohttp and prometheus_client; the migrations import this module for its table
    # (migrations/metadata.py), and `xkslab init` should not pay for them (about 0.15 s of CPU).
    from xks_frontend.faults import Entry, FaultBook

log = logging.getLogger("xks_frontend.fault_store")

# The proxy's only table; migrations/metadata.py lists it.
metadata = MetaData(naming_convention=NAMING)
xks_faults = Table(
    "xks_faults",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("fault", Text, nullable=False),  # the fault's JSON (faults_wire)
    Column("starts_at", Float, nullable=False),  # wall clock, seconds since the epoch
    Column("ends_at", Float, nullable=True),  # starts_at + duration_s
    Column("left_count", Integer, nullable=True),  # applications left of a counted fault
    Column("applied", BigInteger, nullable=False),
)


def _fault_id(row_id: int) -> str:
    return f"f{row_id}"


def _row_id(fault_id: str) -> int | None:
    digits = fault_id[1:] if fault_id.startswith("f") else ""
    return int(digits) if digits.isdigit() and len(digits) < 18 else None


class FaultStore:
    """The book's front: the admin endpoint calls it, and it keeps ``book`` equal to the database's
    rows. ``sessions`` and ``generation`` are set once the proxy has its database (app.py); until then,
    or without one, it is the in-memory book alone."""

    def __init__(self, book: FaultBook, wall: Callable[[], float] = time.time) -> None:
        self.book = book
        self._wall = wall
        self._clock = book.clock
        self.sessions: async_sessionmaker[AsyncSession] | None = None
        self.generation: Generation | None = None
        self._seen = -1
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self.loads = 0

    # ------------------------------------------------------------------------------- admin calls

    async def add(self, faults: list[Fault]) -> list[str]:
        sessions = self.sessions
        if sessions is None:
            return self.book.add(faults)
        now = self._wall()
        async with sessions.begin() as session:
            await session.execute(delete(xks_faults).where(_done(now)))
            kept = await session.scalar(select(func.count()).select_from(xks_faults)) or 0
            if kept + len(faults) > MAX_FAULTS:
                raise ValueError(f"at most {MAX_FAULTS} faults are kept")
            ids = []
            for fault in faults:
                result = await session.execute(
                    insert(xks_faults)
                    .values(
                        fault=json.dumps(fault.to_json()),
                        starts_at=now + fault.start_s,
                        ends_at=None if fault.duration_s is None else now + fault.start_s + fault.duration_s,
                        left_count=fault.count,
                        applied=0,
                    )
                    .returning(xks_faults.c.id)
                )
                ids.append(_fault_id(result.scalar_one()))
            await session.execute(bump())
        for fault_id, fault in zip(ids, faults, strict=True):
            log.warning(
                "%s", json.dumps({"event": "xks_fault_set", "faultId": fault_id, "fault": fault.to_json()})
            )
        await self.load()
        return ids

    async def list(self) -> list[dict[str, Any]]:
        if self.sessions is not None:
            await self._write_applied()
            await self.load()
        return self.book.list()

    async def clear(self, fault_id: str | None = None, *, quiet: bool = False) -> int:
        sessions = self.sessions
        if sessions is None:
            return self.book.clear(fault_id)
        statement = delete(xks_faults)
        if fault_id is not None:
            row_id = _row_id(fault_id)
            if row_id is None:
                return 0
            statement = statement.where(xks_faults.c.id == row_id)
        async with sessions.begin() as session:
            # Finished faults go first, uncounted: the book had already forgotten them.
            await session.execute(delete(xks_faults).where(_done(self._wall())))
            cleared = getattr(await session.execute(statement), "rowcount", 0) or 0
            if cleared:  # nothing else to tell the other proxies
                await session.execute(bump())
        if cleared or not quiet:
            log.warning(
                "%s", json.dumps({"event": "xks_fault_cleared", "faultId": fault_id, "cleared": cleared})
            )
        await self.load()
        return int(cleared)

    # ------------------------------------------------------------------------------- following

    async def start(
        self, sessions: async_sessionmaker[AsyncSession], generation: Generation, *, alone: bool
    ) -> None:
        """Share the book through the database from now on: load it, and follow every change. ``alone``:
        no other proxy is live, so the faults of an earlier run are cleared (a restarted lab starts with
        none, as it did when the book was in memory; a proxy joining a fleet takes the fleet's)."""
        self.sessions, self.generation = sessions, generation
        if alone:
            try:
                await self.clear(quiet=True)  # logged when there were any
            except Exception as exc:  # a database without the table yet (or unwritable) never stops it
                log.warning("could not clear the faults of an earlier run: %s", type(exc).__name__)
        self.book.claim = self._claim
        generation.on_expire(self._wake.set)
        self._task = asyncio.create_task(self._follow(), name="xks-fault-book")

    async def close(self) -> None:
        if self._task is not None:
            # Stopped between two reads, not cancelled in one: a query cancelled mid-flight leaves its
            # aiosqlite connection's thread unclosed behind the engine's dispose.
            self._stopping = True
            self._wake.set()
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 5.0)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None
        with contextlib.suppress(Exception):
            await self._write_applied()

    async def _follow(self) -> None:
        assert self.generation is not None
        failing = False
        while not self._stopping:
            # Listening (PostgreSQL), every change wakes it: the poll is only the fallback.
            poll_s = max(self.generation.poll_s, 1.0 if self.generation.listening else 0.01)
            try:
                value = await self.generation.current()
                if value != self._seen:
                    await self.load()
                    self._seen = value
                await self._write_applied()
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a database that cannot be read never stops the proxy
                if not failing:  # once until it works again
                    log.warning("could not follow the shared fault book: %s", type(exc).__name__)
                failing = True
            if self._stopping:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), poll_s)
            self._wake.clear()

    async def load(self) -> None:
        """The rows as entries of the in-memory book (start and end times on its clock)."""
        assert self.sessions is not None
        async with self.sessions() as session:
            rows = (await session.execute(select(xks_faults).order_by(xks_faults.c.id))).mappings().all()
        from xks_frontend.faults import Entry  # see the imports at the top

        offset = self._clock() - self._wall()
        entries = []
        for row in rows:
            try:
                fault = parse_fault(json.loads(row["fault"]))
            except (ValueError, FaultSpecError):  # a row no longer understood is not applied
                continue
            applied = int(row["applied"])
            entry = Entry(_fault_id(row["id"]), fault, row["starts_at"] + offset, row["left_count"], applied)
            entry.claimed = applied
            entries.append(entry)
        self.book.replace(entries)
        self.loads += 1

    async def _claim(self, entry: Entry) -> bool:
        row_id = _row_id(entry.id)
        if self.sessions is None or row_id is None:
            return True
        async with self.sessions.begin() as session:
            result = await session.execute(
                update(xks_faults)
                .where(xks_faults.c.id == row_id, xks_faults.c.left_count > 0)
                .values(left_count=xks_faults.c.left_count - 1, applied=xks_faults.c.applied + 1)
            )
        return bool(getattr(result, "rowcount", 0))

    async def _write_applied(self) -> None:
        pending = self.book.unsynced()
        if not pending or self.sessions is None:
            return
        async with self.sessions.begin() as session:
            for fault_id, count in pending.items():
                row_id = _row_id(fault_id)
                if row_id is not None:
                    # left_count: a TLS fault's handshakes (the only counted applications not claimed)
                    await session.execute(
                        update(xks_faults)
                        .where(xks_faults.c.id == row_id)
                        .values(
                            applied=xks_faults.c.applied + count,
                            left_count=xks_faults.c.left_count - count,
                        )
                    )
        self.book.synced(pending)


def _done(now: float) -> Any:
    """Rows whose fault can never apply again: its count used up, or its duration over."""
    return or_(xks_faults.c.left_count <= 0, xks_faults.c.ends_at <= now)
