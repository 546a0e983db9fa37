"""App credentials and app logins: minting a secret or awsxks credential, showing it to an
administrator, rotating it (with the previous awsxks pair kept for a grace period), and checking it when
an app logs in or signs an XKS request. This is the only code that handles secret material -- sealing
contexts, secret hashes, unsealed SigV4 secrets -- and keeping it in one module keeps what can see a
secret, and what is audited when it does, easy to review.
"""

from __future__ import annotations

import dataclasses
import uuid
from types import MappingProxyType
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from dsm_emulator import secrets as creds
from dsm_emulator.admin.base import AdminBase, _flush, _id, _ref, _require_admin, now
from dsm_emulator.audit import AuditEvent
from dsm_emulator.authz import Principal
from dsm_emulator.errors import BadRequest, Conflict, DsmError, NotFound
from dsm_emulator.models import Account, App, AppCredential, AppGroup, is_uuid

CREDENTIAL_KINDS = ("secret", "awsxks")
AUTH_TYPES = {"secret": "Secret", "awsxks": "AwsXks"}


def secret_context(app_id: str) -> bytes:
    return b"secret|" + app_id.encode()


def awsxks_context(app_id: str, access_key_id: str) -> bytes:
    return b"awsxks|" + app_id.encode() + b"|" + access_key_id.encode()


