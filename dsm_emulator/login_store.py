"""The failed-login counts every DSM process of a fleet shares (workers and nodes alike): rows of
``login_failures`` (migration 0016), so a client gets the configured budget from the whole fleet, not
from each process.

Two counts are shared, the two a client spends: the failures of an (identity, source) pair in its window
(``dsm.login_max_failures`` per ``dsm.login_window_s``) and a source's token bucket over all identities
(``dsm.login_max_failures_per_source``). Each login reads both rows (one primary-key look-up) and hands
them to this process's LoginLimiter (logins.py) before its checks; each failure adds to both rows (one
transaction); a success deletes its pair's row only when the read found failures in it, so a successful
login costs one read and no write. What stays per process: the global budget of doubtful password hashes
(it guards each process's own hashing core), the memory of identities known to be good, and the audit
summary rows (each process writes the summary of the failures it answered).

A row's key is an HMAC-SHA256 of the identity and source, keyed from the keyring's active term: a guessed
email (or a password typed in its field) is never written, nor a hash one could test guesses against (a
keyring rotation starts the counts afresh). Times are wall-clock (the nodes of a fleet need synchronised
clocks, as the node registry does); rows older than two windows are deleted when the summaries are flushed.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import Callable

from sqlalchemy import Column, Float, Integer, MetaData, String, Table, case, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dsm_emulator.logins import ANY_IDENTITY, LoginLimiter
from xkslab_shared.db import NAMING

log = logging.getLogger("dsm_emulator.login_store")

# Its own MetaData (the counts are the limiter's, not a model's); migrations/metadata.py lists it.
metadata = MetaData(naming_convention=NAMING)
login_failures = Table(
    "login_failures",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("window_start", Float, nullable=False),  # an identity row's window (wall clock)
    Column("failures", Integer, nullable=False),
    Column("tokens", Float, nullable=False),  # a source row's bucket, as of ``updated``
    Column("updated", Float, nullable=False, index=True),
)
_SEEN_MAX = 10_000


ROW_KEY_PURPOSE = "login-failure-row"


def _key(secret: bytes, identity: str, source: str) -> str:
    # Keyed, not a bare SHA-256: a password typed into the email field must not be guessable from its row.
    message = f"{identity}\x00{source}".encode("utf-8", "surrogatepass")
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


class SharedLogins:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        limiter: LoginLimiter,
        row_secret: Callable[[], bytes],
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._sessions = sessions
        self._row_secret = row_secret
        self._limiter = limiter
        self._wall = wall
        # Pairs whose last read found failures: only their success deletes a row.
        self._failing: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._forgot_at = -float("inf")

    async def pull(self, kind: str, identity: str, source: str) -> None:
        """Hand the fleet's counts for this login to the limiter, before its checks."""
        pair, bucket = (
            _key(self._row_secret(), identity, source),
            _key(self._row_secret(), ANY_IDENTITY, source),
        )
        try:
            async with self._sessions() as session:
                rows = {
                    row["key"]: row
                    for row in (
                        await session.execute(
                            select(login_failures).where(login_failures.c.key.in_((pair, bucket)))
                        )
                    ).mappings()
                }
        except Exception as exc:  # the limiter still counts this process's own
            log.warning("could not read the shared login counts: %s", type(exc).__name__)
            return
        now = self._wall()
        own, spent = rows.get(pair), rows.get(bucket)
        failures = None if own is None else (int(own["failures"]), now - own["window_start"])
        tokens = None if spent is None else (float(spent["tokens"]), now - spent["updated"])
        if failures is not None and failures[0] > 0:
            self._failing[(identity, source)] = None
            self._failing.move_to_end((identity, source))
            while len(self._failing) > _SEEN_MAX:
                self._failing.popitem(last=False)
        self._limiter.adopt(kind, identity, source, failures, tokens)

    async def failed(self, identity: str, source: str) -> None:
        """Count a failure of this pair and spend one of its source's tokens, for the whole fleet."""
        limiter = self._limiter
        now = self._wall()
        expired = login_failures.c.window_start <= now - limiter.window_s
        pair_values = {
            "failures": case((expired, 1), else_=login_failures.c.failures + 1),
            "window_start": case((expired, now), else_=login_failures.c.window_start),
            "updated": now,
        }
        statements = [
            (
                _key(self._row_secret(), identity, source),
                pair_values,
                {"window_start": now, "failures": 1, "tokens": 0.0},
            )
        ]
        if limiter.max_failures_per_source > 0:
            rate = limiter.max_failures_per_source / limiter.window_s
            burst = float(limiter.source_burst)
            refilled = login_failures.c.tokens + (now - login_failures.c.updated) * rate
            bucket_values = {
                "tokens": case((refilled > burst, burst), else_=refilled) - 1.0,
                "updated": now,
            }
            first = {"window_start": now, "failures": 0, "tokens": burst - 1.0}
            statements.append((_key(self._row_secret(), ANY_IDENTITY, source), bucket_values, first))
        self._failing[(identity, source)] = None
        try:
            for key, values, first in statements:
                await self._upsert(key, values, {**first, "updated": now})
        except Exception as exc:
            log.warning("could not write the shared login counts: %s", type(exc).__name__)

    async def _upsert(self, key: str, values: dict[str, object], first: dict[str, object]) -> None:
        for _attempt in range(2):
            try:
                async with self._sessions.begin() as session:
                    update_row = update(login_failures).where(login_failures.c.key == key).values(**values)
                    if not getattr(await session.execute(update_row), "rowcount", 0):
                        await session.execute(insert(login_failures).values(key=key, **first))
                return
            except IntegrityError:  # another process inserted it in between: update it
                continue

    async def succeeded(self, identity: str, source: str) -> None:
        """A correct login clears its pair's count fleet-wide (a write only when there was a count)."""
        if self._failing.pop((identity, source), "absent") == "absent":
            return
        try:
            async with self._sessions.begin() as session:
                await session.execute(
                    delete(login_failures).where(
                        login_failures.c.key == _key(self._row_secret(), identity, source)
                    )
                )
        except Exception as exc:
            log.warning("could not clear a shared login count: %s", type(exc).__name__)

    async def forget_old(self) -> None:
        """Delete rows no window needs any more (two windows old: a bucket is full again by then), at
        most once a window."""
        now = self._wall()
        if now - self._forgot_at < self._limiter.window_s:
            return
        self._forgot_at = now
        older = now - 2 * self._limiter.window_s
        try:
            async with self._sessions.begin() as session:
                await session.execute(delete(login_failures).where(login_failures.c.updated < older))
        except Exception as exc:
            log.warning("could not delete old shared login counts: %s", type(exc).__name__)
