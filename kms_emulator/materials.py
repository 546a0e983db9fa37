"""A KMS key's key material across rotations: which material is current, finding older material for
Decrypt, and making new material (RotateKeyOnDemand, and automatic rotation once NextRotationDate has
passed).

A key's first material is the ``sealed_backing_key`` of its row; each rotation adds a KmsKeyMaterial row
and makes it current. Material is never removed while the key exists, so every ciphertext made under the
key still decrypts, as in AWS. Automatic rotation has no timer: KMS performs a due rotation the next time
it reads the key for a data operation or a rotation operation (the periods are 90 days or more).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from kms_emulator.context import KmsContext, aware, utcnow
from kms_emulator.envelope import new_backing_key
from kms_emulator.lookup import ENABLED
from kms_emulator.models import KmsKey, KmsKeyMaterial
from kms_emulator.sealing import BACKING_KEY, KEY_MATERIAL

AUTOMATIC = "AUTOMATIC"
ON_DEMAND = "ON_DEMAND"


@dataclass(frozen=True)
class Material:
    """Unsealed key material. ``material_id`` is None for a key's first material (kind 1 blobs)."""

    material_id: str | None
    key: bytes


def first_material_id(key_id: str) -> str:
    """The KeyMaterialId of a key's first material: derived, so keys made before rotation existed need
    no new column."""
    return hashlib.sha256(b"xkslab-kms-first-material\x00" + key_id.encode()).hexdigest()


async def current(ctx: KmsContext, session: AsyncSession, key: KmsKey) -> Material:
    row = await session.scalar(
        select(KmsKeyMaterial)
        .where(KmsKeyMaterial.key_id == key.key_id)
        .order_by(KmsKeyMaterial.sequence.desc())
        .limit(1)
    )
    if row is None:
        return Material(
            None, ctx.sealer.unseal(key.sealed_backing_key, purpose=BACKING_KEY, row_id=key.key_id)
        )
    return Material(row.material_id, _unseal(ctx, row))


async def by_id(ctx: KmsContext, session: AsyncSession, key_id: str, material_id: str) -> Material | None:
    row = await session.scalar(
        select(KmsKeyMaterial).where(
            KmsKeyMaterial.material_id == material_id, KmsKeyMaterial.key_id == key_id
        )
    )
    return None if row is None else Material(row.material_id, _unseal(ctx, row))


def _unseal(ctx: KmsContext, row: KmsKeyMaterial) -> bytes:
    return ctx.sealer.unseal(row.sealed_material, purpose=KEY_MATERIAL, row_id=row.material_id)


async def rotations(session: AsyncSession, key_id: str) -> list[KmsKeyMaterial]:
    query = select(KmsKeyMaterial).where(KmsKeyMaterial.key_id == key_id).order_by(KmsKeyMaterial.sequence)
    return list((await session.scalars(query)).all())


async def count_on_demand(session: AsyncSession, key_id: str) -> int:
    query = select(func.count()).where(
        KmsKeyMaterial.key_id == key_id, KmsKeyMaterial.rotation_type == ON_DEMAND
    )
    return int(await session.scalar(query) or 0)


async def rotate(ctx: KmsContext, session: AsyncSession, key: KmsKey, rotation_type: str) -> KmsKeyMaterial:
    """New current material for ``key`` (the caller's transaction commits it)."""
    last = await session.scalar(
        select(func.max(KmsKeyMaterial.sequence)).where(KmsKeyMaterial.key_id == key.key_id)
    )
    material_id = secrets.token_hex(32)
    row = KmsKeyMaterial(
        key_id=key.key_id,
        sequence=(last or 0) + 1,
        material_id=material_id,
        sealed_material=ctx.sealer.seal(new_backing_key(), purpose=KEY_MATERIAL, row_id=material_id),
        rotation_date=utcnow(),
        rotation_type=rotation_type,
    )
    session.add(row)
    return row


def rotation_due(key: KmsKey, now: datetime | None = None) -> bool:
    """Automatic rotation is due: enabled, past its date, and the key Enabled (AWS does not rotate a
    disabled or pending-deletion key; it rotates at once when the key is enabled again)."""
    return (
        key.rotation_period_days is not None
        and key.next_rotation_date is not None
        and key.key_state == ENABLED
        and aware(key.next_rotation_date) <= (now or utcnow())
    )


async def catch_up(ctx: KmsContext, session: AsyncSession, key: KmsKey) -> bool:
    """Perform a due automatic rotation (one, however long overdue) and schedule the next. The schedule
    moves by compare-and-set, so two processes that find the same rotation due make it once."""
    if not rotation_due(key):
        return False
    assert key.rotation_period_days is not None and key.next_rotation_date is not None
    due, following = key.next_rotation_date, utcnow() + timedelta(days=key.rotation_period_days)
    moved = await session.execute(
        update(KmsKey)
        .where(KmsKey.key_id == key.key_id, KmsKey.next_rotation_date == due)
        .values(next_rotation_date=following)
        .execution_options(synchronize_session=False)
    )
    if getattr(moved, "rowcount", 0) != 1:
        return False
    await rotate(ctx, session, key, AUTOMATIC)
    key.next_rotation_date = following
    return True
