"""The cache generation read on a connection of its own (SQLite: a plain sqlite3 connection; PostgreSQL:
the LISTEN connection), not a pooled session: a change committed by another process is still seen at the
next read, and a direct connection that fails hands the read to the pool until it works again. Two
engines stand for two processes. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from xkslab_shared import generation as shared_generation
from xkslab_shared.db import create_engine, session_factory
from xkslab_shared.generation import LISTEN_APPLICATION, Generation

Sessions = async_sessionmaker[AsyncSession]


@pytest.fixture
async def other_process(db_url: str) -> AsyncIterator[Sessions]:
    engine = create_engine(db_url)
    try:
        yield session_factory(engine)
    finally:
        await engine.dispose()


async def bump(sessions: Sessions) -> None:
    async with sessions.begin() as session:
        await session.execute(shared_generation.bump())


async def listening(generation: Generation, db_url: str) -> None:
    generation.listen(db_url)
    if db_url.startswith("postgresql"):
        for _ in range(300):  # until the LISTEN connection is open (the bound only ends a hang)
            if generation.listening:
                return
            await asyncio.sleep(0.1)
        raise AssertionError("the LISTEN connection never opened")


async def test_another_process_change_is_seen_by_the_direct_read(
    sessions: Sessions, other_process: Sessions, db_url: str
) -> None:
    generation = Generation(sessions, poll_s=0.0)  # every current() reads
    await listening(generation, db_url)
    try:
        first = await generation.current()
        for n in range(1, 4):
            await bump(other_process)
            assert await generation.current() == first + n
        # Every read went to the process's own connection, none through the pool.
        assert generation.direct_reads == generation.reads >= 4
    finally:
        await generation.close()


async def test_a_failed_direct_connection_hands_the_read_to_the_pool(
    sessions: Sessions, other_process: Sessions, db_url: str
) -> None:
    generation = Generation(sessions, poll_s=0.0)
    await listening(generation, db_url)
    try:
        first = await generation.current()
        assert generation.direct_reads == 1
        if db_url.startswith("postgresql"):
            # The server ends the LISTEN connection (what a restart or a network cut does).
            async with other_process.begin() as session:
                await session.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE application_name = :name AND datname = current_database()"
                    ),
                    {"name": LISTEN_APPLICATION},
                )
        else:
            assert generation._sqlite is not None
            generation._sqlite.close()  # any sqlite3.Error: a closed connection is the one on demand
        await bump(other_process)
        # Read through the pool meanwhile (or already on the reopened connection): never the old value.
        assert await generation.current() == first + 1
        await listening(generation, db_url)
        for _ in range(300):  # the direct connection comes back (PostgreSQL: the LISTEN reopened)
            before = generation.direct_reads
            await bump(other_process)
            value = await generation.current()
            if generation.direct_reads > before:
                break
            await asyncio.sleep(0.1)
        assert generation.direct_reads > before
        assert value == await generation.current() >= first + 2
    finally:
        await generation.close()
    assert generation._sqlite is None and generation._pg is None


@pytest.mark.parametrize("db_backend", ["sqlite"])  # SQLite's own connection (PostgreSQL: LISTEN's)
async def test_the_sqlite_read_leaves_no_read_transaction_open(
    sessions: Sessions, other_process: Sessions, db_url: str
) -> None:
    """A snapshot left open between polls would hold every WAL checkpoint back (the file only grows)."""
    generation = Generation(sessions, poll_s=0.0)
    try:
        await generation.current()
        assert generation._sqlite is not None and generation.direct_reads == 1
        await bump(other_process)  # a frame in the WAL after the read's snapshot
        path = db_url.split("///", 1)[1]
        checkpoint = sqlite3.connect(path, isolation_level=None)
        try:
            busy, _log, _done = checkpoint.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            checkpoint.close()
        assert busy == 0
    finally:
        await generation.close()
