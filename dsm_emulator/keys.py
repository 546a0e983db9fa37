"""Security objects: their lifecycle (generate, import, update, activate, revoke, destroy, delete, rekey)
and every use of their material (encrypt, decrypt, wrap, unwrap, export).

This module owns the security-object queries. Material is unsealed through the keyring only after the
row has been read and checked (authorisation, key_ops, enabled flag, state), and is cached per kid: a
kid's material never changes, and a destroyed or deleted object is refused by its row before the cache is
consulted. Mutations commit together with their audit row (``AuditLog.apply``); crypto operations answer
only after their audit row is committed (``AuditLog.record``); refusals are audited the same way.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dsm_emulator import crypto
from dsm_emulator.audit import AuditEvent, AuditLog
from dsm_emulator.authz import KEY_OPS, Principal, require_key_op, require_permission, require_visible
from dsm_emulator.errors import (
    AccessDenied,
    BadRequest,
    Conflict,
    DsmError,
    IntegrityFailure,
    InvalidState,
    NotFound,
    Sealed,
)
from dsm_emulator.keyring import Keyring
from dsm_emulator.models import Group, SecurityObject, is_uuid

T = TypeVar("T")

STATES = ("PreActive", "Active", "Deactivated", "Compromised", "Destroyed")
REVOCATION_CODES = frozenset(
    {
        "Unspecified",
        "KeyCompromise",
        "CACompromise",
        "AffiliationChanged",
        "Superseded",
        "CessationOfOperation",
        "PrivilegeWithdrawn",
    }
)


@dataclass(frozen=True)
class ObjectTypeRule:
    sizes: Callable[[int], bool]
    generated_ops: frozenset[str]  # default key_ops when generated (Fortanix: everything but EXPORT)
    imported_ops: frozenset[str]  # default key_ops when imported (everything implemented)
    can_generate: bool = True


_SYMMETRIC_OPS = frozenset({"ENCRYPT", "DECRYPT", "WRAPKEY", "UNWRAPKEY", "DERIVEKEY", "APPMANAGEABLE"})
OBJECT_TYPES: Mapping[str, ObjectTypeRule] = {
    "AES": ObjectTypeRule(
        lambda bits: bits in crypto.AES_KEY_SIZES, _SYMMETRIC_OPS, _SYMMETRIC_OPS | {"EXPORT"}
    ),
    "HMAC": ObjectTypeRule(
        lambda bits: 112 <= bits <= 8192 and bits % 8 == 0,
        frozenset({"MACGENERATE", "MACVERIFY", "APPMANAGEABLE"}),
        frozenset({"MACGENERATE", "MACVERIFY", "EXPORT", "APPMANAGEABLE"}),
    ),
    "SECRET": ObjectTypeRule(
        lambda bits: 8 <= bits <= 65536 and bits % 8 == 0,
        frozenset({"DERIVEKEY", "APPMANAGEABLE"}),
        frozenset({"DERIVEKEY", "EXPORT", "APPMANAGEABLE"}),
    ),
    "OPAQUE": ObjectTypeRule(
        lambda bits: 0 < bits <= 8 * 65536 and bits % 8 == 0,
        frozenset({"EXPORT", "APPMANAGEABLE"}),
        frozenset({"EXPORT", "APPMANAGEABLE"}),
        can_generate=False,
    ),
}

MAX_NAME_LENGTH = 4096


def now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime | None) -> datetime | None:
    # SQLite hands datetimes back naive; they were stored as UTC.
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def effective_state(obj: SecurityObject, at: datetime | None = None) -> str:
    """The state as of ``at``: a PreActive key whose activation date has come is Active, and an Active key
    whose deactivation date has passed is Deactivated, without a job having to flip the row."""
    at = at or now()
    state = obj.state
    activation, deactivation = _aware(obj.activation_date), _aware(obj.deactivation_date)
    if state == "PreActive" and activation is not None and activation <= at:
        state = "Active"
    if state == "Active" and deactivation is not None and deactivation <= at:
        state = "Deactivated"
    return state


def material_context(obj: SecurityObject) -> bytes:
    return f"sobject|{obj.kid}|{obj.version}".encode()


@dataclass(frozen=True)
class KeySpec:
    """What a caller asks for when generating or importing an object."""

    name: str
    obj_type: str
    key_size: int | None = None
    group_id: str | None = None
    key_ops: Iterable[str] | None = None
    description: str | None = None
    custom_metadata: Mapping[str, str] | None = None
    enabled: bool = True
    state: str | None = None
    activation_date: datetime | None = None
    deactivation_date: datetime | None = None


TRANSIENT_LIFETIME = timedelta(hours=24)
TRANSIENT_TYPES = ("AES", "HMAC", "SECRET")
INVALID_TRANSIENT = "invalid transient key"


def transient_context(acct_id: str) -> bytes:
    return b"transient|" + acct_id.encode()


@dataclass(frozen=True)
class TransientKey:
    """A key that lives only in its token (``transient_key``): the material and metadata sealed by the
    keyring under ``transient|<acct_id>``. Nothing of it is stored; it expires TRANSIENT_LIFETIME after
    it was made."""

    material: bytes
    obj_type: str
    key_size: int
    key_ops: frozenset[str]
    group_id: str
    acct_id: str
    name: str
    description: str | None
    custom_metadata: Mapping[str, str]
    enabled: bool
    creator_type: str
    creator_id: str
    created_at: datetime
    expiry: datetime
    state: str = "Active"

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "material": base64.b64encode(self.material).decode("ascii"),
                "obj_type": self.obj_type,
                "key_size": self.key_size,
                "key_ops": sorted(self.key_ops),
                "group_id": self.group_id,
                "acct_id": self.acct_id,
                "name": self.name,
                "description": self.description,
                "custom_metadata": dict(self.custom_metadata),
                "enabled": self.enabled,
                "creator_type": self.creator_type,
                "creator_id": self.creator_id,
                "created_at": int(self.created_at.timestamp()),
                "expiry": int(self.expiry.timestamp()),
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_json(cls, blob: bytes) -> TransientKey:
        d = json.loads(blob)
        return cls(
            material=base64.b64decode(d["material"], validate=True),
            obj_type=str(d["obj_type"]),
            key_size=int(d["key_size"]),
            key_ops=frozenset(str(op) for op in d["key_ops"]),
            group_id=str(d["group_id"]),
            acct_id=str(d["acct_id"]),
            name=str(d["name"]),
            description=d["description"],
            custom_metadata={str(k): str(v) for k, v in d["custom_metadata"].items()},
            enabled=bool(d["enabled"]),
            creator_type=str(d["creator_type"]),
            creator_id=str(d["creator_id"]),
            created_at=datetime.fromtimestamp(int(d["created_at"]), UTC),
            expiry=datetime.fromtimestamp(int(d["expiry"]), UTC),
        )

    def view(self, token: str, *, value: bytes | None = None) -> dict[str, Any]:
        """A KeyObject like ``views.sobject_view`` but without a kid, origin Transient."""
        view: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "acct_id": self.acct_id,
            "group_id": self.group_id,
            "obj_type": self.obj_type,
            "key_size": self.key_size,
            "key_ops": sorted(self.key_ops),
            "enabled": self.enabled,
            "state": self.state,
            "origin": "Transient",
            "creator": {"app": self.creator_id} if self.creator_type == "app" else {"user": self.creator_id},
            "created_at": _compact(self.created_at),
            "lastused_at": "19700101T000000Z",
            "activation_date": _compact(self.created_at),
            "deactivation_date": None,
            "compromise_date": None,
            "destruction_date": None,
            "revocation_reason": None,
            "custom_metadata": dict(self.custom_metadata),
            "kcv": crypto.kcv(self.material) if self.obj_type == "AES" else None,
            "links": {},
            "version": 1,
            "never_exportable": "EXPORT" not in self.key_ops,
            "public_only": False,
            "compliant_with_policies": True,
            "transient_key": token,
        }
        if value is not None:
            view["value"] = base64.b64encode(value).decode("ascii")
        return view


def _compact(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


class KeyService:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], keyring: Keyring, audit: AuditLog):
        self._sessions = sessions
        self._keyring = keyring
        self._audit = audit
        self._material_cache: dict[str, bytes] = {}

    # ------------------------------------------------------------------------------- helpers

    def _event(
        self,
        p: Principal,
        operation: str,
        message: str,
        obj: SecurityObject | None = None,
        action_type: str = "ADMINISTRATIVE",
        **extra: Any,
    ) -> AuditEvent:
        object_id = obj.kid if obj is not None else extra.pop("object_id", None)
        group_ids = (obj.group_id,) if obj is not None else tuple(extra.pop("group_ids", ()))
        return AuditEvent.by(
            p, operation, message, action_type=action_type, object_id=object_id, group_ids=group_ids, **extra
        )

    async def _load(
        self, session: AsyncSession, p: Principal, kid: str, *, for_update: bool = False
    ) -> SecurityObject:
        stmt = select(SecurityObject).where(SecurityObject.kid == kid)
        if for_update:
            stmt = stmt.with_for_update()
        obj = await session.scalar(stmt) if is_uuid(kid) else None
        if obj is None:
            raise NotFound("sobject does not exist")
        require_visible(p, obj)
        return obj

    async def _mutate(
        self,
        p: Principal,
        kid: str,
        permission: str,
        operation: str,
        message: str,
        change: Callable[[AsyncSession, SecurityObject], Awaitable[None] | None],
    ) -> SecurityObject:
        refusal = self._event(p, operation, message, object_id=kid)

        async def work(session: AsyncSession) -> tuple[SecurityObject, AuditEvent]:
            obj = await self._load(session, p, kid, for_update=True)
            require_permission(p, permission, obj.group_id)
            if p.kind == "app" and "APPMANAGEABLE" not in obj.key_ops:
                raise InvalidState("this object is not app-manageable")
            result = change(session, obj)
            if result is not None:
                await result
            await session.flush()
            return obj, self._event(p, operation, f"{message} {obj.name}", obj)

        return await self._audit.apply(work, refusal.refused)

    async def _audited(self, event: AuditEvent, action: Callable[[list[SecurityObject]], Awaitable[T]]) -> T:
        """Run ``action`` and record ``event`` (or its refusal). ``action`` appends the object it loaded to
        the list it is given, so the row names that object's kid and group even when the caller named it
        by name."""
        subject: list[SecurityObject] = []
        started = now()
        try:
            result = await action(subject)
        except DsmError as exc:
            await self._audit.record(_about(event, subject).refused(exc))
            raise
        elapsed = int((now() - started).total_seconds() * 1e6)
        await self._audit.record(_with(_about(event, subject), response_time_us=elapsed))
        return result

    def material(self, obj: SecurityObject) -> bytes:
        """The object's plaintext material; callers have already checked the row."""
        if obj.sealed_material is None:
            raise InvalidState("the key material has been destroyed")
        cached = self._material_cache.get(obj.kid)
        if cached is None:
            cached = self._keyring.open(obj.sealed_material, material_context(obj))
            self._material_cache[obj.kid] = cached
        return cached

    # ------------------------------------------------------------------------------- creation

    def _validate(self, spec: KeySpec, value: bytes | None) -> tuple[int, frozenset[str]]:
        rule = OBJECT_TYPES.get(spec.obj_type)
        if rule is None:
            raise BadRequest(f"obj_type must be one of {', '.join(OBJECT_TYPES)}")
        if not spec.name or len(spec.name) > MAX_NAME_LENGTH:
            raise BadRequest(f"name must be 1 to {MAX_NAME_LENGTH} characters")
        if value is None and not rule.can_generate:
            raise BadRequest(f"{spec.obj_type} objects can only be imported")
        if value is not None:
            if spec.key_size is not None and spec.key_size != len(value) * 8:
                raise BadRequest("key_size does not match the length of value")
            size = len(value) * 8
        elif spec.key_size is None:
            raise BadRequest("key_size is required")
        else:
            size = spec.key_size
        if not rule.sizes(size):
            raise BadRequest(f"key_size {size} is not valid for {spec.obj_type}")
        default_ops = rule.imported_ops if value is not None else rule.generated_ops
        ops = frozenset(default_ops if spec.key_ops is None else spec.key_ops)
        unknown = ops - KEY_OPS
        if unknown:
            raise BadRequest(f"unknown key_ops: {', '.join(sorted(unknown))}")
        if spec.state is not None and spec.state not in ("PreActive", "Active"):
            raise BadRequest("state of a new object must be PreActive or Active")
        if spec.custom_metadata is not None and not all(
            isinstance(k, str) and isinstance(v, str) for k, v in spec.custom_metadata.items()
        ):
            raise BadRequest("custom_metadata must map strings to strings")
        return size, ops

    async def create(self, p: Principal, spec: KeySpec, value: bytes | None = None) -> SecurityObject:
        """Generate (value None) or import an object into ``spec.group_id`` (default: the caller's default
        group, else the account's only/first group)."""
        operation = "key.import" if value is not None else "key.create"
        verb = "Imported" if value is not None else "Created"
        refusal = self._event(p, operation, f"{verb} {spec.obj_type} key {spec.name[:200]}")

        async def work(session: AsyncSession) -> tuple[SecurityObject, AuditEvent]:
            size, ops = self._validate(spec, value)
            group_id = await self._resolve_group(session, p, spec.group_id)
            require_permission(p, "MANAGE", group_id)
            taken = await session.scalar(
                select(SecurityObject.kid).where(
                    SecurityObject.acct_id == p.acct_id, SecurityObject.name == spec.name
                )
            )
            if taken is not None:
                raise Conflict("sobject already exists")
            material = value if value is not None else crypto.random_bytes(size // 8)
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
                origin="External" if value is not None else "FortanixHSM",
                activation_date=spec.activation_date or (created if state == "Active" else None),
                deactivation_date=spec.deactivation_date,
                compromise_date=None,
                destruction_date=None,
                revocation_reason=None,
                custom_metadata=dict(spec.custom_metadata or {}),
                version=1,
                kcv=crypto.kcv(material) if spec.obj_type == "AES" else None,
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

    async def _resolve_group(self, session: AsyncSession, p: Principal, group_id: str | None) -> str:
        if group_id is not None:
            group = await session.get(Group, group_id) if is_uuid(group_id) else None
            if group is None or group.acct_id != p.acct_id:
                raise NotFound("group does not exist")
            return group.group_id
        if not p.is_admin and len(p.group_permissions) >= 1:
            return next(iter(p.group_permissions))
        first = await session.scalar(
            select(Group.group_id).where(Group.acct_id == p.acct_id).order_by(Group.created_at).limit(1)
        )
        if first is None:
            raise BadRequest("group_id is required: the account has no group")
        return first

    async def rekey(
        self,
        p: Principal,
        *,
        name: str | None = None,
        kid: str | None = None,
        deactivate_rotated_key: bool = False,
    ) -> SecurityObject:
        """Replace an object with a new one of the same type, size, key_ops and group. The new object takes
        the name; the old one is renamed "<name> (rotated at <timestamp>)"; links go both ways."""
        refusal = self._event(p, "key.rekey", f"Rekeyed {name or kid}", object_id=kid)

        async def work(session: AsyncSession) -> tuple[SecurityObject, AuditEvent]:
            old = await self._find(session, p, name=name, kid=kid, for_update=True)
            require_permission(p, "MANAGE", old.group_id)
            if p.kind == "app" and "APPMANAGEABLE" not in old.key_ops:
                raise InvalidState("this object is not app-manageable")
            if old.replacement_kid is not None:
                raise InvalidState("this object has already been rotated")
            if old.sealed_material is None or old.obj_type not in ("AES", "HMAC", "SECRET"):
                raise InvalidState(f"a {old.obj_type} object in state {old.state} cannot be rekeyed")
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
                key_size=old.key_size,
                key_ops=list(old.key_ops),
                enabled=old.enabled,
                state="Active",
                origin="FortanixHSM",
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
            assert old.key_size is not None
            material = crypto.random_bytes(old.key_size // 8)
            new.kcv = crypto.kcv(material) if new.obj_type == "AES" else None
            new.sealed_material = self._keyring.seal(material, material_context(new))
            old.replacement_kid = new.kid
            if deactivate_rotated_key and effective_state(old, stamp) in ("Active", "PreActive"):
                old.state, old.deactivation_date = "Deactivated", stamp
            session.add(new)
            await session.flush()
            return new, self._event(p, "key.rekey", f"Rekeyed {original_name}: {old.kid} -> {new.kid}", new)

        return await self._audit.apply(work, refusal.refused)

    # ---------------------------------------------------------------------------------- reads

    async def _find(
        self,
        session: AsyncSession,
        p: Principal,
        *,
        name: str | None = None,
        kid: str | None = None,
        for_update: bool = False,
    ) -> SecurityObject:
        if (name is None) == (kid is None):
            raise BadRequest("identify the object by exactly one of kid or name")
        if kid is not None:
            return await self._load(session, p, kid, for_update=for_update)
        stmt = select(SecurityObject).where(SecurityObject.acct_id == p.acct_id, SecurityObject.name == name)
        if for_update:
            stmt = stmt.with_for_update()
        obj = await session.scalar(stmt)
        if obj is None:
            raise NotFound("sobject does not exist")
        require_visible(p, obj)
        return obj

    async def get(self, p: Principal, *, kid: str | None = None, name: str | None = None) -> SecurityObject:
        async with self._sessions() as session:
            return await self._find(session, p, kid=kid, name=name)

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
        descending = direction == "desc"
        if start is not None:
            stmt = stmt.where(column < start if descending else column > start)
        stmt = stmt.order_by(column.desc() if descending else column.asc()).limit(limit).offset(offset)
        async with self._sessions() as session:
            return list((await session.scalars(stmt)).all())

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
    ) -> SecurityObject:
        async def change(session: AsyncSession, obj: SecurityObject) -> None:
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
            if key_ops is not None:
                ops = frozenset(key_ops)
                if ops - KEY_OPS:
                    raise BadRequest(f"unknown key_ops: {', '.join(sorted(ops - KEY_OPS))}")
                obj.key_ops = sorted(ops)
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

        what = {True: "Enabled", False: "Disabled", None: "Updated"}[enabled]
        return await self._mutate(p, kid, "MANAGE", "key.update", what, change)

    async def activate(self, p: Principal, kid: str) -> SecurityObject:
        def change(_: AsyncSession, obj: SecurityObject) -> None:
            if effective_state(obj) != "PreActive":
                raise InvalidState(
                    f"only a PreActive object can be activated; this one is {effective_state(obj)}"
                )
            obj.state, obj.activation_date = "Active", now()

        return await self._mutate(p, kid, "MANAGE", "key.activate", "Activated", change)

    async def revoke(
        self,
        p: Principal,
        kid: str,
        code: str,
        message: str | None = None,
        compromise_date: datetime | None = None,
    ) -> SecurityObject:
        def change(_: AsyncSession, obj: SecurityObject) -> None:
            if code not in REVOCATION_CODES:  # checked here so that the refusal is audited
                raise BadRequest(f"code must be one of {', '.join(sorted(REVOCATION_CODES))}")
            if effective_state(obj) not in ("PreActive", "Active", "Deactivated"):
                raise InvalidState(f"an object in state {obj.state} cannot be revoked")
            stamp = now()
            compromised = code in ("KeyCompromise", "CACompromise")
            obj.state = "Compromised" if compromised else "Deactivated"
            obj.deactivation_date = obj.deactivation_date or stamp
            obj.compromise_date = (compromise_date or stamp) if compromised else None
            obj.revocation_reason = {"code": code, "message": message}

        return await self._mutate(p, kid, "MANAGE", "key.revoke", "Revoked", change)

    async def destroy(self, p: Principal, kid: str) -> SecurityObject:
        def change(_: AsyncSession, obj: SecurityObject) -> None:
            if obj.state == "Destroyed":
                raise InvalidState("the object is already destroyed")
            if effective_state(obj) == "Active":
                raise InvalidState("an Active object must be revoked before it is destroyed")
            obj.state, obj.destruction_date, obj.sealed_material = "Destroyed", now(), None
            self._material_cache.pop(obj.kid, None)

        return await self._mutate(p, kid, "MANAGE", "key.destroy", "Destroyed", change)

    async def delete(self, p: Principal, kid: str) -> None:
        async def change(session: AsyncSession, obj: SecurityObject) -> None:
            self._material_cache.pop(obj.kid, None)
            await session.delete(obj)

        await self._mutate(p, kid, "MANAGE", "key.delete", "Deleted", change)

    # ---------------------------------------------------------------------------------- crypto

    async def _usable(
        self,
        p: Principal,
        kid: str,
        permission: str,
        key_op: str,
        subject: list[SecurityObject] | None = None,
    ) -> SecurityObject:
        async with self._sessions() as session:
            obj = await self._load(session, p, kid)
        if subject is not None:
            subject.append(obj)
        require_permission(p, permission, obj.group_id)
        require_key_op(obj, key_op, effective_state(obj))
        return obj

    async def encrypt(
        self,
        p: Principal,
        kid: str,
        mode: str,
        plain: bytes,
        *,
        iv: bytes | None = None,
        aad: bytes | None = None,
        tag_len_bits: int | None = None,
        context: Mapping[str, str | None] | None = None,
    ) -> crypto.Ciphertext:
        event = self._event(
            p,
            "crypto.encrypt",
            f"Encrypted data with key {kid} ({mode})",
            object_id=kid,
            action_type="CRYPTOOPERATION",
            **dict(context or {}),
        )

        async def action(subject: list[SecurityObject]) -> crypto.Ciphertext:
            obj = await self._usable(p, kid, "ENCRYPT", "ENCRYPT", subject)
            _require_aes(obj)
            return _crypto(
                lambda: crypto.encrypt(
                    mode, self.material(obj), plain, iv=iv, aad=aad, tag_len_bits=tag_len_bits
                )
            )

        return await self._audited(event, action)

    async def decrypt(
        self,
        p: Principal,
        kid: str,
        mode: str,
        cipher: bytes,
        *,
        iv: bytes | None = None,
        aad: bytes | None = None,
        tag: bytes | None = None,
        context: Mapping[str, str | None] | None = None,
    ) -> bytes:
        event = self._event(
            p,
            "crypto.decrypt",
            f"Decrypted data with key {kid} ({mode})",
            object_id=kid,
            action_type="CRYPTOOPERATION",
            **dict(context or {}),
        )

        async def action(subject: list[SecurityObject]) -> bytes:
            obj = await self._usable(p, kid, "DECRYPT", "DECRYPT", subject)
            _require_aes(obj)
            return _crypto(lambda: crypto.decrypt(mode, self.material(obj), cipher, iv=iv, aad=aad, tag=tag))

        return await self._audited(event, action)

    async def wrap(
        self,
        p: Principal,
        wrapping_kid: str,
        subject_kid: str,
        mode: str,
        *,
        iv: bytes | None = None,
        aad: bytes | None = None,
        tag_len_bits: int | None = None,
    ) -> crypto.Ciphertext:
        event = self._event(
            p,
            "crypto.wrap",
            f"Wrapped key {subject_kid} with key {wrapping_kid} ({mode})",
            object_id=wrapping_kid,
            action_type="CRYPTOOPERATION",
        )

        async def action(seen: list[SecurityObject]) -> crypto.Ciphertext:
            wrapping = await self._usable(p, wrapping_kid, "WRAPKEY", "WRAPKEY", seen)
            _require_aes(wrapping)
            subject = await self._usable(p, subject_kid, "EXPORT", "EXPORT")
            material = self.material(subject)
            return _crypto(
                lambda: crypto.encrypt(
                    mode, self.material(wrapping), material, iv=iv, aad=aad, tag_len_bits=tag_len_bits
                )
            )

        return await self._audited(event, action)

    async def unwrap(
        self,
        p: Principal,
        wrapping_kid: str,
        wrapped: bytes,
        mode: str,
        spec: KeySpec,
        *,
        iv: bytes | None = None,
        aad: bytes | None = None,
        tag: bytes | None = None,
    ) -> SecurityObject:
        event = self._event(
            p,
            "crypto.unwrap",
            f"Unwrapped a key with key {wrapping_kid} ({mode})",
            object_id=wrapping_kid,
            action_type="CRYPTOOPERATION",
        )

        async def action(seen: list[SecurityObject]) -> bytes:
            wrapping = await self._usable(p, wrapping_kid, "UNWRAPKEY", "UNWRAPKEY", seen)
            _require_aes(wrapping)
            return _crypto(
                lambda: crypto.decrypt(mode, self.material(wrapping), wrapped, iv=iv, aad=aad, tag=tag)
            )

        material = await self._audited(event, action)
        return await self.create(p, spec, value=material)

    async def export(
        self, p: Principal, *, kid: str | None = None, name: str | None = None
    ) -> tuple[SecurityObject, bytes]:
        event = self._event(p, "key.export", f"Exported key {kid or name}", object_id=kid)

        async def action(subject: list[SecurityObject]) -> tuple[SecurityObject, bytes]:
            async with self._sessions() as session:
                obj = await self._find(session, p, kid=kid, name=name)
            subject.append(obj)
            require_permission(p, "EXPORT", obj.group_id)
            if "EXPORT" not in obj.key_ops:
                raise InvalidState("this key is not exportable (no EXPORT key operation)")
            return obj, self.material(obj)

        return await self._audited(event, action)

    # ------------------------------------------------------------------------- transient keys
    #
    # Transient-key operations are NOT audit-logged: as in Fortanix DSM, where they are logged only when
    # the account setting "Transient audit logging" is enabled (which xkslab does not have). Nothing of a
    # transient key (material or metadata) is written to the database; it lives only in its token.

    async def create_transient(self, p: Principal, spec: KeySpec) -> tuple[dict[str, Any], str]:
        """Generate an AES, HMAC or SECRET key that is not stored; returns (its view, its token). An app
        needs some permission in the target group; administrators always may."""
        size, ops = self._validate(spec, None)
        if spec.obj_type not in TRANSIENT_TYPES:
            raise BadRequest(f"transient keys must be one of {', '.join(TRANSIENT_TYPES)}")
        async with self._sessions() as session:
            group_id = await self._resolve_group(session, p, spec.group_id)
        if not p.is_admin and not p.group_permissions.get(group_id):
            raise AccessDenied("app has no permission in the group of this object")
        created = now()
        key = TransientKey(
            material=crypto.random_bytes(size // 8),
            obj_type=spec.obj_type,
            key_size=size,
            key_ops=ops,
            group_id=group_id,
            acct_id=p.acct_id,
            name=spec.name,
            description=spec.description,
            custom_metadata=dict(spec.custom_metadata or {}),
            enabled=spec.enabled,
            creator_type=p.kind if p.kind != "system" else "user",
            creator_id=p.id or p.acct_id,
            created_at=created,
            expiry=created + TRANSIENT_LIFETIME,
        )
        sealed = self._keyring.seal(key.to_json(), transient_context(p.acct_id))
        token = base64.b64encode(sealed).decode("ascii")
        return key.view(token), token

    def open_transient(self, p: Principal, token: str) -> TransientKey:
        """The key a token holds. Any problem (not base64, not sealed by this keyring for this account,
        malformed, expired) is the same BadRequest, so the answer tells nothing about the token."""
        try:
            sealed = base64.b64decode(token, validate=True)
            key = TransientKey.from_json(self._keyring.open(sealed, transient_context(p.acct_id)))
        except (binascii.Error, ValueError, TypeError, KeyError, AttributeError, Sealed):
            raise BadRequest(INVALID_TRANSIENT) from None
        if key.acct_id != p.acct_id or key.expiry <= now():
            raise BadRequest(INVALID_TRANSIENT)
        return key

    def _usable_transient(self, p: Principal, token: str, permission: str, key_op: str) -> TransientKey:
        key = self.open_transient(p, token)
        if not p.is_admin and key.group_id not in p.group_permissions:
            raise AccessDenied("the object is in a group this app is not a member of")
        require_permission(p, permission, key.group_id)
        if key_op not in key.key_ops:
            raise InvalidState(f"operation {key_op} is not allowed by this key's key_ops")
        if not key.enabled:
            raise InvalidState("the key is disabled")
        return key

    def transient_info(self, p: Principal, token: str) -> dict[str, Any]:
        key = self.open_transient(p, token)
        if not p.is_admin and key.group_id not in p.group_permissions:
            raise AccessDenied("the object is in a group this app is not a member of")
        return key.view(token)

    def encrypt_transient(
        self,
        p: Principal,
        token: str,
        mode: str,
        plain: bytes,
        *,
        iv: bytes | None = None,
        aad: bytes | None = None,
        tag_len_bits: int | None = None,
    ) -> crypto.Ciphertext:
        key = self._usable_transient(p, token, "ENCRYPT", "ENCRYPT")
        _require_aes_type(key.obj_type)
        return _crypto(
            lambda: crypto.encrypt(mode, key.material, plain, iv=iv, aad=aad, tag_len_bits=tag_len_bits)
        )

    def decrypt_transient(
        self,
        p: Principal,
        token: str,
        mode: str,
        cipher: bytes,
        *,
        iv: bytes | None = None,
        aad: bytes | None = None,
        tag: bytes | None = None,
    ) -> bytes:
        key = self._usable_transient(p, token, "DECRYPT", "DECRYPT")
        _require_aes_type(key.obj_type)
        return _crypto(lambda: crypto.decrypt(mode, key.material, cipher, iv=iv, aad=aad, tag=tag))

    def export_transient(self, p: Principal, token: str) -> tuple[dict[str, Any], bytes]:
        key = self.open_transient(p, token)
        if not p.is_admin and key.group_id not in p.group_permissions:
            raise AccessDenied("the object is in a group this app is not a member of")
        require_permission(p, "EXPORT", key.group_id)
        if "EXPORT" not in key.key_ops:
            raise InvalidState("this key is not exportable (no EXPORT key operation)")
        return key.view(token, value=key.material), key.material


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


def _require_aes(obj: SecurityObject) -> None:
    _require_aes_type(obj.obj_type)


def _require_aes_type(obj_type: str) -> None:
    if obj_type != "AES":
        raise BadRequest(f"{obj_type} objects cannot be used for this operation")


def _crypto(op: Callable[[], T]) -> T:
    try:
        return op()
    except crypto.IntegrityError as exc:
        raise IntegrityFailure(str(exc)) from None
    except crypto.CryptoError as exc:
        raise BadRequest(str(exc)) from None


def _with(event: AuditEvent, **changes: Any) -> AuditEvent:
    return dataclasses.replace(event, **changes)


def _about(event: AuditEvent, subject: list[SecurityObject]) -> AuditEvent:
    if not subject:
        return event
    return _with(event, object_id=subject[0].kid, group_ids=(subject[0].group_id,))
