"""Migration 0016 (the fault book and the failed-login counts every worker and node shares) goes down
and up again on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

from alembic import command
from sqlalchemy import inspect

from xkslab_shared import db as store

TABLES = {"xks_faults", "login_failures"}


def tables(url: str) -> set[str]:
    async def look() -> set[str]:
        engine = store.create_engine(url)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(lambda sync: set(inspect(sync).get_table_names()))
        finally:
            await engine.dispose()

    return asyncio.run(look())


def test_migration_0016_goes_down_and_up(db_url: str) -> None:
    assert TABLES <= tables(db_url)
    command.downgrade(store.alembic_config(db_url), "0015")
    assert not TABLES & tables(db_url)
    command.upgrade(store.alembic_config(db_url), "head")
    assert TABLES <= tables(db_url)
