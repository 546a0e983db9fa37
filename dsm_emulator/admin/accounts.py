"""Accounts and users: creating an account, bootstrapping one with its administrator and first
group, user logins, and the principal a user acts as. These are the only operations done by the System
rather than by an account's principal, and the only ones that handle users and passwords, so they stand
apart from the management of an account's contents.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from dsm_emulator.admin.base import INVALID_CREDENTIALS, AdminBase, _flush, now
from dsm_emulator.admin.validation import MAX_EMAIL, _email, _name, _password
from dsm_emulator.audit import AuditEvent
from dsm_emulator.authz import Principal
from dsm_emulator.errors import AccessDenied, AuthFailed, BadRequest, Conflict, NotFound
from dsm_emulator.models import Account, AccountMember, Group, User, is_uuid

ACCOUNT_ADMINISTRATOR = "ACCOUNTADMINISTRATOR"
ACCOUNT_ROLES = frozenset({"ACCOUNTADMINISTRATOR", "ACCOUNTMEMBER", "ACCOUNTAUDITOR"})


class AccountsMixin(AdminBase):
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

    async def create_user(
        self,
        p: Principal,
        email: str,
        password: str,
        role: str = "ACCOUNTMEMBER",
        names: tuple[str | None, str | None] = (None, None),
    ) -> User:
        """A new user of ``p``'s account with ``role`` (one of ACCOUNT_ROLES) and (first, last) ``names``,
        as its administrator. The lab has no invitations or e-mail: the user can log in with this password
        at once."""
        email = _email(email, "user_email")
        password = _password(password, "password")
        if role not in ACCOUNT_ROLES:
            raise BadRequest(f"role must be one of {', '.join(sorted(ACCOUNT_ROLES))}")
        password_hash = await self._hash(password)
        user_id = str(uuid.uuid4())
        refusal = AuditEvent.by(p, "user.create", f"Create user {email}")

        async def work(session: AsyncSession) -> tuple[User, AuditEvent]:
            if await session.scalar(select(User.user_id).where(User.email == email)) is not None:
                raise Conflict("user already exists")
            user = User(
                user_id=user_id,
                email=email,
                password_hash=password_hash,
                created_at=now(),
                last_logged_in_at=None,
                first_name=names[0],
                last_name=names[1],
            )
            session.add(user)
            await _flush(session, "user already exists")
            session.add(AccountMember(user_id=user_id, acct_id=p.acct_id, roles=[role]))
            await _flush(session, "user already exists")
            message = f"Created user {email} ({role})"
            return user, AuditEvent.by(p, "user.create", message, object_id=user_id)

        return await self._admin_apply(p, refusal, work)

    async def user_by_email(self, p: Principal, email: str | None) -> User:
        """A user of ``p``'s account by email (None: the account's only administrator); NotFound
        otherwise."""
        normalized = email.strip().lower() if isinstance(email, str) else None
        stmt = (
            select(User, AccountMember)
            .join(AccountMember, AccountMember.user_id == User.user_id)
            .where(AccountMember.acct_id == p.acct_id)
        )
        async with self._sessions() as session:
            rows = (await session.execute(stmt)).all()
        users = [
            user
            for user, member in rows
            if (normalized is None and ACCOUNT_ADMINISTRATOR in member.roles) or user.email == normalized
        ]
        if len(users) != 1:
            what = "user does not exist" if normalized is not None else "expected one administrator"
            raise NotFound(what)
        return users[0]

    async def check_user_password(self, user_id: str, password: object) -> bool:
        """Whether ``password`` is this user's (constant work when the user is unknown)."""
        async with self._sessions() as session:
            user = await session.get(User, user_id) if is_uuid(user_id) else None
        if not isinstance(password, str) or not password:
            return False
        ok = await self._verify(password, user.password_hash if user is not None else None)
        return ok and user is not None

    async def authenticate_user(self, email: str, password: str, source: str | None = None) -> User:
        """The user with this email and password; AuthFailed("invalid credentials") otherwise (same
        message and the same scrypt work whether the email is unknown or the password wrong). With
        ``source`` (the client's address), failed logins are limited per (email, source): past the limit,
        TooManyAttempts (429) before scrypt runs, and a burst is audited as one row plus a summary."""
        normalized = email.strip().lower() if isinstance(email, str) else ""
        # Bounded, so the limiter's memory is too (longer ones match no user anyway).
        identity = normalized[: MAX_EMAIL + 1]
        await self._check_shared_login_rate("user", identity, source)
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
        ok = isinstance(password, str) and await self._verify(
            password, user.password_hash if user else None, login=("user", identity, source)
        )
        if user is None or not ok:
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
            raise await self._login_failed(
                event,
                "user",
                identity,
                source,
                label=user.email if user else None,
                actor_id=user.user_id if user else None,
            )
        await self._login_succeeded(identity, source)
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

        # A login changes only its timestamp: no cache depends on it, so it must not empty them.
        return await self._audit.apply(work, logged_in.refused, invalidates=False)

    async def set_user_password(
        self, p: Principal, password: str, email: str | None = None
    ) -> tuple[str, bool]:
        """Set the password of a user of ``p``'s account (``email``; None: the account's only
        administrator), as an administrator of that account. Returns (the user's email, whether it
        changed): the password that already works is not set again, so repeating it adds no audit row."""
        password = _password(password, "password")
        refusal = AuditEvent.by(p, "user.password", "Set a user's password")
        if not p.is_admin:
            error = AccessDenied("only an account administrator may do this")
            await self._audit.record(refusal.refused(error))
            raise error
        async with self._sessions() as session:
            stmt = (
                select(User)
                .join(AccountMember, AccountMember.user_id == User.user_id)
                .where(AccountMember.acct_id == p.acct_id)
                .order_by(User.created_at)
            )
            users = [
                (user, member)
                for user, member in (await session.execute(stmt.add_columns(AccountMember))).all()
                if (email is None and ACCOUNT_ADMINISTRATOR in member.roles)
                or (email is not None and user.email == email.strip().lower())
            ]
        if len(users) != 1:
            what = "user" if email is not None else "administrator"
            missing = NotFound(f"expected one {what} in the account, found {len(users)}")
            await self._audit.record(refusal.refused(missing))
            raise missing
        user = users[0][0]
        if await self._verify(password, user.password_hash):
            return user.email, False
        password_hash = await self._hash(password)
        user_id, user_email = user.user_id, user.email

        async def work(session: AsyncSession) -> tuple[str, AuditEvent]:
            row = await session.get(User, user_id)
            if row is None:  # deleted since it was read
                raise NotFound("user does not exist")
            row.password_hash = password_hash
            await session.flush()
            message = f"Password of user {user_email} changed"
            return user_email, AuditEvent.by(p, "user.password", message, object_id=user_id)

        return (await self._admin_apply(p, refusal, work)), True

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
