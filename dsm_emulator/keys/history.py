"""Key history and undo (Fortanix's key undo policy, ``key_history_policy`` in the 2026 API).

A group with an undo window records, just before each reversible change of one of its keys (revoke to
Deactivated or Compromised, activate, destroy, delete, a change of key_ops, a move to another group, and
a revert itself), what the key was: a history item (``KeyHistoryItem``), revertible until the window
closes. A change that takes the material from the key (destroy, delete) moves its keyring blob into the
item instead of dropping it, so the blob is in exactly one row at any time and every path that uses
material still sees a destroyed key. A key deleted under the policy stays as a hidden ``Deleted`` row.

When a window closes its item is erased, with any blob it holds, and a Deleted key with no item left is
deleted for good. The sweep runs in the background of every DSM process, and on demand before a revert
(so an expired item is never reverted). On SQLite, erased bytes are overwritten (``secure_delete``) and
the write-ahead log is checkpointed and truncated, so the blob is in no page of the database files.

The window is the one of the group the key is in when the change happens (a move: the source group);
changing or removing a group's policy does not shorten the windows of items already recorded.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from dsm_emulator.audit import AuditEvent
from dsm_emulator.authz import Principal, require_permission, system_principal
from dsm_emulator.errors import AccessDenied, BadRequest, DsmError, InvalidState, NotFound
from dsm_emulator.keys.base import DELETED, Detail, KeyServiceBase, effective_state, now
from dsm_emulator.models import Group, KeyHistoryItem, SecurityObject, is_uuid

# Fortanix's UI: at least 7 days, at most 180; the API accepts exactly that range (the stricter reading).
UNDO_WINDOW_MIN_S = 7 * 24 * 3600
UNDO_WINDOW_MAX_S = 180 * 24 * 3600
_DATES = ("activation_date", "deactivation_date", "compromise_date", "destruction_date", "deletion_date")
# Kids swept per round: a round is one short transaction per kid, so a backlog is worked off in turns.
_SWEEP_BATCH = 100


def undo_window(policy: object, field: str) -> int | None:
    """The window (seconds) of a ``{"undo_time_window": seconds}`` policy; None for ``"remove"``."""
    if policy == "remove" and field == "key_history_policy":
        return None
    if not isinstance(policy, dict):
        raise BadRequest(f'{field} must be {{"undo_time_window": seconds}}' + _or_remove(field))
    unknown = sorted(str(k)[:64] for k in policy if k != "undo_time_window" and policy[k] is not None)
    if unknown:
        raise BadRequest(f"{field}: the lab does not implement {', '.join(unknown)}")
    window = policy.get("undo_time_window")
    if not isinstance(window, int) or isinstance(window, bool):
        raise BadRequest(f"{field}.undo_time_window must be an integer number of seconds")
    if not UNDO_WINDOW_MIN_S <= window <= UNDO_WINDOW_MAX_S:
        raise BadRequest(
            f"{field}.undo_time_window must be {UNDO_WINDOW_MIN_S} to {UNDO_WINDOW_MAX_S} seconds "
            "(7 to 180 days)"
        )
    return window


def _or_remove(field: str) -> str:
    return ' or "remove"' if field == "key_history_policy" else ""


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return (value if value.tzinfo is not None else value.replace(tzinfo=UTC)).isoformat()


def _time(value: object) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def snapshot(obj: SecurityObject, at: datetime) -> dict[str, Any]:
    """The object as a HistoryItemState (times as ISO 8601; the view renders Fortanix's)."""
    state: dict[str, Any] = {
        "state": effective_state(obj, at),
        "key_ops": sorted(obj.key_ops),
        "public_only": obj.public_only,
        "has_key": obj.sealed_material is not None,
        "revocation_reason": obj.revocation_reason,
        "group_id": obj.group_id,
    }
    for name in _DATES:
        state[name] = _iso(getattr(obj, name))
    return state


def restore(obj: SecurityObject, state: dict[str, Any]) -> None:
    """Put back what ``snapshot`` recorded, except the material (the caller moves the blob)."""
    obj.state = state["state"]
    obj.key_ops = list(state["key_ops"])
    obj.revocation_reason = state["revocation_reason"]
    obj.group_id = state["group_id"]
    for name in _DATES:
        setattr(obj, name, _time(state.get(name)))


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class HistoryMixin(KeyServiceBase):
    async def _record_history(
        self,
        session: AsyncSession,
        obj: SecurityObject,
        operation: str,
        at: datetime,
        *,
        take_material: bool = False,
    ) -> KeyHistoryItem | None:
        """Record ``obj`` as it is now, when its group has an undo window (else None). With
        ``take_material`` the item takes the key's blob: the caller is about to remove it from the key."""
        window = await session.scalar(
            select(Group.key_history_window_s).where(Group.group_id == obj.group_id)
        )
        if window is None:
            return None
        item = KeyHistoryItem(
            id=str(uuid.uuid4()),
            kid=obj.kid,
            operation=operation,
            state=snapshot(obj, at),
            sealed_material=obj.sealed_material if take_material else None,
            created_at=at,
            expiry=at + timedelta(seconds=window),
        )
        session.add(item)
        return item

    async def _destination(
        self, session: AsyncSession, p: Principal, obj: SecurityObject, group_id: str
    ) -> str:
        """A group ``obj`` may move to: in its account, and one where ``p`` may manage keys (the source
        was checked with the object). An app outside the group is told it does not exist, as for objects."""
        group = await session.get(Group, group_id) if is_uuid(group_id) else None
        if group is None or group.acct_id != obj.acct_id:
            raise NotFound("group does not exist")
        if not p.is_admin and group.group_id not in p.group_permissions:
            raise NotFound("group does not exist")
        try:
            require_permission(p, "MANAGE", group.group_id)
        except AccessDenied:
            raise AccessDenied("app lacks the MANAGE permission in the destination group") from None
        # Out of a group whose approval policy holds moves only with a quorum's approval: a move would
        # otherwise carry the key past every other operation the policy holds.
        await self._held(p, obj, "MOVE_SOBJECTS")
        return group.group_id

    # ---------------------------------------------------------------------------------- reads

    async def history(self, objs: Iterable[SecurityObject]) -> dict[str, list[KeyHistoryItem] | None]:
        """kid -> the live history items (oldest first) of each object that has any or is in a group with
        an undo window; None for the others (their views carry no ``history``)."""
        objs = list(objs)
        if not objs:
            return {}
        at = now()
        async with self._sessions() as session:
            items = (
                await session.scalars(
                    select(KeyHistoryItem)
                    .where(KeyHistoryItem.kid.in_([o.kid for o in objs]))
                    .order_by(KeyHistoryItem.created_at, KeyHistoryItem.id)
                )
            ).all()
            with_policy = set(
                (
                    await session.scalars(
                        select(Group.group_id).where(
                            Group.group_id.in_({o.group_id for o in objs}),
                            Group.key_history_window_s.is_not(None),
                        )
                    )
                ).all()
            )
        by_kid: dict[str, list[KeyHistoryItem]] = defaultdict(list)
        for item in items:
            if _aware(item.expiry) > at:
                by_kid[item.kid].append(item)
        return {
            o.kid: by_kid.get(o.kid, []) if o.kid in by_kid or o.group_id in with_policy else None
            for o in objs
        }

    async def get_deleted(self, p: Principal, kid: str) -> SecurityObject:
        """An object by kid, a deleted one included (``show_deleted``)."""
        async with self._sessions() as session:
            return await self._load(session, p, kid, include_deleted=True)

    # --------------------------------------------------------------------------------- revert

    async def revert(self, p: Principal, kid: str, ids: Sequence[str]) -> SecurityObject:
        """Put the key back as history item ``ids[0]`` recorded it (one item per call), within its window.
        The revert is itself recorded, so it can be undone in turn."""
        if is_uuid(kid):
            await self.sweep_history(kid=kid)  # an item whose window has closed is erased, not reverted

        async def change(session: AsyncSession, obj: SecurityObject) -> Detail:
            if len(ids) != 1:  # checked here so that the refusal is audited
                raise BadRequest("ids must name exactly one history item: the lab reverts one at a time")
            (item_id,) = ids
            stamp = now()
            target = await session.get(KeyHistoryItem, item_id) if is_uuid(item_id) else None
            if target is None or target.kid != obj.kid or _aware(target.expiry) <= stamp:
                raise BadRequest(
                    f"ids: {item_id[:64]} is not a history item of this object within its undo window"
                )
            state = target.state
            groups: tuple[str, ...] = ()
            if state["group_id"] != obj.group_id:
                groups = (await self._destination(session, p, obj, state["group_id"]),)
            holder: KeyHistoryItem | None = None
            if state["has_key"] and obj.sealed_material is None:
                holder = await session.scalar(
                    select(KeyHistoryItem)
                    .where(
                        KeyHistoryItem.kid == obj.kid,
                        KeyHistoryItem.sealed_material.is_not(None),
                        KeyHistoryItem.expiry > stamp,
                    )
                    .order_by(KeyHistoryItem.created_at.desc())
                    .limit(1)
                    .with_for_update()
                )
                if holder is None:
                    raise InvalidState("the key material has been erased: its undo window has closed")
            await self._record_history(session, obj, "key.revert", stamp, take_material=not state["has_key"])
            if holder is not None:
                obj.sealed_material, holder.sealed_material = holder.sealed_material, None
            elif not state["has_key"]:
                obj.sealed_material = None
            restore(obj, state)
            self._material_cache.pop(obj.kid, None)
            return Detail(f" to history item {target.id} (state {state['state']})", groups)

        return await self._mutate(
            p, kid, "MANAGE", "key.revert", "Reverted", change, ("REVERT_SOBJECTS",), include_deleted=True
        )

    # ---------------------------------------------------------------------------------- sweep

    async def sweep_history(self, *, kid: str | None = None, at: datetime | None = None) -> int:
        """Erase the history items whose window has closed by ``at`` (default now), with the material
        they hold, and delete for good the Deleted keys left with no item; one audited transaction per
        key. Returns how many items were erased."""
        at = at or now()
        stmt = select(KeyHistoryItem.kid).where(KeyHistoryItem.expiry <= at).distinct().limit(_SWEEP_BATCH)
        if kid is not None:
            stmt = stmt.where(KeyHistoryItem.kid == kid)
        async with self._sessions() as session:
            kids = list((await session.scalars(stmt)).all())
        erased = 0
        for one in kids:
            try:
                erased += await self._audit.apply(self._sweep_one(one, at))
            except _NothingLeft:
                pass
        if erased:
            await self._forget_erased_pages()
        return erased

    def _sweep_one(
        self, kid: str, at: datetime
    ) -> Callable[[AsyncSession], Awaitable[tuple[int, AuditEvent]]]:
        async def work(session: AsyncSession) -> tuple[int, AuditEvent]:
            obj = await session.scalar(
                select(SecurityObject).where(SecurityObject.kid == kid).with_for_update()
            )
            if obj is None:
                raise _NothingLeft("gone")
            expired = (
                await session.scalars(
                    select(KeyHistoryItem)
                    .where(KeyHistoryItem.kid == kid, KeyHistoryItem.expiry <= at)
                    .with_for_update()
                )
            ).all()
            if not expired:
                raise _NothingLeft("another process swept it")
            had_material = any(item.sealed_material is not None for item in expired)
            await session.execute(
                delete(KeyHistoryItem).where(KeyHistoryItem.id.in_([item.id for item in expired]))
            )
            left = await session.scalar(select(KeyHistoryItem.id).where(KeyHistoryItem.kid == kid).limit(1))
            message = f"Undo window closed for {obj.name}: {len(expired)} history item(s) erased"
            if had_material:
                message += ", with the key material they kept"
            if obj.state == DELETED and left is None:
                await session.delete(obj)
                message += "; the deleted key is gone for good"
            self._material_cache.pop(kid, None)
            event = AuditEvent.by(
                system_principal(obj.acct_id),
                "key.history.expire",
                message,
                object_id=kid,
                group_ids=(obj.group_id,),
            )
            return len(expired), event

        return work

    async def _forget_erased_pages(self) -> None:
        """SQLite keeps old page images in its write-ahead log until a checkpoint: copy them back and
        truncate the log, so erased bytes (zeroed by secure_delete) are in neither file."""
        async with self._sessions() as session:
            if (await session.connection()).dialect.name != "sqlite":
                return
            for _ in range(3):
                busy = (await session.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))).first()
                if busy is not None and busy[0] == 0:
                    return


class _NothingLeft(DsmError):
    """A sweep of a key that another process (or an earlier round) already swept: nothing to audit."""

    status = 409
