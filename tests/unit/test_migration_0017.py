"""Migration 0017 (the KMS store-failure count on the key store row, which every KMS worker shares) goes
down and up again on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

from alembic import command
from sqlalchemy import inspect

from xkslab_shared import db as store


def columns(url: str) -> set[str]:
    async def look() -> set[str]:
        engine = store.create_engine(url)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(
                    lambda sync: {c["name"] for c in inspect(sync).get_columns("kms_custom_key_stores")}
                )
        finally:
            await engine.dispose()

    return asyncio.run(look())


def test_migration_0017_goes_down_and_up(db_url: str) -> None:
    assert "consecutive_failures" in columns(db_url)
    command.downgrade(store.alembic_config(db_url), "0016")
    assert "consecutive_failures" not in columns(db_url)
    command.upgrade(store.alembic_config(db_url), "head")
    assert "consecutive_failures" in columns(db_url)
