"""The tamper-evident, fail-closed audit log.

Every audited operation answers only after its row is durably committed. To keep that affordable, ONE
writer task per node owns the chain head and commits rows in groups (``record``), or together with the
mutation they describe (``apply``). Because that task is the only code path that inserts audit rows and
handles items strictly in arrival order, the chain of a node is a simple sequence: seq 1, 2, 3... each
row keyed-hashed over the previous row's hash and every column of its own, so verify() can name the first
altered, deleted or reordered row. The hash key comes from the keyring (purpose ``audit-chain``), so the
database alone is not enough to forge a chain.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

from sqlalchemy import String, and_, insert, or_, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dsm_emulator.authz import Principal
from dsm_emulator.errors import AuditUnavailable, DsmError
from dsm_emulator.keyring import Keyring
from dsm_emulator.models import AuditRow
from xkslab_shared.config import AuditSettings

logger = logging.getLogger(__name__)

T = TypeVar("T")

AUDIT_KEY_PURPOSE = "audit-chain"
ZERO_HASH = bytes(32)
PAGE_SIZE = 1000
ACTION_TYPES = frozenset({"ADMINISTRATIVE", "AUTH", "CRYPTOOPERATION", "OTHER"})
ACTOR_TYPES = frozenset({"User", "App", "System"})
SEVERITIES = frozenset({"INFO", "WARNING", "ERROR", "CRITICAL"})
OUTCOMES = frozenset({"success", "refused", "failed"})
UNAVAILABLE = "audit log unavailable: the operation was not completed"

# Every column except the two hashes, in a fixed list: adding a column to AuditRow must be a conscious
# decision here (a test checks the two agree), or old rows would stop verifying.
HASHED_COLUMNS = (
    "id", "chain", "seq", "time", "acct_id", "actor_type", "actor_id", "via", "action_type", "operation",
    "severity", "outcome", "message", "object_id", "group_ids", "client_ip", "kms_request_id",
    "kms_operation", "aws_principal_arn", "kms_key_arn", "response_time_us", "key_term",
)  # fmt: skip
_DOMAIN = b"xkslab-audit-row-v1\n"
_EPOCH = datetime.fromtimestamp(0, UTC)
_TABLE = AuditRow.__table__
_MAX_LEN = {c.key: c.type.length for c in _TABLE.columns if isinstance(c.type, String) and c.type.length}
_ENUMS = {"action_type": ACTION_TYPES, "actor_type": ACTOR_TYPES, "severity": SEVERITIES, "outcome": OUTCOMES}


def _clean(value: str, limit: int | None) -> str:
    # A value the database would reject (too long for PostgreSQL, NUL, lone surrogate) would fail the
    # whole group commit, refusing every caller in the batch; store a recognisable, bounded copy instead.
    value = value.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
    return value if limit is None or len(value) <= limit else value[: limit - 1] + "\u2026"


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """What an operation reports about itself. These fields are the ONLY things stored (an allowlist,
    no free-form dict), so plaintext or key material has nowhere to go but ``message``, which callers
    write from fixed text and identifiers."""

    operation: str
    action_type: str
    message: str
    actor_type: str
    actor_id: str | None = None
    acct_id: str | None = None
    via: str | None = None
    severity: str = "INFO"
    outcome: str = "success"
    object_id: str | None = None
    group_ids: tuple[str, ...] = ()
    client_ip: str | None = None
    kms_request_id: str | None = None
    kms_operation: str | None = None
    aws_principal_arn: str | None = None
    kms_key_arn: str | None = None
    response_time_us: int | None = None

    def __post_init__(self) -> None:
        # Checked here, not at commit time: one bad event must not fail the batch it is committed in.
        for f in dataclasses.fields(self):
            name, value = f.name, getattr(self, f.name)
            if name in _ENUMS and value not in _ENUMS[name]:
                raise ValueError(f"audit event {name} must be one of {sorted(_ENUMS[name])}")
            if name == "response_time_us":
                if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                    raise TypeError("audit event response_time_us must be an int or None")
            elif name == "group_ids":
                if isinstance(value, str) or not all(isinstance(g, str) for g in value):
                    raise TypeError("audit event group_ids must be a sequence of str")
                object.__setattr__(self, name, tuple(_clean(g, None) for g in value))
            elif value is not None or f.default is dataclasses.MISSING:
                if not isinstance(value, str) or (name == "operation" and not value):
                    raise TypeError(f"audit event {name} must be a non-empty str")
                object.__setattr__(self, name, _clean(value, _MAX_LEN.get(name)))

    @classmethod
    def by(
        cls, p: Principal, operation: str, message: str, *, action_type: str = "ADMINISTRATIVE", **fields: Any
    ) -> AuditEvent:
        """An event whose actor is ``p`` (and the proxy, when it acted for ``p``)."""
        return cls(
            operation=operation,
            action_type=action_type,
            message=message,
            actor_type=p.actor_type,
            actor_id=p.id,
            acct_id=p.acct_id,
            via=p.via,
            **fields,
        )

    def refused(self, error: Exception) -> AuditEvent:
        """The refusal row for this event. Only a DsmError's message is used: those are written to be
        safe to show; str() of anything else could carry input or key material."""
        msg = error.message if isinstance(error, DsmError) else type(error).__name__
        return dataclasses.replace(
            self, outcome="refused", severity="WARNING", message=f"{self.message}: refused: {msg}"
        )


# ------------------------------------------------------------------------------------------ hashing


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes (the UTC wall clock we wrote); PostgreSQL aware ones.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def canonical(values: Mapping[str, Any]) -> bytes:
    """Deterministic encoding of every hashed column: sorted-key ASCII JSON, time as a UTC ISO string
    with microseconds, so a row read back from either database encodes exactly as it was written."""
    doc = {name: values[name] for name in HASHED_COLUMNS}
    doc["time"] = _utc(doc["time"]).isoformat(timespec="microseconds")
    return _DOMAIN + json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def row_hash(key: bytes, prev_hash: bytes, values: Mapping[str, Any]) -> bytes:
    return hmac.new(key, bytes(prev_hash) + canonical(values), hashlib.sha256).digest()


# ---------------------------------------------------------------------------------------- the writer


@dataclass(slots=True)
class AuditStats:
    """Counters for metrics; ``batches`` < rows recorded is what group commit buys."""

    batches: int = 0
    rows: int = 0
    failures: int = 0


@dataclass(frozen=True, slots=True)
class _Head:
    seq: int
    row_hash: bytes
    time: datetime | None


@dataclass(slots=True)
class _Item:
    """One queued request, answered through ``future``: an ``event`` (record) or ``work`` (apply)."""

    future: asyncio.Future[Any]
    event: AuditEvent | None = None
    work: Callable[[AsyncSession], Awaitable[tuple[Any, AuditEvent]]] | None = None
    on_error: Callable[[DsmError], AuditEvent] | None = None


_STOP = object()


def _resolve(future: asyncio.Future[Any], result: Any = None, error: BaseException | None = None) -> None:
    if not future.done():  # the caller may have been cancelled meanwhile
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)


def _describe(exc: BaseException) -> str:
    """A loggable description: never str() of a StatementError, which embeds the rows' parameters."""
    if isinstance(exc, DBAPIError):
        return f"{type(exc).__name__}: {type(exc.orig).__name__}: {str(exc.orig)[:300]}"
    return f"{type(exc).__name__}: {exc.message}" if isinstance(exc, DsmError) else type(exc).__name__


