"""Group commit without a timer (audit.flush_interval_ms = 0, the default): an idle writer commits a lone
row at once, and the rows that arrive while a commit runs are the next batch, so concurrent requests
still share commits. Counted, never timed: each commit of the real writer (raw.py or orm_batch.py, on
SQLite and PostgreSQL) goes through a wrapper that counts it and can hold it until the test lets it go.
That every acknowledged row survives a SIGKILL is tests/integration/test_crash.py's."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dsm_emulator.audit import AuditEvent, AuditLog, verify
from dsm_emulator.audit.orm_batch import OrmBatchWriter
from dsm_emulator.audit.raw import Build, Head, RawWriter, open_raw_writer
from dsm_emulator.keyring import Keyring
from dsm_emulator.models import AuditRow
from xkslab_shared.config import AuditSettings

Sessions = async_sessionmaker[AsyncSession]


class HeldWriter:
    """The real batch writer, with each commit counted (rows per commit in ``sizes``) and held while
    ``gate`` is clear; ``started`` is set when a commit has been asked for."""

    def __init__(self, inner: RawWriter) -> None:
        self.inner = inner
        self.gate = asyncio.Event()
        self.gate.set()
        self.started = asyncio.Event()
        self.sizes: list[int] = []

    async def commit(
        self, lock_key: int, chain: str, head: Head | None, build: Build, *, expires: float | None = None
    ) -> Head:
        self.started.set()
        await self.gate.wait()
        built: list[int] = []

        def counted(at: Head) -> tuple[list[dict[str, Any]], Head]:
            rows, after = build(at)
            built.append(len(rows))
            return rows, after

        after = await self.inner.commit(lock_key, chain, head, counted, expires=expires)
        self.sizes.append(built[-1])
        return after

    async def close(self) -> None:
        await self.inner.close()


def writer_of(kind: str, sessions: Sessions) -> HeldWriter:
    inner = open_raw_writer(sessions.kw["bind"]) if kind == "raw" else OrmBatchWriter(sessions)
    return HeldWriter(inner)


def ev(i: int) -> AuditEvent:
    return AuditEvent(
        operation="crypto.encrypt",
        action_type="CRYPTOOPERATION",
        message=f"row {i}",
        actor_type="App",
        actor_id=str(uuid.uuid4()),
        response_time_us=i,
    )


async def messages(sessions: Sessions, chain: str) -> list[str]:
    async with sessions() as session:
        stmt = select(AuditRow.message).where(AuditRow.chain == chain).order_by(AuditRow.seq)
        return list(await session.scalars(stmt))


def test_the_default_is_no_timer_and_the_raw_writer() -> None:
    assert AuditSettings().flush_interval_ms == 0 and AuditSettings().writer == "raw"


@pytest.mark.parametrize("kind", ["raw", "orm"])
async def test_rows_arriving_during_a_commit_are_the_next_batch(
    sessions: Sessions, keyring: Keyring, kind: str
) -> None:
    held = writer_of(kind, sessions)
    log = AuditLog(sessions, keyring, AuditSettings(node_id="held"), raw=held)
    await log.start()
    n = 40
    try:
        held.gate.clear()
        first = asyncio.create_task(log.record(ev(0)))
        await held.started.wait()  # the lone first row's commit began without waiting for company
        rest = [asyncio.create_task(log.record(ev(i))) for i in range(1, n + 1)]
        await asyncio.sleep(0)  # each task queues its row in its first step
        assert not any(t.done() for t in (first, *rest))  # nothing acknowledged before its commit
        held.gate.set()
        await asyncio.gather(first, *rest)
    finally:
        held.gate.set()  # a failed assertion must not leave close() waiting on a held commit
        await log.close()
    assert held.sizes == [1, n]  # n concurrent requests, one commit
    assert log.stats.batches == 2 and log.stats.rows == n + 1 and log.stats.failures == 0
    assert await messages(sessions, "held") == [f"row {i}" for i in range(n + 1)]
    assert await verify(sessions, keyring) == []


@pytest.mark.parametrize("kind", ["raw", "orm"])
async def test_under_a_steady_stream_of_requests_commits_are_fewer_than_rows(
    sessions: Sessions, keyring: Keyring, kind: str
) -> None:
    """Requests that keep arriving one after another (each client sends its next row once its last
    is acknowledged), as a loaded key manager sees them: commits < rows, whatever the machine's speed."""
    held = writer_of(kind, sessions)
    log = AuditLog(sessions, keyring, AuditSettings(node_id="stream"), raw=held)
    await log.start()
    clients, each = 8, 10

    async def client(c: int) -> None:
        for i in range(each):
            await log.record(ev(c * each + i))

    try:
        await asyncio.gather(*(client(c) for c in range(clients)))
    finally:
        await log.close()
    assert sum(held.sizes) == clients * each == log.stats.rows
    assert len(held.sizes) == log.stats.batches < clients * each
    assert max(held.sizes) > 1
    assert sorted(await messages(sessions, "stream")) == sorted(f"row {i}" for i in range(clients * each))
    assert await verify(sessions, keyring) == []


async def test_an_idle_writer_commits_a_lone_row_without_a_timer(
    sessions: Sessions, keyring: Keyring
) -> None:
    """A few turns of the event loop, no clock: a writer that waited for company (a flush interval)
    would still be waiting."""
    held = writer_of("raw", sessions)
    log = AuditLog(sessions, keyring, AuditSettings(node_id="lone"), raw=held)
    await log.start()
    try:
        held.gate.clear()
        lone = asyncio.create_task(log.record(ev(0)))
        for _ in range(5):
            await asyncio.sleep(0)
        assert held.started.is_set() and not lone.done()
        held.gate.set()
        await lone
    finally:
        held.gate.set()
        await log.close()
    assert held.sizes == [1]
    assert await messages(sessions, "lone") == ["row 0"]
