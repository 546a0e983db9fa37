"""The audit batch written through the raw database driver, below SQLAlchemy's ORM and async layers.

A batch of ``record()`` rows is the hottest write of the key manager (one per XKS call, group-committed).
Through the ORM, a batch cost a session, a unit of work, aiosqlite's thread hop per statement and
SQLAlchemy's parameter processing; a fifth of the key manager's CPU per XKS Encrypt. Here a batch is one
transaction on a connection of the writer's own:

- SQLite: one dedicated thread (``_Thread``) with its own ``sqlite3`` connection (WAL,
  ``synchronous=FULL``): ``BEGIN IMMEDIATE`` (the database write lock, which is the chain's lock), the
  head read only when not trusted, the batch as one multi-row INSERT (per 1,000 rows) and ``COMMIT``,
  all in one hop to the thread. The
  rows are built and converted on the event loop before the hop, so the thread runs only SQLite's C
  code, without the GIL; a per-row ``executemany`` took the GIL back once per row, each time waiting for
  a busy event loop (measured: the key manager then ran less, and slower, than through the ORM).
- PostgreSQL: an ``asyncpg`` connection of its own: a transaction that takes the chain's advisory lock
  (BEGIN and the lock in one round trip), then ``executemany`` (pipelined, atomic) and COMMIT.

The rows themselves are built by the writer's ``build(head)`` (chain.py's hash, unchanged), inside the
transaction, once the head is known. Values are converted by the same SQLAlchemy column types the ORM
uses, so a row written here reads back exactly like one written through a session. ``commit`` returns
only after COMMIT succeeded; a unique-key collision on (chain, seq), another process having extended the
chain, raises ChainMoved and rolls back.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from dsm_emulator.audit.chain import ZERO_HASH, _utc
from dsm_emulator.models import AuditRow
from xkslab_shared.db import WAL_SIZE_LIMIT

_TABLE = AuditRow.metadata.tables[AuditRow.__tablename__]
COLUMNS = tuple(c.key for c in _TABLE.columns)
_HEAD_SQL = "SELECT seq, row_hash, time FROM audit_log WHERE chain = {p} ORDER BY seq DESC LIMIT 1"


@dataclass(frozen=True, slots=True)
class Head:
    """The last row of a chain: the next row is seq + 1, chained onto row_hash, never earlier than time."""

    seq: int
    row_hash: bytes
    time: datetime | None


EMPTY = Head(0, ZERO_HASH, None)

# build(head) -> (the rows to insert as dicts of every column, the head after them)
Build = Callable[[Head], tuple[list[dict[str, Any]], Head]]


class ChainMoved(Exception):
    """Another writer extended the chain since this one last wrote: the insert collided on (chain, seq)."""


class RawWriter(Protocol):
    # ``expires``: the time.monotonic() at which a row of the batch reaches its deadline (None: none
    # has one); a writer that builds the rows before taking the chain's lock builds them again under
    # it once that time has passed, so that the row says what the caller was told.
    async def commit(
        self, lock_key: int, chain: str, head: Head | None, build: Build, *, expires: float | None = None
    ) -> Head: ...

    async def close(self) -> None: ...


# ------------------------------------------------------------------------------------------ SQLite

T = TypeVar("T")
_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[[], Any]]


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if not future.done():  # its caller may have been cancelled meanwhile
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)


class _Thread:
    """One thread running calls in order, each answered on the event loop of its caller.

    A lone request crosses to the writer's thread and back once per commit. ``run_in_executor`` made each
    crossing a concurrent Future (its condition variable), a work item and two futures chained through
    callbacks: a round trip cost about twice this queue and one ``call_soon_threadsafe`` (measured on
    uvloop, an empty call: 57-83 against 30-42 us). A call whose caller was cancelled before it started
    is skipped, as the executor skipped it. The thread is a daemon: a writer that is never closed must
    not hold the interpreter at exit (a COMMIT under way is finished by SQLite, out of the GIL, before it
    could be stopped, and nobody was told it succeeded)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    async def run(self, call: Callable[..., T], *args: Any) -> T:
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
            self._thread.start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((loop, future, functools.partial(call, *args)))
        return await future

    def stop(self) -> None:
        """End the thread after the calls already queued (no new one may follow)."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()
            self._thread = None

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            loop, future, call = job
            if future.cancelled():
                continue
            error: BaseException | None = None
            try:
                result = call()
            except BaseException as exc:  # handed to the caller, whatever it is: the thread goes on
                result, error = None, exc
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
                loop.call_soon_threadsafe(_settle, future, result, error)


_SQLITE = sqlite_dialect.dialect()
_SQLITE_BIND = [c.type.dialect_impl(_SQLITE).bind_processor(_SQLITE) for c in _TABLE.columns]
_SQLITE_TIME = _TABLE.c.time.type.dialect_impl(_SQLITE).result_processor(_SQLITE, None)


def sqlite_pragmas(conn: sqlite3.Connection, busy_timeout_ms: int, wal_autocheckpoint: bool) -> None:
    """The pragmas of every connection of the lab (xkslab_shared/db.py), on a raw sqlite3 connection."""
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA secure_delete=ON")
    conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
    if not wal_autocheckpoint:
        conn.execute("PRAGMA wal_autocheckpoint=0")


def sqlite_params(rows: Sequence[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Rows as sqlite3 parameters, converted by the ORM's own column types (text UTC time, JSON)."""
    return [
        tuple(
            v if proc is None or v is None else proc(v)
            for proc, v in zip(_SQLITE_BIND, (r[k] for k in COLUMNS), strict=True)
        )
        for r in rows
    ]


