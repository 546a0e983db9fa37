"""The schema is made by migrations only, matches the models, and a service refuses a schema it does
not know."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from dsm_emulator import store
from dsm_emulator.errors import SchemaMismatch
from dsm_emulator.models import Base
from kms_emulator.models import Base as KmsBase
from xkslab_shared import generation


async def test_empty_database_is_refused(empty_db_url: str) -> None:
    engine = store.create_engine(empty_db_url)
    try:
        with pytest.raises(SchemaMismatch, match="xkslab db upgrade"):
            await store.check_schema(engine)
    finally:
        await engine.dispose()


async def test_migrated_database_matches_models_and_passes(db_url: str) -> None:
    engine = store.create_engine(db_url)
    try:
        await store.check_schema(engine)
        async with engine.connect() as conn:
            diff = await conn.run_sync(
                lambda sync: compare_metadata(
                    MigrationContext.configure(sync), [Base.metadata, KmsBase.metadata, generation.metadata]
                )
            )
        assert diff == []
    finally:
        await engine.dispose()


async def test_unknown_revision_is_refused(db_url: str) -> None:
    engine = store.create_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("UPDATE alembic_version SET version_num = 'ffff_future'"))
        with pytest.raises(SchemaMismatch, match="ffff_future"):
            await store.check_schema(engine)
    finally:
        await engine.dispose()


async def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(tmp_path: Path) -> None:
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'pragmas.db'}"
    engine = store.create_engine(db_url, busy_timeout_ms=1234)
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
            assert (await conn.execute(text("PRAGMA busy_timeout"))).scalar() == 1234
            assert (await conn.execute(text("PRAGMA foreign_keys"))).scalar() == 1
    finally:
        await engine.dispose()
