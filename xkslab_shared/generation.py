"""Caches on the request path that stay correct when other processes change the database.

Every mutation that a cache depends on, in any process and any service (the lab, a second replica, the
CLI in another terminal), raises the one-row ``cache_generation`` counter in its own transaction (the
key manager's audit writer; the KMS emulator's session hook). Each process reads
that counter at most once per poll interval, whoever asks, and a cache entry is used only while the
counter still has the value it had *before* the entry was loaded. So a change committed at time t is
honoured by every process from t + poll interval on, and by the process that made it at once (its writer
expires the counter it holds). Entries also age out after ``max_age_s`` whatever happens, which bounds how
long unsealed key material stays in memory.

Why a polled counter rather than per-request queries: one 100-ms poll per process replaces four to six
queries per request (the driver's thread was most of the hot path's time: the README's profile).

On PostgreSQL a trigger (migration 0014) NOTIFYs ``NOTIFY_CHANNEL`` in the very transaction that raises
the counter, and a serving process LISTENs on a connection of its own (``Generation.listen``): the next
request after another node's commit reads the counter again, so a change reaches every node within a
round trip, not a poll interval. The poll stays as the fallback (a listening connection that is lost is
reopened, and the generation is read again meanwhile). SQLite has no such channel: the poll alone.

Each read is the one statement on a connection of its own, not a session of the pool: on SQLite a plain
``sqlite3`` connection read in the event loop's thread (a WAL read never waits for a writer; the rare
SQLITE_BUSY falls back to the pool), on PostgreSQL the LISTEN connection while it is up. The same query,
so the same bound: 8 and about 110 us of CPU, where a pooled session's read was 1.1 ms (aiosqlite's
thread hand-offs) and 1.9 ms (asyncpg, with the pre-ping); every process polls, N times with N workers.

The proxy follows it too, for its fault book (xks_frontend/fault_store.py): ``on_expire`` wakes its
follower when a NOTIFY arrives, so a fault set through one proxy is applied by the others at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import BigInteger, Column, Integer, MetaData, Table, Update, event, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, UOWTransaction

from xkslab_shared.db import NAMING

log = logging.getLogger("xkslab.generation")

NOTIFY_CHANNEL = "xkslab_cache_generation"
# The LISTEN connection's application_name, so an operator (or a test) can find it in pg_stat_activity.
LISTEN_APPLICATION = "xkslab-cache-listen"
# How long a lost LISTEN connection waits before it is opened again (the poll covers the gap).
RELISTEN_S = 1.0
READ = "SELECT value FROM cache_generation WHERE id = 1"

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# Shared by every service, so it belongs to none of their models; migration 0004 creates it.
metadata = MetaData(naming_convention=NAMING)
cache_generation = Table(
    "cache_generation",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("value", BigInteger, nullable=False),
)


_GENERATION = select(cache_generation.c.value).where(cache_generation.c.id == 1)


def bump() -> Update:
    """The statement a mutating transaction runs (before its commit) to tell every process's caches."""
    return (
        update(cache_generation).where(cache_generation.c.id == 1).values(value=cache_generation.c.value + 1)
    )


class _InvalidatingSession(Session):
    """A session whose every transaction that wrote something raises the cache generation just before
    it commits, and whose commit then expires this process's generation: for services whose writes are
    ORM flushes (the KMS emulator), so that no write path can forget to tell the caches. The counter's
    row lock is taken at the last moment, not at the first flush: a transaction that flushed and then
    awaited another session's write (or an HTTP call) would otherwise hold every writer of every
    process behind it, and on PostgreSQL wait on itself for ever."""


@event.listens_for(_InvalidatingSession, "after_flush")
def _note_write(session: Session, _flush: UOWTransaction) -> None:
    session.info["xkslab_wrote"] = True


@event.listens_for(_InvalidatingSession, "before_commit")
def _bump_before_commit(session: Session) -> None:
    session.flush()  # what commit would flush next: it must be counted before the bump
    if session.info.pop("xkslab_wrote", False):
        session.connection().execute(bump())
        session.info["xkslab_bumped"] = True


