"""The writer of a node's chain: group commit, fail-closed apply, and a chain head taken under a lock.

Every audited operation answers only after its row is durably committed. To keep that affordable, ONE
writer task per node and process commits rows in groups (``record``), or together with the mutation they
describe (``apply``), strictly in arrival order, and a failed write is reported to its caller instead of
being lost. Reading the log needs none of this machinery.

Other processes may write the same chain at the same time: the CLI in a second terminal beside
``xkslab up``, or a second replica configured with the same node id. So the head is never trusted from
memory: each batch takes the chain's lock inside its own transaction (SQLite: the database write lock,
taken by BEGIN IMMEDIATE on the writer's engine; PostgreSQL: a transaction-scoped advisory lock per
chain), reads the head there and commits on top of it. Writers of one chain therefore queue for a few
milliseconds instead of colliding on (chain, seq). An ``apply`` also raises the cache generation in the
same transaction, so caches in every process learn of the change (xkslab_shared/generation.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dsm_emulator.audit.chain import AUDIT_KEY_PURPOSE
from dsm_emulator.audit.events import AuditEvent, chained_rows
from dsm_emulator.audit.orm_batch import OrmBatchWriter, read_head
from dsm_emulator.audit.raw import ChainMoved, Head, RawWriter
from dsm_emulator.errors import AuditUnavailable, DsmError
from dsm_emulator.keyring import Keyring
from dsm_emulator.models import AuditRow
from xkslab_shared.config import AuditSettings
from xkslab_shared.db import describe_error
from xkslab_shared.generation import Generation, bump

# The logger keeps the name it had before audit became a package, so log filters keep working.
logger = logging.getLogger("dsm_emulator.audit")

T = TypeVar("T")

UNAVAILABLE = "audit log unavailable: the operation was not completed"

_EPOCH = datetime.fromtimestamp(0, UTC)
# The mapped Table itself: declarative types __table__ as a FromClause, which insert() does not take.
_TABLE = AuditRow.metadata.tables[AuditRow.__tablename__]


@dataclass(slots=True)
class AuditStats:
    """Counters for metrics; ``batches`` < rows recorded is what group commit buys."""

    batches: int = 0
    rows: int = 0
    failures: int = 0
    # Seconds per committed record() batch, from its first row's arrival to its COMMIT, most recent last.
    commit_seconds: deque[float] = field(default_factory=lambda: deque(maxlen=4096))

    def commit_quantile(self, q: float) -> float | None:
        """The q-quantile (0..1) of the recent batches' commit times, None before the first."""
        times = sorted(self.commit_seconds)
        return times[min(len(times) - 1, int(q * len(times)))] if times else None


@dataclass(slots=True)
class _Item:
    """One queued request, answered through ``future``: an ``event`` (record) or ``work`` (apply)."""

    future: asyncio.Future[Any]
    event: AuditEvent | None = None
    work: Callable[[AsyncSession], Awaitable[tuple[Any, AuditEvent]]] | None = None
    on_error: Callable[[DsmError], AuditEvent] | None = None
    invalidates: bool = True
    deadline: float | None = None  # record(): loop time by which the row must be on its way
    late: DsmError | None = None  # ... or it is written as this refusal, which the caller gets
    queued: float = 0.0  # loop time it was submitted


_STOP = object()


def _resolve(future: asyncio.Future[Any], result: Any = None, error: BaseException | None = None) -> None:
    if not future.done():  # the caller may have been cancelled meanwhile
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)


def _describe(exc: BaseException) -> str:
    """A loggable description: never str() of a StatementError, which embeds the rows' parameters."""
    return f"{type(exc).__name__}: {exc.message}" if isinstance(exc, DsmError) else describe_error(exc)