# Column names from the model, never input.
_NAMES = ", ".join(COLUMNS)
_SQLITE_ROW = f"({', '.join('?' * len(COLUMNS))})"
# SQLite takes at most 32,766 parameters per statement (since 3.32): 24 columns x 1,000 rows stay under.
_ROWS_PER_INSERT = 1000


@functools.lru_cache(maxsize=64)
def _sqlite_insert(rows: int) -> str:
    """INSERT of ``rows`` rows in one statement (multi-row VALUES)."""
    return f"INSERT INTO audit_log ({_NAMES}) VALUES {', '.join([_SQLITE_ROW] * rows)}"  # noqa: S608


class SqliteRawWriter:
    """One thread, one sqlite3 connection, one transaction per batch."""

    def __init__(self, path: str, *, busy_timeout_ms: int = 5000, wal_autocheckpoint: bool = True) -> None:
        self._path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._autocheckpoint = wal_autocheckpoint
        self._thread = _Thread("audit-sqlite")
        self._conn: sqlite3.Connection | None = None  # used only on that thread

    async def commit(
        self, lock_key: int, chain: str, head: Head | None, build: Build, *, expires: float | None = None
    ) -> Head:
        if head is None:  # the first batch, or after a collision: read the head under the lock
            return await self._thread.run(self._transaction, chain, None, build, None)
        # The usual case: the rows (hashes, conversions) are built here, so that the thread does nothing
        # but SQLite's C code, which runs without the GIL. Built in the thread, they competed with the
        # event loop for the GIL while the transaction held the database lock, and every request of the
        # batch waited for that. Only when a row's deadline passes while the thread waits for the lock
        # (another process holding it) are they built again there, under the lock.
        rows, after = build(head)
        params = sqlite_params(rows)
        return await self._thread.run(self._transaction, chain, (params, after), build, expires)

    async def close(self) -> None:
        await self._thread.run(self._disconnect)
        self._thread.stop()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self._path, isolation_level=None, timeout=self._busy_timeout_ms / 1000)
            try:
                sqlite_pragmas(conn, self._busy_timeout_ms, self._autocheckpoint)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _disconnect(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    def _transaction(
        self,
        chain: str,
        built: tuple[list[tuple[Any, ...]], Head] | None,
        build: Build,
        expires: float | None,
    ) -> Head:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")  # waits (busy_timeout) for the write lock: the chain's lock
        try:
            if built is None or (expires is not None and time.monotonic() >= expires):
                row = conn.execute(_HEAD_SQL.format(p="?"), (chain,)).fetchone()
                head = EMPTY if row is None else Head(row[0], bytes(row[1]), _utc(_sqlite_time(row[2])))
                rows, after = build(head)
                params = sqlite_params(rows)
            else:
                params, after = built
            # One statement per chunk of rows, not one per row: each statement step gives the GIL up and
            # takes it back, and taking it back waits while the event loop thread is busy.
            for start in range(0, len(params), _ROWS_PER_INSERT):
                chunk = params[start : start + _ROWS_PER_INSERT]
                conn.execute(_sqlite_insert(len(chunk)), [v for p in chunk for v in p])
            conn.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.IntegrityError):
                raise ChainMoved() from None
            if not isinstance(exc, sqlite3.OperationalError):
                self._disconnect()  # an unknown state: start the next batch on a fresh connection
            raise
        return after


