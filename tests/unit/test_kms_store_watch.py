"""The store-failure detector's count is the store row's, so two KMS processes (two engines on one
database: the workers of ``kms serve --workers 2``) count one store's failures together, on SQLite and
PostgreSQL: a store turns FAILED after ``kms.xks_failure_threshold`` failures in all, a success through
either resets the count, and a store that is not CONNECTED counts nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kms_emulator.models import CustomKeyStore
from kms_emulator.store_health import StoreWatch
from kms_emulator.xks_errors import ConnectionErrorCode, XksProxyError
from xkslab_shared import db as store
from xkslab_shared.generation import invalidating_sessions

THRESHOLD = 3
STORE = "cks-0123456789abcdef0"
TIMED_OUT = XksProxyError(ConnectionErrorCode.XKS_PROXY_TIMED_OUT, "the proxy did not answer in time")
KEY_LEVEL = XksProxyError(
    ConnectionErrorCode.INTERNAL_ERROR, "no such key", error_name="KeyNotFoundException"
)


@asynccontextmanager
async def process(url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """What one KMS worker has: its own engine and invalidating sessions."""
    engine = store.create_engine(url)
    sessions, generation = invalidating_sessions(engine, 0.1)
    try:
        yield sessions
    finally:
        await generation.close()
        await engine.dispose()


async def add_store(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with sessions.begin() as session:
        session.add(
            CustomKeyStore(
                id=STORE,
                name="workers",
                connection_state="CONNECTED",
                connection_error_code=None,
                creation_date=datetime.now(UTC),
                uri_endpoint="https://proxy.example",
                uri_path="/kms/xks/v1",
                connectivity="PUBLIC_ENDPOINT",
                access_key_id="AKIAEXAMPLEEXAMPLE01",
                sealed_secret=b"sealed",
            )
        )


async def state(sessions: async_sessionmaker[AsyncSession]) -> tuple[str, str | None, int]:
    async with sessions() as session:
        row = await session.get(CustomKeyStore, STORE)
        assert row is not None
        return row.connection_state, row.connection_error_code, row.consecutive_failures


async def test_two_workers_count_one_stores_failures_together(db_url: str) -> None:
    async with process(db_url) as one, process(db_url) as two:
        await add_store(one)
        first, second = StoreWatch(THRESHOLD, one), StoreWatch(THRESHOLD, two)
        assert await first.record(STORE, TIMED_OUT) is None
        assert await second.record(STORE, TIMED_OUT) is None
        assert await first.failures(STORE) == 2 == await second.failures(STORE)
        # A success through the other worker resets the count for both.
        assert await second.record(STORE, None) is None
        assert await first.failures(STORE) == 0
        # A key-level answer proves the proxy works: it resets too.
        assert await first.record(STORE, TIMED_OUT) is None
        assert await second.record(STORE, KEY_LEVEL) is None
        assert await first.failures(STORE) == 0
        # The threshold's failures in all, spread over the two, turn the store FAILED once.
        assert await first.record(STORE, TIMED_OUT) is None
        assert await second.record(STORE, TIMED_OUT) is None
        assert await first.record(STORE, TIMED_OUT) == ConnectionErrorCode.XKS_PROXY_TIMED_OUT
        assert await state(two) == ("FAILED", ConnectionErrorCode.XKS_PROXY_TIMED_OUT, 0)
        # A FAILED store counts nothing more, and is not turned FAILED again.
        for _ in range(THRESHOLD):
            assert await second.record(STORE, TIMED_OUT) is None
        assert await state(one) == ("FAILED", ConnectionErrorCode.XKS_PROXY_TIMED_OUT, 0)


async def test_a_health_check_counts_any_failure_and_reset_forgets(db_url: str) -> None:
    async with process(db_url) as one, process(db_url) as two:
        await add_store(one)
        first, second = StoreWatch(THRESHOLD, one), StoreWatch(THRESHOLD, two)
        assert await first.record(STORE, KEY_LEVEL, health=True) is None
        assert await second.failures(STORE) == 1
        await second.reset(STORE)  # Connect through the other worker
        assert await first.failures(STORE) == 0


async def test_threshold_zero_counts_nothing(db_url: str) -> None:
    async with process(db_url) as one:
        await add_store(one)
        off = StoreWatch(0, one)
        for _ in range(5):
            assert await off.record(STORE, TIMED_OUT) is None
        assert await state(one) == ("CONNECTED", None, 0)
