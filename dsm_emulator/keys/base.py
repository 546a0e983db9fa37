"""The common ground of KeyService, kept in one module so that the lifecycle, the crypto operations and
the transient keys cannot drift apart on it: what a valid object is (the object-type rules and KeySpec
validation), which state a row is effectively in, which context its material is sealed under, and the one
set of collaborators (sessions, keyring, audit log, material cache) with the helpers that load a visible
row, mutate it together with its audit row, audit a use of it and unseal its material. A stored object's
material is unsealed only here, after the caller has checked the row, and cached per kid: a kid's
material never changes, and a destroyed or deleted object is refused by its row before the cache is
consulted.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dsm_emulator import asymmetric, symmetric
from dsm_emulator.approvals.gate import QuorumGate, Touch
from dsm_emulator.audit import AuditEvent, AuditLog
from dsm_emulator.authz import KEY_OPS, Principal, require_permission, require_visible
from dsm_emulator.errors import BadRequest, DsmError, InvalidState, NotFound
from dsm_emulator.keyring import Keyring
from dsm_emulator.keys.object_types import OBJECT_TYPES
from dsm_emulator.keys.usage import USAGE_FLUSH_S, KeyUsage
from dsm_emulator.models import Group, SecurityObject, is_uuid
from dsm_emulator.policies import FORTANIX_OBJECT_TYPES, GroupPolicies
from xkslab_shared.generation import Generation, GenerationCache

T = TypeVar("T")

log = logging.getLogger("dsm_emulator.keys")

STATES = ("PreActive", "Active", "Deactivated", "Compromised", "Destroyed")
# A key deleted under a history policy: hidden from everything but its revert until its windows close.
DELETED = "Deleted"
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


MAX_NAME_LENGTH = 4096


def now() -> datetime:
    return datetime.now(UTC)


_TICK = timedelta(microseconds=1)


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
class Detail:
    """What a change adds to its audit row: text after the object's name, other groups it touched, and
    a verb for what it turned out to be (a PATCH that moved the key: "Moved")."""

    text: str = ""
    groups: tuple[str, ...] = ()
    verb: str | None = None


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
    elliptic_curve: str | None = None  # EC only
    pub_exponent: int | None = None  # RSA only, when generated


class KeyServiceBase:
    """What the KeyService mixins share: the collaborators and the helpers they all call."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        keyring: Keyring,
        audit: AuditLog,
        *,
        max_age_s: float = 30.0,
        generation: Generation | None = None,
        usage_flush_s: float = USAGE_FLUSH_S,
        gate: QuorumGate | None = None,
    ):
        self._sessions = sessions
        self.gate = gate if gate is not None else QuorumGate(sessions, generation, max_age_s)
        self._keyring = keyring
        self._audit = audit
        # kid -> the object, for crypto calls (which only read it); None: read on every call.
        self._objects: GenerationCache[str, SecurityObject] | None = (
            None if generation is None else GenerationCache(generation, max_age_s)
        )
        # kid -> (material, monotonic time unsealed); nothing is kept longer than max_age_s.
        self._material_cache: dict[str, tuple[bytes, float]] = {}
        self._material_max_age_s = max_age_s
        self._material_swept = time.monotonic()
        self.usage = KeyUsage(sessions, usage_flush_s)

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
        self,
        session: AsyncSession,
        p: Principal,
        kid: str,
        *,
        for_update: bool = False,
        include_deleted: bool = False,
    ) -> SecurityObject:
        """The visible object; a key deleted under a history policy only when ``include_deleted`` (its
        revert, ``show_deleted``): for everything else it is gone."""
        stmt = select(SecurityObject).where(SecurityObject.kid == kid)
        if for_update:
            stmt = stmt.with_for_update()
        obj = await session.scalar(stmt) if is_uuid(kid) else None
        if obj is None or (obj.state == DELETED and not include_deleted):
            raise NotFound("sobject does not exist")
        require_visible(p, obj)
        return obj

    async def _load_for_use(self, p: Principal, kid: str) -> SecurityObject:
        """The object for a crypto call, from the cache when there is one; visibility checked per call."""
        if self._objects is None or not is_uuid(kid):
            async with self._sessions() as session:
                return await self._load(session, p, kid)

        async def load() -> SecurityObject:
            async with self._sessions() as session:
                obj = await session.scalar(select(SecurityObject).where(SecurityObject.kid == kid))
            if obj is None or obj.state == DELETED:
                raise NotFound("sobject does not exist")
            return obj

        obj = await self._objects.get(kid, load)
        require_visible(p, obj)
        return obj

    async def _held(self, p: Principal, obj: SecurityObject, *categories: str) -> None:
        """Ask the quorum gate about one object (see dsm_emulator.approvals.gate)."""
        await self.gate.check(p, [Touch.sobject(obj, *categories)])

    async def _mutate(
        self,
        p: Principal,
        kid: str,
        permission: str,
        operation: str,
        message: str,
        change: Callable[[AsyncSession, SecurityObject], Awaitable[Detail | None] | Detail | None],
        held: Iterable[str] = (),
        *,
        include_deleted: bool = False,
    ) -> SecurityObject:
        """Change one object under its row lock, audited together with the change. ``change`` may return a
        Detail: more for the audit message, and other groups the change touched (a move's destination)."""
        refusal = self._event(p, operation, message, object_id=kid)

        async def work(session: AsyncSession) -> tuple[SecurityObject, AuditEvent]:
            obj = await self._load(session, p, kid, for_update=True, include_deleted=include_deleted)
            require_permission(p, permission, obj.group_id)
            if p.kind == "app" and "APPMANAGEABLE" not in obj.key_ops:
                raise InvalidState("this object is not app-manageable")
            await self._held(p, obj, *held)
            source_group = obj.group_id
            result = change(session, obj)
            detail = await result if isinstance(result, Awaitable) else result
            await session.flush()
            detail = detail or Detail()
            groups = tuple(dict.fromkeys((source_group, obj.group_id, *detail.groups)))
            event = self._event(p, operation, f"{detail.verb or message} {obj.name}{detail.text}", obj)
            return obj, _with(event, group_ids=groups)

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
        for obj in subject:
            self.usage.note(obj)
        await self._audit.record(_with(_about(event, subject), response_time_us=elapsed))
        return result

    async def material(self, obj: SecurityObject) -> bytes:
        """The object's plaintext material; callers have already checked the row."""
        if obj.sealed_material is None:
            raise InvalidState("the key material has been destroyed")
        now = time.monotonic()
        if now - self._material_swept >= self._material_max_age_s:
            self._material_cache = {
                kid: entry
                for kid, entry in self._material_cache.items()
                if now - entry[1] < self._material_max_age_s
            }
            self._material_swept = now
        cached = self._material_cache.get(obj.kid)
        if cached is not None and now - cached[1] < self._material_max_age_s:
            return cached[0]
        material = await self._keyring.open(obj.sealed_material, material_context(obj))
        if self._material_max_age_s > 0:
            self._material_cache[obj.kid] = (material, now)
        return material

    # ------------------------------------------------------------------- validation and lookup

    def _validate(
        self,
        spec: KeySpec,
        value: bytes | None,
        pair: asymmetric.KeyPair | None = None,
        *,
        made_inside: bool = False,
    ) -> tuple[int, frozenset[str]]:
        """The checked size and key_ops of a new object. Default key_ops: a generated key's, unless it is
        imported (``value`` given and not ``made_inside``, i.e. not derived or agreed inside DSM)."""
        rule = OBJECT_TYPES.get(spec.obj_type)
        if rule is None:
            known = "is not supported by xkslab; " if spec.obj_type in FORTANIX_OBJECT_TYPES else ""
            raise BadRequest(f"obj_type {spec.obj_type[:40]} {known}must be one of {', '.join(OBJECT_TYPES)}")
        if not spec.name or len(spec.name) > MAX_NAME_LENGTH:
            raise BadRequest(f"name must be 1 to {MAX_NAME_LENGTH} characters")
        if value is None and not rule.can_generate:
            raise BadRequest(f"{spec.obj_type} objects can only be imported")
        if pair is not None:
            if spec.key_size is not None and spec.key_size != pair.key_size:
                raise BadRequest(f"key_size {spec.key_size} does not match the key ({pair.key_size} bits)")
            size = pair.key_size
        elif value is not None:
            found = symmetric.key_size_of(spec.obj_type, value)
            if found is None:
                raise BadRequest(f"a value of {len(value)} bytes is not a {spec.obj_type} key")
            if spec.key_size is not None and spec.key_size != found:
                raise BadRequest("key_size does not match the length of value")
            size = found
        elif spec.key_size is None:
            raise BadRequest("key_size is required")
        else:
            size = spec.key_size
        if not rule.sizes(size):
            raise BadRequest(f"key_size {size} is not valid for {spec.obj_type}")
        default_ops = rule.imported_ops if value is not None and not made_inside else rule.generated_ops
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

    async def _policies(self, session: AsyncSession, group_id: str) -> GroupPolicies:
        """A key's group's policies: read when a key is made, changed or leaves; never per crypto call."""
        return GroupPolicies.of(await session.get(Group, group_id))

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
        if obj is None or obj.state == DELETED:
            raise NotFound("sobject does not exist")
        require_visible(p, obj)
        return obj


def _with(event: AuditEvent, **changes: Any) -> AuditEvent:
    return dataclasses.replace(event, **changes)


def _about(event: AuditEvent, subject: list[SecurityObject]) -> AuditEvent:
    if not subject:
        return event
    return _with(event, object_id=subject[0].kid, group_ids=(subject[0].group_id,))