@event.listens_for(_InvalidatingSession, "after_commit")
def _expire_after_commit(session: Session) -> None:
    if session.info.pop("xkslab_bumped", False):
        session.info["xkslab_generation"].expire()


@event.listens_for(_InvalidatingSession, "after_rollback")
def _forget_after_rollback(session: Session) -> None:
    session.info.pop("xkslab_wrote", None)
    session.info.pop("xkslab_bumped", None)


def invalidating_sessions(
    engine: AsyncEngine, poll_s: float
) -> tuple[async_sessionmaker[AsyncSession], Generation]:
    """Sessions like xkslab_shared.db.session_factory's, except that every flush that writes raises the
    generation, and the Generation they keep current (this process sees its own changes at once)."""
    holder: dict[str, Any] = {}
    sessions = async_sessionmaker(
        engine, expire_on_commit=False, sync_session_class=_InvalidatingSession, info=holder
    )
    generation = Generation(sessions, poll_s)
    holder["xkslab_generation"] = generation
    return sessions, generation


class Generation:
    """The database's cache generation as this process last read it, read at most every ``poll_s``."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], poll_s: float) -> None:
        self._sessions = sessions
        self.poll_s = poll_s
        self._value = -1
        self._read_started = -float("inf")  # the START of the last read: what it saw is at least that new
        self._reading: asyncio.Task[int] | None = None
        # When expire() last ran: a read that started before it may have missed the change it announced.
        self._expired_at = -float("inf")
        self._listener: asyncio.Task[None] | None = None
        self._rechecked_at = -float("inf")  # when recheck() last asked for a read of its own
        self.listening = False
        self._pg: Any = None  # the LISTEN connection while it is up (asyncpg), for the reads too
        self._sqlite: sqlite3.Connection | None = None
        self._sqlite_path = _sqlite_file(sessions)
        self.reads = 0
        self.direct_reads = 0
        self.notifications = 0
        self._on_expire: list[Callable[[], None]] = []

    def on_expire(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever the value read is forgotten (a NOTIFY, or this process's own
        commit), so a follower can read the generation again at once instead of at its next poll."""
        self._on_expire.append(callback)

    def expire(self) -> None:
        """Forget the value read: this process just committed a change, or another node told us so."""
        self._read_started = -float("inf")
        self._expired_at = time.monotonic()
        for callback in self._on_expire:
            callback()

    def listen(self, url: str) -> None:
        """On PostgreSQL, LISTEN for the counter's NOTIFY on a connection of its own until ``close()``;
        each notification expires the value read. Anything else: nothing (the poll alone)."""
        if url.startswith("postgresql") and self._listener is None:
            self._listener = asyncio.create_task(self._listen(url), name="cache-generation-listen")

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        self._close_sqlite()

    def _close_sqlite(self) -> None:
        if self._sqlite is not None:
            with contextlib.suppress(sqlite3.Error):
                self._sqlite.close()
            self._sqlite = None

    def _notified(self, *_args: object) -> None:
        self.notifications += 1
        self.expire()

    async def _listen(self, url: str) -> None:
        import asyncpg  # only PostgreSQL deployments have (and need) it
        from sqlalchemy.engine import make_url

        dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        while True:
            lost = asyncio.Event()
            try:
                connection = await asyncpg.connect(
                    dsn, server_settings={"application_name": LISTEN_APPLICATION}
                )
            except Exception as exc:
                log.warning("cannot LISTEN for cache changes (%s): polling alone", type(exc).__name__)
                await asyncio.sleep(RELISTEN_S)
                continue
            try:
                connection.add_termination_listener(_setter(lost))
                await connection.add_listener(NOTIFY_CHANNEL, self._notified)
                self.listening = True
                self._pg = connection
                self.expire()  # whatever was committed before the LISTEN took effect is read again
                await lost.wait()
                log.warning("the LISTEN connection for cache changes was lost: reopening it")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("LISTEN for cache changes failed (%s): reopening it", type(exc).__name__)
            finally:
                self.listening = False
                self._pg = None
                self.expire()  # a notification may have been missed
                with contextlib.suppress(Exception):
                    await asyncio.shield(connection.close(timeout=2))
            await asyncio.sleep(RELISTEN_S)

    async def current(self) -> int:
        if time.monotonic() - self._read_started < self.poll_s:
            return self._value
        reading = self._reading
        if reading is None:  # one read at a time, however many requests ask
            reading = self._reading = asyncio.create_task(self._read(), name="cache-generation-read")
            reading.add_done_callback(_retrieve)
        # The read is a task of its own and each caller only waits for it: a request that is cancelled
        # (its client went away) stops waiting, and the read goes on for every other caller.
        return await asyncio.shield(reading)

    async def recheck(self) -> int:
        """The counter as read by a read that began after this call, for a caller that suspects what it
        cached (a signature the cached credentials do not verify may be from a credential rotated in
        another process within the poll interval): a change committed before the suspicion is seen at
        once. At most one such read per poll interval, whoever suspects what: past it, suspicions get
        the regular poll's value, so a flood of them costs one read per interval, and the regular poll,
        which the recheck's read resets, hardly any more reads in all."""
        now = time.monotonic()
        if self.poll_s <= 0 or now - self._rechecked_at < self.poll_s:
            return await self.current()
        self._rechecked_at = now
        self.expire()
        value = await self.current()
        if self._read_started < now:  # it joined a read begun before the suspicion: one more, begun after
            value = await self.current()
        return value

    async def _read(self) -> int:
        started = time.monotonic()
        try:
            found, value = await self._read_directly()
            if not found:  # the engine's connection, not an ORM session: half the CPU
                bind = self._sessions.kw.get("bind")
                if isinstance(bind, AsyncEngine):
                    async with bind.connect() as connection:
                        value = await connection.scalar(_GENERATION)
                else:
                    async with self._sessions() as session:
                        value = await session.scalar(_GENERATION)
        finally:
            self._reading = None
        self.reads += 1
        # A row that is not there (a database restored from before migration 0004 cannot start, so only
        # by hand) counts as a new generation on every read: caching stops rather than going stale.
        self._value = self._value + 1 if value is None else value
        if started > self._expired_at:  # else a change announced meanwhile may postdate what was read
            self._read_started = started
        return self._value

    async def _read_directly(self) -> tuple[bool, int | None]:
        """The counter from this process's own connection: (True, value), or (False, None) when there
        is none or it failed (the pool's session reads it then, and waits as long as it must)."""
        if self._sqlite_path is not None:
            try:
                if self._sqlite is None:
                    # No busy timeout: the event loop's thread never waits on a lock here.
                    self._sqlite = sqlite3.connect(
                        self._sqlite_path, timeout=0, isolation_level=None, check_same_thread=False
                    )
                    self._sqlite.execute("PRAGMA query_only=ON")
                # fetchall steps the statement to its end: no read transaction stays open between polls
                # (an open one would hold the WAL checkpoint back).
                rows = self._sqlite.execute(READ).fetchall()
            except sqlite3.Error as exc:  # opened again at the next read
                log.debug("cache generation read on its own SQLite connection failed: %r", exc)
                self._close_sqlite()
            else:
                self.direct_reads += 1
                return True, int(rows[0][0]) if rows else None
        connection = self._pg
        if connection is not None:
            try:
                value = await connection.fetchval(READ)
            except Exception as exc:  # lost meanwhile: the listener reopens it
                log.debug("cache generation read on the LISTEN connection failed: %r", exc)
            else:
                self.direct_reads += 1
                return True, None if value is None else int(value)
        return False, None


