"""Accounts, users, groups and apps: the administrative side of the key manager.

Every mutation commits together with its ADMINISTRATIVE audit row (``AuditLog.apply``), and a refused
mutation is audited as refused (``AuditEvent.refused``). Logins (users and apps) are AUTH events, success
and failure alike. Reads are not audited, except ``get_credential``: it shows a secret, so who looked is
recorded.

Who may do what:

* managing groups and apps, and reading credentials, needs ``principal.is_admin`` (an account
  administrator, or the local operator through the CLI); anyone else gets AccessDenied;
* any user of the account may read its groups and apps; an app sees only the groups it belongs to and
  itself (anything else is "does not exist", like objects outside its groups).

Credentials: a ``secret`` app keeps a salted scrypt hash of its secret (the only thing logins check) and,
sealed by the keyring under ``b"secret|" + app_id``, a copy shown to administrators by
``get_credential`` (sdkms-cli's ``get-app-api-key`` needs it back, as with real DSM). An ``awsxks`` app
keeps its access key id in clear (an identifier) and its SigV4 secret sealed under
``b"awsxks|" + app_id + b"|" + access_key_id``; a reset keeps the old pair as ``previous`` so that the
XKS proxy can be reconfigured without downtime. User passwords are scrypt hashes only.

scrypt costs tens of milliseconds of CPU; it runs in a worker thread, never on the event loop. Callers
that authenticate an API key on every request (session-less Basic auth) should cache the outcome.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Literal, TypeVar

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dsm_emulator import secrets as creds
from dsm_emulator.audit import AuditEvent, AuditLog
from dsm_emulator.authz import APP_PERMISSIONS, DEFAULT_APP_PERMISSIONS, Principal
from dsm_emulator.errors import AccessDenied, AuthFailed, BadRequest, Conflict, DsmError, NotFound
from dsm_emulator.keyring import Keyring
from dsm_emulator.models import (
    Account,
    AccountMember,
    App,
    AppCredential,
    AppGroup,
    Group,
    SecurityObject,
    User,
    is_uuid,
)

T = TypeVar("T")

ACCOUNT_ADMINISTRATOR = "ACCOUNTADMINISTRATOR"
ACCOUNT_ROLES = frozenset({"ACCOUNTADMINISTRATOR", "ACCOUNTMEMBER", "ACCOUNTAUDITOR"})
CREDENTIAL_KINDS = ("secret", "awsxks")
AUTH_TYPES = {"secret": "Secret", "awsxks": "AwsXks"}
MAX_NAME = 200
MAX_DESCRIPTION = 4096
MAX_EMAIL = 320
MAX_PASSWORD = 1024
MAX_APP_TYPE = 64
INVALID_CREDENTIALS = "invalid credentials"

GroupSpec = Mapping[str, Iterable[str] | None] | Iterable[str]


def now() -> datetime:
    return datetime.now(UTC)


def secret_context(app_id: str) -> bytes:
    return b"secret|" + app_id.encode()


def awsxks_context(app_id: str, access_key_id: str) -> bytes:
    return b"awsxks|" + app_id.encode() + b"|" + access_key_id.encode()


class AdminService:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], keyring: Keyring, audit: AuditLog):
        self._sessions = sessions
        self._keyring = keyring
        self._audit = audit
        self._dummy_hash: str | None = None
        # Bumped by every administrative change in this process, so caches of app credentials and
        # permissions (the XKS hot path) drop what they hold at once.
        self.generation = 0

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

        try:
            return await self._audit.apply(guarded, refusal.refused)
        finally:
            self.generation += 1

    async def _hash(self, secret: str) -> str:
        return await asyncio.to_thread(creds.hash_secret, secret)

    async def _verify(self, secret: str, encoded: str | None) -> bool:
        """Constant work whether or not there is a hash to check against."""
        if encoded is None:
            if self._dummy_hash is None:
                self._dummy_hash = await self._hash(creds.new_app_secret())
            await asyncio.to_thread(creds.verify_secret, secret, self._dummy_hash)
            return False
        return await asyncio.to_thread(creds.verify_secret, secret, encoded)

    # ------------------------------------------------------------------------ accounts, users

    async def create_account(self, name: str) -> Account:
        """A new, empty account (actor System)."""
        name = _name(name, "name")
        acct_id = str(uuid.uuid4())
        system = _system_event("account.create", f"Created account {name}", acct_id=acct_id)

        async def work(session: AsyncSession) -> tuple[Account, AuditEvent]:
            account = await self._new_account(session, acct_id, name)
            return account, system

        return await self._audit.apply(
            work, _system_event("account.create", f"Create account {name}").refused
        )

    async def _new_account(self, session: AsyncSession, acct_id: str, name: str) -> Account:
        if await session.scalar(select(Account.acct_id).where(Account.name == name)) is not None:
            raise Conflict("account already exists")
        account = Account(acct_id=acct_id, name=name, enabled=True, created_at=now())
        session.add(account)
        await _flush(session, "account already exists")
        return account

    async def bootstrap(
        self, account_name: str, admin_email: str, admin_password: str, group_name: str = "Default Group"
    ) -> tuple[Account, User, Group]:
        """Account, administrator (an ACCOUNTADMINISTRATOR member) and default group, all in one
        transaction with one audit row (actor System)."""
        account_name = _name(account_name, "account_name")
        email = _email(admin_email, "admin_email")
        password = _password(admin_password, "admin_password")
        group_name = _name(group_name, "group_name")
        password_hash = await self._hash(password)
        acct_id, user_id, group_id = (str(uuid.uuid4()) for _ in range(3))
        refusal = _system_event("account.bootstrap", f"Bootstrap account {account_name}")

        async def work(session: AsyncSession) -> tuple[tuple[Account, User, Group], AuditEvent]:
            account = await self._new_account(session, acct_id, account_name)
            if await session.scalar(select(User.user_id).where(User.email == email)) is not None:
                raise Conflict("user already exists")
            created = now()
            user = User(
                user_id=user_id,
                email=email,
                password_hash=password_hash,
                created_at=created,
                last_logged_in_at=None,
            )
            session.add(user)
            await _flush(session, "user already exists")
            session.add(AccountMember(user_id=user_id, acct_id=acct_id, roles=[ACCOUNT_ADMINISTRATOR]))
            group = Group(
                group_id=group_id,
                acct_id=acct_id,
                name=group_name,
                description=None,
                creator_type="user",
                creator_id=user_id,
                created_at=created,
            )
            session.add(group)
            await _flush(session, "group already exists")
            event = _system_event(
                "account.bootstrap",
                f"Created account {account_name} with administrator {email} and group {group_name}",
                acct_id=acct_id,
                object_id=acct_id,
                group_ids=(group_id,),
            )
            return (account, user, group), event

        return await self._audit.apply(work, refusal.refused)

    async def authenticate_user(self, email: str, password: str) -> User:
        """The user with this email and password; AuthFailed("invalid credentials") otherwise (same
        message and the same scrypt work whether the email is unknown or the password wrong)."""
        normalized = email.strip().lower() if isinstance(email, str) else ""
        async with self._sessions() as session:
            user = (
                await session.scalar(select(User).where(User.email == normalized))
                if 0 < len(normalized) <= MAX_EMAIL
                else None
            )
            accounts = (
                (
                    await session.scalars(
                        select(AccountMember.acct_id).where(AccountMember.user_id == user.user_id)
                    )
                ).all()
                if user is not None
                else []
            )
        acct_id = accounts[0] if len(accounts) == 1 else None
        ok = isinstance(password, str) and await self._verify(password, user.password_hash if user else None)
        if user is None or not ok:
            error = AuthFailed(INVALID_CREDENTIALS)
            event = AuditEvent(
                operation="user.authenticate",
                action_type="AUTH",
                message=(
                    f"User {user.email} failed to log in" if user else "Login failed for an unknown user"
                ),
                actor_type="User",
                actor_id=user.user_id if user else None,
                acct_id=acct_id,
                severity="WARNING",
            )
            await self._audit.record(event.refused(error))
            raise error
        user_id = user.user_id
        logged_in = AuditEvent(
            operation="user.authenticate",
            action_type="AUTH",
            message=f"User {user.email} logged in",
            actor_type="User",
            actor_id=user_id,
            acct_id=acct_id,
        )

        async def work(session: AsyncSession) -> tuple[User, AuditEvent]:
            row = await session.get(User, user_id)
            if row is None:  # deleted between the check and now
                raise AuthFailed(INVALID_CREDENTIALS)
            row.last_logged_in_at = now()
            await session.flush()
            return row, logged_in

        return await self._audit.apply(work, logged_in.refused)

    async def user_accounts(self, user_id: str) -> dict[str, list[str]]:
        """acct_id -> the user's roles there (the shape of DSM's ``UserAccountMap``)."""
        if not is_uuid(user_id):
            return {}
        async with self._sessions() as session:
            rows = (
                await session.scalars(select(AccountMember).where(AccountMember.user_id == user_id))
            ).all()
        return {row.acct_id: list(row.roles) for row in rows}

    async def get_account(self, p: Principal, acct_id: str) -> Account:
        """The caller's own account (any other is "does not exist")."""
        if acct_id != p.acct_id or not is_uuid(acct_id):
            raise NotFound("account does not exist")
        async with self._sessions() as session:
            account = await session.get(Account, acct_id)
        if account is None:
            raise NotFound("account does not exist")
        return account

    async def principal_for_user(self, user: User, acct_id: str) -> Principal:
        """The user acting in ``acct_id``: an administrator iff an ACCOUNTADMINISTRATOR there.
        AccessDenied if the user is not a member or the account is disabled."""
        if not is_uuid(acct_id):
            raise AccessDenied("the user is not a member of this account")
        async with self._sessions() as session:
            member = await session.get(AccountMember, (user.user_id, acct_id))
            account = await session.get(Account, acct_id)
        if member is None or account is None:
            raise AccessDenied("the user is not a member of this account")
        if not account.enabled:
            raise AccessDenied("the account is disabled")
        return Principal(
            kind="user", id=user.user_id, acct_id=acct_id, is_admin=ACCOUNT_ADMINISTRATOR in member.roles
        )

    # ---------------------------------------------------------------------------------- groups

    async def create_group(self, p: Principal, name: str, description: str | None = None) -> Group:
        name = _name(name, "name")
        description = _description(description)
        group_id = str(uuid.uuid4())
        refusal = self._event(p, "group.create", f"Create group {name}")

        async def work(session: AsyncSession) -> tuple[Group, AuditEvent]:
            await _name_free(session, Group, p.acct_id, name, "group already exists")
            group = Group(
                group_id=group_id,
                acct_id=p.acct_id,
                name=name,
                description=description,
                creator_type=_creator_type(p),
                creator_id=p.id or p.acct_id,
                created_at=now(),
            )
            session.add(group)
            await _flush(session, "group already exists")
            return group, self._event(
                p, "group.create", f"Created group {name}", object_id=group_id, group_ids=(group_id,)
            )

        return await self._admin_apply(p, refusal, work)

    async def list_groups(self, p: Principal) -> list[Group]:
        stmt = select(Group).where(Group.acct_id == p.acct_id).order_by(Group.created_at, Group.name)
        if p.kind == "app":
            stmt = stmt.where(Group.group_id.in_(list(p.group_permissions)))
        async with self._sessions() as session:
            return list((await session.scalars(stmt)).all())

    async def get_group(self, p: Principal, group_id: str) -> Group:
        async with self._sessions() as session:
            return await self._group(session, p, group_id)

    async def _group(
        self, session: AsyncSession, p: Principal, group_id: str, *, lock: bool = False
    ) -> Group:
        group = None
        if is_uuid(group_id):
            stmt = select(Group).where(Group.group_id == group_id, Group.acct_id == p.acct_id)
            group = await session.scalar(stmt.with_for_update() if lock else stmt)
        if group is None or (p.kind == "app" and group.group_id not in p.group_permissions):
            raise NotFound("group does not exist")
        return group

    async def update_group(
        self, p: Principal, group_id: str, name: str | None = None, description: str | None = None
    ) -> Group:
        """Rename and/or redescribe (None: unchanged; an empty description clears it)."""
        name = None if name is None else _name(name, "name")
        description = None if description is None else _description(description)
        refusal = self._event(p, "group.update", f"Update group {_ref(group_id)}", object_id=_id(group_id))

        async def work(session: AsyncSession) -> tuple[Group, AuditEvent]:
            group = await self._group(session, p, group_id, lock=True)
            changes = []
            if name is not None and name != group.name:
                await _name_free(session, Group, p.acct_id, name, "group already exists")
                changes.append(f"renamed from {group.name}")
                group.name = name
            if description is not None:
                group.description = description or None
                changes.append("description changed")
            await _flush(session, "group already exists")
            what = f" ({', '.join(changes)})" if changes else ""
            return group, self._event(
                p,
                "group.update",
                f"Updated group {group.name}{what}",
                object_id=group.group_id,
                group_ids=(group.group_id,),
            )

        return await self._admin_apply(p, refusal, work)

    async def delete_group(self, p: Principal, group_id: str) -> None:
        """Delete an empty group. Conflict while it holds security objects or is some app's only group;
        apps whose default group it was get another of their groups as default."""
        refusal = self._event(p, "group.delete", f"Delete group {_ref(group_id)}", object_id=_id(group_id))

        async def work(session: AsyncSession) -> tuple[None, AuditEvent]:
            group = await self._group(session, p, group_id, lock=True)
            held = await session.scalar(
                select(func.count()).select_from(SecurityObject).where(SecurityObject.group_id == group_id)
            )
            if held:
                raise Conflict(f"group still holds {held} security object(s)")
            members = (
                await session.scalars(select(AppGroup.app_id).where(AppGroup.group_id == group_id))
            ).all()
            for app_id in members:
                others = (
                    await session.scalars(
                        select(AppGroup.group_id)
                        .where(AppGroup.app_id == app_id, AppGroup.group_id != group_id)
                        .order_by(AppGroup.group_id)
                    )
                ).all()
                if not others:
                    raise Conflict(f"group is the only group of app {app_id}")
                app = await session.get(App, app_id)
                if app is not None and app.default_group_id == group_id:
                    app.default_group_id = others[0]
            await session.execute(delete(AppGroup).where(AppGroup.group_id == group_id))
            name = group.name
            await session.delete(group)
            await _flush(session, "group is not empty")
            return None, self._event(
                p, "group.delete", f"Deleted group {name}", object_id=group_id, group_ids=(group_id,)
            )

        await self._admin_apply(p, refusal, work)

    # ------------------------------------------------------------------------------------ apps

    async def create_app(
        self,
        p: Principal,
        name: str,
        *,
        groups: GroupSpec,
        default_group: str | None = None,
        description: str | None = None,
        app_type: str = "default",
        credential_kind: Literal["secret", "awsxks"] = "secret",
        awsxks_access_key_id: str | None = None,
        awsxks_secret: str | None = None,
    ) -> tuple[App, str]:
        """A new app in ``groups`` (group_id -> permissions, or a plain list of group ids, which get
        DEFAULT_APP_PERMISSIONS). Returns the app and its new secret (API-key secret or awsxks secret)."""
        name = _name(name, "name")
        description = _description(description)
        if not isinstance(app_type, str) or not 0 < len(app_type) <= MAX_APP_TYPE:
            raise BadRequest(f"app_type must be 1 to {MAX_APP_TYPE} characters")
        if credential_kind not in CREDENTIAL_KINDS:
            raise BadRequest("credential must be secret or awsxks")
        group_map = _parse_groups(groups, "add_groups")
        if not group_map:
            raise BadRequest("add_groups: an app needs at least one group")
        if default_group is None:
            default_group = next(iter(group_map))
        elif default_group not in group_map:
            raise BadRequest("default_group must be one of the app's groups")
        app_id = str(uuid.uuid4())
        credential = await self._new_credential(
            app_id, credential_kind, 64, awsxks_access_key_id, awsxks_secret
        )
        refusal = self._event(p, "app.create", f"Create app {name}", group_ids=group_map)

        async def work(session: AsyncSession) -> tuple[App, AuditEvent]:
            await self._require_groups(session, p.acct_id, group_map)
            await _name_free(session, App, p.acct_id, name, "app already exists")
            if credential.access_key_id is not None:
                await _access_key_id_free(session, credential.access_key_id)
            created = now()
            app = App(
                app_id=app_id,
                acct_id=p.acct_id,
                name=name,
                description=description,
                app_type=app_type,
                auth_type=AUTH_TYPES[credential_kind],
                default_group_id=default_group,
                enabled=True,
                creator_type=_creator_type(p),
                creator_id=p.id or p.acct_id,
                created_at=created,
                lastused_at=None,
            )
            session.add(app)
            await _flush(session, "app already exists")
            session.add_all(
                AppGroup(app_id=app_id, group_id=gid, permissions=sorted(perms))
                for gid, perms in group_map.items()
            )
            credential.row.created_at = created
            session.add(credential.row)
            await _flush(session, "access key id already in use")
            return app, self._event(
                p, "app.create", f"Created app {name}", object_id=app_id, group_ids=group_map
            )

        app = await self._admin_apply(p, refusal, work)
        return app, credential.secret

    async def _new_credential(
        self,
        app_id: str,
        kind: str,
        secret_size: int,
        access_key_id: str | None,
        secret_key: str | None,
    ) -> _NewCredential:
        """The credential row (status current, not yet added) and its secret. Validation happens here,
        before any transaction; scrypt runs in a thread."""
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
                secret_hash=await self._hash(secret),
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

    @staticmethod
    async def _require_groups(session: AsyncSession, acct_id: str, group_ids: Iterable[str]) -> None:
        wanted = set(group_ids)
        found = set(
            (
                await session.scalars(
                    select(Group.group_id).where(Group.acct_id == acct_id, Group.group_id.in_(wanted))
                )
            ).all()
        )
        missing = sorted(wanted - found)
        if missing:
            raise NotFound(f"group does not exist: {missing[0]}")

    async def list_apps(self, p: Principal, group_id: str | None = None) -> list[App]:
        """The account's apps (in ``group_id`` when given); an app sees only itself."""
        stmt = select(App).where(App.acct_id == p.acct_id).order_by(App.created_at, App.name)
        if group_id is not None:
            if not is_uuid(group_id):
                raise BadRequest("group_id is not a valid id")
            stmt = stmt.where(App.app_id.in_(select(AppGroup.app_id).where(AppGroup.group_id == group_id)))
        if p.kind == "app":
            stmt = stmt.where(App.app_id == p.id)
        async with self._sessions() as session:
            return list((await session.scalars(stmt)).all())

    async def get_app(self, p: Principal, app_id: str) -> App:
        async with self._sessions() as session:
            return await self._app(session, p, app_id)

    async def _app(self, session: AsyncSession, p: Principal, app_id: str, *, lock: bool = False) -> App:
        app = None
        if is_uuid(app_id) and (p.kind != "app" or app_id == p.id):
            stmt = select(App).where(App.app_id == app_id, App.acct_id == p.acct_id)
            app = await session.scalar(stmt.with_for_update() if lock else stmt)
        if app is None:
            raise NotFound("app does not exist")
        return app

    async def update_app(
        self,
        p: Principal,
        app_id: str,
        *,
        name: str | None = None,
        description: str | None = None,
        enabled: bool | None = None,
        add_groups: GroupSpec | None = None,
        del_groups: Iterable[str] | None = None,
        mod_groups: GroupSpec | None = None,
        default_group: str | None = None,
    ) -> App:
        """Partial update (None: unchanged). ``add_groups`` adds memberships (or replaces the permissions
        of one the app has), ``mod_groups`` changes permissions of existing memberships, ``del_groups``
        removes memberships; the app keeps at least one group. If its default group is removed and no
        ``default_group`` is given, another of its groups becomes the default."""
        name = None if name is None else _name(name, "name")
        description = None if description is None else _description(description)
        if enabled is not None and not isinstance(enabled, bool):
            raise BadRequest("enabled must be true or false")
        adds = {} if add_groups is None else _parse_groups(add_groups, "add_groups")
        mods = {} if mod_groups is None else _parse_groups(mod_groups, "mod_groups")
        dels = set() if del_groups is None else set(_parse_groups(del_groups, "del_groups", ids_only=True))
        both = sorted(dels & (set(adds) | set(mods)))
        if both:
            raise BadRequest(f"del_groups: group {both[0]} is also added or modified")
        if default_group is not None and not is_uuid(default_group):
            raise BadRequest("default_group is not a valid group id")
        refusal = self._event(p, "app.update", f"Update app {_ref(app_id)}", object_id=_id(app_id))

        async def work(session: AsyncSession) -> tuple[App, AuditEvent]:
            app = await self._app(session, p, app_id, lock=True)
            current = {
                m.group_id: m
                for m in (await session.scalars(select(AppGroup).where(AppGroup.app_id == app.app_id))).all()
            }
            changes: list[str] = []
            if name is not None and name != app.name:
                await _name_free(session, App, p.acct_id, name, "app already exists")
                changes.append(f"renamed from {app.name}")
                app.name = name
            if description is not None:
                app.description = description or None
                changes.append("description changed")
            if enabled is not None and enabled != app.enabled:
                app.enabled = enabled
                changes.append("enabled" if enabled else "disabled")
            for gid in sorted(dels):
                if gid not in current:
                    raise BadRequest(f"del_groups: the app is not in group {gid}")
            for gid in mods:
                if gid not in current and gid not in adds:
                    raise BadRequest(f"mod_groups: the app is not in group {gid}")
            await self._require_groups(session, p.acct_id, adds)
            remaining = (set(current) - dels) | set(adds)
            if not remaining:
                raise BadRequest("del_groups: an app must stay in at least one group")
            for gid in sorted(dels):
                await session.delete(current.pop(gid))
            for gid, perms in {**adds, **mods}.items():
                if gid in current:
                    current[gid].permissions = sorted(perms)
                else:
                    current[gid] = AppGroup(app_id=app.app_id, group_id=gid, permissions=sorted(perms))
                    session.add(current[gid])
            if adds or mods or dels:
                changes.append("groups changed")
            if default_group is not None:
                if default_group not in remaining:
                    raise BadRequest("default_group must be one of the app's groups")
                if default_group != app.default_group_id:
                    changes.append("default group changed")
                app.default_group_id = default_group
            elif app.default_group_id not in remaining:
                app.default_group_id = sorted(remaining)[0]
                changes.append("default group changed")
            await _flush(session, "app already exists")
            what = f" ({', '.join(changes)})" if changes else ""
            return app, self._event(
                p, "app.update", f"Updated app {app.name}{what}", object_id=app.app_id, group_ids=remaining
            )

        return await self._admin_apply(p, refusal, work)

    async def delete_app(self, p: Principal, app_id: str) -> None:
        refusal = self._event(p, "app.delete", f"Delete app {_ref(app_id)}", object_id=_id(app_id))

        async def work(session: AsyncSession) -> tuple[None, AuditEvent]:
            app = await self._app(session, p, app_id, lock=True)
            group_ids = (
                await session.scalars(select(AppGroup.group_id).where(AppGroup.app_id == app_id))
            ).all()
            await session.execute(delete(AppCredential).where(AppCredential.app_id == app_id))
            await session.execute(delete(AppGroup).where(AppGroup.app_id == app_id))
            name = app.name
            await session.delete(app)
            await session.flush()
            return None, self._event(
                p, "app.delete", f"Deleted app {name}", object_id=app_id, group_ids=group_ids
            )

        await self._admin_apply(p, refusal, work)

    async def app_groups(self, app_id: str) -> dict[str, frozenset[str]]:
        """group_id -> the app's permissions there."""
        if not is_uuid(app_id):
            return {}
        async with self._sessions() as session:
            rows = (await session.scalars(select(AppGroup).where(AppGroup.app_id == app_id))).all()
        return {row.group_id: frozenset(row.permissions) for row in rows}

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
                self._keyring.open(row.sealed_secret, secret_context(app.app_id)).decode()
                if row is not None and row.sealed_secret is not None
                else None
            )
            result = {"secret": secret}
        else:
            result = {}
            for status, key in (("current", "awsxks"), ("previous", "previous")):
                row = by_status.get(status)
                if row is not None:
                    pair = self._open_awsxks(row)
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

    def _open_awsxks(self, row: AppCredential) -> tuple[str, str]:
        assert row.access_key_id is not None and row.sealed_secret is not None
        secret = self._keyring.open(row.sealed_secret, awsxks_context(row.app_id, row.access_key_id))
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

    async def authenticate_app(self, app_id: str, secret: str) -> App:
        """The enabled secret app with this secret; AuthFailed("invalid credentials") for an unknown or
        disabled app (or disabled account), an awsxks app, or a wrong secret, after the same scrypt work."""
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
        ok = isinstance(secret, str) and await self._verify(secret, encoded)
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
            )
        if app is None or not ok or not app.enabled or not account_enabled:
            error = AuthFailed(INVALID_CREDENTIALS)
            if app is not None:
                reason = (
                    "app disabled" if ok and not app.enabled else "account disabled" if ok else "wrong secret"
                )
                event = _replace(
                    event, message=f"App {app.name} failed to authenticate ({reason})", severity="WARNING"
                )
            await self._audit.record(event.refused(error))
            raise error
        await self._audit.record(event)
        return app

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
        return [self._open_awsxks(row) for row in ordered]

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


