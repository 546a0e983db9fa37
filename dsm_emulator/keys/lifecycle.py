"""The lifecycle of stored security objects (generate, import, rekey, read, update, activate, revoke,
destroy, delete) is where rows change, so it is kept apart from the operations that only use material:
every change here commits together with its audit row (``_mutate`` or ``AuditLog.apply``), refusals
included, and a destroyed or deleted object leaves the material cache.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from dsm_emulator import symmetric
from dsm_emulator.asymmetric import ASYMMETRIC_TYPES
from dsm_emulator.audit import AuditEvent
from dsm_emulator.authz import KEY_OPS, Principal, require_permission
from dsm_emulator.errors import BadRequest, Conflict, InvalidState
from dsm_emulator.keys.base import (
    DELETED,
    MAX_NAME_LENGTH,
    REVOCATION_CODES,
    Detail,
    KeySpec,
    effective_state,
    material_context,
    now,
)
from dsm_emulator.keys.history import HistoryMixin
from dsm_emulator.keys.object_types import OBJECT_TYPES
from dsm_emulator.keys.pairs import checked_ops, key_pair
from dsm_emulator.keys.reads import key_facts
from dsm_emulator.keys.transient import TransientKey
from dsm_emulator.models import KeyHistoryItem, SecurityObject
from dsm_emulator.policies import KeyFacts


class LifecycleMixin(HistoryMixin):
    # ------------------------------------------------------------------------------- creation

    async def create(
        self,
        p: Principal,
        spec: KeySpec,
        value: bytes | None = None,
        *,
        persisted: bool = False,
        derived: bool = False,
    ) -> SecurityObject:
        """Generate (value None) or import an object into ``spec.group_id`` (default: the caller's default
        group, else the account's only/first group). ``persisted``: value is a transient key's material,
        which DSM generated, so the stored key's origin is FortanixHSM, not External; ``derived``: value
        was derived or agreed inside DSM (origin FortanixHSM too)."""
        made_inside = persisted or derived
        if derived:
            operation, verb = "key.derive", "Derived"
        elif persisted:
            operation, verb = "key.persist", "Persisted"
        elif value is not None:
            operation, verb = "key.import", "Imported"
        else:
            operation, verb = "key.create", "Created"
        refusal = self._event(p, operation, f"{verb} {spec.obj_type} key {spec.name[:200]}")

        async def work(session: AsyncSession) -> tuple[SecurityObject, AuditEvent]:
            pair = key_pair(spec, value)
            size, ops = self._validate(spec, value, pair, made_inside=derived)
            group_id = await self._resolve_group(session, p, spec.group_id)
            require_permission(p, "MANAGE", group_id)
            policies = await self._policies(session, group_id)
            ops = checked_ops(policies, spec, size, ops, pair.elliptic_curve if pair else None)
            taken = await session.scalar(
                select(SecurityObject.kid).where(
                    SecurityObject.acct_id == p.acct_id, SecurityObject.name == spec.name
                )
            )
            if taken is not None:
                raise Conflict("sobject already exists")
            if pair is not None:
                material = pair.material
            else:
                material = value if value is not None else symmetric.generate(spec.obj_type, size)
            created = now()
            state = spec.state or (
                "PreActive"
                if spec.activation_date is not None and spec.activation_date > created
                else "Active"
            )
            obj = SecurityObject(
                kid=str(uuid.uuid4()),
                acct_id=p.acct_id,
                group_id=group_id,
                name=spec.name,
                description=spec.description,
                obj_type=spec.obj_type,
                key_size=size,
                key_ops=sorted(ops),
                enabled=spec.enabled,
                state=state,
                origin="External" if value is not None and not made_inside else "FortanixHSM",
                activation_date=spec.activation_date or (created if state == "Active" else None),
                deactivation_date=spec.deactivation_date,
                compromise_date=None,
                destruction_date=None,
                revocation_reason=None,
                custom_metadata=dict(spec.custom_metadata or {}),
                version=1,
                kcv=symmetric.kcv(spec.obj_type, material),
                pub_key=pair.pub_key if pair else None,
                elliptic_curve=pair.elliptic_curve if pair else None,
                public_only=pair.public_only if pair else False,
                creator_type=p.kind if p.kind != "system" else "user",
                creator_id=p.id or p.acct_id,
                created_at=created,
                lastused_at=None,
            )
            obj.sealed_material = self._keyring.seal(material, material_context(obj))
            session.add(obj)
            await session.flush()
            return obj, self._event(p, operation, f"{verb} {spec.obj_type} key {obj.name}", obj)

        return await self._audit.apply(work, refusal.refused)

    async def persist(self, p: Principal, key: TransientKey, spec: KeySpec) -> SecurityObject:
        """Store a transient key (its material, type and size) as a new object, audited like a create.
        It keeps at most the key_ops it had: persisting must not make a non-exportable key exportable."""
        if spec.key_ops is not None and not set(spec.key_ops) <= key.key_ops:
            raise BadRequest("key_ops must be among the transient key's key_ops")
        ops = key.key_ops if spec.key_ops is None else spec.key_ops
        stored = replace(spec, obj_type=key.obj_type, key_size=key.key_size, key_ops=ops)
        return await self.create(p, stored, key.material, persisted=True)

    async def rekey(
        self,
        p: Principal,
        *,
        name: str | None = None,
        kid: str | None = None,
        deactivate_rotated_key: bool = False,
        value: bytes | None = None,
    ) -> SecurityObject:
        """Replace an object with a new one of the same type, size, key_ops and group: new random material,
        or ``value`` (sdkms-cli rotate-secret), which may differ in size. The new object takes the name;
        the old one is renamed "<name> (rotated at <timestamp>)"; links go both ways."""
        refusal = self._event(p, "key.rekey", f"Rekeyed {name or kid}", object_id=kid)

        async def work(session: AsyncSession) -> tuple[SecurityObject, AuditEvent]:
            old = await self._find(session, p, name=name, kid=kid, for_update=True)
            require_permission(p, "MANAGE", old.group_id)
            if p.kind == "app" and "APPMANAGEABLE" not in old.key_ops:
                raise InvalidState("this object is not app-manageable")
            if old.replacement_kid is not None:
                raise InvalidState("this object has already been rotated")
            await self._held(p, old, "ROTATE_SOBJECTS")
            if old.obj_type in (*ASYMMETRIC_TYPES, "CERTIFICATE"):
                raise BadRequest(f"rekey of {old.obj_type} objects is not implemented by xkslab")
            rotatable = ("AES", "DES", "DES3", "HMAC", "SECRET") if value is None else tuple(OBJECT_TYPES)
            if old.sealed_material is None or old.obj_type not in rotatable:
                raise InvalidState(f"a {old.obj_type} object in state {old.state} cannot be rekeyed")
            assert old.key_size is not None
            size = old.key_size if value is None else symmetric.key_size_of(old.obj_type, value)
            if size is None or not OBJECT_TYPES[old.obj_type].sizes(size):
                raise BadRequest(f"a value of {len(value or b'') * 8} bits is not valid for {old.obj_type}")
            policies = await self._policies(session, old.group_id)
            policies.check_key(
                KeyFacts(
                    obj_type=old.obj_type,
                    key_size=size,
                    key_ops=frozenset(old.key_ops),
                    description=old.description,
                    custom_metadata=old.custom_metadata,
                    activation_date=None,
                    deactivation_date=None,
                )
            )
            stamp = now()
            original_name = old.name
            old.name = await _rotated_name(session, old.acct_id, original_name, stamp)
            await session.flush()
            new = SecurityObject(
                kid=str(uuid.uuid4()),
                acct_id=old.acct_id,
                group_id=old.group_id,
                name=original_name,
                description=old.description,
                obj_type=old.obj_type,
                key_size=size,
                key_ops=list(old.key_ops),
                enabled=old.enabled,
                state="Active",
                origin="FortanixHSM" if value is None else "External",
                activation_date=stamp,
                deactivation_date=None,
                compromise_date=None,
                destruction_date=None,
                revocation_reason=None,
                custom_metadata=dict(old.custom_metadata),
                version=old.version + 1,
                replaced_kid=old.kid,
                creator_type=p.kind if p.kind != "system" else "user",
                creator_id=p.id or p.acct_id,
                created_at=stamp,
                lastused_at=None,
            )
            material = symmetric.generate(old.obj_type, size) if value is None else value
            new.kcv = symmetric.kcv(new.obj_type, material)
            new.sealed_material = self._keyring.seal(material, material_context(new))
            old.replacement_kid = new.kid
            if deactivate_rotated_key and effective_state(old, stamp) in ("Active", "PreActive"):
                old.state, old.deactivation_date = "Deactivated", stamp
            session.add(new)
            await session.flush()
            return new, self._event(p, "key.rekey", f"Rekeyed {original_name}: {old.kid} -> {new.kid}", new)

        return await self._audit.apply(work, refusal.refused)

    # ------------------------------------------------------------------------------ lifecycle

    async def update(
        self,
        p: Principal,
        kid: str,
        *,
        name: str | None = None,
        description: str | None = None,
        enabled: bool | None = None,
        key_ops: Iterable[str] | None = None,
        custom_metadata: Mapping[str, str] | None = None,
        deactivation_date: datetime | None = None,
        group_id: str | None = None,
    ) -> SecurityObject:
        """Change what is given (None: unchanged). A new ``group_id`` moves the key: the caller needs
        MANAGE in the source group (checked with the object) and in the destination."""
        what = {True: "Enabled", False: "Disabled", None: "Updated"}[enabled]

        async def change(session: AsyncSession, obj: SecurityObject) -> Detail | None:
            stamp = now()
            destination = None
            if group_id is not None and group_id != obj.group_id:
                destination = await self._destination(session, p, obj, group_id)
            new_ops = None
            if key_ops is not None:
                new_ops = frozenset(key_ops)
                if new_ops - KEY_OPS:
                    raise BadRequest(f"unknown key_ops: {', '.join(sorted(new_ops - KEY_OPS))}")
                if new_ops == frozenset(obj.key_ops):
                    new_ops = None
            if destination is not None or new_ops is not None:
                # Before anything changes: the item records the key as it was.
                await self._record_history(session, obj, "key.update", stamp)
            if name is not None and name != obj.name:
                if not name or len(name) > MAX_NAME_LENGTH:
                    raise BadRequest(f"name must be 1 to {MAX_NAME_LENGTH} characters")
                taken = await session.scalar(
                    select(SecurityObject.kid).where(
                        SecurityObject.acct_id == obj.acct_id, SecurityObject.name == name
                    )
                )
                if taken is not None:
                    raise Conflict("sobject already exists")
                obj.name = name
            if new_ops is not None:
                obj.key_ops = sorted(new_ops)
            if custom_metadata is not None:
                if not all(isinstance(k, str) and isinstance(v, str) for k, v in custom_metadata.items()):
                    raise BadRequest("custom_metadata must map strings to strings")
                obj.custom_metadata = dict(custom_metadata)
            if description is not None:
                obj.description = description
            if enabled is not None:
                obj.enabled = enabled
            if deactivation_date is not None:
                obj.deactivation_date = deactivation_date
            detail = None
            if destination is not None:
                source, obj.group_id = obj.group_id, destination
                verb = "Moved" if enabled is None else f"{what} and moved"
                detail = Detail(f" from group {source} to group {destination}", (destination,), verb)
            # The policies of the group the key ends up in (a move's destination).
            (await self._policies(session, obj.group_id)).check_key(key_facts(obj))
            return detail

        held = [
            category
            for category, changed in (
                ("UPDATE_SOBJECTS_PROFILE", (name, description, custom_metadata)),
                ("UPDATE_SOBJECTS_ENABLED_STATE", (enabled, deactivation_date)),
                ("UPDATE_KEY_OPS", (key_ops,)),
            )
            if any(value is not None for value in changed)
        ]
        return await self._mutate(p, kid, "MANAGE", "key.update", what, change, held)

    async def activate(self, p: Principal, kid: str) -> SecurityObject:
        async def change(session: AsyncSession, obj: SecurityObject) -> None:
            if effective_state(obj) != "PreActive":
                raise InvalidState(
                    f"only a PreActive object can be activated; this one is {effective_state(obj)}"
                )
            stamp = now()
            await self._record_history(session, obj, "key.activate", stamp)
            obj.state, obj.activation_date = "Active", stamp

        return await self._mutate(
            p, kid, "MANAGE", "key.activate", "Activated", change, ("ACTIVATE_SOBJECTS",)
        )

    async def revoke(
        self,
        p: Principal,
        kid: str,
        code: str,
        message: str | None = None,
        compromise_date: datetime | None = None,
    ) -> SecurityObject:
        async def change(session: AsyncSession, obj: SecurityObject) -> None:
            if code not in REVOCATION_CODES:  # checked here so that the refusal is audited
                raise BadRequest(f"code must be one of {', '.join(sorted(REVOCATION_CODES))}")
            if effective_state(obj) not in ("PreActive", "Active", "Deactivated"):
                raise InvalidState(f"an object in state {obj.state} cannot be revoked")
            stamp = now()
            await self._record_history(session, obj, "key.revoke", stamp)
            compromised = code in ("KeyCompromise", "CACompromise")
            obj.state = "Compromised" if compromised else "Deactivated"
            obj.deactivation_date = obj.deactivation_date or stamp
            obj.compromise_date = (compromise_date or stamp) if compromised else None
            obj.revocation_reason = {"code": code, "message": message}

        return await self._mutate(p, kid, "MANAGE", "key.revoke", "Revoked", change, ("REVOKE_SOBJECTS",))

    async def destroy(self, p: Principal, kid: str) -> SecurityObject:
        """Destroy the material. Under a history policy the sealed blob moves into the history item and
        is erased when its window closes (``HistoryMixin.sweep_history``); otherwise it is gone now."""

        async def change(session: AsyncSession, obj: SecurityObject) -> Detail | None:
            if obj.state == "Destroyed":
                raise InvalidState("the object is already destroyed")
            if effective_state(obj) == "Active":
                raise InvalidState("an Active object must be revoked before it is destroyed")
            stamp = now()
            item = await self._record_history(session, obj, "key.destroy", stamp, take_material=True)
            obj.state, obj.destruction_date, obj.sealed_material = "Destroyed", stamp, None
            self._material_cache.pop(obj.kid, None)
            return None if item is None else Detail(f" (revertible until {_stamp(item.expiry)})")

        return await self._mutate(p, kid, "MANAGE", "key.destroy", "Destroyed", change, ("DESTROY_SOBJECTS",))

    async def delete(self, p: Principal, kid: str) -> None:
        """Delete the object. Under a history policy it becomes a hidden Deleted key, revertible until
        its window closes, with its material kept sealed in the history item until then."""

        async def change(session: AsyncSession, obj: SecurityObject) -> Detail | None:
            self._material_cache.pop(obj.kid, None)
            stamp = now()
            item = await self._record_history(session, obj, "key.delete", stamp, take_material=True)
            if item is None:
                await session.execute(delete(KeyHistoryItem).where(KeyHistoryItem.kid == obj.kid))
                await session.delete(obj)
                return None
            obj.state, obj.deletion_date, obj.sealed_material = DELETED, stamp, None
            return Detail(f" (revertible until {_stamp(item.expiry)})")

        await self._mutate(p, kid, "MANAGE", "key.delete", "Deleted", change, ("DELETE_SOBJECTS",))


def _stamp(value: datetime) -> str:
    return value.strftime("%Y%m%dT%H%M%SZ")


async def _rotated_name(session: AsyncSession, acct_id: str, name: str, stamp: datetime) -> str:
    """``"<name> (rotated at <timestamp>)"``, made unique in the account (a second rotation within the same
    second, or a user's object of that name) and kept within MAX_NAME_LENGTH."""
    n = 1
    while True:
        suffix = f" (rotated at {stamp.strftime('%Y%m%dT%H%M%SZ')}{f' #{n}' if n > 1 else ''})"
        candidate = name[: MAX_NAME_LENGTH - len(suffix)] + suffix
        taken = await session.scalar(
            select(SecurityObject.kid).where(
                SecurityObject.acct_id == acct_id, SecurityObject.name == candidate
            )
        )
        if taken is None:
            return candidate
        n += 1
