"""Groups: the unit of access in an account (every security object and every app permission hangs off
a group). Their rules are self-contained -- an app sees only its own groups, and a group cannot go while
it holds objects or is some app's only group -- so they are kept in one place, apart from apps.
"""

from __future__ import annotations

import uuid

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from dsm_emulator.admin.base import AdminBase, _creator_type, _flush, _id, _name_free, _ref, now
from dsm_emulator.admin.validation import _description, _name
from dsm_emulator.audit import AuditEvent
from dsm_emulator.authz import Principal
from dsm_emulator.errors import Conflict, NotFound
from dsm_emulator.models import App, AppGroup, Group, SecurityObject, is_uuid


class GroupsMixin(AdminBase):
    async def create_group(
        self,
        p: Principal,
        name: str,
        description: str | None = None,
        *,
        history_window_s: int | None = None,
    ) -> Group:
        """A new group; ``history_window_s``: its keys keep a history revertible for that long (a window
        already checked by ``dsm_emulator.keys.undo_window``)."""
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
                key_history_window_s=history_window_s,
            )
            session.add(group)
            await _flush(session, "group already exists")
            policy = "" if history_window_s is None else f" (key history window {history_window_s} s)"
            return group, self._event(
                p, "group.create", f"Created group {name}{policy}", object_id=group_id, group_ids=(group_id,)
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
        *,
        history_window_s: int | None = None,
        remove_history_policy: bool = False,
    ) -> Group:
        """Rename, redescribe, set or remove the key history window (None: unchanged; an empty
        description clears it). Items already recorded keep their windows."""
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
            if history_window_s is not None and history_window_s != group.key_history_window_s:
                group.key_history_window_s = history_window_s
                changes.append(f"key history window {history_window_s} s")
            if remove_history_policy and group.key_history_window_s is not None:
                group.key_history_window_s = None
                changes.append("key history policy removed")
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
