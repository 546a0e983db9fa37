"""Groups: the unit of access in an account (every security object and every app permission hangs off
a group). Their rules are self-contained -- an app sees only its own groups, and a group cannot go while
it holds objects or is some app's only group -- so they are kept in one place, apart from apps.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from dsm_emulator.admin.base import AdminBase, _creator_type, _flush, _id, _name_free, _ref, now
from dsm_emulator.admin.credentials import AUTH_TYPES
from dsm_emulator.admin.validation import _description, _name
from dsm_emulator.approvals.gate import Touch
from dsm_emulator.approvals.policy import CRYPTO, GROUP_CHANGE, members_of, parse_policy, protected
from dsm_emulator.audit import AuditEvent
from dsm_emulator.authz import Principal
from dsm_emulator.errors import BadRequest, Conflict, NotFound
from dsm_emulator.models import AccountMember, App, AppGroup, Group, SecurityObject, is_uuid

# PATCH /sys/v1/groups/{id} {"approval_policy": "remove"} drops the policy (null leaves it as it is).
REMOVE_POLICY = "remove"
XKS_HELD = (
    "an awsxks app cannot be in a group whose approval policy protects crypto operations: KMS gives an "
    "XKS call 250 ms, and a held operation waits for a quorum"
)


def _policy_arg(value: Any) -> dict[str, Any] | None:
    return parse_policy(value) if value is not None else None


async def check_policy(session: AsyncSession, acct_id: str, group_id: str, policy: dict[str, Any]) -> None:
    """Every member names a user or app of the account, and no awsxks app is held up by the policy."""
    for kind, ident in sorted(members_of(policy["quorum"])):
        found: AccountMember | App | None
        if kind == "user":
            found = await session.get(AccountMember, (ident, acct_id))
        else:
            app = await session.get(App, ident)
            found = app if app is not None and app.acct_id == acct_id else None
        if found is None:
            raise BadRequest(f"approval_policy.quorum: {kind} {ident} is not a {kind} of this account")
    if CRYPTO in protected(policy):
        xks = await session.scalar(
            select(App.app_id)
            .join(AppGroup, AppGroup.app_id == App.app_id)
            .where(AppGroup.group_id == group_id, App.auth_type == AUTH_TYPES["awsxks"])
            .limit(1)
        )
        if xks is not None:
            raise BadRequest(
                f"approval_policy.protect_crypto_operations: group holds awsxks app {xks}; {XKS_HELD}"
            )


async def check_custodians(session: AsyncSession, group: Group) -> None:
    """A custodian policy works only beside an approval policy (Fortanix: a quorum approval policy must be
    set up first), and names users of the account."""
    policy = group.custodian_policy
    if policy is None:
        return
    if group.approval_policy is None:
        raise BadRequest(
            "custodian_policy needs the group's approval_policy: exports and imports by key components "
            "run only through approval requests"
        )
    for _kind, ident in sorted(members_of(policy["quorum"])):
        if await session.get(AccountMember, (ident, group.acct_id)) is None:
            raise BadRequest(f"custodian_policy.quorum: user {ident} is not a user of this account")


async def refuse_xks_hold(session: AsyncSession, group_ids: Iterable[str]) -> None:
    """BadRequest if any of ``group_ids`` (being granted to an awsxks app) protects crypto operations."""
    for group_id in sorted(set(group_ids)):
        policy = await session.scalar(select(Group.approval_policy).where(Group.group_id == group_id))
        if CRYPTO in protected(policy):
            raise BadRequest(
                f"group {group_id} has an approval policy with protect_crypto_operations; {XKS_HELD}"
            )


class GroupsMixin(AdminBase):
    async def create_group(
        self,
        p: Principal,
        name: str,
        description: str | None = None,
        settings: Mapping[str, Any] | None = None,
        approval_policy: Any = None,
        *,
        history_window_s: int | None = None,
    ) -> Group:
        """``settings``: group columns (policies, custom_metadata) to their parsed values;
        ``approval_policy``: the GroupApprovalPolicy as sent (parsed and checked here);
        ``history_window_s``: its keys keep a history revertible for that long (a window already checked
        by ``dsm_emulator.keys.undo_window``)."""
        name = _name(name, "name")
        description = _description(description)
        policy = _policy_arg(approval_policy)
        group_id = str(uuid.uuid4())
        refusal = self._event(p, "group.create", f"Create group {name}")

        async def work(session: AsyncSession) -> tuple[Group, AuditEvent]:
            await _name_free(session, Group, p.acct_id, name, "group already exists")
            if policy is not None:
                await check_policy(session, p.acct_id, group_id, policy)
            group = Group(
                group_id=group_id,
                acct_id=p.acct_id,
                name=name,
                description=description,
                creator_type=_creator_type(p),
                creator_id=p.id or p.acct_id,
                created_at=now(),
                approval_policy=policy,
                key_history_window_s=history_window_s,
            )
            for column, value in (settings or {}).items():
                setattr(group, column, value)
            await check_custodians(session, group)
            session.add(group)
            await _flush(session, "group already exists")
            policies = sorted(column for column, value in (settings or {}).items() if value is not None)
            policies += ["approval_policy"] if policy is not None else []
            if history_window_s is not None:
                policies.append(f"key history window {history_window_s} s")
            what = f" with {', '.join(policies)}" if policies else ""
            return group, self._event(
                p, "group.create", f"Created group {name}{what}", object_id=group_id, group_ids=(group_id,)
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
        self,
        p: Principal,
        group_id: str,
        name: str | None = None,
        description: str | None = None,
        settings: Mapping[str, Any] | None = None,
        approval_policy: Any = None,
        *,
        history_window_s: int | None = None,
        remove_history_policy: bool = False,
    ) -> Group:
        """Rename, redescribe (None: unchanged; an empty description clears it), set ``settings`` (group
        columns: policies, custom_metadata, to their new parsed values; None clears one), set or remove
        (``"remove"``) the approval policy, set or remove the key history window (items already recorded
        keep their windows). A group that has an approval policy changes only with a quorum's approval
        (an approval request for this PATCH)."""
        name = None if name is None else _name(name, "name")
        description = None if description is None else _description(description)
        remove = approval_policy == REMOVE_POLICY
        policy = None if remove else _policy_arg(approval_policy)
        refusal = self._event(p, "group.update", f"Update group {_ref(group_id)}", object_id=_id(group_id))

        async def work(session: AsyncSession) -> tuple[Group, AuditEvent]:
            group = await self._group(session, p, group_id, lock=True)
            await self.gate.check(p, [Touch.group(group.group_id, GROUP_CHANGE)])
            changes = []
            if remove and group.approval_policy is not None:
                group.approval_policy = None
                changes.append("approval policy removed")
            if policy is not None:
                await check_policy(session, p.acct_id, group.group_id, policy)
                group.approval_policy = policy
                changes.append("approval policy set")
            if name is not None and name != group.name:
                await _name_free(session, Group, p.acct_id, name, "group already exists")
                changes.append(f"renamed from {group.name}")
                group.name = name
            if description is not None:
                group.description = description or None
                changes.append("description changed")
            for column, value in (settings or {}).items():
                if getattr(group, column) != value:
                    setattr(group, column, value)
                    changes.append(f"{column} {'set' if value is not None else 'removed'}")
            if history_window_s is not None and history_window_s != group.key_history_window_s:
                group.key_history_window_s = history_window_s
                changes.append(f"key history window {history_window_s} s")
            if remove_history_policy and group.key_history_window_s is not None:
                group.key_history_window_s = None
                changes.append("key history policy removed")
            await check_custodians(session, group)
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
            await self.gate.check(p, [Touch.group(group.group_id, GROUP_CHANGE)])
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