class AuditLog:
    """The writer of one node's chain (``settings.node_id``) in this process.

    ``sessions`` should come from an engine made with ``write_lock_first`` (see xkslab_shared/db.py) so
    that SQLite transactions hold the write lock from their first statement; ``generation`` (if given)
    is expired after each committed mutation so this process's caches see it at once."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        keyring: Keyring,
        settings: AuditSettings,
        generation: Generation | None = None,
        *,
        raw: RawWriter | None = None,
    ) -> None:
        self._sessions = sessions
        # How record() batches reach the database: raw.py below the ORM, or through the ORM's sessions.
        self._raw: RawWriter = raw if raw is not None else OrmBatchWriter(sessions)
        self._keyring = keyring
        self._generation = generation
        self.chain = settings.node_id
        self._lock_key = advisory_key(self.chain)
        self.last_mutation: float | None = None  # loop time of the last committed apply()
        self._batch_max = settings.batch_max
        self._interval = settings.flush_interval_ms / 1000
        self._queue: asyncio.Queue[Any] = asyncio.Queue()  # unbounded: every caller awaits its item
        self._held: Any = None  # the apply() (or _STOP) that ended the previous batch
        self._head: Head | None = None  # what this process last committed (None: read it)
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.stats = AuditStats()

    async def start(self) -> None:
        """Load the chain head, then start the writer. Raises AuditUnavailable if the head is unreadable."""
        if self._task is not None:
            raise RuntimeError("audit log already started")
        try:
            async with self._sessions() as session:
                await self._read_head(session)
        except Exception as exc:
            logger.error("audit log %s: cannot read the chain head: %s", self.chain, _describe(exc))
            raise AuditUnavailable("audit log unavailable: cannot read the chain head") from None
        self._task = asyncio.create_task(self._run(), name=f"audit-writer-{self.chain}")

    async def close(self) -> None:
        """Write everything already queued, then stop the writer. Later calls raise AuditUnavailable."""
        if self._task is None:
            return
        if not self._closing:
            self._closing = True
            self._queue.put_nowait(_STOP)
        await asyncio.shield(self._task)
        await self._raw.close()

    @property
    def running(self) -> bool:
        """Whether the writer accepts rows (health checks report a node that cannot audit as unusable)."""
        return self._task is not None and not self._task.done() and not self._closing

    async def record(
        self, event: AuditEvent, *, deadline: float | None = None, late: DsmError | None = None
    ) -> None:
        """Return once ``event``'s row is committed; raise AuditUnavailable if it could not be.

        With a ``deadline`` (event-loop time) and a ``late`` error: if the batch carrying the row starts
        to be written after the deadline, the row written is ``event.refused(late)`` and ``late`` is
        raised, so the log never calls successful what the caller saw fail."""
        if not isinstance(event, AuditEvent):  # checked here: a bad item would fail a whole batch
            raise TypeError("record() takes an AuditEvent")
        if deadline is not None and late is None:
            raise TypeError("record() with a deadline needs the error a late row is written as")
        await self._submit(event=event, deadline=deadline, late=late)

    async def apply(
        self,
        work: Callable[[AsyncSession], Awaitable[tuple[T, AuditEvent]]],
        on_error: Callable[[DsmError], AuditEvent] | None = None,
        *,
        invalidates: bool = True,
    ) -> T:
        """Run ``work`` in the writer's transaction and commit its mutation together with its audit row.

        A DsmError from ``work`` rolls back, writes ``on_error(e)`` (if given) and is re-raised; any other
        error from ``work`` rolls back and is re-raised; a failed audit write raises AuditUnavailable.
        ``work`` runs on the writer task: it must not commit, nor call record() or apply() (deadlock).
        ``invalidates=False`` for a mutation no cache depends on (a login's timestamp)."""
        return cast(T, await self._submit(work=work, on_error=on_error, invalidates=invalidates))

    def _submit(self, **request: Any) -> asyncio.Future[Any]:
        if self._task is None or self._task.done() or self._closing:
            raise AuditUnavailable("audit log unavailable: the audit writer is not running")
        loop = asyncio.get_running_loop()
        item = _Item(loop.create_future(), queued=loop.time(), **request)
        self._queue.put_nowait(item)  # no await since the running check: close() cannot strand it
        return item.future

    # --------------------------------------------------------------------------- the writer task

    async def _run(self) -> None:
        batch: list[_Item] = []
        try:
            while True:
                item = self._held or await self._queue.get()
                self._held = None
                if item is _STOP:
                    return
                batch = [item] if item.work else await self._collect(item)
                try:
                    if item.work:
                        await self._run_apply(item)
                    else:
                        late = await self._write(batch)
                        for i, error in zip(batch, late or [None] * len(batch), strict=True):
                            ok = late is not None
                            _resolve(i.future, error=error if ok else AuditUnavailable(UNAVAILABLE))
                except Exception as exc:  # a bug, or a session that failed to close: keep the writer
                    logger.error("audit log %s: writer error: %s", self.chain, _describe(exc))
                    self._head = None
                    for i in batch:
                        _resolve(i.future, error=AuditUnavailable(UNAVAILABLE))
                batch = []
        finally:  # on cancellation too: nobody may wait forever
            leftovers = [*batch, self._held]
            while not self._queue.empty():
                leftovers.append(self._queue.get_nowait())
            for i in leftovers:
                if isinstance(i, _Item):
                    _resolve(i.future, error=AuditUnavailable(UNAVAILABLE))

    async def _collect(self, first: _Item) -> list[_Item]:
        """Up to batch_max records: those queued now and, only with a flush_interval above 0, those
        arriving within it after the first's arrival. With 0 (the default) an idle writer commits a lone
        row at once and the rows arriving during a commit are the next batch: batches grow with the load
        and no request waits for a timer. An apply() ends the batch and is held back so that it runs
        after the records queued before it."""
        batch = [first]
        loop = asyncio.get_running_loop()
        deadline = first.queued + self._interval
        while len(batch) < self._batch_max:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    async with asyncio.timeout(remaining):
                        item = await self._queue.get()  # a cancelled get() leaves the item queued
                except TimeoutError:
                    break
            if item is _STOP or item.work:
                self._held = item
                break
            batch.append(item)
        return batch

    async def _write(self, batch: list[_Item]) -> list[DsmError | None] | None:
        """Commit one row per item in one transaction (raw.py, or orm_batch.py): per item, the
        error it was written as because its deadline had passed (None: on time); None (already logged)
        when the commit failed.

        It builds on the head this process last committed instead of reading it (a query per batch was
        a tenth of the key manager's time). That is safe because the chain's sequence numbers are
        contiguous and unique: if another process appended meanwhile, it took the next number and this
        insert fails (ChainMoved) instead of forking the chain; then once more, the head read under the
        lock. An item whose deadline passed while it waited (for its batch, or for the lock) is written as
        its refusal: decided in ``build``, under the chain's lock, the last moment before the insert."""
        loop = asyncio.get_running_loop()
        decided: list[list[DsmError | None]] = []  # per build() call: the last one is what committed
        # Loop time read from time.monotonic(), so that a raw writer's thread may build the rows too.
        offset = loop.time() - time.monotonic()
        soonest = min((i.deadline for i in batch if i.deadline is not None), default=None)
        expires = None if soonest is None else soonest - offset
        try:
            build = self._builder(batch, lambda: time.monotonic() + offset, decided)
            try:
                head = await self._raw.commit(self._lock_key, self.chain, self._head, build, expires=expires)
            except ChainMoved:
                self._head = None
                head = await self._raw.commit(self._lock_key, self.chain, None, build, expires=expires)
        except Exception as exc:
            await self._failed(exc, [i.event for i in batch])
            return None
        self._head = head
        self.stats.batches += 1
        self.stats.rows += len(batch)
        self.stats.commit_seconds.append(loop.time() - batch[0].queued)
        return decided[-1]

    def _builder(
        self,
        batch: list[_Item],
        clock: Callable[[], float] | None = None,
        decided: list[list[DsmError | None]] | None = None,
    ) -> Callable[[Head], tuple[list[dict[str, Any]], Head]]:
        """The rows of ``batch`` chained onto a head, as a function of that head (known only under the
        chain's lock); each item whose deadline has passed by then (``clock``: loop time) is written as
        its refusal, and what was decided is appended to ``decided``. The key is derived here, before
        the transaction: a sealed keyring fails early."""
        term = self._keyring.active_term
        key = self._keyring.derive(AUDIT_KEY_PURPOSE, term)
        chain = self.chain

        def build(head: Head) -> tuple[list[dict[str, Any]], Head]:
            late: list[DsmError | None] = _late(batch, clock()) if clock is not None else [None] * len(batch)
            events = [_recorded(i, error) for i, error in zip(batch, late, strict=True)]
            # Never step back in time within a chain (a clock adjustment): export sorts by time.
            now = max(datetime.now(UTC), head.time or _EPOCH)
            rows = chained_rows(key, term, chain, events, head.seq, head.row_hash, now)
            if decided is not None:
                decided.append(late)
            return rows, Head(head.seq + len(rows), rows[-1]["row_hash"] if rows else head.row_hash, now)

        return build

    async def _run_apply(self, item: _Item) -> None:
        future, work = item.future, item.work
        assert work is not None
        if future.done():  # a caller that gave up
            _resolve(future, error=AuditUnavailable(UNAVAILABLE))
            return
        async with self._sessions() as session:
            try:
                result, event = await work(session)
                await session.flush()  # errors of the mutation itself surface here, not as audit errors
            except DsmError as exc:
                await _rollback(session)
                refused: DsmError = exc
            except Exception as exc:
                await _rollback(session)
                _resolve(future, error=exc)
                return
            else:
                try:
                    await self._commit(session, _Item(future, event), invalidates=item.invalidates)
                except Exception as exc:
                    await _rollback(session)
                    await self._failed(exc, [event])
                    _resolve(future, error=AuditUnavailable(UNAVAILABLE))
                else:
                    if item.invalidates:
                        self.last_mutation = asyncio.get_running_loop().time()
                        if self._generation is not None:
                            self._generation.expire()
                    _resolve(future, result)
                return
        if item.on_error is None:
            _resolve(future, error=refused)
            return
        try:
            refusal = item.on_error(refused)
        except Exception as exc:
            logger.error("audit log %s: on_error failed: %s", self.chain, _describe(exc))
            _resolve(future, error=AuditUnavailable(UNAVAILABLE))
            return
        ok = await self._write([_Item(future, refusal)]) is not None
        _resolve(future, error=refused if ok else AuditUnavailable(UNAVAILABLE))

    async def _commit(self, session: AsyncSession, item: _Item, *, invalidates: bool = False) -> None:
        """An apply()'s row, in the ORM transaction of its mutation: lock the chain, read its head, chain
        the row onto it, insert and commit (with the cache generation raised when ``invalidates``)."""
        if session.get_bind().dialect.name == "postgresql":
            # Held until this transaction ends.
            await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": self._lock_key})
        else:
            await session.connection()  # begins the transaction: SQLite's writer engine takes the lock
        self._head = None
        head = await self._read_head(session)
        assert item.event is not None
        rows, after = self._builder([item])(head)
        await session.execute(insert(_TABLE), rows)
        if invalidates:
            await session.execute(bump())
        await session.commit()
        self._head = after
        self.stats.batches += 1
        self.stats.rows += 1

    async def _failed(self, exc: BaseException, events: list[Any]) -> None:
        self._head = None  # the commit may or may not have happened: read the head next time
        self.stats.failures += 1
        ops = ", ".join(sorted({getattr(e, "operation", "?") for e in events}))
        logger.error(
            "audit log %s: %d row(s) not committed (%s): %s", self.chain, len(events), ops, _describe(exc)
        )

    async def _read_head(self, session: AsyncSession) -> Head:
        return await read_head(session, self.chain)


def advisory_key(chain: str) -> int:
    """A stable signed 64-bit key for the chain's PostgreSQL advisory lock."""
    return int.from_bytes(
        hashlib.sha256(b"xkslab-audit-chain\n" + chain.encode()).digest()[:8], "big", signed=True
    )


def _recorded(item: _Item, late: DsmError | None) -> AuditEvent:
    """The event a record item's row is written as: itself, or its refusal when it came too late."""
    if item.event is None:
        raise TypeError("a record batch holds only items with an event")
    return item.event if late is None else item.event.refused(late)


def _late(batch: list[_Item], now: float) -> list[DsmError | None]:
    """Per item, the error it is written as because its deadline has passed (None: on time)."""
    return [i.late if i.deadline is not None and now >= i.deadline else None for i in batch]


async def _rollback(session: AsyncSession) -> None:
    try:
        await session.rollback()
    except Exception as exc:  # a broken connection: closing the session discards it anyway
        logger.warning("audit log: rollback failed: %s", _describe(exc))