def _sqlite_file(sessions: async_sessionmaker[AsyncSession]) -> str | None:
    """The file of the SQLite database ``sessions`` are bound to (None for another database, or one
    in memory, which only that engine's own connection can see)."""
    bind = sessions.kw.get("bind")
    if not isinstance(bind, AsyncEngine) or bind.dialect.name != "sqlite":
        return None
    database = bind.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return database


def _setter(event: asyncio.Event) -> Callable[[object], None]:
    """A callback (of anything) that sets ``event``."""

    def set_event(_what: object) -> None:
        event.set()

    return set_event


def _retrieve(task: asyncio.Task[int]) -> None:
    """Mark a failed read's exception as seen: its callers re-raise it, and if every caller was
    cancelled meanwhile, nobody is left to (and asyncio would log it as never retrieved)."""
    if not task.cancelled():
        task.exception()


@dataclass(slots=True)
class _Entry(Generic[V]):
    value: V
    generation: int
    loaded_at: float


class GenerationCache(Generic[K, V]):
    """Values loaded from the database, used while the generation is unchanged and for at most
    ``max_age_s``. Misses (a loader that raises) are not cached. Concurrent callers of one key share
    one load: without that, every request in flight when an entry aged out loaded it again at once, and
    that stampede (32 loads of the same app's credentials through one database thread) pushed the
    whole batch past its deadline, once every ``max_age_s``."""

    def __init__(self, generation: Generation, max_age_s: float, max_entries: int = 4096) -> None:
        self._generation = generation
        self._max_age_s = max_age_s
        self._max_entries = max_entries
        self._entries: dict[K, _Entry[V]] = {}
        self._loading: dict[tuple[K, int], asyncio.Future[V]] = {}
        self.hits = 0
        self.loads = 0
        self.shared_loads = 0

    async def get(self, key: K, load: Callable[[], Awaitable[V]], *, fresh: bool = False) -> V:
        """The cached value for ``key``, or ``load()``'s (stored unless it raised).

        ``fresh``: the caller suspects the entry (a signature the cached credentials do not verify may be
        from a credential rotated in another process since). The generation is read again at once
        (Generation.recheck: at most once per poll interval), so a change committed elsewhere reloads
        the entry at its first use; an unchanged generation keeps it. Every change bumps the
        generation, so reloading the entry itself would only read the same values again: that load, once
        per poll interval under a flood of bad signatures, was 10 to 30 % of the key manager's CPU per
        refusal (five statements and an unsealing), where the generation's read is one statement that
        the regular poll would have made anyway."""
        # Before loading: a change meanwhile reloads next time.
        generation = await (self._generation.recheck() if fresh else self._generation.current())
        now = time.monotonic()
        entry = self._entries.get(key)
        max_age = self._max_age_s
        if entry is not None and entry.generation == generation and now - entry.loaded_at < max_age:
            self.hits += 1
            return entry.value
        flight = (key, generation)
        pending = self._loading.get(flight)
        if pending is not None:
            try:
                value = await asyncio.shield(pending)
            except asyncio.CancelledError:
                if not pending.cancelled():
                    raise  # this caller was cancelled
                # the loading caller was cancelled, not this one: load it here
            else:
                self.shared_loads += 1
                return value
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._loading[flight] = future
        try:
            value = await load()
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: callers that shared the load re-raise it themselves
            raise
        except BaseException:
            future.cancel()
            raise
        finally:
            if self._loading.get(flight) is future:
                del self._loading[flight]
        future.set_result(value)
        self.loads += 1
        if self._max_age_s <= 0:
            return value
        if len(self._entries) >= self._max_entries:
            self._evict(now)
        self._entries[key] = _Entry(value, generation, now)
        return value

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def _evict(self, now: float) -> None:
        fresh = {k: e for k, e in self._entries.items() if now - e.loaded_at < self._max_age_s}
        if len(fresh) >= self._max_entries:  # all fresh: drop the oldest half
            ordered = sorted(fresh.items(), key=lambda item: item[1].loaded_at)
            fresh = dict(ordered[len(ordered) // 2 :])
        self._entries = fresh
