"""The audit log's costs stay flat as it grows: every documented filter of /sys/v1/logs is read off an
index in the answer's order (migration 0015), checked on the real query plans of SQLite and PostgreSQL
over a log filled with the benchmark's bulk fill; and the migration goes down and up again."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from alembic import command
from sqlalchemy import inspect, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dsm_emulator import store
from dsm_emulator.api.logs import LogQuery
from dsm_emulator.audit import verify
from dsm_emulator.audit.fill import FILL_CHAIN, fill
from dsm_emulator.keyring import Keyring
from dsm_emulator.models import AuditRow

Sessions = async_sessionmaker[AsyncSession]
ACCT = "0b7f3a52-5c4e-4b8e-9d0e-3f2a1c6b7d80"
ROWS = 20_000


def _queries(actor_id: str, object_id: str) -> dict[str, dict[str, Any]]:
    """Each documented filter (alone), and the index its page must be read from."""
    return {
        "ix_audit_log_acct_order": {},
        "ix_audit_log_acct_action_type": {"action_types": ["AUTH"]},
        "ix_audit_log_acct_severity": {"severities": ["ERROR"]},
        "ix_audit_log_acct_actor_type": {"actor_types": ["System"]},
        "ix_audit_log_acct_actor_id": {"actor_id": actor_id},
        "ix_audit_log_acct_object_id": {"object_id": object_id},
    }


async def _plan(session: AsyncSession, query: LogQuery, after: tuple[Any, ...] | None = None) -> str:
    stmt = query.page(100, 0, after)
    dialect = session.get_bind().dialect
    sql = str(stmt.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
    if dialect.name == "sqlite":
        rows = (await session.execute(text("EXPLAIN QUERY PLAN " + sql))).all()
        return "\n".join(str(r[-1]) for r in rows)
    rows = (await session.execute(text("EXPLAIN (FORMAT JSON) " + sql))).all()
    return json.dumps(rows[0][0])


@pytest.fixture
async def filled(sessions: Sessions, keyring: Keyring) -> Sessions:
    engine = sessions.kw["bind"]
    await fill(engine, keyring, ROWS, ACCT, batch=5000)
    async with sessions() as session, session.begin():
        await session.execute(text("ANALYZE"))
    return sessions


async def test_every_filter_of_the_logs_route_is_read_off_its_index(
    filled: Sessions, keyring: Keyring
) -> None:
    async with filled() as session:
        sample = (
            await session.execute(select(AuditRow).where(AuditRow.actor_type == "App").limit(1))
        ).scalar_one()
        queries = _queries(sample.actor_id or "", sample.object_id or "")
        for index, filters in queries.items():
            query = LogQuery(acct_id=ACCT, **filters)
            plan = await _plan(session, query)
            assert index in plan, (index, plan)
            assert "TEMP B-TREE" not in plan and '"Sort"' not in plan, plan  # read in order, never sorted
            # paging after a row stays on the same index (a row-value comparison, not an OR of three)
            after = (sample.time, sample.chain, sample.seq)
            paged = await _plan(session, query, after)
            assert index in paged and "TEMP B-TREE" not in paged and '"Sort"' not in paged, paged
            rows = (await session.scalars(query.page(100))).all()
            assert 0 < len(rows) <= 100
        # not an administrator: its own rows, on the actor's index
        own = LogQuery(acct_id=ACCT, own_rows_of=sample.actor_id)
        assert "ix_audit_log_acct_actor_id" in await _plan(session, own)
        # several values of one filter: each value's range read off the filter's index, then merged
        several = LogQuery(acct_id=ACCT, severities=["ERROR", "CRITICAL"])
        plan = await _plan(session, several)
        assert "ix_audit_log_acct_severity" in plan and "ix_audit_log_acct_order" not in plan, plan
        page = (await session.scalars(several.page(100, 3))).all()
        everything = (
            await session.scalars(
                select(AuditRow)
                .where(AuditRow.acct_id == ACCT, AuditRow.severity.in_(["ERROR", "CRITICAL"]))
                .order_by(AuditRow.time.desc(), AuditRow.chain.desc(), AuditRow.seq.desc())
            )
        ).all()
        assert [r.id for r in page] == [r.id for r in everything[3:103]]
        assert {r.severity for r in page} == {"ERROR", "CRITICAL"}
        # the filters select what they say, newest first
        auth = (await session.scalars(LogQuery(acct_id=ACCT, action_types=["AUTH"]).page(1000))).all()
        assert auth and {r.action_type for r in auth} == {"AUTH"}
        order = [(r.time, r.chain, r.seq) for r in auth]
        assert order == sorted(order, reverse=True)


async def test_the_bulk_fill_writes_a_chain_that_verifies(filled: Sessions, keyring: Keyring) -> None:
    assert await verify(filled, keyring) == []
    async with filled() as session:
        seqs = (
            (await session.execute(select(AuditRow.seq).where(AuditRow.chain == FILL_CHAIN))).scalars().all()
        )
    assert sorted(seqs) == list(range(1, ROWS + 1))


def test_migration_0015_goes_down_and_up(db_url: str) -> None:
    def indexes(url: str) -> tuple[set[str], set[str]]:
        async def look() -> tuple[set[str], set[str]]:
            engine = store.create_engine(url)
            try:
                async with engine.connect() as conn:
                    return await conn.run_sync(
                        lambda sync: (
                            {i["name"] or "" for i in inspect(sync).get_indexes("audit_log")},
                            set(inspect(sync).get_table_names()),
                        )
                    )
            finally:
                await engine.dispose()

        return asyncio.run(look())

    new = {
        f"ix_audit_log_acct_{n}"
        for n in ("order", "action_type", "severity", "actor_type", "actor_id", "object_id")
    }
    at_head, tables = indexes(db_url)
    assert new <= at_head and "audit_checkpoints" in tables
    assert "ix_audit_log_acct_time" not in at_head
    command.downgrade(store.alembic_config(db_url), "0014")
    down, tables = indexes(db_url)
    assert not new & down and "audit_checkpoints" not in tables
    assert {"ix_audit_log_acct_time", "ix_audit_log_object_id"} <= down
    store.upgrade(db_url)
    again, tables = indexes(db_url)
    assert again == at_head and "audit_checkpoints" in tables
