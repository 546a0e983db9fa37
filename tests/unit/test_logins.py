"""The failed-login limiter on its own, with a fake clock: 401s then 429s per identity and source, one
audited failure per burst plus a summary, bounded memory, and app-secret hashing without scrypt."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from dsm_emulator import secrets as creds
from dsm_emulator.logins import ANY_IDENTITY, HashSlot, LoginLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_failures_past_the_limit_are_refused_and_summarised_once_the_window_ends() -> None:
    clock = Clock()
    limiter = LoginLimiter(3, 10.0, clock=clock)
    audited = []
    for _ in range(3):
        assert limiter.allow("app", "a", "10.0.0.1")
        audited.append(limiter.failed("app", "a", "10.0.0.1", label="app-a"))
    assert audited == [True, False, False]
    assert not limiter.allow("app", "a", "10.0.0.1")
    assert not limiter.allow("app", "a", "10.0.0.1")
    # Another source, another identity: not affected.
    assert limiter.allow("app", "a", "10.0.0.2")
    assert limiter.allow("app", "b", "10.0.0.1")
    assert limiter.retry_after("a", "10.0.0.1") == 10
    assert limiter.due() == []
    clock.now += 10
    [summary] = limiter.due()
    assert (summary.identity, summary.label, summary.count, summary.refused) == ("a", "app-a", 4, 2)
    assert limiter.allow("app", "a", "10.0.0.1") and len(limiter) == 0


def test_a_success_clears_the_count_but_keeps_the_summary() -> None:
    limiter = LoginLimiter(2, 60.0, clock=Clock())
    for _ in range(2):
        limiter.failed("user", "u@x", "s")
    assert not limiter.allow("user", "u@x", "s")
    limiter.succeeded("u@x", "s")
    assert limiter.allow("user", "u@x", "s")
    [summary] = limiter.due()
    assert summary.count == 2 and summary.refused == 1


def test_a_spray_of_identities_from_one_source_makes_one_summary_not_one_row_each() -> None:
    clock = Clock()
    limiter = LoginLimiter(5, 60.0, max_audited_per_source=3, clock=clock)
    audited = sum(limiter.failed("app", f"id-{i}", "s") for i in range(1000))
    assert audited == 3
    summaries = limiter.due(everything=True)
    assert [(s.identity, s.count) for s in summaries] == [(ANY_IDENTITY, 997)]


def test_memory_is_bounded_and_evicted_counts_are_not_lost() -> None:
    limiter = LoginLimiter(
        1, 60.0, max_entries=50, max_audited_per_source=10**6, max_failures_per_source=0, clock=Clock()
    )
    for i in range(500):
        for _ in range(3):
            if limiter.allow("app", f"id-{i}", "s"):
                limiter.failed("app", f"id-{i}", "s")
    assert len(limiter) <= 51
    summaries = limiter.due(everything=True)
    # Each identity: one audited failure, then two 429s, all counted somewhere.
    assert sum(s.count for s in summaries) == 500 * 2


def test_app_secrets_get_a_keyed_hash_checked_without_scrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_scrypt(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("scrypt must not run for a keyed hash")

    monkeypatch.setattr(hashlib, "scrypt", no_scrypt)
    key, other = b"k" * 32, b"o" * 32
    secret = creds.new_app_secret()
    encoded = creds.keyed_hash(secret, key, 3)
    assert encoded.startswith("hmac-sha256$3$") and secret not in encoded
    assert creds.keyed_term(encoded) == 3
    assert creds.verify_keyed(secret, encoded, key)
    assert not creds.verify_keyed(secret + "x", encoded, key)
    assert not creds.verify_keyed(secret, encoded, other)
    for bad in ("", "hmac-sha256$x$AA==", "hmac-sha256$1$!!", "scrypt$1$2$3$4$5", "hmac-sha256$1$a$b"):
        assert not creds.verify_keyed(secret, bad, key)


def test_a_source_that_failed_too_often_over_all_identities_is_refused_until_its_bucket_refills() -> None:
    clock = Clock()
    # 60 failures per 60 s on average (one a second), at most 10 in a row.
    limiter = LoginLimiter(5, 60.0, max_failures_per_source=60, clock=clock)
    assert limiter.source_burst == 12  # a fifth, at least the per-identity limit
    limiter = LoginLimiter(5, 60.0, max_failures_per_source=60, source_burst=10, clock=clock)
    for i in range(10):  # ten made-up identities, one failure each: none is over its own limit
        assert limiter.allow("app", f"id-{i}", "s")
        limiter.failed("app", f"id-{i}", "s")
    # The source is: a new identity, a known one, and a user are all refused before any check...
    assert not limiter.allow("app", "id-new", "s")
    assert not limiter.allow("user", "admin@x", "s")
    assert limiter.retry_after("id-new", "s") == 1
    # ... other sources are not.
    assert limiter.allow("app", "id-new", "t")
    # One failure a second refills: a spray gets one attempt a second from then on.
    clock.now += 1.0
    assert limiter.allow("app", "id-10", "s")
    limiter.failed("app", "id-10", "s")
    assert not limiter.allow("app", "id-11", "s")
    clock.now += 0.5
    assert not limiter.allow("app", "id-11", "s")
    # Once it is full again it is forgotten; the refusals went to the source's summary.
    clock.now += 60
    summaries = limiter.due()
    assert limiter.allow("app", "id-new", "s") and "s" not in limiter._buckets
    assert [(s.count, s.refused) for s in summaries if s.identity == ANY_IDENTITY] == [(4, 4)]


def test_no_limit_per_source_when_it_is_zero() -> None:
    limiter = LoginLimiter(5, 60.0, max_failures_per_source=0, clock=Clock())
    for i in range(500):
        limiter.failed("app", f"id-{i}", "s")
    assert limiter.allow("app", "id-new", "s")


def test_the_global_budget_of_doubtful_hashes_refills_and_spares_known_good_logins() -> None:
    clock = Clock()
    limiter = LoginLimiter(max_failing_hashes=60, failing_hash_burst=3, window_s=60.0, clock=clock)
    assert [limiter.take_failing_hash("user", f"10.0.0.{n}") for n in range(5)] == [True] * 3 + [False] * 2
    assert limiter.failing_hash_retry_after() == 1
    clock.now += 2.0  # one a second
    assert limiter.take_failing_hash("user", "10.0.0.9") and limiter.take_failing_hash("user", "10.0.0.9")
    assert not limiter.take_failing_hash("user", "10.0.0.9")
    # The refusals are counted on each address's summary, as refused.
    summaries = {s.source: s for s in limiter.due(everything=True)}
    assert summaries["10.0.0.3"].refused == 1 and summaries["10.0.0.9"].refused == 1
    # Known good: a known identity with no failure in the window, or one that succeeded from there.
    assert limiter.known_good("a@x", "s1", known=True) and not limiter.known_good("b@x", "s1", known=False)
    limiter.succeeded("a@x", "s1")
    limiter.failed("user", "a@x", "s2")
    assert limiter.known_good("a@x", "s1", known=True) and not limiter.known_good("a@x", "s3", known=True)
    clock.now += 61.0
    assert limiter.known_good("a@x", "s3", known=True)
    assert LoginLimiter(max_failing_hashes=0).take_failing_hash("user", "s")  # 0: no budget


async def test_the_hash_slot_serves_good_logins_first_and_survives_cancellation() -> None:
    slot, order = HashSlot(), []
    release = asyncio.Event()

    async def hold(name: str, first: bool) -> None:
        async with slot.hold(first=first):
            order.append(name)
            if name == "running":
                await release.wait()

    running = asyncio.create_task(hold("running", False))
    await asyncio.sleep(0)
    doubtful = [asyncio.create_task(hold(f"doubtful-{n}", False)) for n in range(3)]
    cancelled = asyncio.create_task(hold("cancelled", True))
    good = asyncio.create_task(hold("good", True))
    await asyncio.sleep(0)
    cancelled.cancel()
    release.set()
    await asyncio.gather(running, good, *doubtful)
    assert order == ["running", "good", "doubtful-0", "doubtful-1", "doubtful-2"]
    assert cancelled.cancelled()
    async with slot.hold(first=False):  # free again
        pass


def test_the_fleets_counts_are_adopted_before_the_checks() -> None:
    """Another process's failures (login_store.py reads them from the database) count here too."""
    clock = Clock()
    limiter = LoginLimiter(3, 10.0, clock=clock, max_failures_per_source=10, source_burst=4)
    limiter.adopt("app", "a", "10.0.0.1", (2, 4.0), None)
    assert limiter.allow("app", "a", "10.0.0.1")
    assert limiter.failed("app", "a", "10.0.0.1") is False  # not the window's first failure: no own row
    assert not limiter.allow("app", "a", "10.0.0.1")  # 2 elsewhere + 1 here: the budget of 3 is spent
    clock.now += 6.0  # the window began 4 s before the adoption: it has ended
    assert limiter.allow("app", "a", "10.0.0.1")
    # A window that ended elsewhere adopts nothing; a source's bucket spent elsewhere refuses it here.
    limiter.adopt("app", "b", "10.0.0.2", (3, 11.0), (0.0, 0.0))
    assert not limiter.allow("app", "b", "10.0.0.2")
    assert limiter.retry_after("b", "10.0.0.2") == 1  # 10 per 10 s: a token a second
