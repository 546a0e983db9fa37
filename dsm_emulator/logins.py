"""Failed-login limiting and burst auditing, per (identity, source address), in memory.

A flood of wrong logins must stay cheap: each one used to run scrypt and write an audit row, and forty a
second took the XKS path down. So, per identity (an app id or a normalised email) and source address, in
fixed windows of ``window_s``:

* the first ``max_failures`` failures are answered 401; after that, every attempt is refused with 429
  until the window ends, *before* any database read or password hashing;
* only the first failure of a window gets its own audit row; the further ones (401 and 429 alike) are
  counted and reported as one summary row when the window ends (:meth:`LoginLimiter.due`);
* one source may have at most ``max_audited_per_source`` failures audited one by one per window, so a
  spray of made-up identities from one address does not write a row each: the rest are counted on a
  per-source summary (identity ``*``);
* one source may fail ``max_failures_per_source`` times per window over all identities, on average: a
  token bucket holding ``source_burst`` failures (by default a fifth of that, at least
  ``max_failures``) and refilled at ``max_failures_per_source`` per window. While it is empty, every
  login from the source is refused with 429 before any check. The per-identity limit alone lets a spray
  of made-up identities (or emails, each costing a password hash) run every check once per identity, and
  a thousand a second of those took the XKS path down where wrong secrets for one app did not
  (scripts/login_flood.py). A bucket rather than a count per window, so that a spray gets its few
  password hashes at once and the rest spread over the window, while a test suite's occasional burst of
  wrong logins still gets its 401s.

* all sources together may have ``max_failing_hashes`` password hashes per window for logins that are
  not known to be good (an unknown email, an identity that failed from any address in the window), on
  average: a bucket of ``failing_hash_burst``. Past it such a login is refused with 429 before it is
  hashed. The per-source limits alone let a spray from 250 addresses have 2,500 hashes queued, and the
  administrator's own login waited seconds behind them. A login known to be good (its identity and
  source succeeded within ``good_for_s``, or a known identity with no failure in the window) spends no
  budget, and :class:`HashSlot` hashes it before any waiting doubtful one.

Memory is bounded: at most ``max_entries`` entries, the least recently used evicted first (its counts are
folded into its source's summary, so nothing is lost from the audit). A success clears its entry (and
hands back its pending summary). The counts a client spends (per identity and source, and a source's
bucket) are the fleet's: login_store.py reads them from the database before each login's checks
(:meth:`LoginLimiter.adopt`) and adds each failure to them; the rest is this process's own.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

ANY_IDENTITY = "*"


@dataclass
class _Entry:
    kind: str  # "app" | "user": what the identity names, for the summary row
    window_start: float
    # How the summary row names the identity (None: not a known one; a guessed email is never written,
    # it could be a password typed into the wrong field).
    label: str | None = None
    actor_id: str | None = None
    failures: int = 0  # failures in this window, 401s only (a 429 is not a failure, it is refused)
    suppressed: int = 0  # failures and refusals not audited one by one
    refused: int = 0  # of which answered 429
    # Its first failure found the source's quota of audit rows used up: its counts go to the source's
    # catch-all entry, so a spray of identities makes one summary row, not one per identity.
    pooled: bool = False


@dataclass
class _Source:
    window_start: float
    audited: int = 0  # failures audited one by one in this window


@dataclass
class _Bucket:
    tokens: float  # failures this source may still have before it is refused
    updated: float


@dataclass(frozen=True)
class Summary:
    """What one summary audit row says: ``count`` further failed logins of ``identity`` (``*``: several
    identities) from ``source`` were not audited one by one, ``refused`` of them answered 429, in one
    window of ``window_s``."""

    kind: str
    identity: str
    label: str | None
    actor_id: str | None
    source: str
    count: int
    refused: int
    window_s: float


class LoginLimiter:
    def __init__(
        self,
        max_failures: int = 5,
        window_s: float = 60.0,
        *,
        max_entries: int = 10_000,
        max_audited_per_source: int = 20,
        max_failures_per_source: int = 50,
        source_burst: int | None = None,
        max_failing_hashes: int = 100,
        failing_hash_burst: int | None = None,
        good_for_s: float = 86_400.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.max_entries = max_entries
        self.max_audited_per_source = max_audited_per_source
        self.max_failures_per_source = max_failures_per_source
        self.source_burst = (
            source_burst if source_burst is not None else max(max_failures, max_failures_per_source // 5)
        )
        self.max_failing_hashes = max_failing_hashes
        self.failing_hash_burst = (
            failing_hash_burst
            if failing_hash_burst is not None
            else max(2 * self.source_burst, max_failing_hashes // 5)
        )
        self.good_for_s = good_for_s
        self._clock = clock
        self._hashes = _Bucket(float(self.failing_hash_burst), clock())
        self._failing: OrderedDict[str, float] = OrderedDict()  # identity -> time of its last failure
        self._good: OrderedDict[tuple[str, str], float] = OrderedDict()  # (identity, source) -> success
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._sources: OrderedDict[str, _Source] = OrderedDict()
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._pending: list[Summary] = []

    def __len__(self) -> int:
        return len(self._entries)

    def _entry(self, kind: str, identity: str, source: str) -> _Entry:
        key = (identity, source)
        now = self._clock()
        entry = self._entries.get(key)
        if entry is not None and now - entry.window_start >= self.window_s:
            self._close(key, entry)
            entry = None
        if entry is None:
            entry = _Entry(kind, now)
            self._entries[key] = entry
            while len(self._entries) > self.max_entries:
                old_key, old = self._entries.popitem(last=False)
                self._fold(old_key, old)
        else:
            self._entries.move_to_end(key)
        return entry

    def allow(self, kind: str, identity: str, source: str) -> bool:
        """False (and counted) when this identity and source, or this source over all identities, are
        over the limit: answer 429 without looking anything up."""
        if self._source_blocked(source):
            catch_all = self._entries.get((ANY_IDENTITY, source)) or self._new_catch_all(kind, source)
            catch_all.suppressed += 1
            catch_all.refused += 1
            return False
        entry = self._entries.get((identity, source))
        if entry is None or entry.failures < self.max_failures:
            return True
        entry = self._entry(kind, identity, source)  # may have opened a new window
        if entry.failures < self.max_failures:
            return True
        self._suppress(entry, source, refused=True)
        return False

    def adopt(
        self,
        kind: str,
        identity: str,
        source: str,
        failures: tuple[int, float] | None,
        tokens: tuple[float, float] | None,
    ) -> None:
        """The fleet's counts (login_store.py): ``failures`` of this pair in a window that began that
        many seconds ago, and the source's ``tokens`` as of that many seconds ago."""
        now = self._clock()
        if failures is not None and failures[1] < self.window_s and failures[0] > 0:
            entry = self._entry(kind, identity, source)
            entry.failures = max(entry.failures, failures[0])
            entry.window_start = min(entry.window_start, now - failures[1])
        if tokens is not None and self.max_failures_per_source > 0:
            rate = self.max_failures_per_source / self.window_s
            shared = min(float(self.source_burst), tokens[0] + tokens[1] * rate)
            if source in self._buckets:
                self._refill(source).tokens = min(self._buckets[source].tokens, shared)
            else:
                self._buckets[source] = _Bucket(shared, now)
                while len(self._buckets) > self.max_entries:
                    self._buckets.popitem(last=False)

    def known_good(self, identity: str, source: str, *, known: bool) -> bool:
        """Whether a login's password hash may skip the global budget (and go first): this identity
        succeeded from this source within ``good_for_s``, or it is a ``known`` identity that has not
        failed from any source within the window."""
        now = self._clock()
        succeeded = self._good.get((identity, source))
        if succeeded is not None and now - succeeded < self.good_for_s:
            return True
        failed = self._failing.get(identity)
        return known and (failed is None or now - failed >= self.window_s)

    def take_failing_hash(self, kind: str, source: str) -> bool:
        """Spend one of the global budget's hashes for a login not known to be good; False (and counted
        on the source's summary as refused) when it is used up."""
        if self.max_failing_hashes <= 0:
            return True
        now = self._clock()
        rate = self.max_failing_hashes / self.window_s
        bucket = self._hashes
        bucket.tokens = min(float(self.failing_hash_burst), bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return True
        catch_all = self._entries.get((ANY_IDENTITY, source)) or self._new_catch_all(kind, source)
        catch_all.suppressed += 1
        catch_all.refused += 1
        return False

    def failing_hash_retry_after(self) -> int:
        """Whole seconds until the global budget has a hash again (at least 1)."""
        rate = self.max_failing_hashes / self.window_s
        return max(1, int((1.0 - self._hashes.tokens) / rate + 0.999)) if rate > 0 else 1

    def retry_after(self, identity: str, source: str) -> int:
        """Whole seconds until this identity and source may try again (at least 1)."""
        now = self._clock()
        left = 0.0
        entry = self._entries.get((identity, source))
        if entry is not None and entry.failures >= self.max_failures:
            left = self.window_s - (now - entry.window_start)
        if self._source_blocked(source):
            rate = self.max_failures_per_source / self.window_s
            left = max(left, (1.0 - self._buckets[source].tokens) / rate)
        return max(1, int(left + 0.999))

    def failed(
        self, kind: str, identity: str, source: str, *, label: str | None = None, actor_id: str | None = None
    ) -> bool:
        """Record a failed login; True when it gets an audit row of its own. ``label`` and ``actor_id``
        name a known identity in the summary row."""
        entry = self._entry(kind, identity, source)
        entry.label, entry.actor_id = label, actor_id
        entry.failures += 1
        self._spend(source)
        self._remember(self._failing, identity)
        self._good.pop((identity, source), None)
        if entry.failures == 1:
            if self._take_audit_slot(source):
                return True
            entry.pooled = True
        self._suppress(entry, source, refused=False)
        return False

    def succeeded(self, identity: str, source: str) -> None:
        """A correct login clears the count (its pending summary is still reported)."""
        entry = self._entries.pop((identity, source), None)
        if entry is not None:
            self._close((identity, source), entry)
        self._remember(self._good, (identity, source))

    def due(self, *, everything: bool = False) -> list[Summary]:
        """Summaries of the windows that have ended (all of them with ``everything``, at shutdown)."""
        now = self._clock()
        for key, entry in list(self._entries.items()):
            if everything or now - entry.window_start >= self.window_s:
                del self._entries[key]
                self._close(key, entry)
        for source, window in list(self._sources.items()):
            if now - window.window_start >= self.window_s:
                del self._sources[source]
        for source in list(self._buckets):
            if self._refill(source).tokens >= self.source_burst:
                del self._buckets[source]
        summaries, self._pending = self._pending, []
        return summaries

    # ----------------------------------------------------------------------------------- internal

    def _remember(self, table: OrderedDict[Any, float], key: Any) -> None:
        table[key] = self._clock()
        table.move_to_end(key)
        while len(table) > self.max_entries:
            table.popitem(last=False)

    def _suppress(self, entry: _Entry, source: str, *, refused: bool) -> None:
        target = entry
        if entry.pooled:
            target = self._entries.get((ANY_IDENTITY, source)) or self._new_catch_all(entry.kind, source)
        target.suppressed += 1
        target.refused += int(refused)

    def _new_catch_all(self, kind: str, source: str) -> _Entry:
        entry = _Entry(kind, self._clock())
        self._entries[(ANY_IDENTITY, source)] = entry
        return entry

    def _source(self, source: str) -> _Source:
        """This source's current window (a new one when the last has ended)."""
        now = self._clock()
        window = self._sources.get(source)
        if window is None or now - window.window_start >= self.window_s:
            window = self._sources[source] = _Source(now)
            while len(self._sources) > self.max_entries:
                self._sources.popitem(last=False)
        self._sources.move_to_end(source)
        return window

    def _refill(self, source: str) -> _Bucket:
        bucket = self._buckets[source]
        now = self._clock()
        rate = self.max_failures_per_source / self.window_s
        bucket.tokens = min(float(self.source_burst), bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        return bucket

    def _spend(self, source: str) -> None:
        if self.max_failures_per_source <= 0:
            return
        if source in self._buckets:
            self._refill(source).tokens -= 1
            self._buckets.move_to_end(source)
        else:
            self._buckets[source] = _Bucket(self.source_burst - 1.0, self._clock())
            while len(self._buckets) > self.max_entries:
                self._buckets.popitem(last=False)

    def _source_blocked(self, source: str) -> bool:
        return source in self._buckets and self._refill(source).tokens < 1.0

    def _take_audit_slot(self, source: str) -> bool:
        window = self._source(source)
        if window.audited >= self.max_audited_per_source:
            return False
        window.audited += 1
        return True

    def _close(self, key: tuple[str, str], entry: _Entry) -> None:
        if entry.suppressed:
            identity, source = key
            self._pending.append(
                Summary(
                    entry.kind,
                    identity,
                    None if identity == ANY_IDENTITY else entry.label,
                    None if identity == ANY_IDENTITY else entry.actor_id,
                    source,
                    entry.suppressed,
                    entry.refused,
                    self.window_s,
                )
            )

    def _fold(self, key: tuple[str, str], entry: _Entry) -> None:
        # An evicted entry's uncounted failures go to its source's catch-all entry, which is itself only
        # evicted by being the oldest, so the summary rows stay bounded by the entry cap.
        if not entry.suppressed:
            return
        source = key[1]
        if key[0] == ANY_IDENTITY:
            self._close(key, entry)
            return
        catch_all = self._entries.get((ANY_IDENTITY, source)) or self._new_catch_all(entry.kind, source)
        catch_all.suppressed += entry.suppressed
        catch_all.refused += entry.refused


class HashSlot:
    """One password hash at a time (at most one core, whatever the burst), and a login known to be good
    goes before every doubtful one waiting: it waits at most for the hash already running."""

    def __init__(self) -> None:
        self._busy = False
        self._first: deque[asyncio.Future[None]] = deque()
        self._others: deque[asyncio.Future[None]] = deque()

    @asynccontextmanager
    async def hold(self, *, first: bool) -> AsyncIterator[None]:
        if self._busy:
            turn = asyncio.get_running_loop().create_future()
            (self._first if first else self._others).append(turn)
            try:
                await turn
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled():  # handed the slot as it was cancelled
                    self._release()
                raise
        else:
            self._busy = True
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        for waiting in (self._first, self._others):
            while waiting:
                turn = waiting.popleft()
                if not turn.done():  # a cancelled waiter is skipped
                    turn.set_result(None)  # handed over: the slot stays busy
                    return
        self._busy = False
