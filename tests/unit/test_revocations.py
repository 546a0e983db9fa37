"""The revocation cache on SQLite and PostgreSQL: a terminate is refused at once by its own process,
another process's cache answers from memory until its refresh interval passes, and expired rows are
pruned."""

from __future__ import annotations

import time
import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dsm_emulator.models import SessionRevocation
from dsm_emulator.revocations import PRUNE_GRACE, SessionRevocations

NEVER_MS = 10**9  # a refresh interval no test outlives: the cache is read once, then only from memory


async def test_own_terminate_at_once_others_at_their_next_refresh(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    here, cached, fresh = (SessionRevocations(sessions, ms) for ms in (NEVER_MS, NEVER_MS, 0))
    sid = str(uuid.uuid4())
    assert not await here.is_revoked(sid) and not await cached.is_revoked(sid)
    await here.revoke(sid, time.time() + 60)
    await here.revoke(sid, time.time() + 60)  # a second terminate of the same session is harmless
    assert await here.is_revoked(sid)
    assert not await cached.is_revoked(sid)  # served from memory: no query per call
    assert await fresh.is_revoked(sid)
    assert await SessionRevocations(sessions, NEVER_MS).is_revoked(sid)  # a restart reads the table


async def test_expired_revocations_are_pruned(sessions: async_sessionmaker[AsyncSession]) -> None:
    revocations = SessionRevocations(sessions, 0)
    old, recent, live = (str(uuid.uuid4()) for _ in range(3))
    await revocations.revoke(old, time.time() - PRUNE_GRACE.total_seconds() - 60)
    await revocations.revoke(recent, time.time() - 1)  # kept a while for replicas whose clocks lag
    await revocations.revoke(live, time.time() + 60)
    async with sessions() as session:
        kept = set((await session.scalars(select(SessionRevocation.sid))).all())
    assert kept == {recent, live}
    assert await revocations.is_revoked(live)
