"""The users of an account as its principals see them: read, rename, change roles, remove, change one's
own password, and the account's own name, description and state.

Who may do what (Fortanix's account roles; the stricter reading where the reference is silent):

* any user of the account reads its users; an app reads none (Fortanix's UsersApi takes a user session);
* a user renames themselves; an account administrator renames anyone and is the only one who changes
  roles or removes a user;
* the account keeps at least one administrator: demoting or removing the last one is refused (409), under
  a lock on the account row so that two administrators demoting each other at once cannot both succeed;
* a user named in a group's quorum or custodian policy is not removed (409): the keys those policies guard
  would become unusable;
* a password changes only with the current one, checked with the same constant work and the same
  failed-login limits as a login.

Removing a user from their last account deletes the user: the lab has no users outside accounts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from dsm_emulator.admin.accounts import ACCOUNT_ADMINISTRATOR, ACCOUNT_ROLES
from dsm_emulator.admin.base import AdminBase, _flush, _ref
from dsm_emulator.admin.validation import _description, _name, _password
from dsm_emulator.audit import AuditEvent
from dsm_emulator.authz import Principal
from dsm_emulator.errors import AccessDenied, BadRequest, Conflict, NotFound
from dsm_emulator.models import Account, AccountMember, Group, User, is_uuid

# Flags Fortanix's UserAccountFlags add to the roles. STATEENABLED is the only state a lab user has, so
# asking for it asks for nothing new; PENDINGINVITE needs the e-mail invitation flow the lab lacks.
STATE_ENABLED = "STATEENABLED"
USER_NOT_FOUND = "user does not exist"


@dataclass(frozen=True)
class UserChanges:
    """What a PATCH of a user asks for (None: leave as is)."""

    first_name: str | None = None
    last_name: str | None = None
    role: str | None = None


@dataclass(frozen=True)
class AccountChanges:
    """What a PATCH of an account asks for (None: leave as is)."""

    name: str | None = None
    description: str | None = None
    enabled: bool | None = None


def parse_roles(value: object, field: str = "account_role") -> str:
    """The one account role in a UserAccountFlags list."""
    if isinstance(value, str | bytes) or not isinstance(value, list):
        raise BadRequest(f"{field} must be a list of account roles")
    roles = {str(v)[:32] for v in value}
    unknown = sorted(roles - ACCOUNT_ROLES - {STATE_ENABLED})
    if unknown:
        raise BadRequest(f"{field}: xkslab does not set {', '.join(unknown)}")
    chosen = roles & ACCOUNT_ROLES
    if len(chosen) != 1:
        raise BadRequest(f"{field} must hold exactly one of {', '.join(sorted(ACCOUNT_ROLES))}")
    return next(iter(chosen))


def person_name(value: object, field: str) -> str | None:
    """A first or last name; an empty string clears it."""
    if isinstance(value, str) and not value.strip():
        return None
    return _name(value, field)


class UsersMixin(AdminBase):
    async def list_users(self, p: Principal) -> list[tuple[User, list[str]]]:
        """The users of ``p``'s account and their roles there, by email."""
        await self._users_reader(p, "user.list", "List users")
        stmt = (
            select(User, AccountMember.roles)
            .join(AccountMember, AccountMember.user_id == User.user_id)
            .where(AccountMember.acct_id == p.acct_id)
            .order_by(User.email)
        )
        async with self._sessions() as session:
            return [(user, list(roles)) for user, roles in (await session.execute(stmt)).all()]

    async def get_user(self, p: Principal, user_id: str) -> tuple[User, list[str]]:
        """A user of ``p``'s account and their roles there."""
        await self._users_reader(p, "user.get", "Read a user")
        async with self._sessions() as session:
            user, member = await _member(session, p.acct_id, user_id)
        return user, list(member.roles)

    async def _users_reader(self, p: Principal, operation: str, message: str) -> None:
        if p.kind == "app":
            error = AccessDenied("only users may read users")
            await self._audit.record(AuditEvent.by(p, operation, message).refused(error))
            raise error

    async def update_user(self, p: Principal, user_id: str, changes: UserChanges) -> tuple[User, list[str]]:
        refusal = AuditEvent.by(p, "user.update", f"Update user {_ref(user_id)}")

        async def work(session: AsyncSession) -> tuple[tuple[User, list[str]], AuditEvent]:
            if p.kind != "user" or (p.id != user_id and not p.is_admin):
                raise AccessDenied("only an account administrator may change another user")
            if changes.role is not None and not p.is_admin:
                raise AccessDenied("only an account administrator may change roles")
            await _lock_account(session, p.acct_id)
            user, member = await _member(session, p.acct_id, user_id)
            done = []
            if changes.first_name is not None:
                user.first_name = changes.first_name or None
                done.append("first name")
            if changes.last_name is not None:
                user.last_name = changes.last_name or None
                done.append("last name")
            if changes.role is not None and [changes.role] != list(member.roles):
                if ACCOUNT_ADMINISTRATOR in member.roles:
                    await _keep_an_administrator(session, p.acct_id, user_id)
                member.roles = [changes.role]
                done.append(f"role {changes.role}")
            await session.flush()
            message = f"Updated user {user.email}: {', '.join(done) or 'nothing changed'}"
            return (user, list(member.roles)), AuditEvent.by(p, "user.update", message, object_id=user_id)

        return await self._audit.apply(work, refusal.refused)

    async def remove_user(self, p: Principal, user_id: str) -> None:
        """Remove a user from ``p``'s account, as its administrator (deleting the user when it was their
        last account)."""
        refusal = AuditEvent.by(p, "user.delete", f"Remove user {_ref(user_id)} from the account")

        async def work(session: AsyncSession) -> tuple[None, AuditEvent]:
            if p.kind != "user" or not p.is_admin:
                raise AccessDenied("only an account administrator may remove a user")
            await _lock_account(session, p.acct_id)
            user, member = await _member(session, p.acct_id, user_id)
            email = await _leave(session, user, member)
            return None, AuditEvent.by(
                p, "user.delete", f"Removed user {email} from the account", object_id=user_id
            )

        await self._audit.apply(work, refusal.refused)

    async def delete_self(self, p: Principal) -> None:
        """The calling user leaves every account they belong to and is deleted."""
        refusal = AuditEvent.by(p, "user.delete", "Delete one's own user")

        async def work(session: AsyncSession) -> tuple[None, AuditEvent]:
            if p.kind != "user":
                raise AccessDenied("only a user may delete their own user")
            members = (
                await session.scalars(
                    select(AccountMember).where(AccountMember.user_id == p.id).order_by(AccountMember.acct_id)
                )
            ).all()
            email = ""
            for member in members:
                await _lock_account(session, member.acct_id)
                user = await session.get(User, p.id)
                if user is None:
                    raise NotFound(USER_NOT_FOUND)
                email = await _leave(session, user, member)
            return None, AuditEvent.by(
                p, "user.delete", f"User {email} deleted their own user", object_id=p.id
            )

        await self._audit.apply(work, refusal.refused)

    async def change_password(self, p: Principal, current: object, new: object, source: str | None) -> None:
        """The caller's own password, given the current one; a wrong one counts as a failed login."""
        if p.kind != "user":
            error = AccessDenied("only a user has a password")
            await self._audit.record(AuditEvent.by(p, "user.password", "Change a password").refused(error))
            raise error
        new_password = _password(new, "new_password")
        async with self._sessions() as session:
            user = await session.get(User, p.id)
        if user is None:
            raise NotFound(USER_NOT_FOUND)
        identity = user.email
        self._check_login_rate("user", identity, source)
        ok = isinstance(current, str) and await self._verify(
            current, user.password_hash, login=("user", identity, source)
        )
        if not ok:
            event = AuditEvent.by(
                p, "user.password", f"User {identity} gave a wrong current password", action_type="AUTH"
            )
            raise await self._login_failed(event, "user", identity, source, label=identity, actor_id=p.id)
        password_hash = await self._hash(new_password)

        async def work(session: AsyncSession) -> tuple[None, AuditEvent]:
            row = await session.get(User, p.id)
            if row is None:
                raise NotFound(USER_NOT_FOUND)
            row.password_hash = password_hash
            await session.flush()
            return None, AuditEvent.by(
                p, "user.password", f"User {identity} changed their password", object_id=p.id
            )

        refusal = AuditEvent.by(p, "user.password", f"User {identity} changes their password")
        await self._audit.apply(work, refusal.refused)

    async def update_account(self, p: Principal, acct_id: str, changes: AccountChanges) -> Account:
        """Rename or describe the caller's account, as its administrator. Disabling it is refused: in
        Fortanix a system administrator does that, and the lab has none (nobody could enable it again)."""
        refusal = AuditEvent.by(p, "account.update", f"Update account {_ref(acct_id)}")
        name = _name(changes.name, "name") if changes.name is not None else None
        description = _description(changes.description)

        async def work(session: AsyncSession) -> tuple[Account, AuditEvent]:
            if acct_id != p.acct_id:
                raise NotFound("account does not exist")
            if not p.is_admin:
                raise AccessDenied("only an account administrator may change the account")
            if changes.enabled is False:
                raise BadRequest(
                    "enabled: xkslab does not disable an account from inside it (a Fortanix system "
                    "administrator does; the lab has none, so nobody could enable it again)"
                )
            account = await _lock_account(session, acct_id)
            done = []
            if name is not None and name != account.name:
                account.name = name
                done.append(f"name {name}")
                await _flush(session, "account already exists")
            if description is not None:
                account.description = description or None
                done.append("description")
            await session.flush()
            message = f"Updated account {account.name}: {', '.join(done) or 'nothing changed'}"
            return account, AuditEvent.by(p, "account.update", message, object_id=acct_id)

        return await self._audit.apply(work, refusal.refused)


