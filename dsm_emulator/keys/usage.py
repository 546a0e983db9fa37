"""When each key was last used (Fortanix's ``lastused_at``), without a database write per request: uses
are noted in memory and written in one batch per interval, so the crypto and XKS paths pay a dict store.
A collaborator of KeyService (``keys.usage``), not a mixin: nothing else shares its state."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import cast

from sqlalchemy import Table, bindparam, or_, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dsm_emulator.models import SecurityObject

log = logging.getLogger("dsm_emulator.keys")

# How long a key's last use may wait, in memory, before it is written: lastused_at in the database (what
# another node or a CLI command reads) lags the truth by at most this, and all keys used in an interval
# cost one UPDATE batch, however many requests used them.
USAGE_FLUSH_S = 10.0
_TICK = timedelta(microseconds=1)


def _aware(value: datetime | None) -> datetime | None:
    return value if value is None or value.tzinfo is not None else value.replace(tzinfo=UTC)


class KeyUsage:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], flush_s: float = USAGE_FLUSH_S) -> None:
        self._sessions = sessions
        self._flush_s = flush_s
        # kid -> time of its last use not yet written (see USAGE_FLUSH_S)
        self._unwritten: dict[str, datetime] = {}
        self._writer: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Write the last uses of keys every ``flush_s`` until ``close``."""
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_forever())

    async def close(self) -> None:
        """Stop the writer and write what is pending."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.cancel()
            try:
                await writer
            except asyncio.CancelledError:
                pass
        await self.flush()

    async def _write_forever(self) -> None:
        while True:
            await asyncio.sleep(self._flush_s)
            try:
                await self.flush()
            except Exception:
                log.exception("could not write the last-use times of keys; they are kept for the next try")

    async def flush(self) -> int:
        """Write the pending last uses in one transaction; returns how many keys it covered. A time is
        only moved forward, so nodes flushing in any order keep the latest."""
        pending, self._unwritten = self._unwritten, {}
        if not pending:
            return 0
        table = cast(Table, SecurityObject.__table__)
        stmt = (
            update(table)
            .where(
                table.c.kid == bindparam("b_kid"),
                or_(table.c.lastused_at.is_(None), table.c.lastused_at < bindparam("b_at")),
            )
            .values(lastused_at=bindparam("b_at"))
        )
        try:
            async with self._sessions() as session, session.begin():
                await session.execute(stmt, [{"b_kid": kid, "b_at": at} for kid, at in pending.items()])
        except BaseException:
            for kid, at in pending.items():
                if at > self._unwritten.get(kid, at - _TICK):
                    self._unwritten[kid] = at
            raise
        return len(pending)

    def note(self, obj: SecurityObject) -> None:
        """A successful use of the key, noted in memory only: see USAGE_FLUSH_S."""
        self._unwritten[obj.kid] = datetime.now(UTC)

    def with_last_use(self, obj: SecurityObject) -> SecurityObject:
        """``obj`` (a row read for a view) with the last use this node has not written yet."""
        pending = self._unwritten.get(obj.kid)
        stored = _aware(obj.lastused_at)
        if pending is not None and (stored is None or pending > stored):
            obj.lastused_at = pending
        return obj
