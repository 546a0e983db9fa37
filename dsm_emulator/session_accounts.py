"""The account each user token selected (``POST /sys/v1/session/select_account``), in the database
(``session_accounts``, migration 0014) rather than in one process's memory: behind a balancer, or with
``--workers``, a client's next request may reach another node or worker, which must know the selection.

One primary-key read per request of a user token (app tokens never read it). A row lives until its
token expires and is pruned by the next selection; a terminated session's tokens are refused before
this is read.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dsm_emulator.models import SessionAccount


async def select_account(
    sessions: async_sessionmaker[AsyncSession], jti: str, acct_id: str, expires_at: float
) -> None:
    """Token ``jti`` now works in ``acct_id``, until ``expires_at`` (epoch s); a second selection replaces
    the first."""
    now = datetime.now(UTC)
    expires = datetime.fromtimestamp(expires_at, UTC)
    for _attempt in range(2):
        try:
            async with sessions() as session, session.begin():
                await session.execute(delete(SessionAccount).where(SessionAccount.expires_at < now))
                row = await session.get(SessionAccount, jti)
                if row is None:
                    session.add(SessionAccount(jti=jti, acct_id=acct_id, expires_at=expires))
                else:
                    row.acct_id, row.expires_at = acct_id, expires
            return
        except IntegrityError:
            continue  # the same token selected at once through another node: the update wins next time
    raise RuntimeError("could not record the selected account")


async def selected_account(sessions: async_sessionmaker[AsyncSession], jti: str) -> str | None:
    async with sessions() as session:
        row = await session.scalar(
            select(SessionAccount).where(
                SessionAccount.jti == jti, SessionAccount.expires_at >= datetime.now(UTC)
            )
        )
    return None if row is None else row.acct_id


async def forget(sessions: async_sessionmaker[AsyncSession], jti: str) -> None:
    async with sessions() as session, session.begin():
        await session.execute(delete(SessionAccount).where(SessionAccount.jti == jti))
