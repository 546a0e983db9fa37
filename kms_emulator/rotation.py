"""Key rotation: EnableKeyRotation, DisableKeyRotation, GetKeyRotationStatus, RotateKeyOnDemand and
ListKeyRotations, for symmetric AWS_KMS keys, with AWS's answers for keys in an external key store.

AWS cannot rotate material it does not hold: for an EXTERNAL_KEY_STORE key, Enable/DisableKeyRotation,
RotateKeyOnDemand and ListKeyRotations are UnsupportedOperationException ("<arn> origin is
EXTERNAL_KEY_STORE which is not valid for this operation.") and GetKeyRotationStatus is always false.
Rotation of an XKS key happens in the external key manager (a DSM rekey), which KMS does not see.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from kms_emulator import materials
from kms_emulator.context import Call, KmsContext, epoch, utcnow
from kms_emulator.errors import DisabledError, InvalidState, KmsError, UnsupportedOperation
from kms_emulator.lookup import DISABLED, ORIGIN_XKS, PENDING_DELETION, find_key
from kms_emulator.models import KmsKey
from kms_emulator.params import Params

DEFAULT_PERIOD_DAYS = 365
MAX_ON_DEMAND_ROTATIONS = 25
INCLUDE_KEY_MATERIAL = ["ALL_KEY_MATERIAL", "ROTATIONS_ONLY"]


def _refuse_external(ctx: KmsContext, key: KmsKey) -> None:
    if key.origin == ORIGIN_XKS:
        raise UnsupportedOperation(
            f"{ctx.key_arn(key.key_id)} origin is {ORIGIN_XKS} which is not valid for this operation."
        )


def _require_enabled(ctx: KmsContext, key: KmsKey) -> None:
    """Changing a key's rotation needs it Enabled: DisabledException, or KMSInvalidStateException while
    it is pending deletion."""
    arn = ctx.key_arn(key.key_id)
    if key.key_state == DISABLED:
        raise DisabledError(f"{arn} is disabled.")
    if key.key_state == PENDING_DELETION:
        raise InvalidState(f"{arn} is pending deletion.")


async def _changeable_key(ctx: KmsContext, session: AsyncSession, p: Params) -> KmsKey:
    ref = p.key_id()
    assert ref is not None
    key, _store = await find_key(ctx, session, ref, allow_alias=False)
    _refuse_external(ctx, key)
    _require_enabled(ctx, key)
    return key


async def enable_key_rotation(ctx: KmsContext, call: Call, p: Params) -> dict[str, Any]:
    period = p.integer("RotationPeriodInDays", minimum=90, maximum=2560) or DEFAULT_PERIOD_DAYS
    async with ctx.sessions.begin() as session:
        key = await _changeable_key(ctx, session, p)
        key.rotation_period_days = period
        key.next_rotation_date = utcnow() + timedelta(days=period)
    return {}


async def disable_key_rotation(ctx: KmsContext, call: Call, p: Params) -> dict[str, Any]:
    async with ctx.sessions.begin() as session:
        key = await _changeable_key(ctx, session, p)
        key.rotation_period_days = None
        key.next_rotation_date = None
    return {}


async def get_key_rotation_status(ctx: KmsContext, call: Call, p: Params) -> dict[str, Any]:
    """While a key is pending deletion its status reads false (AWS keeps the schedule for a cancel)."""
    ref = p.key_id()
    assert ref is not None
    async with ctx.sessions.begin() as session:
        key, _store = await find_key(ctx, session, ref, allow_alias=False)
        await materials.catch_up(ctx, session, key)
    enabled = key.rotation_period_days is not None and key.key_state != PENDING_DELETION
    result: dict[str, Any] = {"KeyRotationEnabled": enabled, "KeyId": ctx.key_arn(key.key_id)}
    if enabled:
        result["RotationPeriodInDays"] = key.rotation_period_days
        result["NextRotationDate"] = epoch(key.next_rotation_date)
    return result


async def rotate_key_on_demand(ctx: KmsContext, call: Call, p: Params) -> dict[str, Any]:
    """Completes at once (AWS rotates within seconds), so there is never an OnDemandRotationStartDate
    and never a ConflictException for a rotation in progress."""
    async with ctx.sessions.begin() as session:
        key = await _changeable_key(ctx, session, p)
        if await materials.count_on_demand(session, key.key_id) >= MAX_ON_DEMAND_ROTATIONS:
            raise KmsError.named(
                "LimitExceededException",
                f"{ctx.key_arn(key.key_id)} has reached the limit of {MAX_ON_DEMAND_ROTATIONS} on-demand "
                "rotations.",
            )
        await materials.rotate(ctx, session, key, materials.ON_DEMAND)
    return {"KeyId": key.key_id}


async def list_key_rotations(ctx: KmsContext, call: Call, p: Params) -> dict[str, Any]:
    ref = p.key_id()
    include = p.string("IncludeKeyMaterial", enum=INCLUDE_KEY_MATERIAL) or "ROTATIONS_ONLY"
    limit = p.limit(default=100, maximum=1000)
    start = _index_marker(p.marker())
    assert ref is not None
    async with ctx.sessions.begin() as session:
        key, _store = await find_key(ctx, session, ref, allow_alias=False)
        _refuse_external(ctx, key)
        await materials.catch_up(ctx, session, key)
        rows = await materials.rotations(session, key.key_id)
    current = rows[-1].material_id if rows else materials.first_material_id(key.key_id)
    entries: list[dict[str, Any]] = []
    if include == "ALL_KEY_MATERIAL":
        first = materials.first_material_id(key.key_id)
        entries.append(
            {"KeyId": key.key_id, "KeyMaterialId": first, "KeyMaterialState": _state(first, current)}
        )
    for row in rows:
        entries.append(
            {
                "KeyId": key.key_id,
                "KeyMaterialId": row.material_id,
                "KeyMaterialState": _state(row.material_id, current),
                "RotationDate": epoch(row.rotation_date),
                "RotationType": row.rotation_type,
            }
        )
    page = entries[start : start + limit]
    result: dict[str, Any] = {"Rotations": page, "Truncated": start + limit < len(entries)}
    if result["Truncated"]:
        result["NextMarker"] = str(start + limit)
    return result


def _state(material_id: str, current: str) -> str:
    return "CURRENT" if material_id == current else "NON_CURRENT"


def _index_marker(marker: str | None) -> int:
    if marker is None:
        return 0
    if not (marker.isascii() and marker.isdigit()):
        raise KmsError.named("InvalidMarkerException", "The marker is not one this operation returned.")
    return int(marker)
