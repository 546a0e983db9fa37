"""Async alembic environment. The URL comes from the Config that xkslab builds (dsm_emulator.store).

The schema is shared by the services, each with its own metadata: the key manager's tables, the KMS
emulator's (``kms_*``) and the cache generation; autogenerate compares against every one of them
(migrations/metadata.py).
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from migrations.metadata import TARGET_METADATA

target_metadata = TARGET_METADATA

# The advisory lock every upgrade of a PostgreSQL database takes first (any 64-bit number that nothing
# else uses; the audit chains' locks are hashes of their chain names): several nodes starting together
# on one database migrate it once, the others wait for that and then find nothing to do. On SQLite,
# xkslab_shared.db.upgrade holds a lock file beside the database instead.
MIGRATION_LOCK = 0x786B736C61620014


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Transaction-scoped: released by the upgrade's own commit (or rollback), whatever happens.
            # Taken before alembic reads the schema's revision, so a waiting upgrade reads the new one.
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        context.run_migrations()


async def _run_async(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    url = context.config.get_main_option("sqlalchemy.url")
    assert url, "sqlalchemy.url is not set"
    asyncio.run(_run_async(url))


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run 'xkslab db upgrade'")
run_migrations_online()
