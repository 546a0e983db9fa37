"""Signed verify checkpoints (dsm_emulator/audit/checkpoints.py): a verify resumes each chain after the
last row a verify found intact; tampering after the checkpoint is found by the resumed verify, tampering
before it by the full one; a forged, moved or orphaned checkpoint is reported. SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dsm_emulator.audit import AuditEvent, AuditLog, verify_chains
from dsm_emulator.audit.checkpoints import BAD_SIGNATURE, CHECKPOINT_KEY_PURPOSE, checkpoint_mac
from dsm_emulator.keyring import Keyring
from dsm_emulator.models import AuditCheckpoint, AuditRow
from xkslab_shared.config import AuditSettings

Sessions = async_sessionmaker[AsyncSession]
CHAIN = "node-cp"


def ev(i: int) -> AuditEvent:
    return AuditEvent(
        operation="crypto.encrypt", action_type="CRYPTOOPERATION", message=f"row {i}", actor_type="App"
    )


@pytest.fixture
async def log(sessions: Sessions, keyring: Keyring) -> AsyncIterator[AuditLog]:
    opened = AuditLog(sessions, keyring, AuditSettings(node_id=CHAIN, flush_interval_ms=0))
    await opened.start()
    try:
        yield opened
    finally:
        await opened.close()


async def write(log: AuditLog, first: int, count: int) -> None:
    await asyncio.gather(*(log.record(ev(i)) for i in range(first, first + count)))


async def alter(sessions: Sessions, seq: int, **values: Any) -> None:
    async with sessions.begin() as session:
        stmt = update(AuditRow).where(AuditRow.chain == CHAIN, AuditRow.seq == seq).values(**values)
        assert (await session.execute(stmt)).rowcount == 1  # type: ignore[attr-defined]


async def checkpoint(sessions: Sessions) -> AuditCheckpoint | None:
    async with sessions() as session:
        return await session.get(AuditCheckpoint, CHAIN)


async def test_a_verify_resumes_after_its_checkpoint(
    log: AuditLog, sessions: Sessions, keyring: Keyring
) -> None:
    await write(log, 0, 30)
    first = await verify_chains(sessions, keyring, resume=True, checkpoint=True)
    assert first.problems == [] and first.checked == 30 and first.resumed == {} and first.saved == {CHAIN: 30}
    cp = await checkpoint(sessions)
    assert cp is not None and cp.seq == 30
    async with sessions() as session:
        last = await session.scalar(
            select(AuditRow.row_hash).where(AuditRow.chain == CHAIN, AuditRow.seq == 30)
        )
    assert cp.row_hash == last
    # signed with a key of its own from the keyring, not stored anywhere in the clear
    key = keyring.derive(CHECKPOINT_KEY_PURPOSE, cp.key_term)
    assert cp.mac == checkpoint_mac(key, CHAIN, 30, cp.row_hash, cp.verified_at)

    await write(log, 30, 5)
    second = await verify_chains(sessions, keyring, resume=True, checkpoint=True)
    assert second.problems == [] and second.checked == 5  # only the rows since the checkpoint
    assert second.resumed == {CHAIN: 30} and second.saved == {CHAIN: 35}
    # nothing new: nothing checked, the checkpoint stays
    third = await verify_chains(sessions, keyring, resume=True, checkpoint=True)
    assert third.problems == [] and third.checked == 0 and third.saved == {}
    full = await verify_chains(sessions, keyring, resume=False, checkpoint=True)
    assert full.problems == [] and full.checked == 35


async def test_tampering_before_the_checkpoint_is_found_by_a_full_verify(
    log: AuditLog, sessions: Sessions, keyring: Keyring
) -> None:
    await write(log, 0, 20)
    await verify_chains(sessions, keyring, resume=True, checkpoint=True)
    await alter(sessions, 7, message="row 7, rewritten")
    resumed = await verify_chains(sessions, keyring, resume=True, checkpoint=True)
    assert resumed.problems == [] and resumed.checked == 0  # what a checkpoint cannot see, by design
    full = await verify_chains(sessions, keyring, resume=False, checkpoint=True)
    assert [(p.chain, p.seq) for p in full.problems] == [(CHAIN, 7)]
    assert "row altered" in full.problems[0].reason
    assert full.saved == {}


async def test_tampering_after_the_checkpoint_is_found_by_the_resumed_verify(
    log: AuditLog, sessions: Sessions, keyring: Keyring
) -> None:
    await write(log, 0, 20)
    await verify_chains(sessions, keyring, resume=True, checkpoint=True)
    await write(log, 20, 10)
    await alter(sessions, 25, message="row 25, rewritten")
    resumed = await verify_chains(sessions, keyring, resume=True, checkpoint=True)
    assert [(p.seq, "row altered" in p.reason) for p in resumed.problems] == [(25, True)]
    assert resumed.checked == 5 and resumed.saved == {}
    cp = await checkpoint(sessions)
    assert cp is not None and cp.seq == 20  # never moved past a bad row
    # deleting a row after the checkpoint shows as a gap, too
    await alter(sessions, 25, message="row 25")
    async with sessions.begin() as session:
        await session.execute(delete(AuditRow).where(AuditRow.chain == CHAIN, AuditRow.seq == 23))
    gap = await verify_chains(sessions, keyring, resume=True, checkpoint=True)
    assert [(p.seq, "seq gap" in p.reason) for p in gap.problems] == [(24, True)]


async def test_a_forged_checkpoint_is_reported_and_the_chain_walked_from_the_start(
    log: AuditLog, sessions: Sessions, keyring: Keyring
) -> None:
    await write(log, 0, 20)
    await verify_chains(sessions, keyring, resume=True, checkpoint=True)
    await write(log, 20, 10)
    await alter(sessions, 3, message="row 3, rewritten")
    # Someone with the database alone moves the checkpoint past rows they then alter: its signature fails.
    async with sessions() as session:
        later = await session.scalar(
            select(AuditRow.row_hash).where(AuditRow.chain == CHAIN, AuditRow.seq == 28)
        )
    async with sessions.begin() as session:
        await session.execute(update(AuditCheckpoint).values(seq=28, row_hash=later))
    result = await verify_chains(sessions, keyring, resume=True, checkpoint=True)
    reasons = [(p.seq, p.reason) for p in result.problems]
    assert reasons[0][0] == 28 and reasons[0][1].startswith(BAD_SIGNATURE)
    assert reasons[1][0] == 3 and "row altered" in reasons[1][1]  # found by the walk from the first row
    assert result.resumed == {} and result.saved == {}


async def test_a_chain_cut_below_its_checkpoint_or_a_replaced_row_is_reported(
    log: AuditLog, sessions: Sessions, keyring: Keyring
) -> None:
    await write(log, 0, 20)
    await verify_chains(sessions, keyring, resume=True, checkpoint=True)
    await alter(sessions, 20, row_hash=bytes(32))
    replaced = await verify_chains(sessions, keyring, resume=True, checkpoint=True)
    assert [(p.seq, "row replaced" in p.reason) for p in replaced.problems] == [(20, True)]
    async with sessions.begin() as session:  # rows cut off the end: a chain alone cannot show it
        await session.execute(delete(AuditRow).where(AuditRow.chain == CHAIN, AuditRow.seq >= 15))
    cut = await verify_chains(sessions, keyring, resume=True, checkpoint=True)
    assert [(p.seq, "is gone" in p.reason) for p in cut.problems] == [(20, True)]
    async with sessions.begin() as session:  # every row gone: the checkpoint still names the chain
        await session.execute(delete(AuditRow).where(AuditRow.chain == CHAIN))
    gone = await verify_chains(sessions, keyring, resume=True, checkpoint=True)
    assert [(p.chain, "is gone" in p.reason) for p in gone.problems] == [(CHAIN, True)]
