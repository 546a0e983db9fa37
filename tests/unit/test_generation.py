"""The cache generation: caches on the request path that stay correct when another process changes the
database. Two Generation objects on two engines stand for two processes. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from xkslab_shared import generation as shared_generation
from xkslab_shared.db import create_engine, session_factory
from xkslab_shared.generation import Generation, GenerationCache

Sessions = async_sessionmaker[AsyncSession]


def _now() -> datetime:
    return datetime.now(UTC)


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


class Loader:
    def __init__(self) -> None:
        self.value = "v1"
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        return self.value


async def test_an_entry_is_served_until_the_generation_moves_and_the_poll_notices(
    sessions: Sessions, other_process: Sessions
) -> None:
    generation = Generation(sessions, poll_s=3600.0)  # never polls again by itself in this test
    cache: GenerationCache[str, str] = GenerationCache(generation, max_age_s=3600.0)
    load = Loader()
    assert await cache.get("k", load) == "v1"
    load.value = "v2"
    assert await cache.get("k", load) == "v1" and load.calls == 1  # served from memory
    await bump(other_process)
    assert await cache.get("k", load) == "v1"  # not polled yet: the stated bound, not a bug
    generation.poll_s = 0.0
    assert await cache.get("k", load) == "v2" and load.calls == 2
    assert await cache.get("k", load) == "v2" and load.calls == 2  # the generation did not move again


async def test_expire_makes_the_next_read_go_to_the_database(
    sessions: Sessions, other_process: Sessions
) -> None:
    generation = Generation(sessions, poll_s=3600.0)
    first = await generation.current()
    await bump(other_process)
    assert await generation.current() == first
    generation.expire()  # what the audit writer does after this process commits a change
    assert await generation.current() == first + 1


async def test_an_expire_during_a_read_is_not_forgotten_when_the_read_ends(sessions: Sessions) -> None:
    """A change announced while a read is in flight (this process's commit, another node's NOTIFY) may
    postdate what that read saw: the read's value must not be trusted for a whole poll interval."""
    generation = Generation(sessions, poll_s=3600.0)
    caller = asyncio.create_task(generation.current())
    for _ in range(1000):  # until the read is under way ...
        if generation._reading is not None:
            break
        await asyncio.sleep(0)
    assert generation._reading is not None
    await asyncio.sleep(0)
    generation.expire()  # ... when the change is announced
    await caller
    await generation.current()
    assert generation.reads == 2


async def test_listen_does_nothing_on_sqlite_and_close_is_safe(sessions: Sessions, db_url: str) -> None:
    generation = Generation(sessions, poll_s=3600.0)
    generation.listen(db_url)
    on_postgres = db_url.startswith("postgresql")
    for _ in range(300):  # PostgreSQL: until the LISTEN connection is open (the bound only ends a hang)
        if generation.listening or not on_postgres:
            break
        await asyncio.sleep(0.1)
    assert generation.listening is on_postgres
    await generation.close()
    assert not generation.listening


async def test_concurrent_callers_share_one_read(sessions: Sessions) -> None:
    generation = Generation(sessions, poll_s=3600.0)
    values = await asyncio.gather(*(generation.current() for _ in range(50)))
    assert len(set(values)) == 1
    assert generation.reads == 1


async def test_entries_age_out_and_failed_loads_are_not_cached(sessions: Sessions) -> None:
    generation = Generation(sessions, poll_s=3600.0)
    aged: GenerationCache[str, str] = GenerationCache(generation, max_age_s=0.0)
    load = Loader()
    await aged.get("k", load)
    await aged.get("k", load)
    assert load.calls == 2 and len(aged) == 0  # max age 0: nothing kept (nor key material)

    cache: GenerationCache[str, str] = GenerationCache(generation, max_age_s=3600.0)

    async def missing() -> str:
        raise LookupError("not there")

    with pytest.raises(LookupError):
        await cache.get("gone", missing)
    assert len(cache) == 0
    assert await cache.get("gone", load) == "v1"
    assert await cache.get("gone", missing) == "v1"  # now cached


async def test_a_suspicion_rereads_the_generation_at_once_and_reloads_only_if_it_moved(
    sessions: Sessions, other_process: Sessions
) -> None:
    """A suspected entry (get's ``fresh``) is loaded again only if the generation moved: read again at
    once for the first suspicion of a poll interval (an hour here), so a change in another process is
    seen at its first use; the suspicions after it in the interval share that read."""
    generation = Generation(sessions, poll_s=3600.0)
    cache: GenerationCache[str, str] = GenerationCache(generation, max_age_s=3600.0)
    load = Loader()
    assert await cache.get("k", load) == "v1" and generation.reads == 1
    # Nothing changed: the generation is read again, the entry kept.
    assert await cache.get("k", load, fresh=True) == "v1" and load.calls == 1 and generation.reads == 2
    assert await cache.get("k", load, fresh=True) == "v1" and generation.reads == 2  # same interval

    generation2 = Generation(sessions, poll_s=3600.0)
    cache2: GenerationCache[str, str] = GenerationCache(generation2, max_age_s=3600.0)
    load2 = Loader()
    assert await cache2.get("k", load2) == "v1"
    load2.value = "v2"
    await bump(other_process)  # changed in another process, not yet seen by the poll
    assert await cache2.get("k", load2) == "v1"  # unsuspected: the poll's bound, as ever
    assert await cache2.get("k", load2, fresh=True) == "v2" and load2.calls == 2
    load2.value = "v3"
    await bump(other_process)
    # Within the interval of that recheck: the regular poll's value (the stated bound for a flood).
    assert await cache2.get("k", load2, fresh=True) == "v2" and load2.calls == 2
    assert generation2.reads == 2