class AuditLog:
    """The single writer of one node's chain (``settings.node_id``). One instance per node and process."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], keyring: Keyring, settings: AuditSettings
    ) -> None:
        self._sessions = sessions
        self._keyring = keyring
        self.chain = settings.node_id
        self._batch_max = settings.batch_max
        self._interval = settings.flush_interval_ms / 1000
        self._queue: asyncio.Queue[Any] = asyncio.Queue()  # unbounded: every caller awaits its item
        self._held: Any = None  # the apply() (or _STOP) that ended the previous batch
        self._head: _Head | None = None  # None: unknown, reload before the next write
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.stats = AuditStats()

    async def start(self) -> None:
        """Load the chain head, then start the writer. Raises AuditUnavailable if the head is unreadable."""
        if self._task is not None:
            raise RuntimeError("audit log already started")
        if not await self._reload_head():
            raise AuditUnavailable("audit log unavailable: cannot read the chain head")
        self._task = asyncio.create_task(self._run(), name=f"audit-writer-{self.chain}")

    async def close(self) -> None:
        """Write everything already queued, then stop the writer. Later calls raise AuditUnavailable."""
        if self._task is None:
            return
        if not self._closing:
            self._closing = True
            self._queue.put_nowait(_STOP)
        await asyncio.shield(self._task)

    @property
    def running(self) -> bool:
        """Whether the writer accepts rows (health checks report a node that cannot audit as unusable)."""
        return self._task is not None and not self._task.done() and not self._closing

    async def record(self, event: AuditEvent) -> None:
        """Return once ``event``'s row is committed; raise AuditUnavailable if it could not be."""
        if not isinstance(event, AuditEvent):  # checked here: a bad item would fail a whole batch
            raise TypeError("record() takes an AuditEvent")
        await self._submit(event=event)

    async def apply(
        self,
        work: Callable[[AsyncSession], Awaitable[tuple[T, AuditEvent]]],
        on_error: Callable[[DsmError], AuditEvent] | None = None,
    ) -> T:
        """Run ``work`` in the writer's transaction and commit its mutation together with its audit row.

        A DsmError from ``work`` rolls back, writes ``on_error(e)`` (if given) and is re-raised; any other
        error from ``work`` rolls back and is re-raised; a failed audit write raises AuditUnavailable.
        ``work`` runs on the writer task: it must not commit, nor call record() or apply() (deadlock)."""
        return cast(T, await self._submit(work=work, on_error=on_error))

    def _submit(self, **request: Any) -> asyncio.Future[Any]:
        if self._task is None or self._task.done() or self._closing:
            raise AuditUnavailable("audit log unavailable: the audit writer is not running")
        item = _Item(asyncio.get_running_loop().create_future(), **request)
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
                        ok = await self._write([i.event for i in batch])
                        for i in batch:
                            _resolve(i.future, error=None if ok else AuditUnavailable(UNAVAILABLE))
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
        """Up to batch_max records, waiting at most flush_interval after the first; an apply() ends the
        batch and is held back so that it runs after the records queued before it."""
        batch = [first]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._interval
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

    async def _ready(self) -> bool:
        if self._head is None and not await self._reload_head():
            self.stats.failures += 1
            return False
        return True

    async def _write(self, events: list[Any]) -> bool:
        """Commit one row per event in one transaction. False (already logged) when it failed."""
        if not await self._ready():
            return False
        try:
            async with self._sessions() as session:
                await self._commit(session, events)
        except Exception as exc:
            await self._failed(exc, events)
            return False
        return True

    async def _run_apply(self, item: _Item) -> None:
        future, work = item.future, item.work
        assert work is not None
        if future.done() or not await self._ready():  # a caller that gave up, or no chain head
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
                    await self._commit(session, [event])
                except Exception as exc:
                    await _rollback(session)
                    await self._failed(exc, [event])
                    _resolve(future, error=AuditUnavailable(UNAVAILABLE))
                else:
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
        ok = await self._write([refusal])
        _resolve(future, error=refused if ok else AuditUnavailable(UNAVAILABLE))

    async def _commit(self, session: AsyncSession, events: list[AuditEvent]) -> None:
        """Chain the rows onto the head, add them to ``session`` and commit; the head moves only after
        the commit succeeded, so a failed batch leaves no hole."""
        head = self._head
        assert head is not None
        term = self._keyring.active_term
        key = self._keyring.derive(AUDIT_KEY_PURPOSE, term)
        # Never step back in time within a chain (a clock adjustment): export sorts by time.
        now = max(datetime.now(UTC), head.time or _EPOCH)
        prev, seq = head.row_hash, head.seq
        rows: list[dict[str, Any]] = []
        for event in events:
            seq += 1
            values: dict[str, Any] = {f.name: getattr(event, f.name) for f in dataclasses.fields(event)}
            values.update(id=str(uuid.uuid4()), chain=self.chain, seq=seq, time=now, key_term=term)
            values["group_ids"] = list(event.group_ids)
            digest = row_hash(key, prev, values)
            rows.append({**values, "prev_hash": prev, "row_hash": digest})
            prev = digest
        await session.execute(insert(_TABLE), rows)  # one executemany, not a unit-of-work flush
        await session.commit()
        self._head = _Head(seq, prev, now)
        self.stats.batches += 1
        self.stats.rows += len(rows)

    async def _failed(self, exc: BaseException, events: list[Any]) -> None:
        self.stats.failures += 1
        ops = ", ".join(sorted({getattr(e, "operation", "?") for e in events}))
        logger.error(
            "audit log %s: %d row(s) not committed (%s): %s", self.chain, len(events), ops, _describe(exc)
        )
        await self._reload_head()  # the commit may or may not have happened: trust only the database

    async def _reload_head(self) -> bool:
        stmt = select(AuditRow.seq, AuditRow.row_hash, AuditRow.time).where(AuditRow.chain == self.chain)
        try:
            async with self._sessions() as session:
                row = (await session.execute(stmt.order_by(AuditRow.seq.desc()).limit(1))).first()
        except Exception as exc:
            self._head = None
            logger.error("audit log %s: cannot read the chain head: %s", self.chain, _describe(exc))
            return False
        self._head = (
            _Head(0, ZERO_HASH, None) if row is None else _Head(row.seq, bytes(row.row_hash), _utc(row.time))
        )
        return True