async def _lock_account(session: AsyncSession, acct_id: str) -> Account:
    """The account row, locked for the transaction (PostgreSQL; SQLite has one writer anyway)."""
    account = await session.scalar(select(Account).where(Account.acct_id == acct_id).with_for_update())
    if account is None:
        raise NotFound("account does not exist")
    return account


async def _member(session: AsyncSession, acct_id: str, user_id: str) -> tuple[User, AccountMember]:
    """A user of the account; any other id is "does not exist" (no probing of other accounts)."""
    member = await session.get(AccountMember, (user_id, acct_id)) if is_uuid(user_id) else None
    user = await session.get(User, user_id) if member is not None else None
    if member is None or user is None:
        raise NotFound(USER_NOT_FOUND)
    return user, member


async def _keep_an_administrator(session: AsyncSession, acct_id: str, leaving: str) -> None:
    members = (await session.scalars(select(AccountMember).where(AccountMember.acct_id == acct_id))).all()
    if not any(ACCOUNT_ADMINISTRATOR in m.roles for m in members if m.user_id != leaving):
        raise Conflict(
            "the account's last administrator cannot lose the role: make another user administrator first"
        )


async def _leave(session: AsyncSession, user: User, member: AccountMember) -> str:
    """Take ``user`` out of ``member``'s account; delete the user when it was their last. Returns the
    user's email for the audit message."""
    if ACCOUNT_ADMINISTRATOR in member.roles:
        await _keep_an_administrator(session, member.acct_id, user.user_id)
    policies = (
        await session.execute(
            select(Group.name, Group.approval_policy, Group.custodian_policy).where(
                Group.acct_id == member.acct_id
            )
        )
    ).all()
    for group_name, approval, custodians in policies:
        if user.user_id in json.dumps([approval, custodians]):
            raise Conflict(
                f"the user is named in the quorum or custodian policy of group {group_name}: "
                "change the policy first"
            )
    email = user.email
    await session.delete(member)
    await session.flush()
    others = await session.scalar(
        select(AccountMember.acct_id).where(AccountMember.user_id == user.user_id).limit(1)
    )
    if others is None:
        await session.delete(user)
        await session.flush()
    return email