async def test_concurrent_suspicions_share_one_read(sessions: Sessions, other_process: Sessions) -> None:
    generation = Generation(sessions, poll_s=3600.0)
    cache: GenerationCache[str, str] = GenerationCache(generation, max_age_s=3600.0)
    load = Loader()
    await cache.get("k", load)
    load.value = "v2"
    await bump(other_process)
    values = await asyncio.gather(*(cache.get("k", load, fresh=True) for _ in range(20)))
    assert values == ["v2"] * 20 and load.calls == 2 and generation.reads == 2


async def test_a_recheck_does_not_take_the_value_of_a_read_begun_before_it(
    sessions: Sessions, other_process: Sessions
) -> None:
    generation = Generation(sessions, poll_s=3600.0)
    first = await generation.current()
    generation.expire()
    early = asyncio.create_task(generation.current())
    for _ in range(1000):  # until that read is under way ...
        if generation._reading is not None:
            break
        await asyncio.sleep(0)
    assert generation._reading is not None
    await bump(other_process)  # ... a change it may not see is committed ...
    assert await generation.recheck() == first + 1  # ... and the recheck sees it
    await early


async def test_the_cache_stays_bounded(sessions: Sessions) -> None:
    generation = Generation(sessions, poll_s=3600.0)
    cache: GenerationCache[int, int] = GenerationCache(generation, max_age_s=3600.0, max_entries=10)

    async def same() -> int:
        return 1

    for i in range(100):
        await cache.get(i, same)
    assert len(cache) <= 10


async def test_every_flush_of_an_invalidating_session_raises_the_generation(
    db_url: str, sessions: Sessions
) -> None:
    """The KMS emulator's writes are ORM flushes: each one that writes tells every process's caches."""
    from dsm_emulator.models import Account
    from xkslab_shared.generation import invalidating_sessions

    engine = create_engine(db_url)
    try:
        writer, own = invalidating_sessions(engine, poll_s=3600.0)
        other = Generation(sessions, poll_s=0.0)
        before = await own.current()
        async with writer.begin() as session:
            session.add(Account(acct_id=str(uuid.uuid4()), name="flushed", enabled=True, created_at=_now()))
        assert await other.current() == before + 1
        assert await own.current() == before + 1  # its own commit expired it, despite the long poll
        async with writer() as session:  # a read: nothing flushed, nothing raised
            await session.get(Account, str(uuid.uuid4()))
        assert await other.current() == before + 1
    finally:
        await engine.dispose()


async def test_a_cancelled_reader_does_not_cancel_the_callers_sharing_its_read(sessions: Sessions) -> None:
    """The request that started the read goes away (its client hung up): the others still get the value."""
    generation = Generation(sessions, poll_s=3600.0)
    first = asyncio.create_task(generation.current())
    await asyncio.sleep(0)  # the first caller starts the read
    others = [asyncio.create_task(generation.current()) for _ in range(5)]
    await asyncio.sleep(0)  # the others wait on it
    assert not first.done()  # still reading the database
    first.cancel()
    values = await asyncio.gather(*others)
    assert len(set(values)) == 1 and values[0] >= 0
    assert generation.reads == 1
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await generation.current() == values[0]  # the read stands: no second one
    assert generation.reads == 1


async def test_concurrent_misses_of_one_key_share_one_load(sessions: Sessions) -> None:
    """An entry that ages out under load is loaded once, not once per request in flight."""
    generation = Generation(sessions, poll_s=3600.0)
    cache: GenerationCache[str, str] = GenerationCache(generation, max_age_s=3600.0)
    release = asyncio.Event()
    calls = 0

    async def slow() -> str:
        nonlocal calls
        calls += 1
        await release.wait()
        return "v"

    await generation.current()  # read once, so no caller waits on the database before reaching the cache
    waiting = [asyncio.create_task(cache.get("k", slow)) for _ in range(32)]
    for _ in range(10):  # let every task reach its wait
        await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(*waiting) == ["v"] * 32
    assert calls == 1 and cache.shared_loads == 31

    async def failing() -> str:
        await asyncio.sleep(0)
        raise LookupError("gone")

    results = await asyncio.gather(*(cache.get("x", failing) for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, LookupError) for r in results)
    assert len(cache) == 1  # the failure was shared and not cached