async def _rollback(session: AsyncSession) -> None:
    try:
        await session.rollback()
    except Exception as exc:  # a broken connection: closing the session discards it anyway
        logger.warning("audit log: rollback failed: %s", _describe(exc))


# -------------------------------------------------------------------------------------- verification


@dataclass
class ChainProblem:
    chain: str
    seq: int
    row_id: str
    reason: str


async def verify(
    sessions: async_sessionmaker[AsyncSession], keyring: Keyring, *, page_size: int = PAGE_SIZE
) -> list[ChainProblem]:
    """Walk every chain in seq order, a page at a time, and report the first bad row of each.

    A deleted row shows as a gap at the row after it. Rows cut off the END of a chain cannot be seen
    from the chain alone; compare with an exported copy (``export(since_seq=...)``) for that."""
    async with sessions() as session:
        chains = list(await session.scalars(select(AuditRow.chain).distinct().order_by(AuditRow.chain)))
    keys: dict[int, bytes | None] = {}
    problems = []
    for chain in chains:
        expected, prev, problem = 1, ZERO_HASH, None
        while problem is None:
            stmt = select(_TABLE).where(AuditRow.chain == chain, AuditRow.seq >= expected)
            async with sessions() as session:
                page = (await session.execute(stmt.order_by(AuditRow.seq).limit(page_size))).all()
            if not page:
                break
            for row in page:
                values = row._mapping
                reason = _row_problem(values, expected, prev, keyring, keys)
                if reason is not None:
                    problem = ChainProblem(chain, values["seq"], values["id"], reason)
                    problems.append(problem)
                    break
                expected, prev = expected + 1, bytes(values["row_hash"])
    return problems


