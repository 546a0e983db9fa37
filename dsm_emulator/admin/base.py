"""The core every administrative concern shares: the service's state (sessions, keyring, audit log),
the one way a mutation runs (admin check inside the audited transaction, which also invalidates every
process's caches), password hashing (scrypt, off the event loop) and app-secret hashing (a keyed
HMAC), constant-work verification, the failed-login limiter and its summary rows, and the app look-ups
that apps, credentials and app logins all need. They live in one place so that the audit and
authorisation discipline, and the timing behaviour of logins, cannot drift between concerns; the
per-concern mixins build on :class:`AdminBase` and import nothing from each other except apps from
credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dsm_emulator import secrets as creds
from dsm_emulator.approvals.gate import QuorumGate
from dsm_emulator.audit import AuditEvent, AuditLog
from dsm_emulator.authz import Principal
from dsm_emulator.errors import AccessDenied, AuthFailed, Conflict, NotFound, Sealed, TooManyAttempts
from dsm_emulator.keyring import Keyring
from dsm_emulator.login_store import ROW_KEY_PURPOSE, SharedLogins
from dsm_emulator.logins import ANY_IDENTITY, HashSlot, LoginLimiter
from dsm_emulator.models import App, AppGroup, Group, is_uuid

T = TypeVar("T")

INVALID_CREDENTIALS = "invalid credentials"


def now() -> datetime:
    return datetime.now(UTC)


class AdminBase:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        keyring: Keyring,
        audit: AuditLog,
        limiter: LoginLimiter | None = None,
        gate: QuorumGate | None = None,
    ):
        self._sessions = sessions
        self.gate = gate if gate is not None else QuorumGate(sessions, None, 0.0)
        self._keyring = keyring
        self._audit = audit
        self._dummy_hash: str | None = None
        # Password hashing takes at most one core: a burst of password logins queues here instead of
        # taking the cores the XKS path runs on, and a login known to be good goes first.
        self._kdf_slot = HashSlot()
        self._secret_keys: dict[int, bytes] = {}
        self.login_limiter = limiter if limiter is not None else LoginLimiter()
        # The counts a client spends are the fleet's (every worker and node): login_store.py.
        self.shared_logins = SharedLogins(
            sessions, self.login_limiter, lambda: self._keyring.derive(ROW_KEY_PURPOSE)
        )

    # ------------------------------------------------------------------------------- helpers

    @staticmethod
    def _event(
        p: Principal,
        operation: str,
        message: str,
        *,
        object_id: str | None = None,
        group_ids: Iterable[str] = (),
        action_type: str = "ADMINISTRATIVE",
    ) -> AuditEvent:
        return AuditEvent.by(
            p,
            operation,
            message,
            action_type=action_type,
            object_id=object_id,
            group_ids=tuple(sorted(group_ids)),
        )

    async def _admin_apply(
        self,
        p: Principal,
        refusal: AuditEvent,
        work: Callable[[AsyncSession], Awaitable[tuple[T, AuditEvent]]],
    ) -> T:
        """Run an administrative mutation: the caller must be an administrator (checked inside, so that
        a refusal is audited like any other)."""

        async def guarded(session: AsyncSession) -> tuple[T, AuditEvent]:
            _require_admin(p)
            return await work(session)

        return await self._audit.apply(guarded, refusal.refused)

    async def _hash(self, secret: str) -> str:
        async with self._kdf_slot.hold(first=True):
            return await asyncio.to_thread(creds.hash_secret, secret)

    async def _verify(
        self, secret: str, encoded: str | None, *, login: tuple[str, str, str | None] | None = None
    ) -> bool:
        """Constant work whether or not there is a hash to check against. With ``login`` (kind,
        identity, source), the login limits are checked again once it is this call's turn to hash:
        attempts that were already waiting when the limit tripped are refused (429) instead of hashed;
        and a login not known to be good needs a hash of the global budget (LoginLimiter)."""
        if encoded is None:
            if self._dummy_hash is None:
                self._dummy_hash = await self._hash(creds.new_app_secret())
            encoded, known = self._dummy_hash, False
        else:
            known = True
        first = True
        source = login[2] if login is not None else None
        if login is not None and source is not None:
            # A login not known to be good spends the global budget of doubtful hashes (429 past it),
            # so that a spray from many addresses cannot queue ahead of the ones that will succeed.
            kind, identity, _ = login
            limiter = self.login_limiter
            first = limiter.known_good(identity, source, known=known)
            if not first and not limiter.take_failing_hash(kind, source):
                raise TooManyAttempts(
                    "too many failed logins: try again later", limiter.failing_hash_retry_after()
                )
        async with self._kdf_slot.hold(first=first):
            if login is not None:
                self._check_login_rate(*login)
            ok = await asyncio.to_thread(creds.verify_secret, secret, encoded)
        return ok and known

    def _secret_key(self, term: int) -> bytes:
        key = self._secret_keys.get(term)
        if key is None:
            key = self._secret_keys[term] = self._keyring.derive(creds.KEYED_PURPOSE, term)
        return key

    def _hash_app_secret(self, secret: str) -> str:
        term = self._keyring.active_term
        return creds.keyed_hash(secret, self._secret_key(term), term)

    async def _verify_app_secret(self, secret: str, encoded: str | None) -> bool:
        """Keyed hashes are checked inline (microseconds); a scrypt row from an older xkslab as before.
        Without a row, the same keyed work, so an unknown app answers as fast as a wrong secret."""
        if creds.is_scrypt(encoded):
            return await self._verify(secret, encoded)
        term = creds.keyed_term(encoded or "")
        if term is not None and term not in self._keyring.terms:
            with contextlib.suppress(Sealed):  # hashed under a term another process rotated to
                await self._keyring.ensure_term(term)
        if term is None or term not in self._keyring.terms:
            creds.verify_keyed(secret, self._hash_app_secret(""), self._secret_key(self._keyring.active_term))
            return False
        return creds.verify_keyed(secret, encoded or "", self._secret_key(term))

    async def _check_shared_login_rate(self, kind: str, identity: str, source: str | None) -> None:
        """:meth:`_check_login_rate` on the fleet's counts (read from the database first)."""
        if source is not None:
            await self.shared_logins.pull(kind, identity, source)
        self._check_login_rate(kind, identity, source)

    async def _login_succeeded(self, identity: str, source: str | None) -> None:
        if source is not None:
            self.login_limiter.succeeded(identity, source)
            await self.shared_logins.succeeded(identity, source)

    def _check_login_rate(self, kind: str, identity: str, source: str | None) -> None:
        """TooManyAttempts, before any database read or hashing, when ``identity`` failed too often from
        ``source`` (None: a caller inside the process, never limited)."""
        if source is not None and not self.login_limiter.allow(kind, identity, source):
            raise TooManyAttempts(
                "too many failed logins: try again later",
                self.login_limiter.retry_after(identity, source),
            )

    async def _login_failed(
        self,
        event: AuditEvent,
        kind: str,
        identity: str,
        source: str | None,
        *,
        label: str | None = None,
        actor_id: str | None = None,
    ) -> AuthFailed:
        """Count a failed login and audit it when it is the first of its burst; the rest go into the
        burst's summary row (flush_login_summaries)."""
        error = AuthFailed(INVALID_CREDENTIALS)
        limiter = self.login_limiter
        # Counted here first: an attempt waiting for the hash slot checks again as soon as this one
        # lets it go, before the fleet's count below is written.
        own_row = source is None or limiter.failed(kind, identity, source, label=label, actor_id=actor_id)
        if source is not None:
            await self.shared_logins.failed(identity, source)
        if own_row:
            await self._audit.record(dataclasses.replace(event, client_ip=source).refused(error))
        return error

    async def flush_login_summaries(self, *, everything: bool = False) -> int:
        """Write one audit row per (identity, source) whose window of failed logins has ended with
        failures not audited one by one. Returns the number of rows."""
        summaries = self.login_limiter.due(everything=everything)
        await self.shared_logins.forget_old()
        for summary in summaries:
            noun = "app" if summary.kind == "app" else "user"
            who = (
                f"{noun}s (several identities)"
                if summary.identity == ANY_IDENTITY
                else f"{noun} {summary.label}"
                if summary.label
                else f"an unknown {noun}"
            )
            await self._audit.record(
                AuditEvent(
                    operation=f"{summary.kind}.authenticate",
                    action_type="AUTH",
                    message=(
                        f"{summary.count} further failed logins of {who} from {summary.source} "
                        f"within {summary.window_s:g} s were not audited one by one "
                        f"({summary.refused} of them refused with 429 before any check)"
                    ),
                    actor_type="App" if summary.kind == "app" else "User",
                    actor_id=summary.actor_id,
                    severity="WARNING",
                    outcome="refused",
                    client_ip=summary.source,
                )
            )
        return len(summaries)

    # ---------------------------------------------------------------------- shared look-ups

    async def _app(self, session: AsyncSession, p: Principal, app_id: str, *, lock: bool = False) -> App:
        app = None
        if is_uuid(app_id) and (p.kind != "app" or app_id == p.id):
            stmt = select(App).where(App.app_id == app_id, App.acct_id == p.acct_id)
            app = await session.scalar(stmt.with_for_update() if lock else stmt)
        if app is None:
            raise NotFound("app does not exist")
        return app

    async def app_groups(self, app_id: str) -> dict[str, frozenset[str]]:
        """group_id -> the app's permissions there."""
        if not is_uuid(app_id):
            return {}
        async with self._sessions() as session:
            rows = (await session.scalars(select(AppGroup).where(AppGroup.app_id == app_id))).all()
        return {row.group_id: frozenset(row.permissions) for row in rows}


# ----------------------------------------------------------------------------------- helpers


def _require_admin(p: Principal) -> None:
    if not p.is_admin:
        raise AccessDenied("only an account administrator may do this")


def _creator_type(p: Principal) -> str:
    return "app" if p.kind == "app" else "user"


def _ref(value: object) -> str:
    """A caller-supplied id as it may appear in an audit message: bounded, printable."""
    text = str(value)[:64]
    return text if text.isprintable() else repr(text)


def _id(value: object) -> str | None:
    """``value`` if it can go in an id column of the audit row."""
    return value if is_uuid(value) else None  # type: ignore[return-value]


async def _name_free(
    session: AsyncSession, model: type[Group] | type[App], acct_id: str, name: str, message: str
) -> None:
    taken = await session.scalar(select(model).where(model.acct_id == acct_id, model.name == name).limit(1))
    if taken is not None:
        raise Conflict(message)


async def _flush(session: AsyncSession, conflict: str) -> None:
    """Flush; a unique-constraint race lost to a concurrent writer is the same Conflict as the check."""
    try:
        await session.flush()
    except IntegrityError:
        raise Conflict(conflict) from None