class CredentialsMixin(AdminBase):
    async def _new_credential(
        self,
        app_id: str,
        kind: str,
        secret_size: int,
        access_key_id: str | None,
        secret_key: str | None,
    ) -> _NewCredential:
        """The credential row (status current, not yet added) and its secret. Validation happens here,
        before any transaction."""
        if kind == "secret":
            if access_key_id is not None or secret_key is not None:
                raise BadRequest("access_key_id and secret_key apply only to awsxks apps")
            if isinstance(secret_size, bool) or not isinstance(secret_size, int):
                raise BadRequest("secret_size must be an integer")
            if not creds.MIN_SECRET_BYTES <= secret_size <= creds.MAX_SECRET_BYTES:
                raise BadRequest(
                    f"secret_size must be {creds.MIN_SECRET_BYTES} to {creds.MAX_SECRET_BYTES} bytes"
                )
            secret = creds.new_app_secret(secret_size)
            row = AppCredential(
                id=str(uuid.uuid4()),
                app_id=app_id,
                kind="secret",
                status="current",
                secret_hash=self._hash_app_secret(secret),
                access_key_id=None,
                sealed_secret=self._keyring.seal(secret.encode(), secret_context(app_id)),
                created_at=now(),
            )
            return _NewCredential(row, secret, None)
        generated_id, generated_secret = creds.new_awsxks_credential()
        if access_key_id is not None and not creds.valid_access_key_id(access_key_id):
            raise BadRequest("access_key_id must be 20 to 30 characters of A-Z and 2-7")
        if secret_key is not None and not creds.valid_xks_secret(secret_key):
            raise BadRequest("secret_key must be 43 to 64 characters of a-z, A-Z, 0-9, '/', '+' and '='")
        access_key_id = access_key_id or generated_id
        secret = secret_key or generated_secret
        row = AppCredential(
            id=str(uuid.uuid4()),
            app_id=app_id,
            kind="awsxks",
            status="current",
            secret_hash=None,
            access_key_id=access_key_id,
            sealed_secret=self._keyring.seal(secret.encode(), awsxks_context(app_id, access_key_id)),
            created_at=now(),
        )
        return _NewCredential(row, secret, access_key_id)

    # ----------------------------------------------------------------------------- credentials

    async def get_credential(self, p: Principal, app_id: str) -> dict[str, Any]:
        """The app's credential, as DSM's ``AppCredential``: ``{"secret": str}`` for secret apps;
        ``{"awsxks": {"access_key_id", "secret_key"}}`` for awsxks apps, plus
        ``"previous": {"awsxks": {...}}`` while a rotated-out pair is still valid. Administrators only;
        audited (it discloses a secret)."""
        event = self._event(
            p, "app.credential", f"Viewed credential of app {_ref(app_id)}", object_id=_id(app_id)
        )
        try:
            _require_admin(p)
            async with self._sessions() as session:
                app = await self._app(session, p, app_id)
                rows = (
                    await session.scalars(select(AppCredential).where(AppCredential.app_id == app.app_id))
                ).all()
        except DsmError as exc:
            await self._audit.record(event.refused(exc))
            raise
        by_status = {row.status: row for row in rows if row.kind == _kind(app)}
        result: dict[str, Any]
        if _kind(app) == "secret":
            row = by_status.get("current")
            secret = (
                (await self._keyring.open(row.sealed_secret, secret_context(app.app_id))).decode()
                if row is not None and row.sealed_secret is not None
                else None
            )
            result = {"secret": secret}
        else:
            result = {}
            for status, key in (("current", "awsxks"), ("previous", "previous")):
                row = by_status.get(status)
                if row is not None:
                    pair = await self._open_awsxks(row)
                    view = {"access_key_id": pair[0], "secret_key": pair[1]}
                    result[key] = view if key == "awsxks" else {"awsxks": view}
            result.setdefault("awsxks", None)
        groups = await self.app_groups(app.app_id)
        await self._audit.record(
            self._event(
                p,
                "app.credential",
                f"Viewed credential of app {app.name}",
                object_id=app.app_id,
                group_ids=groups,
            )
        )
        return result

    async def _open_awsxks(self, row: AppCredential) -> tuple[str, str]:
        assert row.access_key_id is not None and row.sealed_secret is not None
        secret = await self._keyring.open(row.sealed_secret, awsxks_context(row.app_id, row.access_key_id))
        return row.access_key_id, secret.decode()

    async def reset_secret(
        self,
        p: Principal,
        app_id: str,
        *,
        secret_size: int = 64,
        access_key_id: str | None = None,
        secret_key: str | None = None,
    ) -> tuple[App, str]:
        """A new credential. Secret apps: the old secret stops working at once. awsxks apps: the current
        pair becomes ``previous`` (replacing an older previous) and keeps working until
        :meth:`remove_previous_credential`. Returns the app and the new secret."""
        refusal = self._event(
            p, "app.reset_secret", f"Reset secret of app {_ref(app_id)}", object_id=_id(app_id)
        )
        try:
            _require_admin(p)
            async with self._sessions() as session:
                app = await self._app(session, p, app_id)
            kind = _kind(app)
            credential = await self._new_credential(app_id, kind, secret_size, access_key_id, secret_key)
        except DsmError as exc:
            await self._audit.record(refusal.refused(exc))
            raise

        async def work(session: AsyncSession) -> tuple[App, AuditEvent]:
            app = await self._app(session, p, app_id, lock=True)
            if _kind(app) != kind:  # the app was replaced between the look-up and now
                raise Conflict("the app changed while its secret was being reset")
            rows = {
                row.status: row
                for row in (
                    await session.scalars(
                        select(AppCredential).where(
                            AppCredential.app_id == app.app_id, AppCredential.kind == kind
                        )
                    )
                ).all()
            }
            if kind == "secret":
                for row in rows.values():
                    await session.delete(row)
            else:
                await _access_key_id_free(session, credential.access_key_id or "")
                if "previous" in rows:
                    await session.delete(rows["previous"])
                    await session.flush()
                if "current" in rows:
                    rows["current"].status = "previous"
            await session.flush()
            session.add(credential.row)
            await _flush(session, "access key id already in use")
            groups = (await session.scalars(select(AppGroup.group_id).where(AppGroup.app_id == app_id))).all()
            return app, self._event(
                p,
                "app.reset_secret",
                f"Reset secret of app {app.name}",
                object_id=app.app_id,
                group_ids=groups,
            )

        app = await self._admin_apply(p, refusal, work)
        return app, credential.secret

    async def remove_previous_credential(self, p: Principal, app_id: str) -> None:
        """End the grace period of a rotated-out awsxks pair. NotFound if there is none."""
        refusal = self._event(
            p,
            "app.remove_previous_credential",
            f"Remove previous credential of app {_ref(app_id)}",
            object_id=_id(app_id),
        )

        async def work(session: AsyncSession) -> tuple[None, AuditEvent]:
            app = await self._app(session, p, app_id, lock=True)
            previous = await session.scalar(
                select(AppCredential).where(
                    AppCredential.app_id == app.app_id, AppCredential.status == "previous"
                )
            )
            if previous is None:
                raise NotFound("the app has no previous credential")
            await session.delete(previous)
            await session.flush()
            groups = (await session.scalars(select(AppGroup.group_id).where(AppGroup.app_id == app_id))).all()
            return None, self._event(
                p,
                "app.remove_previous_credential",
                f"Removed previous credential of app {app.name}",
                object_id=app.app_id,
                group_ids=groups,
            )

        await self._admin_apply(p, refusal, work)

    # ----------------------------------------------------------------------------- app logins

    async def authenticate_app(self, app_id: str, secret: str, source: str | None = None) -> App:
        """The enabled secret app with this secret; AuthFailed("invalid credentials") for an unknown or
        disabled app (or disabled account), an awsxks app, or a wrong secret, after the same keyed-hash
        work. ``source`` (the client's address) turns on failed-login limiting: TooManyAttempts (429)
        before anything is read once the app failed too often from there, and one audit row per burst
        of failures instead of one each."""
        # Bounded, so the limiter's memory is too (an app id is a 36-character UUID).
        identity = app_id[:40] if isinstance(app_id, str) else ""
        await self._check_shared_login_rate("app", identity, source)
        app: App | None = None
        account_enabled = False
        encoded: str | None = None
        if isinstance(app_id, str) and is_uuid(app_id):
            async with self._sessions() as session:
                app = await session.get(App, app_id)
                if app is not None:
                    account = await session.get(Account, app.acct_id)
                    account_enabled = account is not None and account.enabled
                    encoded = await session.scalar(
                        select(AppCredential.secret_hash).where(
                            AppCredential.app_id == app_id,
                            AppCredential.kind == "secret",
                            AppCredential.status == "current",
                        )
                    )
        ok = isinstance(secret, str) and await self._verify_app_secret(secret, encoded)
        if app is None:
            event = AuditEvent(
                operation="app.authenticate",
                action_type="AUTH",
                message="Authentication failed for an unknown app",
                actor_type="App",
                severity="WARNING",
            )
        else:
            groups = await self.app_groups(app.app_id)
            event = AuditEvent(
                operation="app.authenticate",
                action_type="AUTH",
                message=f"App {app.name} authenticated",
                actor_type="App",
                actor_id=app.app_id,
                acct_id=app.acct_id,
                group_ids=tuple(sorted(groups)),
                client_ip=source,
            )
        if app is None or not ok or not app.enabled or not account_enabled:
            if app is not None:
                reason = (
                    "app disabled" if ok and not app.enabled else "account disabled" if ok else "wrong secret"
                )
                event = _replace(
                    event, message=f"App {app.name} failed to authenticate ({reason})", severity="WARNING"
                )
            label = f"{app.name} ({app.app_id})" if app is not None else None
            raise await self._login_failed(
                event, "app", identity, source, label=label, actor_id=app.app_id if app else None
            )
        if creds.is_scrypt(encoded):
            await self._upgrade_secret_hash(app.app_id, encoded or "", secret)
        await self._login_succeeded(identity, source)
        await self._audit.record(event)
        return app

    async def _upgrade_secret_hash(self, app_id: str, old: str, secret: str) -> None:
        """Replace a scrypt row (from an older xkslab) by the keyed hash, now that the secret is known to
        match it. Only if the row still holds that hash: a concurrent reset wins."""
        async with self._sessions.begin() as session:
            await session.execute(
                update(AppCredential)
                .where(
                    AppCredential.app_id == app_id,
                    AppCredential.kind == "secret",
                    AppCredential.status == "current",
                    AppCredential.secret_hash == old,
                )
                .values(secret_hash=self._hash_app_secret(secret))
            )

    async def awsxks_secrets(self, app_id: str) -> list[tuple[str, str]]:
        """``[(access_key_id, secret)]`` of an enabled awsxks app, current first then previous, unsealed
        for SigV4 verification; empty for an unknown or disabled app."""
        if not is_uuid(app_id):
            return []
        async with self._sessions() as session:
            app = await session.get(App, app_id)
            if app is None or not app.enabled:
                return []
            rows = (
                await session.scalars(
                    select(AppCredential).where(
                        AppCredential.app_id == app_id, AppCredential.kind == "awsxks"
                    )
                )
            ).all()
        ordered = sorted(rows, key=lambda row: row.status != "current")
        return [await self._open_awsxks(row) for row in ordered]

    async def app_by_access_key_id(self, access_key_id: str) -> App | None:
        """The app that owns this awsxks access key id (current or previous), enabled or not."""
        if not creds.valid_access_key_id(access_key_id):
            return None
        async with self._sessions() as session:
            return await session.scalar(
                select(App)
                .join(AppCredential, AppCredential.app_id == App.app_id)
                .where(AppCredential.kind == "awsxks", AppCredential.access_key_id == access_key_id)
            )

    async def principal_for_app(self, app: App) -> Principal:
        groups = await self.app_groups(app.app_id)
        return Principal(
            kind="app",
            id=app.app_id,
            acct_id=app.acct_id,
            is_admin=False,
            group_permissions=MappingProxyType(dict(groups)),
        )


# ----------------------------------------------------------------------------------- helpers


class _NewCredential:
    __slots__ = ("access_key_id", "row", "secret")

    def __init__(self, row: AppCredential, secret: str, access_key_id: str | None) -> None:
        self.row = row
        self.secret = secret
        self.access_key_id = access_key_id


def _replace(event: AuditEvent, **changes: Any) -> AuditEvent:
    return dataclasses.replace(event, **changes)


def _kind(app: App) -> str:
    return "awsxks" if app.auth_type == AUTH_TYPES["awsxks"] else "secret"


async def _access_key_id_free(session: AsyncSession, access_key_id: str) -> None:
    taken = await session.scalar(select(AppCredential.id).where(AppCredential.access_key_id == access_key_id))
    if taken is not None:
        raise Conflict("access key id already in use")
