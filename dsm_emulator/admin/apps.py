"""Apps and their group memberships: creating, listing, changing and deleting apps, and which groups
(with which permissions) an app is in. It builds on :class:`CredentialsMixin` because an app is created
together with its first credential, in the same transaction; everything about that credential afterwards
(showing, rotating, logging in) stays in ``credentials``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import Literal

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from dsm_emulator.admin.base import _creator_type, _flush, _id, _name_free, _ref, now
from dsm_emulator.admin.credentials import (
    AUTH_TYPES,
    CREDENTIAL_KINDS,
    CredentialsMixin,
    _access_key_id_free,
)
from dsm_emulator.admin.groups import refuse_xks_hold
from dsm_emulator.admin.validation import MAX_APP_TYPE, _description, _name, _parse_groups
from dsm_emulator.audit import AuditEvent
from dsm_emulator.authz import Principal
from dsm_emulator.errors import BadRequest, NotFound
from dsm_emulator.models import App, AppCredential, AppGroup, Group, is_uuid

GroupSpec = Mapping[str, Iterable[str] | None] | Iterable[str]


class AppsMixin(CredentialsMixin):
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
            if credential_kind == "awsxks":
                await refuse_xks_hold(session, group_map)
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
            if app.auth_type == AUTH_TYPES["awsxks"]:
                await refuse_xks_hold(session, adds)
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
