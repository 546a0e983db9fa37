"""Terminated DSM sessions: rows of ``session_revocations`` (shared by every replica on the database and
kept across restarts), read through a per-process cache because the check runs on every Bearer call.

The cache is reloaded when it is older than ``dsm.revocation_refresh_ms``, so a session terminated by
another process is refused here within that interval. One terminated by this process is refused at once:
it is also held locally until a reload shows the row, so a reload racing the insert cannot lose it.
A row lives until its session's absolute expiry (no token of the session verifies after that), plus a
grace for clock skew between replicas, and is then pruned by the next terminate.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dsm_emulator.models import SessionRevocation

# A replica whose clock runs behind still accepts a session's tokens a little past its expiry by ours;
# its revocation must outlive that.
PRUNE_GRACE = timedelta(minutes=5)


def _utc(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, UTC)


class SessionRevocations:
    """Which session ids are terminated, answered from memory at most ``refresh_ms`` stale."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], refresh_ms: int) -> None:
        self._sessions = sessions
        self._refresh_s = refresh_ms / 1000
        self._loaded: frozenset[str] = frozenset()
        self._loaded_at: float | None = None  # monotonic time the last reload's query began
        self._local: dict[str, float] = {}  # sid -> expiry (epoch s): terminated here, not yet reloaded
        self._lock = asyncio.Lock()

    async def is_revoked(self, sid: str) -> bool:
        if sid in self._local:
            return True
        if self._loaded_at is None or time.monotonic() - self._loaded_at >= self._refresh_s:
            await self._reload(time.monotonic())
        return sid in self._loaded

    async def _reload(self, needed_at: float) -> None:
        async with self._lock:
            # Callers that queued behind a reload whose query began after they asked share its answer.
            if self._loaded_at is not None and self._loaded_at >= needed_at:
                return
            began = time.monotonic()
            async with self._sessions() as session:
                loaded = frozenset((await session.scalars(select(SessionRevocation.sid))).all())
            self._loaded, self._loaded_at = loaded, began
            now = time.time()
            self._local = {s: exp for s, exp in self._local.items() if s not in loaded and exp > now}

    async def revoke(self, sid: str, expires_at: float) -> None:
        """Terminate session ``sid`` (every token that carries it) until ``expires_at`` (epoch s)."""
        # Refused here before the write, so no request of this process slips in while it commits.
        self._local[sid] = expires_at
        now = datetime.now(UTC)
        try:
            async with self._sessions() as session, session.begin():
                await session.execute(
                    delete(SessionRevocation).where(SessionRevocation.expires_at < now - PRUNE_GRACE)
                )
                if await session.get(SessionRevocation, sid) is None:
                    session.add(SessionRevocation(sid=sid, revoked_at=now, expires_at=_utc(expires_at)))
        except IntegrityError:
            pass  # another process terminated the same session first: the row is there either way
