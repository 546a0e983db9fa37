"""The key manager's view of the shared database (xkslab/db.py): the same engine, sessions and
migrations, with a schema mismatch raised as the key manager's own error so every edge maps it."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from dsm_emulator.errors import SchemaMismatch
from xkslab_shared import db
from xkslab_shared.db import (
    MIGRATIONS_DIR,
    alembic_config,
    create_engine,
    current_revision,
    head_revision,
    session_factory,
    upgrade,
    upgrade_async,
)

__all__ = [
    "MIGRATIONS_DIR",
    "alembic_config",
    "check_schema",
    "create_engine",
    "current_revision",
    "head_revision",
    "session_factory",
    "upgrade",
    "upgrade_async",
]


async def check_schema(engine: AsyncEngine) -> None:
    """Raise SchemaMismatch unless the database is exactly at the revision this code was written for."""
    try:
        await db.check_schema(engine)
    except db.SchemaMismatch as exc:
        raise SchemaMismatch(str(exc)) from None