def _row_problem(
    values: Mapping[str, Any], expected: int, prev: bytes, keyring: Keyring, keys: dict[int, bytes | None]
) -> str | None:
    if values["seq"] != expected:
        return f"seq gap: expected seq {expected}, found {values['seq']} (rows deleted)"
    if bytes(values["prev_hash"]) != prev:
        return "prev_hash does not match the hash of the previous row"
    term = values["key_term"]
    if term not in keys:
        try:
            keys[term] = keyring.derive(AUDIT_KEY_PURPOSE, term)
        except DsmError:
            keys[term] = None
    if (key := keys[term]) is None:
        return f"row names keyring term {term}, which the keyring does not have"
    if not hmac.compare_digest(row_hash(key, prev, values), bytes(values["row_hash"])):
        return "row_hash does not match the row's contents (row altered)"
    return None


# ------------------------------------------------------------------------------------------ reading


def _to_dict(values: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(values)
    out["time"] = _utc(out["time"]).isoformat(timespec="microseconds")
    out["prev_hash"] = bytes(out["prev_hash"]).hex()
    out["row_hash"] = bytes(out["row_hash"]).hex()
    out["group_ids"] = list(out["group_ids"] or [])
    return out


def row_to_dict(row: AuditRow) -> dict[str, Any]:
    """A row as JSON-ready data: time as UTC ISO 8601, hashes as hex."""
    return _to_dict({c.key: getattr(row, c.key) for c in _TABLE.columns})


async def export(
    sessions: async_sessionmaker[AsyncSession], *, since_seq: Mapping[str, int] | None = None
) -> AsyncIterator[dict[str, Any]]:
    """Every row in (time, chain, seq) order, streamed with a server-side cursor. ``since_seq`` maps a
    chain to the last seq already exported: only later rows of that chain are yielded (other chains in
    full), so an export can be continued incrementally."""
    stmt = select(_TABLE).order_by(AuditRow.time, AuditRow.chain, AuditRow.seq)
    if since_seq:
        later = (and_(AuditRow.chain == c, AuditRow.seq > s) for c, s in since_seq.items())
        stmt = stmt.where(or_(AuditRow.chain.not_in(list(since_seq)), *later))
    async with sessions() as session:
        result = await session.stream(stmt.execution_options(yield_per=PAGE_SIZE))
        async for row in result:
            yield _to_dict(row._mapping)


async def tail(sessions: async_sessionmaker[AsyncSession], limit: int) -> list[dict[str, Any]]:
    """The newest ``limit`` rows, newest first."""
    order = (AuditRow.time.desc(), AuditRow.chain.desc(), AuditRow.seq.desc())
    stmt = select(_TABLE).order_by(*order).limit(max(limit, 0))
    async with sessions() as session:
        return [_to_dict(row._mapping) for row in await session.execute(stmt)]