def _require_admin(p: Principal) -> None:
    if not p.is_admin:
        raise AccessDenied("only an account administrator may do this")


def _system_event(
    operation: str,
    message: str,
    *,
    acct_id: str | None = None,
    object_id: str | None = None,
    group_ids: Iterable[str] = (),
) -> AuditEvent:
    return AuditEvent(
        operation=operation,
        action_type="ADMINISTRATIVE",
        message=message,
        actor_type="System",
        acct_id=acct_id,
        object_id=object_id,
        group_ids=tuple(group_ids),
    )


def _replace(event: AuditEvent, **changes: Any) -> AuditEvent:
    return dataclasses.replace(event, **changes)


def _creator_type(p: Principal) -> str:
    return "app" if p.kind == "app" else "user"


def _kind(app: App) -> str:
    return "awsxks" if app.auth_type == AUTH_TYPES["awsxks"] else "secret"


def _ref(value: object) -> str:
    """A caller-supplied id as it may appear in an audit message: bounded, printable."""
    text = str(value)[:64]
    return text if text.isprintable() else repr(text)


def _id(value: object) -> str | None:
    """``value`` if it can go in an id column of the audit row."""
    return value if is_uuid(value) else None  # type: ignore[return-value]


def _name(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{field} must be a string")
    name = value.strip()
    if not 0 < len(name) <= MAX_NAME:
        raise BadRequest(f"{field} must be 1 to {MAX_NAME} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise BadRequest(f"{field} must not contain control characters")
    return name


def _description(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest("description must be a string")
    if len(value) > MAX_DESCRIPTION:
        raise BadRequest(f"description must be at most {MAX_DESCRIPTION} characters")
    return value


def _email(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{field} must be a string")
    email = value.strip().lower()
    local, at, domain = email.partition("@")
    if not at or not local or not domain or len(email) > MAX_EMAIL or any(c.isspace() for c in email):
        raise BadRequest(f"{field} must be an email address")
    return email


def _password(value: object, field: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_PASSWORD:
        raise BadRequest(f"{field} must be 1 to {MAX_PASSWORD} characters")
    return value


def _parse_groups(spec: object, field: str, *, ids_only: bool = False) -> dict[str, frozenset[str]]:
    """group_id -> permissions from a map (group_id -> permission list; null means the defaults) or a
    plain list of group ids (the defaults). Order is kept: the first group is the default default."""
    if isinstance(spec, str | bytes) or spec is None:
        raise BadRequest(f"{field} must be a list of group ids or a map of group id to permissions")
    result: dict[str, frozenset[str]] = {}
    if isinstance(spec, Mapping) and not ids_only:
        items: Iterable[tuple[object, object]] = spec.items()
    elif isinstance(spec, Iterable):
        items = ((gid, None) for gid in spec)
    else:
        raise BadRequest(f"{field} must be a list of group ids or a map of group id to permissions")
    for gid, perms in items:
        if not is_uuid(gid):
            raise BadRequest(f"{field}: {str(gid)[:64]!r} is not a valid group id")
        assert isinstance(gid, str)
        if perms is None:
            result[gid] = DEFAULT_APP_PERMISSIONS
            continue
        if isinstance(perms, str | bytes) or not isinstance(perms, Iterable):
            raise BadRequest(f"{field}: the permissions of group {gid} must be a list")
        perm_list = list(perms)
        unknown = sorted(
            {str(x)[:32] for x in perm_list if not isinstance(x, str) or x not in APP_PERMISSIONS}
        )
        if unknown:
            raise BadRequest(f"{field}: unknown permission(s) {', '.join(unknown)}")
        result[gid] = frozenset(perm_list)
    return result


async def _name_free(
    session: AsyncSession, model: type[Group] | type[App], acct_id: str, name: str, message: str
) -> None:
    taken = await session.scalar(select(model).where(model.acct_id == acct_id, model.name == name).limit(1))
    if taken is not None:
        raise Conflict(message)


async def _access_key_id_free(session: AsyncSession, access_key_id: str) -> None:
    taken = await session.scalar(select(AppCredential.id).where(AppCredential.access_key_id == access_key_id))
    if taken is not None:
        raise Conflict("access key id already in use")


async def _flush(session: AsyncSession, conflict: str) -> None:
    """Flush; a unique-constraint race lost to a concurrent writer is the same Conflict as the check."""
    try:
        await session.flush()
    except IntegrityError:
        raise Conflict(conflict) from None
