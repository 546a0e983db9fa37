"""Finding KMS keys from what callers send (key id, key ARN, alias name, alias ARN), and a key's state as
AWS reports it.

Stored states are Enabled, Disabled and PendingDeletion. An XKS key whose key store is not CONNECTED
reads as Unavailable without that being stored, so connecting the store brings it back as it was. A key
past its deletion date is gone: lookups do not find it and the listing operations purge it.
"""

from __future__ import annotations

import re
import uuid

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from kms_emulator.context import KmsContext, aware, utcnow
from kms_emulator.errors import DisabledError, InvalidState, NotFound
from kms_emulator.models import CustomKeyStore, KmsAlias, KmsGrant, KmsKey, KmsKeyMaterial

ENABLED = "Enabled"
DISABLED = "Disabled"
PENDING_DELETION = "PendingDeletion"
UNAVAILABLE = "Unavailable"
ORIGIN_AWS_KMS = "AWS_KMS"
ORIGIN_XKS = "EXTERNAL_KEY_STORE"

_ARN = re.compile(r"arn:aws:kms:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):(?P<resource>.+)")


def _is_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value.lower()
    except ValueError:
        return False


async def resolve_key_id(ctx: KmsContext, session: AsyncSession, ref: str, *, allow_alias: bool) -> str:
    """The key id that ``ref`` names. Operations whose model takes only a key id or key ARN pass
    ``allow_alias=False``, and an alias is then refused as AWS refuses it."""
    resource = ref
    if ref.startswith("arn:"):
        match = _ARN.fullmatch(ref)
        if (
            match is None
            or match["region"] != ctx.settings.region
            or match["account"] != ctx.settings.account_id
        ):
            raise NotFound(f"Invalid arn {ref}" if match is None else f"Key '{ref}' does not exist")
        resource = match["resource"]
    if resource.startswith("alias/"):
        if not allow_alias:
            raise NotFound(f"Invalid keyId {ref}")
        alias = await session.get(KmsAlias, resource)
        if alias is None:
            raise NotFound(f"Alias {ctx.alias_arn(resource)} is not found.")
        return alias.target_key_id
    if resource.startswith("key/") and ref.startswith("arn:"):
        resource = resource[len("key/") :]
    if not _is_uuid(resource):
        raise NotFound(f"Invalid keyId {ref}")
    return resource.lower()


def _expired(key: KmsKey) -> bool:
    return key.deletion_date is not None and aware(key.deletion_date) <= utcnow()


async def find_key(
    ctx: KmsContext, session: AsyncSession, ref: str, *, allow_alias: bool
) -> tuple[KmsKey, CustomKeyStore | None]:
    """The key and, for an XKS key, its key store; NotFoundException if there is none."""
    key_id = await resolve_key_id(ctx, session, ref, allow_alias=allow_alias)
    key = await session.get(KmsKey, key_id)
    if key is None:
        raise NotFound(f"Key '{ctx.key_arn(key_id)}' does not exist")
    require_present(ctx, key)
    store = None
    if key.custom_key_store_id is not None:
        store = await session.get(CustomKeyStore, key.custom_key_store_id)
    return key, store


def require_present(ctx: KmsContext, key: KmsKey) -> None:
    """NotFoundException for a key past its deletion date: it is gone, whether or not purged yet."""
    if _expired(key):
        raise NotFound(f"Key '{ctx.key_arn(key.key_id)}' does not exist")


async def purge_expired(session: AsyncSession) -> None:
    """Delete the keys whose waiting period is over (their aliases, grants and material go with them)."""
    # Every stored time is UTC, so the comparison also holds for SQLite's zone-less text timestamps.
    gone = (await session.scalars(select(KmsKey.key_id).where(KmsKey.deletion_date <= utcnow()))).all()
    if gone:
        await session.execute(delete(KmsAlias).where(KmsAlias.target_key_id.in_(gone)))
        await session.execute(delete(KmsGrant).where(KmsGrant.key_id.in_(gone)))
        await session.execute(delete(KmsKeyMaterial).where(KmsKeyMaterial.key_id.in_(gone)))
        await session.execute(delete(KmsKey).where(KmsKey.key_id.in_(gone)))


def key_state(key: KmsKey, store: CustomKeyStore | None) -> str:
    if key.key_state == PENDING_DELETION:
        return PENDING_DELETION
    if key.origin == ORIGIN_XKS and (store is None or store.connection_state != "CONNECTED"):
        return UNAVAILABLE
    return key.key_state


def require_usable(ctx: KmsContext, key: KmsKey, store: CustomKeyStore | None) -> None:
    """A cryptographic operation needs an Enabled key: DisabledException or KMSInvalidStateException."""
    state = key_state(key, store)
    arn = ctx.key_arn(key.key_id)
    if state == DISABLED:
        raise DisabledError(f"{arn} is disabled.")
    if state == PENDING_DELETION:
        raise InvalidState(f"{arn} is pending deletion.")
    if state == UNAVAILABLE:
        raise InvalidState(
            f"{arn} is unavailable: its custom key store {key.custom_key_store_id} is not connected."
        )


def require_not_pending_deletion(ctx: KmsContext, key: KmsKey) -> None:
    if key.key_state == PENDING_DELETION:
        raise InvalidState(f"{ctx.key_arn(key.key_id)} is pending deletion.")
