"""Reads of stored security objects: one by kid or name, a filtered page, and which of them break their
group's policies today. Nothing here changes a row, so it stays apart from the lifecycle."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select

from dsm_emulator.authz import Principal
from dsm_emulator.errors import BadRequest
from dsm_emulator.keys.base import DELETED, KeyServiceBase
from dsm_emulator.models import Group, SecurityObject
from dsm_emulator.policies import GroupPolicies, KeyFacts


class ReadsMixin(KeyServiceBase):
    async def get(self, p: Principal, *, kid: str | None = None, name: str | None = None) -> SecurityObject:
        async with self._sessions() as session:
            return self.usage.with_last_use(await self._find(session, p, kid=kid, name=name))

    async def list(
        self,
        p: Principal,
        *,
        name: str | None = None,
        group_id: str | None = None,
        obj_type: str | None = None,
        limit: int = 100,
        offset: int = 0,
        sort: str = "kid:asc",
        start: str | None = None,
        show_destroyed: bool = False,
        show_deleted: bool = False,
    ) -> list[SecurityObject]:
        field_name, _, direction = sort.partition(":")
        if field_name not in ("kid", "name") or direction not in ("asc", "desc", ""):
            raise BadRequest("sort must be kid:asc, kid:desc, name:asc or name:desc")
        if not 1 <= limit <= 1000 or offset < 0:
            raise BadRequest("limit must be 1 to 1000 and offset not negative")
        column = SecurityObject.kid if field_name == "kid" else SecurityObject.name
        stmt = select(SecurityObject).where(SecurityObject.acct_id == p.acct_id)
        if not p.is_admin:
            stmt = stmt.where(SecurityObject.group_id.in_(p.groups()))
        if name is not None:
            stmt = stmt.where(SecurityObject.name == name)
        if group_id is not None:
            stmt = stmt.where(SecurityObject.group_id == group_id)
        if obj_type is not None:
            stmt = stmt.where(SecurityObject.obj_type == obj_type)
        if not show_destroyed:
            stmt = stmt.where(SecurityObject.state != "Destroyed")
        if not show_deleted:
            stmt = stmt.where(SecurityObject.state != DELETED)
        descending = direction == "desc"
        if start is not None:
            stmt = stmt.where(column < start if descending else column > start)
        stmt = stmt.order_by(column.desc() if descending else column.asc()).limit(limit).offset(offset)
        async with self._sessions() as session:
            return [self.usage.with_last_use(obj) for obj in (await session.scalars(stmt)).all()]

    async def noncompliant(self, objs: Iterable[SecurityObject]) -> frozenset[str]:
        """The kids of ``objs`` that break their group's policies as they are now: keys made before a
        policy was set or tightened (for ``compliant_with_policies``)."""
        objs = list(objs)
        group_ids = {obj.group_id for obj in objs}
        if not group_ids:
            return frozenset()
        async with self._sessions() as session:
            groups = (await session.scalars(select(Group).where(Group.group_id.in_(group_ids)))).all()
        policies = {group.group_id: GroupPolicies.of(group) for group in groups}
        broken = set()
        for obj in objs:
            group_policies = policies.get(obj.group_id)
            if group_policies is None:
                continue
            try:
                group_policies.check_key(key_facts(obj))
            except BadRequest:
                broken.add(obj.kid)
        return frozenset(broken)


def key_facts(obj: SecurityObject) -> KeyFacts:
    """A stored object as the policies see it: its activation date was filled in by the lab (or came
    with its creation), so only the deactivation date, which an update can set, is judged."""
    return KeyFacts(
        obj_type=obj.obj_type,
        key_size=obj.key_size,
        key_ops=frozenset(obj.key_ops),
        description=obj.description,
        custom_metadata=obj.custom_metadata,
        activation_date=None,
        deactivation_date=obj.deactivation_date,
        judged_dates=frozenset({"deactivation_date"}),
        elliptic_curve=obj.elliptic_curve,
    )