def _sqlite_time(value: Any) -> datetime:
    if _SQLITE_TIME is None:
        raise TypeError("no result processor for the audit time column")
    parsed = _SQLITE_TIME(value)
    if not isinstance(parsed, datetime):
        raise TypeError("the audit time column did not read back as a datetime")
    return parsed


# -------------------------------------------------------------------------------------- PostgreSQL

_PG_PLACES = ", ".join(f"${i + 1}" for i in range(len(COLUMNS)))
PG_INSERT = f"INSERT INTO audit_log ({_NAMES}) VALUES ({_PG_PLACES})"  # noqa: S608
_JSON_COLUMNS = frozenset(c.key for c in _TABLE.columns if c.type.__class__.__name__ == "JSON")


def pg_params(rows: Sequence[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Rows as asyncpg parameters: JSON columns as text (asyncpg's json codec), the rest as they are."""
    import json

    return [
        tuple(json.dumps(r[k]) if k in _JSON_COLUMNS and r[k] is not None else r[k] for k in COLUMNS)
        for r in rows
    ]


class PostgresRawWriter:
    """An asyncpg connection of the writer's own, reopened after a failure."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: Any = None  # asyncpg.Connection (asyncpg is the postgres extra: imported on use)

    async def commit(
        self, lock_key: int, chain: str, head: Head | None, build: Build, *, expires: float | None = None
    ) -> Head:
        import asyncpg  # (``expires`` needs nothing here: the rows are built under the lock)

        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(self._dsn)
        conn = self._conn
        try:
            # BEGIN and the chain's lock (held until the commit) in one round trip, a simple query of
            # two statements (the key is an integer of ours), where asyncpg's transaction() and a bound
            # statement took two: a lone request waits for each of them.
            await conn.execute(f"BEGIN; SELECT pg_advisory_xact_lock({int(lock_key)})")
            try:
                if head is None:
                    row = await conn.fetchrow(_HEAD_SQL.format(p="$1"), chain)
                    head = EMPTY if row is None else Head(row[0], bytes(row[1]), _utc(row[2]))
                rows, after = build(head)
                await conn.executemany(PG_INSERT, pg_params(rows))
                await conn.execute("COMMIT")
            except asyncpg.PostgresError:
                await conn.execute("ROLLBACK")
                raise
        except asyncpg.UniqueViolationError:
            raise ChainMoved() from None
        except asyncpg.PostgresError:
            raise  # the server refused the statement: the transaction rolled back, the connection is fine
        except BaseException:
            self._conn = None  # a broken or interrupted connection: the next batch opens a new one
            with contextlib.suppress(Exception):
                conn.terminate()
            raise
        return after

    async def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)

    async def close(self) -> None:
        await self._discard()


def open_raw_writer(
    engine: AsyncEngine, *, busy_timeout_ms: int = 5000, wal_autocheckpoint: bool = True
) -> RawWriter:
    """The raw writer for the database behind ``engine`` (its URL; the engine's own pool is not used)."""
    url: URL = engine.url
    if engine.dialect.name == "sqlite":
        if not url.database or url.database == ":memory:":
            raise ValueError("the audit log needs a SQLite file, not an in-memory database")
        return SqliteRawWriter(
            url.database, busy_timeout_ms=busy_timeout_ms, wal_autocheckpoint=wal_autocheckpoint
        )
    if engine.dialect.name == "postgresql":
        return PostgresRawWriter(url.set(drivername="postgresql").render_as_string(hide_password=False))
    raise ValueError(f"no raw audit writer for {engine.dialect.name}")
