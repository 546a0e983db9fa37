"""Shared fixtures: a fresh database per test on SQLite or PostgreSQL, and a sealer per backend.

Tests that touch storage take ``db_url`` (parametrised over sqlite and postgres) and ``sealer``
(parametrised over software and pkcs11) instead of being copied per backend.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dsm_emulator import store
from dsm_emulator.keyring import Keyring
from dsm_emulator.sealing import Sealer, SoftwareSealConfig, create_sealing_key, open_sealer
from tests import softhsm

softhsm_dir = softhsm.softhsm_dir
softhsm_token = softhsm.softhsm_token

PG_ADMIN_DSN = os.environ.get("XKSLAB_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")


def pg_url(database: str) -> str:
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    return f"{base}/{database}"


async def create_pg_database() -> str:
    name = f"xkslab_t_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name


async def drop_pg_database(name: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "postgres"])
def db_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def empty_db_url(db_backend: str, tmp_path: Path) -> Iterator[str]:
    """A URL of a fresh, empty database (no schema)."""
    if db_backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'xkslab.db'}"
        return
    name = asyncio.run(create_pg_database())
    try:
        yield pg_url(name)
    finally:
        asyncio.run(drop_pg_database(name))


@pytest.fixture
def db_url(empty_db_url: str) -> str:
    """A fresh database migrated to head."""
    store.upgrade(empty_db_url)
    return empty_db_url


@pytest.fixture
async def sessions(db_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = store.create_engine(db_url)
    try:
        yield store.session_factory(engine)
    finally:
        await engine.dispose()


@pytest.fixture(params=["software", "pkcs11"])
def seal_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def seal_config(seal_backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> object:
    if seal_backend == "software":
        config = SoftwareSealConfig(key_file=tmp_path / "seal.key")
    else:
        token = request.getfixturevalue("softhsm_token")
        config = token.seal_config()
    create_sealing_key(config)
    return config


@pytest.fixture
def sealer(seal_config: object) -> Iterator[Sealer]:
    opened = open_sealer(seal_config)  # type: ignore[arg-type]
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def software_sealer(tmp_path: Path) -> Iterator[Sealer]:
    config = SoftwareSealConfig(key_file=tmp_path / "soft-seal.key")
    create_sealing_key(config)
    opened = open_sealer(config)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
async def keyring(sessions: async_sessionmaker[AsyncSession], software_sealer: Sealer) -> Keyring:
    """A keyring on the software sealer (the sealer matrix is exercised where sealing matters)."""
    return await Keyring.initialize(sessions, software_sealer)


@pytest.fixture(autouse=True)
def fresh_refusal_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's own count of refusals logged one by one (xkslab_shared.logs.RefusalLines is per
    process): a test that refuses many requests must not leave the next one's refusals unlogged."""
    from xkslab_shared import logs

    monkeypatch.setattr(logs, "REFUSAL_LINES", logs.RefusalLines())
