"""Refused XKS authentications: which ones may send the key manager back to the database for the app's
credentials, and how they are audited.

Only a failure a credential rotated in another process could explain (CREDENTIAL_FAILURES) goes back to
the database, and then only to read the cache generation again, at most once per poll interval for all
requests (GenerationCache.get's ``fresh``); the credentials are loaded again only if it moved. Each
refusal used to reload them, 7.2 SQL statements against 2.4 per answer; then one shared load per poll
interval, still about half the key manager's CPU per refusal at 1,000 a second on a loaded machine (a
load cost 12 ms of CPU there). They are audited in bursts: per app, the first
AUDITED_REFUSALS_PER_WINDOW of a window get an audit row each, the further ones are counted into one
summary row when the window ends (as failed logins are, dsm_emulator/logins.py). A flood of bad
signatures wrote a row each, and so cost the key manager as much as the calls it refused
(scripts/login_flood.py --kinds bad-signature)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from dsm_emulator.audit import AuditEvent, AuditLog
from dsm_emulator.authz import Principal
from xkslab_shared import sigv4

# Not a missing or malformed header, a wrong scope or a skewed clock: those fail whatever the credentials.
CREDENTIAL_FAILURES = frozenset({sigv4.UNKNOWN_KEY, sigv4.MISMATCH})
AUDITED_REFUSALS_PER_WINDOW = 20
REFUSAL_WINDOW_S = 60.0


@dataclass
class _RefusalWindow:
    started: float
    principal: Principal
    audited: int = 0
    suppressed: int = 0


class RefusalBursts:
    """Per app: which refused authentications get an audit row of their own (the first
    AUDITED_REFUSALS_PER_WINDOW of a window), and the count of the others, for one summary row."""

    def __init__(
        self,
        audit: AuditLog,
        window_s: float = REFUSAL_WINDOW_S,
        audited: int = AUDITED_REFUSALS_PER_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._audit = audit
        self._window_s = window_s
        self._audited = audited
        self._clock = clock
        self._windows: dict[str, _RefusalWindow] = {}  # only apps the proxy resolved: bounded by them
        self._pending: list[tuple[Principal, int]] = []

    def audit_one(self, app_id: str, principal: Principal) -> bool:
        now = self._clock()
        window = self._windows.get(app_id)
        if window is None or now - window.started >= self._window_s:
            if window is not None and window.suppressed:
                self._pending.append((window.principal, window.suppressed))
            window = self._windows[app_id] = _RefusalWindow(now, principal)
        if window.audited < self._audited:
            window.audited += 1
            return True
        window.suppressed += 1
        return False

    def due(self, *, everything: bool = False) -> list[tuple[Principal, int]]:
        """(app principal, refusals not audited one by one) of the windows that have ended."""
        now = self._clock()
        for app_id, window in list(self._windows.items()):
            if everything or now - window.started >= self._window_s:
                del self._windows[app_id]
                if window.suppressed:
                    self._pending.append((window.principal, window.suppressed))
        due, self._pending = self._pending, []
        return due

    async def flush(self, *, everything: bool = False) -> int:
        """One audit row per app whose window ended with refusals not audited one by one (all of them
        with ``everything``, at shutdown). Returns the number of rows."""
        due = self.due(everything=everything)
        for principal, count in due:
            await self._audit.record(_summary_event(principal, count))
        return len(due)


def _summary_event(principal: Principal, count: int) -> AuditEvent:
    """The summary row of ``count`` refusals of one app not audited one by one."""
    event = AuditEvent.by(
        principal,
        "xks.authenticate",
        f"{count} further XKS requests refused at authentication (SigV4) within {REFUSAL_WINDOW_S:g} s "
        "were not audited one by one",
        action_type="AUTH",
    )
    return replace(event, severity="WARNING", outcome="refused")
