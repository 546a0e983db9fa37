"""The audit writer below the ORM (dsm_emulator/audit/raw.py) and the key manager's WAL checkpoints off the
request path (xkslab_shared/wal.py). The chain, the fail-closed behaviour and group commit are in
test_audit.py, which runs through this writer too; here: a raw row is the row the ORM would have written,
chains continue across the ORM and raw paths and across writers, and a record() returns only once its
row is in the database. SQLite and PostgreSQL where it applies."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dsm_emulator import audit, store
from dsm_emulator.audit import AuditEvent, AuditLog, verify
from dsm_emulator.audit.chain import HASHED_COLUMNS, row_hash
from dsm_emulator.audit.raw import EMPTY, ChainMoved, Head, _Thread, open_raw_writer
from dsm_emulator.keyring import Keyring
from dsm_emulator.models import Account, AuditRow
from xkslab_shared.config import AuditSettings
from xkslab_shared.wal import WalCheckpointer

Sessions = async_sessionmaker[AsyncSession]


def ev(i: int, **more: Any) -> AuditEvent:
    fields: dict[str, Any] = {
        "operation": "crypto.encrypt",
        "action_type": "CRYPTOOPERATION",
        "message": f"row {i} \u00e9\x00",  # non-ASCII and a NUL (cleaned) survive both paths alike
        "actor_type": "App",
        "actor_id": str(uuid.uuid4()),
        "group_ids": (str(uuid.uuid4()),),
        "response_time_us": i,
    }
    return AuditEvent(**{**fields, **more})


async def rows_of(sessions: Sessions, chain: str) -> list[AuditRow]:
    async with sessions() as session:
        stmt = select(AuditRow).where(AuditRow.chain == chain).order_by(AuditRow.seq)
        return list(await session.scalars(stmt))


async def test_a_raw_row_reads_back_like_an_orm_row_and_the_chain_continues_across_both(
    sessions: Sessions, keyring: Keyring
) -> None:
    driver = open_raw_writer(sessions.kw["bind"])
    log = AuditLog(sessions, keyring, AuditSettings(node_id="mixed", flush_interval_ms=0), raw=driver)
    await log.start()
    try:

        async def mutate(session: AsyncSession) -> tuple[str, AuditEvent]:
            acct = str(uuid.uuid4())
            session.add(Account(acct_id=acct, name=acct, created_at=datetime.now(UTC)))
            return acct, ev(1, operation="account.create")

        await log.record(ev(0))  # raw
        await log.apply(mutate)  # ORM, in the mutation's transaction
        await log.record(ev(2))  # raw again, on the head the ORM path committed
    finally:
        await log.close()
    # a restart reads the head; this one through the ORM (audit.writer = "orm"), on the raw rows' head
    again = AuditLog(sessions, keyring, AuditSettings(node_id="mixed"))
    await again.start()
    try:
        await again.record(ev(3))
    finally:
        await again.close()
    rows = await rows_of(sessions, "mixed")
    assert [r.seq for r in rows] == [1, 2, 3, 4]
    assert [r.operation for r in rows] == [
        "crypto.encrypt",
        "account.create",
        "crypto.encrypt",
        "crypto.encrypt",
    ]
    assert all(rows[i].prev_hash == rows[i - 1].row_hash for i in range(1, 4))
    assert await verify(sessions, keyring) == []
    raw, orm = audit.row_to_dict(rows[0]), audit.row_to_dict(rows[1])
    assert set(raw) == set(orm)
    assert raw["message"] == "row 0 \u00e9\ufffd" and isinstance(raw["group_ids"], list)
    assert raw["time"].endswith("+00:00") and raw["time"] <= orm["time"]
    assert {k: type(v) for k, v in raw.items()} == {k: type(v) for k, v in orm.items()}


async def test_a_stale_head_collides_instead_of_forking_the_chain(
    sessions: Sessions, keyring: Keyring
) -> None:
    key = keyring.derive(audit.AUDIT_KEY_PURPOSE, keyring.active_term)
    raw = open_raw_writer(sessions.kw["bind"])
    try:

        def build(head: Head) -> tuple[list[dict[str, Any]], Head]:
            now = max(datetime.now(UTC), head.time or datetime.now(UTC))
            rows = audit.events.chained_rows(
                key, keyring.active_term, "raw", [ev(head.seq)], head.seq, head.row_hash, now
            )
            return rows, Head(head.seq + 1, rows[-1]["row_hash"], now)

        head = await raw.commit(1, "raw", None, build)
        assert head.seq == 1
        stale = EMPTY  # what a writer that missed that row would build on
        try:
            await raw.commit(1, "raw", stale, build)
        except ChainMoved:
            pass
        else:
            raise AssertionError("a second seq 1 was committed")
        assert (await raw.commit(1, "raw", None, build)).seq == 2  # the head read under the lock
    finally:
        await raw.close()
    assert [r.seq for r in await rows_of(sessions, "raw")] == [1, 2]
    assert await verify(sessions, keyring) == []


async def test_record_returns_only_once_its_row_is_in_the_database(
    db_url: str, sessions: Sessions, keyring: Keyring
) -> None:
    """Another connection (another engine: another process's view) sees the row as soon as record()
    returns; the crash test (tests/integration/test_crash.py) checks the same across a SIGKILL."""
    other = store.create_engine(db_url)
    raw = open_raw_writer(sessions.kw["bind"])
    log = AuditLog(sessions, keyring, AuditSettings(node_id="acked", flush_interval_ms=5), raw=raw)
    await log.start()
    try:
        for i in range(20):
            event = ev(i, message=f"acked {i}")
            await log.record(event)
            async with other.connect() as conn:
                found = await conn.scalar(
                    select(AuditRow.seq).where(AuditRow.chain == "acked", AuditRow.message == f"acked {i}")
                )
            assert found == i + 1
    finally:
        await log.close()
        await other.dispose()


async def test_wal_checkpoints_happen_off_the_commit_path(tmp_path: Path, keyring: Keyring) -> None:
    """With wal_autocheckpoint off, commits leave the WAL growing past SQLite's 1,000-page threshold;
    the background checkpointer copies it all back."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'wal.db'}"
    await store.upgrade_async(url)
    engine = store.create_engine(url, wal_autocheckpoint=False, write_lock_first=True)
    sessions = store.session_factory(engine)
    async with engine.connect() as conn:
        assert await conn.scalar(select(1).select_from(AuditRow).limit(0)) is None
        assert (await conn.exec_driver_sql("PRAGMA wal_autocheckpoint")).scalar() == 0
    raw = open_raw_writer(engine, wal_autocheckpoint=False)
    log = AuditLog(sessions, keyring, AuditSettings(node_id="wal", flush_interval_ms=0), raw=raw)
    await log.start()
    checkpointer = WalCheckpointer(str(tmp_path / "wal.db"), interval_s=3600)
    try:
        for i in range(1200):  # one small transaction each: a frame or more per commit
            await log.record(ev(i))
        busy, frames, copied = await checkpointer.checkpoint()
        assert frames > 1000, frames  # no commit checkpointed (SQLite's own would have at 1,000 pages)
        assert busy == 0 and copied == frames
        # the background loop runs by itself
        looping = WalCheckpointer(str(tmp_path / "wal.db"), interval_s=0.01)
        looping.start()
        for _ in range(3000):
            if looping.rounds >= 2:
                break
            await asyncio.sleep(0.01)
        await looping.close()
        assert looping.rounds >= 2
    finally:
        await log.close()
        await checkpointer.close()
        await engine.dispose()
    with sqlite3.connect(tmp_path / "wal.db") as conn:
        assert conn.execute("SELECT count(*) FROM audit_log WHERE chain = 'wal'").fetchone()[0] == 1200
    default = store.create_engine(url)  # every other process keeps SQLite's own checkpoints
    try:
        async with default.connect() as conn:
            assert (await conn.exec_driver_sql("PRAGMA wal_autocheckpoint")).scalar() == 1000
    finally:
        await default.dispose()


def test_the_row_hash_is_the_one_old_rows_were_written_with() -> None:
    """A known answer: the hash of a fixed row, as the code before hmac.digest computed it (hmac.new with
    hashlib.sha256). A change of the definition would stop every existing chain from verifying."""
    values: dict[str, Any] = dict.fromkeys(HASHED_COLUMNS)
    values.update(
        id="00000000-0000-4000-8000-000000000001",
        chain="dsm-1",
        seq=7,
        time=datetime(2026, 12, 7, 17, 0, 0, 123456, tzinfo=UTC),
        operation="xks.encrypt",
        message="caf\u00e9",
        group_ids=["g"],
        response_time_us=42,
        key_term=1,
        actor_type="App",
        action_type="CRYPTOOPERATION",
        severity="INFO",
        outcome="success",
    )
    expected = "60f04142531c83caa284b32844a178283dccb9bfdfcc84cc6cab85d7ca56de3e"
    assert row_hash(bytes(range(32)), bytes(32), values).hex() == expected


async def test_the_writer_thread_answers_in_order_survives_errors_and_skips_abandoned_calls() -> None:
    worker = _Thread("audit-test")
    gate = threading.Event()
    ran: list[int] = []

    def job(i: int) -> int:
        if i == 0:
            gate.wait(10)
        if i == 2:
            raise sqlite3.OperationalError("database is locked")
        ran.append(i)
        return i * 10

    first = asyncio.ensure_future(worker.run(job, 0))
    await asyncio.sleep(0.05)  # the thread is in job 0, held
    abandoned = asyncio.ensure_future(worker.run(job, 1))
    failing = asyncio.ensure_future(worker.run(job, 2))
    last = asyncio.ensure_future(worker.run(job, 3))
    await asyncio.sleep(0)
    abandoned.cancel()  # before the thread reached it: never run, as an executor would not run it
    gate.set()
    assert await first == 0
    try:
        await failing
    except sqlite3.OperationalError as exc:
        assert "locked" in str(exc)
    else:
        raise AssertionError("the thread's exception did not reach its caller")
    assert await last == 30
    assert ran == [0, 3] and abandoned.cancelled()
    assert any(t.name == "audit-test" for t in threading.enumerate())
    worker.stop()
    assert not any(t.name == "audit-test" for t in threading.enumerate())
