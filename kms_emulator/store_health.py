"""How KMS notices that a CONNECTED external key store's proxy keeps failing: a count of consecutive
failures per store, fed by data-plane calls and by the periodic KmsHealthCheck (proxy.py, app.py). At
``kms.xks_failure_threshold`` the store turns FAILED with the ConnectionErrorCode of the last failure, and
stays so until it is disconnected and connected again, as a FAILED store does in KMS.

The count is the store row's ``consecutive_failures`` (migration 0017), not this process's memory, so
that the workers of ``kms serve --workers N`` count one store's failures together, as KMS does: the
store turns FAILED after the threshold's failures in all, not per worker. A failure is one atomic
increment (the worker whose increment reaches the threshold turns the store FAILED in the same
transaction, which raises the cache generation); a success reads the count (one primary-key read) and
writes only when there was one to reset. None of this runs while the threshold is 0, the default. A
success in one worker and a failure in another at the same moment can each miss the other, as two KMS
hosts can.

Only failures that say something about the store count on a data call (timeout, unreachable, TLS, an
answer KMS cannot read, a rejected credential, a wrong URI path); a proper key-level answer such as
KeyNotFoundException proves the proxy works and resets the count. On a health check every failure counts.
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kms_emulator.models import CustomKeyStore
from kms_emulator.xks_errors import ConnectionErrorCode, XksProxyError

STORE_LEVEL = frozenset(
    {
        ConnectionErrorCode.XKS_PROXY_TIMED_OUT,
        ConnectionErrorCode.XKS_PROXY_NOT_REACHABLE,
        ConnectionErrorCode.XKS_PROXY_INVALID_TLS_CONFIGURATION,
        ConnectionErrorCode.XKS_PROXY_INVALID_RESPONSE,
        ConnectionErrorCode.INVALID_CREDENTIALS,
        ConnectionErrorCode.XKS_PROXY_INVALID_CONFIGURATION,
    }
)

_COUNT = CustomKeyStore.consecutive_failures


class StoreWatch:
    def __init__(self, threshold: int, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.threshold = threshold
        self._sessions = sessions

    async def record(self, store_id: str, error: XksProxyError | None, *, health: bool = False) -> str | None:
        """Count one outcome; the ConnectionErrorCode the store was turned FAILED with now, or None."""
        if self.threshold <= 0:
            return None
        if error is None or (not health and error.connection_error_code not in STORE_LEVEL):
            await self._reset_if_counted(store_id)
            return None
        async with self._sessions.begin() as session:
            count = (
                await session.execute(
                    update(CustomKeyStore)
                    .where(CustomKeyStore.id == store_id, CustomKeyStore.connection_state == "CONNECTED")
                    .values(consecutive_failures=_COUNT + 1)
                    .returning(_COUNT)
                    .execution_options(synchronize_session=False)
                )
            ).scalar_one_or_none()
            if count is None or count < self.threshold:
                return None  # gone, no longer CONNECTED, or not yet
            store = await session.get(CustomKeyStore, store_id, populate_existing=True)
            assert store is not None  # the row lock taken by the increment keeps it
            store.connection_state = "FAILED"  # an ORM change: its commit raises the cache generation
            store.connection_error_code = error.connection_error_code
            store.consecutive_failures = 0
        return error.connection_error_code

    async def reset(self, store_id: str) -> None:
        """Forget the store's failures (Connect: those before it say nothing about the new connection)."""
        async with self._sessions.begin() as session:
            await session.execute(
                update(CustomKeyStore)
                .where(CustomKeyStore.id == store_id, _COUNT > 0)
                .values(consecutive_failures=0)
                .execution_options(synchronize_session=False)
            )

    async def failures(self, store_id: str) -> int:
        async with self._sessions() as session:
            count = await session.scalar(select(_COUNT).where(CustomKeyStore.id == store_id))
        return count or 0

    async def _reset_if_counted(self, store_id: str) -> None:
        if await self.failures(store_id):
            await self.reset(store_id)
