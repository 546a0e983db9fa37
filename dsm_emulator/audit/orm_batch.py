"""The audit batch written through SQLAlchemy (the ORM engine's session), as it always was: the default
way ``record()`` rows reach the database (``audit.writer = "orm"``). raw.py is the other, below the ORM;
both take the same ``build`` and give the same rows, chained by the same hash."""

from __future__ import annotations

from sqlalchemy import insert, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dsm_emulator.audit.chain import _utc
from dsm_emulator.audit.raw import EMPTY, Build, ChainMoved, Head
from dsm_emulator.models import AuditRow

_TABLE = AuditRow.metadata.tables[AuditRow.__tablename__]


class OrmBatchWriter:
    """One session per batch on the writer's engine (which, on SQLite, begins with BEGIN IMMEDIATE)."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def commit(
        self, lock_key: int, chain: str, head: Head | None, build: Build, *, expires: float | None = None
    ) -> Head:
        # ``expires`` needs nothing here: the rows are built under the chain's lock.
        async with self._sessions() as session:
            if session.get_bind().dialect.name == "postgresql":  # held until the transaction ends
                await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key})
            else:
                await session.connection()  # begins the transaction: SQLite's writer engine takes the lock
            if head is None:
                head = await read_head(session, chain)
            rows, after = build(head)
            try:
                await session.execute(insert(_TABLE), rows)  # one executemany, not a unit-of-work flush
                await session.commit()
            except IntegrityError:
                raise ChainMoved() from None
        return after

    async def close(self) -> None:
        return None


async def read_head(session: AsyncSession, chain: str) -> Head:
    stmt = select(AuditRow.seq, AuditRow.row_hash, AuditRow.time).where(AuditRow.chain == chain)
    row = (await session.execute(stmt.order_by(AuditRow.seq.desc()).limit(1))).first()
    return EMPTY if row is None else Head(row.seq, bytes(row.row_hash), _utc(row.time))
