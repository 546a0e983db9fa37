"""The audit log: group commit, a hash chain that names the first altered or deleted row, fail-closed
writes, mutations atomic with their audit row, and an allowlist of fields. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, event, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dsm_emulator import audit
from dsm_emulator.audit import AuditEvent, AuditLog, ChainProblem, verify
from dsm_emulator.audit.raw import open_raw_writer
from dsm_emulator.errors import AuditUnavailable, Conflict, NotFound, Sealed
from dsm_emulator.keyring import Keyring
from dsm_emulator.keyring_admin import KeyringAdmin
from dsm_emulator.models import Account, AuditRow
from xkslab_shared.config import AuditSettings

Sessions = async_sessionmaker[AsyncSession]


def ev(i: int = 0, **changes: Any) -> AuditEvent:
    """An event with every optional field filled, so tampering any column has something to change."""
    fields: dict[str, Any] = dict(
        operation="crypto.encrypt",
        action_type="CRYPTOOPERATION",
        message=f"encrypted with key number {i}",
        actor_type="App",
        actor_id=str(uuid.uuid4()),
        acct_id=str(uuid.uuid4()),
        via="xks-proxy",
        object_id=str(uuid.uuid4()),
        group_ids=(str(uuid.uuid4()), str(uuid.uuid4())),
        client_ip="10.0.0.7",
        kms_request_id=str(uuid.uuid4()),
        kms_operation="Encrypt",
        aws_principal_arn="arn:aws:iam::111122223333:user/alice",
        kms_key_arn="arn:aws:kms:us-east-1:111122223333:key/abcd",
        response_time_us=1234 + i,
    )
    fields.update(changes)
    return AuditEvent(**fields)


@pytest.fixture
async def log(sessions: Sessions, keyring: Keyring) -> AsyncIterator[AuditLog]:
    opened = AuditLog(sessions, keyring, AuditSettings(node_id="node-a"))
    await opened.start()
    try:
        yield opened
    finally:
        await opened.close()


async def chain_rows(sessions: Sessions, chain: str) -> list[AuditRow]:
    async with sessions() as session:
        stmt = select(AuditRow).where(AuditRow.chain == chain).order_by(AuditRow.seq)
        return list(await session.scalars(stmt))


async def account_exists(sessions: Sessions, acct_id: str) -> bool:
    async with sessions() as session:
        return await session.get(Account, acct_id) is not None


def insert_account(acct_id: str, then: Callable[[], AuditEvent]) -> Callable[[AsyncSession], Awaitable[Any]]:
    async def work(session: AsyncSession) -> tuple[str, AuditEvent]:
        session.add(Account(acct_id=acct_id, name=f"acct-{acct_id}", created_at=datetime.now(UTC)))
        await session.flush()
        return acct_id, then()

    return work


def count_commits(sessions: Sessions) -> list[int]:
    counter = [0]
    engine = sessions.kw["bind"]

    def on_commit(_conn: Any) -> None:
        counter[0] += 1

    event.listen(engine.sync_engine, "commit", on_commit)
    return counter


# --------------------------------------------------------------------------------- group commit


@pytest.mark.parametrize("writer", ["orm", "raw"])
async def test_concurrent_records_are_group_committed(
    sessions: Sessions, keyring: Keyring, writer: str
) -> None:
    raw = open_raw_writer(sessions.kw["bind"]) if writer == "raw" else None
    log = AuditLog(sessions, keyring, AuditSettings(node_id="node-a", writer=writer), raw=raw)  # type: ignore[arg-type]
    await log.start()
    commits = count_commits(sessions)
    try:
        await asyncio.gather(*(log.record(ev(i)) for i in range(50)))
    finally:
        await log.close()
    rows = await chain_rows(sessions, "node-a")
    assert [r.seq for r in rows] == list(range(1, 51))
    assert sorted(r.message for r in rows) == sorted(f"encrypted with key number {i}" for i in range(50))
    assert await verify(sessions, keyring) == []
    # group-committed; through the raw driver (raw.py), no transaction of the ORM engine at all
    assert 1 <= log.stats.batches < 50 and log.stats.rows == 50 and log.stats.failures == 0
    assert commits[0] == (0 if writer == "raw" else log.stats.batches)
    assert len(log.stats.commit_seconds) == log.stats.batches and log.stats.commit_quantile(0.9) is not None


async def test_batch_max_bounds_a_transaction(sessions: Sessions, keyring: Keyring) -> None:
    small = AuditLog(sessions, keyring, AuditSettings(node_id="small", batch_max=7, flush_interval_ms=0))
    await small.start()
    try:
        await asyncio.gather(*(small.record(ev(i)) for i in range(30)))
    finally:
        await small.close()
    assert small.stats.rows == 30 and small.stats.batches >= 5
    assert await verify(sessions, keyring) == []


async def test_restart_continues_the_chain(log: AuditLog, sessions: Sessions, keyring: Keyring) -> None:
    await asyncio.gather(*(log.record(ev(i)) for i in range(50)))
    await log.close()
    with pytest.raises(AuditUnavailable):
        await log.record(ev())
    again = AuditLog(sessions, keyring, AuditSettings(node_id="node-a"))
    await again.start()
    try:
        for i in range(3):
            await again.record(ev(100 + i))
    finally:
        await again.close()
    rows = await chain_rows(sessions, "node-a")
    assert [r.seq for r in rows] == list(range(1, 54))
    assert rows[50].prev_hash == rows[49].row_hash
    assert await verify(sessions, keyring) == []


async def test_close_drains_pending_records(sessions: Sessions, keyring: Keyring) -> None:
    slow = AuditLog(sessions, keyring, AuditSettings(node_id="slow", flush_interval_ms=50))
    await slow.start()
    pending = [asyncio.create_task(slow.record(ev(i))) for i in range(5)]
    await asyncio.sleep(0)
    await slow.close()
    await asyncio.gather(*pending)
    assert len(await chain_rows(sessions, "slow")) == 5


async def test_order_is_kept_between_records_and_apply(log: AuditLog, sessions: Sessions) -> None:
    acct = str(uuid.uuid4())
    await asyncio.gather(
        log.record(ev(message="first")),
        log.apply(insert_account(acct, lambda: ev(message="second", operation="account.create"))),
        log.record(ev(message="third")),
    )
    assert [r.message for r in await chain_rows(sessions, "node-a")] == ["first", "second", "third"]


# ----------------------------------------------------------------------------------- tampering

TAMPERED_COLUMNS = [c for c in audit.HASHED_COLUMNS if c not in ("chain", "seq")] + ["prev_hash", "row_hash"]


def altered(column: str, value: Any) -> Any:
    if isinstance(value, datetime):
        return value + timedelta(microseconds=1)
    if isinstance(value, bytes):
        return bytes([value[0] ^ 1]) + value[1:]
    if isinstance(value, int):
        return value + 1
    if isinstance(value, list):
        return [value[0][:-1] + ("0" if value[0][-1] != "0" else "1"), *value[1:]]
    return value[:-1] + ("x" if value[-1] != "x" else "y")


async def test_tampering_any_column_names_that_row(sessions: Sessions, keyring: Keyring) -> None:
    targets: dict[str, AuditRow] = {}
    for column in [*TAMPERED_COLUMNS, "<deleted>"]:
        chain = f"t-{column}"
        writer = AuditLog(sessions, keyring, AuditSettings(node_id=chain))
        await writer.start()
        try:
            for i in range(5):
                await writer.record(ev(i))
        finally:
            await writer.close()
        middle = (await chain_rows(sessions, chain))[2]
        async with sessions.begin() as session:
            if column == "<deleted>":
                await session.execute(delete(AuditRow).where(AuditRow.id == middle.id))
            else:
                new = altered(column, getattr(middle, column))
                await session.execute(update(AuditRow).where(AuditRow.id == middle.id).values({column: new}))
        # the row now at index 2: the tampered row itself (with its new id, if the id was changed), or
        # the row after the deleted one
        targets[chain] = (await chain_rows(sessions, chain))[2]
    problems = {p.chain: p for p in await verify(sessions, keyring)}
    assert set(problems) == set(targets)
    for chain, row in targets.items():
        assert (problems[chain].seq, problems[chain].row_id) == (row.seq, row.id), problems[chain]
    assert problems["t-<deleted>"].seq == 4 and "gap" in problems["t-<deleted>"].reason
    assert "altered" in problems["t-message"].reason
    assert "term" in problems["t-key_term"].reason


@pytest.mark.parametrize("column", ["chain", "seq"])
async def test_moving_a_row_breaks_its_chain(
    log: AuditLog, sessions: Sessions, keyring: Keyring, column: str
) -> None:
    for i in range(5):
        await log.record(ev(i))
    middle = (await chain_rows(sessions, "node-a"))[2]
    async with sessions.begin() as session:
        new = {"chain": "elsewhere", "seq": 99}[column]
        await session.execute(update(AuditRow).where(AuditRow.id == middle.id).values({column: new}))
    problems = await verify(sessions, keyring)
    assert any(p.chain == "node-a" and p.seq == 4 for p in problems), problems


async def test_verify_pages_through_long_chains(log: AuditLog, sessions: Sessions, keyring: Keyring) -> None:
    await asyncio.gather(*(log.record(ev(i)) for i in range(25)))
    assert await verify(sessions, keyring, page_size=4) == []
    async with sessions.begin() as session:
        await session.execute(update(AuditRow).where(AuditRow.seq == 22).values(message="hidden"))
    problems = await verify(sessions, keyring, page_size=4)
    assert [(p.chain, p.seq) for p in problems] == [("node-a", 22)]
    assert isinstance(problems[0], ChainProblem)


# --------------------------------------------------------------------------------- fail closed


async def test_fails_closed_when_the_table_is_gone(
    log: AuditLog, sessions: Sessions, keyring: Keyring, caplog: pytest.LogCaptureFixture
) -> None:
    await log.record(ev(1))
    async with sessions.begin() as session:
        await session.execute(text("ALTER TABLE audit_log RENAME TO audit_log_gone"))
    acct = str(uuid.uuid4())
    with pytest.raises(AuditUnavailable, match="operation was not completed"):
        await log.apply(insert_account(acct, lambda: ev(operation="account.create")))
    assert not await account_exists(sessions, acct)
    with pytest.raises(AuditUnavailable):
        await log.record(ev(2))
    with pytest.raises(AuditUnavailable):  # the chain head is unknown: the work is not even started
        await log.apply(insert_account(acct, lambda: ev(operation="account.create")))
    assert not await account_exists(sessions, acct)
    assert log.stats.failures >= 2
    # the failure is logged with operation names only, never the events' content
    assert "account.create" in caplog.text and "not committed" in caplog.text
    assert "encrypted with key number" not in caplog.text and "alice" not in caplog.text

    async with sessions.begin() as session:
        await session.execute(text("ALTER TABLE audit_log_gone RENAME TO audit_log"))
    await log.record(ev(3))
    assert [r.seq for r in await chain_rows(sessions, "node-a")] == [1, 2]
    assert await verify(sessions, keyring) == []


async def test_fails_closed_when_the_audit_key_is_unavailable(
    log: AuditLog, sessions: Sessions, keyring: Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_key(purpose: str, term: int | None = None) -> bytes:
        raise Sealed("keyring unavailable")

    monkeypatch.setattr(keyring, "derive", no_key)
    acct = str(uuid.uuid4())
    ran = []

    def event_after_work() -> AuditEvent:
        ran.append(True)
        return ev(operation="account.create")

    with pytest.raises(AuditUnavailable):
        await log.apply(insert_account(acct, event_after_work))
    assert ran, "the mutation ran and was rolled back"
    assert not await account_exists(sessions, acct)
    with pytest.raises(AuditUnavailable):
        await log.record(ev())
    with pytest.raises(AuditUnavailable):  # the refusal itself cannot be audited: fail closed too

        async def refuse(session: AsyncSession) -> tuple[None, AuditEvent]:
            raise NotFound("sobject does not exist")

        await log.apply(refuse, lambda e: ev().refused(e))
    monkeypatch.undo()
    await log.record(ev())
    assert [r.seq for r in await chain_rows(sessions, "node-a")] == [1]


async def test_not_started_refuses(sessions: Sessions, keyring: Keyring) -> None:
    with pytest.raises(AuditUnavailable):
        await AuditLog(sessions, keyring, AuditSettings()).record(ev())


# ------------------------------------------------------------------------------------ apply()


async def test_apply_commits_the_mutation_with_its_row(
    log: AuditLog, sessions: Sessions, keyring: Keyring
) -> None:
    acct = str(uuid.uuid4())
    result = await log.apply(insert_account(acct, lambda: ev(operation="account.create", object_id=acct)))
    assert result == acct
    assert await account_exists(sessions, acct)
    [row] = await chain_rows(sessions, "node-a")
    assert (row.operation, row.object_id, row.outcome) == ("account.create", acct, "success")


async def test_apply_refusal_rolls_back_and_is_audited(
    log: AuditLog, sessions: Sessions, keyring: Keyring
) -> None:
    acct = str(uuid.uuid4())
    conflict = Conflict("name already taken")

    def raise_conflict() -> AuditEvent:
        raise conflict

    base = ev(operation="account.create", message="create account")
    with pytest.raises(Conflict) as raised:
        await log.apply(insert_account(acct, raise_conflict), base.refused)
    assert raised.value is conflict
    assert not await account_exists(sessions, acct)
    [row] = await chain_rows(sessions, "node-a")
    assert (row.outcome, row.severity) == ("refused", "WARNING")
    assert row.message == "create account: refused: name already taken"
    assert await verify(sessions, keyring) == []


async def test_apply_other_errors_roll_back_and_are_reraised(log: AuditLog, sessions: Sessions) -> None:
    acct = str(uuid.uuid4())

    def bug() -> AuditEvent:
        raise KeyError("oops")

    with pytest.raises(KeyError):
        await log.apply(insert_account(acct, bug), lambda e: ev())

    def taken() -> AuditEvent:
        raise Conflict("taken")

    with pytest.raises(Conflict):  # no on_error: re-raised, nothing written
        await log.apply(insert_account(acct, taken))
    assert not await account_exists(sessions, acct)
    assert await chain_rows(sessions, "node-a") == []


# ------------------------------------------------------------------------------- the allowlist


async def test_events_store_only_allowlisted_fields(log: AuditLog, sessions: Sessions) -> None:
    with pytest.raises(TypeError):
        AuditEvent(  # type: ignore[call-arg]
            operation="crypto.decrypt", action_type="CRYPTOOPERATION", message="m", actor_type="App",
            plaintext="secret",
        )  # fmt: skip
    with pytest.raises(TypeError):
        AuditEvent(operation="x", action_type="OTHER", message="m", actor_type="App", extra={"k": "v"})  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        ev(outcome="maybe")
    with pytest.raises(TypeError):
        ev(group_ids="not-a-tuple")
    with pytest.raises(TypeError):
        ev(message=None)
    with pytest.raises(TypeError):
        ev(operation="")
    stored = {f.name for f in dataclasses.fields(AuditEvent)} | {"id", "chain", "seq", "time", "key_term"}
    assert stored == set(audit.HASHED_COLUMNS)
    assert {c.key for c in AuditRow.__table__.columns} == {*audit.HASHED_COLUMNS, "prev_hash", "row_hash"}

    hostile = ev(object_id="k" * 500 + "\x00", message="bad\x00input")
    await log.record(hostile)  # values the database would reject must not poison the batch
    [row] = await chain_rows(sessions, "node-a")
    assert len(row.object_id or "") == 36 and "\x00" not in row.message


def test_refused_never_uses_str_of_unknown_errors() -> None:
    base = ev(message="decrypt")
    refused = base.refused(ValueError("key material 00112233"))
    assert refused.message == "decrypt: refused: ValueError"
    assert (refused.outcome, refused.severity) == ("refused", "WARNING")
    assert (
        base.refused(NotFound("sobject does not exist")).message == "decrypt: refused: sobject does not exist"
    )
    assert base.outcome == "success"


# ------------------------------------------------------------------------- rotation and reading


async def test_rotation_changes_the_key_term(log: AuditLog, sessions: Sessions, keyring: Keyring) -> None:
    await log.record(ev(1))
    assert await KeyringAdmin(keyring, log).rotate() == 2
    await log.record(ev(2))
    # the rotation's own row is chained under the term it replaced
    assert [r.key_term for r in await chain_rows(sessions, "node-a")] == [1, 1, 2]
    assert await verify(sessions, keyring) == []


async def test_export_tail_and_row_to_dict(sessions: Sessions, keyring: Keyring) -> None:
    for node in ("node-a", "node-b"):
        writer = AuditLog(sessions, keyring, AuditSettings(node_id=node))
        await writer.start()
        try:
            for i in range(3):
                await writer.record(ev(i, message=f"{node} {i}"))
        finally:
            await writer.close()
    exported = [row async for row in audit.export(sessions)]
    assert [r["message"] for r in exported] == [f"{n} {i}" for n in ("node-a", "node-b") for i in range(3)]
    json.dumps(exported)
    first = exported[0]
    assert first["time"].endswith("+00:00") and len(first["row_hash"]) == 64 and first["seq"] == 1
    assert isinstance(first["group_ids"], list)
    since = [r["message"] async for r in audit.export(sessions, since_seq={"node-a": 2})]
    assert since == ["node-a 2", "node-b 0", "node-b 1", "node-b 2"]
    newest = await audit.tail(sessions, 2)
    assert [r["message"] for r in newest] == ["node-b 2", "node-b 1"]
    assert await audit.tail(sessions, 0) == []
    [orm_row] = [r for r in await chain_rows(sessions, "node-a") if r.seq == 1]
    assert audit.row_to_dict(orm_row) == first


async def test_two_writers_of_one_chain_on_separate_engines_never_collide(
    db_url: str, sessions: Sessions, keyring: Keyring
) -> None:
    """Two processes writing one chain (the CLI beside a running lab): each batch takes the chain's lock
    and reads the head in its own transaction, so rows interleave instead of colliding on (chain, seq),
    mutations included, and the chain verifies."""
    from xkslab_shared.db import create_engine, session_factory
    from xkslab_shared.generation import Generation, cache_generation

    engines = [create_engine(db_url, write_lock_first=True) for _ in range(2)]
    generations = [Generation(session_factory(e), poll_s=60.0) for e in engines]
    writers = [
        AuditLog(session_factory(e), keyring, AuditSettings(node_id="shared", flush_interval_ms=1), g)
        for e, g in zip(engines, generations, strict=True)
    ]
    for w in writers:
        await w.start()
    before = await generations[1].current()
    try:

        async def mutate(session: AsyncSession) -> tuple[int, AuditEvent]:
            return 1, ev(0, operation="account.create", message="a mutation between records")

        async def burst(w: AuditLog, offset: int) -> list[Any]:
            jobs: list[Awaitable[Any]] = [w.record(ev(offset + i)) for i in range(40)]
            jobs += [w.apply(mutate) for _ in range(5)]
            return await asyncio.gather(*jobs, return_exceptions=True)

        results = await asyncio.gather(burst(writers[0], 0), burst(writers[1], 1000))
        # the writers that made changes expired their own generation: they see all ten at once
        assert await generations[0].current() == before + 10
    finally:
        for w in writers:
            await w.close()
        for e in engines:
            await e.dispose()
    failures = [r for batch in results for r in batch if isinstance(r, BaseException)]
    assert failures == []
    rows = await chain_rows(sessions, "shared")
    assert [r.seq for r in rows] == list(range(1, 91))
    assert await verify(sessions, keyring) == []
    async with sessions() as session:
        assert await session.scalar(select(cache_generation.c.value)) == before + 10  # one per mutation


async def test_a_row_whose_deadline_passed_is_written_as_the_refusal_its_caller_gets(
    log: AuditLog, sessions: Sessions
) -> None:
    loop = asyncio.get_running_loop()
    on_time = ev(1, message="in time")
    await log.record(on_time, deadline=loop.time() + 3600, late=Conflict("too late"))
    with pytest.raises(Conflict, match="too late"):
        await log.record(ev(2, message="late"), deadline=loop.time() - 1, late=Conflict("too late"))
    rows = await chain_rows(sessions, "node-a")
    assert [(r.message, r.outcome) for r in rows[-2:]] == [
        ("in time", "success"),
        ("late: refused: too late", "refused"),
    ]
    with pytest.raises(TypeError):
        await log.record(ev(3), deadline=loop.time())
