"""KMS key lifecycle: CreateKey (AWS_KMS and EXTERNAL_KEY_STORE), DescribeKey, ListKeys, Enable/Disable,
ScheduleKeyDeletion/CancelKeyDeletion, UpdateKeyDescription and tags
(key policies: policies.py; rotation: rotation.py).

Every key is SYMMETRIC_DEFAULT / ENCRYPT_DECRYPT with its own random AES-256 backing key (the inner
envelope layer), sealed before it is stored. An XKS key is created only after the proxy's GetKeyMetadata
shows an enabled AES_256 key that can ENCRYPT and DECRYPT.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from kms_emulator import grants, policies, proxy
from kms_emulator.context import Call, KmsContext, epoch, utcnow
from kms_emulator.envelope import new_backing_key
from kms_emulator.errors import (
    InvalidState,
    KeyStoreInvalidState,
    KeyStoreNotFound,
    KmsError,
    UnsupportedOperation,
    ValidationError,
)
from kms_emulator.lookup import (
    DISABLED,
    ENABLED,
    ORIGIN_AWS_KMS,
    ORIGIN_XKS,
    PENDING_DELETION,
    UNAVAILABLE,
    find_key,
    key_state,
    purge_expired,
    require_not_pending_deletion,
)
from kms_emulator.models import CustomKeyStore, KmsKey
from kms_emulator.params import Params, constraint_error
from kms_emulator.policy_document import default_policy
from kms_emulator.sealing import BACKING_KEY

SYMMETRIC_DEFAULT = "SYMMETRIC_DEFAULT"
ENCRYPT_DECRYPT = "ENCRYPT_DECRYPT"
XKS_KEY_ID = r"^[a-zA-Z0-9-_.]+$"
KEY_USAGES = ["SIGN_VERIFY", "ENCRYPT_DECRYPT", "GENERATE_VERIFY_MAC", "KEY_AGREEMENT"]
ORIGINS = ["AWS_KMS", "EXTERNAL", "AWS_CLOUDHSM", "EXTERNAL_KEY_STORE"]
MAX_TAGS = 50


def key_metadata(ctx: KmsContext, key: KmsKey, store: CustomKeyStore | None) -> dict[str, Any]:
    """DescribeKey's KeyMetadata, as KMS shapes it for a symmetric customer managed key."""
    state = key_state(key, store)
    meta: dict[str, Any] = {
        "AWSAccountId": ctx.settings.account_id,
        "KeyId": key.key_id,
        "Arn": ctx.key_arn(key.key_id),
        "CreationDate": epoch(key.creation_date),
        "Enabled": state == ENABLED,
        "Description": key.description,
        "KeyUsage": ENCRYPT_DECRYPT,
        "KeyState": state,
        "Origin": key.origin,
        "KeyManager": "CUSTOMER",
        "CustomerMasterKeySpec": SYMMETRIC_DEFAULT,
        "KeySpec": SYMMETRIC_DEFAULT,
        "EncryptionAlgorithms": [SYMMETRIC_DEFAULT],
        "MultiRegion": False,
    }
    if state == PENDING_DELETION:
        meta["DeletionDate"] = epoch(key.deletion_date)
        meta["PendingDeletionWindowInDays"] = key.pending_window_days
    if key.origin == ORIGIN_XKS:
        meta["CustomKeyStoreId"] = key.custom_key_store_id
        meta["XksKeyConfiguration"] = {"Id": key.xks_key_id}
    return meta


def read_tags(p: Params, name: str = "Tags", *, required: bool = False) -> list[dict[str, str]]:
    tags: list[dict[str, str]] = []
    for entry in p.struct_list(name, required=required) or []:
        tag_key = entry.string("TagKey", required=True, min_len=1, max_len=128)
        tag_value = entry.string("TagValue", required=True, min_len=0, max_len=256)
        assert tag_key is not None and tag_value is not None
        if tag_key.lower().startswith("aws:"):
            raise KmsError.named("TagException", "Tag keys beginning with aws: are reserved for AWS.")
        if any(t["TagKey"] == tag_key for t in tags):
            raise KmsError.named("TagException", f"Duplicate tag key {tag_key} in the request.")
        tags.append({"TagKey": tag_key, "TagValue": tag_value})
    return tags


def _check_xks_metadata(xks_key_id: str, meta: dict[str, Any]) -> None:
    usage = meta.get("keyUsage")
    usable = (
        meta.get("keySpec") == "AES_256"
        and isinstance(usage, list)
        and {"ENCRYPT", "DECRYPT"} <= set(usage)
        and meta.get("keyStatus") == "ENABLED"
    )
    if not usable:
        raise KmsError.named(
            "XksKeyInvalidConfigurationException",
            f"The external key {xks_key_id} must be an enabled AES_256 key whose usage includes ENCRYPT "
            f"and DECRYPT; the proxy reports keySpec={meta.get('keySpec')}, keyUsage={usage}, "
            f"keyStatus={meta.get('keyStatus')}.",
        )


async def create_key(ctx: KmsContext, call: Call, p: Params) -> dict[str, Any]:
    description = p.string("Description", min_len=0, max_len=8192) or ""
    usage = p.string("KeyUsage", enum=KEY_USAGES) or ENCRYPT_DECRYPT
    spec = p.string("KeySpec") or p.string("CustomerMasterKeySpec") or SYMMETRIC_DEFAULT
    origin = p.string("Origin", enum=ORIGINS) or ORIGIN_AWS_KMS
    store_id = p.string("CustomKeyStoreId", min_len=1, max_len=64)
    xks_key_id = p.string("XksKeyId", min_len=1, max_len=128, pattern=XKS_KEY_ID)
    tags = read_tags(p)
    if p.has("KeySpec") and p.has("CustomerMasterKeySpec"):
        raise ValidationError("Specify KeySpec or CustomerMasterKeySpec, not both.")
    if spec != SYMMETRIC_DEFAULT or usage != ENCRYPT_DECRYPT:
        raise UnsupportedOperation("This KMS emulates SYMMETRIC_DEFAULT keys for ENCRYPT_DECRYPT only.")
    if p.boolean("MultiRegion"):
        raise UnsupportedOperation("Multi-Region keys are not emulated.")
    if origin not in (ORIGIN_AWS_KMS, ORIGIN_XKS):
        raise UnsupportedOperation(f"Keys with Origin {origin} are not emulated.")
    if len(tags) > MAX_TAGS:
        raise KmsError.named("LimitExceededException", f"A KMS key can have at most {MAX_TAGS} tags.")
    policy = policies.read_policy(ctx, call, p, required=False)
    key_id = str(uuid.uuid4())
    store = None
    if origin == ORIGIN_AWS_KMS:
        if store_id is not None or xks_key_id is not None:
            raise ValidationError("CustomKeyStoreId and XksKeyId require Origin EXTERNAL_KEY_STORE.")
    else:
        if store_id is None:
            raise constraint_error("customKeyStoreId", None, "Member must not be null")
        if xks_key_id is None:
            raise constraint_error("xksKeyId", None, "Member must not be null")
        store = await _usable_store(ctx, store_id, xks_key_id)
        _check_xks_metadata(xks_key_id, await proxy.key_metadata(ctx, call, store, xks_key_id))
    key = KmsKey(
        key_id=key_id,
        description=description,
        key_state=ENABLED,
        origin=origin,
        custom_key_store_id=store_id,
        xks_key_id=xks_key_id,
        sealed_backing_key=ctx.sealer.seal(new_backing_key(), purpose=BACKING_KEY, row_id=key_id),
        creation_date=utcnow(),
        deletion_date=None,
        pending_window_days=None,
        tags=tags,
        policy=policy if policy is not None else default_policy(ctx.settings.account_id),
        rotation_period_days=None,
        next_rotation_date=None,
    )
    try:
        async with ctx.sessions.begin() as session:
            session.add(key)
    except IntegrityError:
        if store_id is None:
            raise
        await _usable_store(ctx, store_id, xks_key_id)  # names the conflict: store gone or key taken
        raise
    return {"KeyMetadata": key_metadata(ctx, key, store)}


async def _usable_store(ctx: KmsContext, store_id: str, xks_key_id: str | None) -> CustomKeyStore:
    async with ctx.sessions() as session:
        store = await session.get(CustomKeyStore, store_id)
        if store is None:
            raise KeyStoreNotFound(f"Custom key store {store_id} does not exist.")
        if store.connection_state != "CONNECTED":
            raise KeyStoreInvalidState(
                f"Custom key store {store_id} is {store.connection_state}: connect it to create keys in it."
            )
        taken = await session.scalar(
            select(KmsKey.key_id).where(
                KmsKey.custom_key_store_id == store_id, KmsKey.xks_key_id == xks_key_id
            )
        )
    if taken is not None:
        raise KmsError.named(
            "XksKeyAlreadyInUseException",
            f"The external key {xks_key_id} already backs KMS key {taken} in custom key store {store_id}.",
        )
    return store


async def describe_key(ctx: KmsContext, call: Call, p: Params) -> dict[str, Any]:
    ref = p.key_id()
    grants.check_grant_tokens(ctx, p)
    assert ref is not None
    async with ctx.sessions() as session:
        key, store = await find_key(ctx, session, ref, allow_alias=True)
    return {"KeyMetadata": key_metadata(ctx, key, store)}


async def list_keys(ctx: KmsContext, call: Call, p: Params) -> dict[str, Any]:
    limit = p.limit(default=100, maximum=1000)
    marker = p.marker()
    query = select(KmsKey.key_id).order_by(KmsKey.key_id)
    if marker is not None:
        query = query.where(KmsKey.key_id > marker)
    async with ctx.sessions.begin() as session:
        await purge_expired(session)
        key_ids = (await session.scalars(query.limit(limit + 1))).all()
    page = key_ids[:limit]
    result: dict[str, Any] = {
        "Keys": [{"KeyId": k, "KeyArn": ctx.key_arn(k)} for k in page],
        "Truncated": len(key_ids) > limit,
    }
    if len(key_ids) > limit:
        result["NextMarker"] = page[-1]
    return result


async def _set_enabled(ctx: KmsContext, p: Params, target: str) -> dict[str, Any]:
    ref = p.key_id()
    assert ref is not None
    async with ctx.sessions.begin() as session:
        key, store = await find_key(ctx, session, ref, allow_alias=False)
        state = key_state(key, store)
        if state in (PENDING_DELETION, UNAVAILABLE):
            raise InvalidState(f"{ctx.key_arn(key.key_id)} is {state}: it cannot be enabled or disabled.")
        key.key_state = target
    return {}


async def enable_key(ctx: KmsContext, call: Call, p: Params) -> dict[str, Any]:
    return await _set_enabled(ctx, p, ENABLED)


async def disable_key(ctx: KmsContext, call: Call, p: Params) -> dict[str, Any]:
    return await _set_enabled(ctx, p, DISABLED)


async def schedule_key_deletion(ctx: KmsContext, call: Call, p: Params) -> dict[str, Any]:
    ref = p.key_id()
    window = p.integer("PendingWindowInDays", minimum=1, maximum=365)
    if window is None:
        window = 30
    if not 7 <= window <= 30:
        raise constraint_error(
            "pendingWindowInDays", window, "Member must have value between 7 and 30 (inclusive)"
        )
    assert ref is not None
    async with ctx.sessions.begin() as session:
        key, _store = await find_key(ctx, session, ref, allow_alias=False)
        require_not_pending_deletion(ctx, key)
        key.key_state = PENDING_DELETION
        key.deletion_date = utcnow() + timedelta(days=window)
        key.pending_window_days = window
    return {
        "KeyId": ctx.key_arn(key.key_id),
        "DeletionDate": epoch(key.deletion_date),
        "KeyState": PENDING_DELETION,
        "PendingWindowInDays": window,
    }


async def cancel_key_deletion(ctx: KmsContext, call: Call, p: Params) -> dict[str, Any]:
    ref = p.key_id()
    assert ref is not None
    async with ctx.sessions.begin() as session:
        key, _store = await find_key(ctx, session, ref, allow_alias=False)
        if key.key_state != PENDING_DELETION:
            raise InvalidState(f"{ctx.key_arn(key.key_id)} is not pending deletion.")
        key.key_state = DISABLED
        key.deletion_date = None
        key.pending_window_days = None
    return {"KeyId": ctx.key_arn(key.key_id)}


async def update_key_description(ctx: KmsContext, call: Call, p: Params) -> dict[str, Any]:
    ref = p.key_id()
    description = p.string("Description", required=True, min_len=0, max_len=8192)
    assert ref is not None and description is not None
    async with ctx.sessions.begin() as session:
        key, _store = await find_key(ctx, session, ref, allow_alias=False)
        require_not_pending_deletion(ctx, key)
        key.description = description
    return {}


async def tag_resource(ctx: KmsContext, call: Call, p: Params) -> dict[str, Any]:
    ref = p.key_id()
    new_tags = read_tags(p, required=True)
    assert ref is not None
    async with ctx.sessions.begin() as session:
        key, _store = await find_key(ctx, session, ref, allow_alias=False)
        require_not_pending_deletion(ctx, key)
        tags = [dict(t) for t in key.tags]
        for tag in new_tags:
            existing = next((t for t in tags if t["TagKey"] == tag["TagKey"]), None)
            if existing is not None:
                existing["TagValue"] = tag["TagValue"]
            else:
                tags.append(tag)
        if len(tags) > MAX_TAGS:
            raise KmsError.named("LimitExceededException", f"A KMS key can have at most {MAX_TAGS} tags.")
        key.tags = tags
    return {}


async def untag_resource(ctx: KmsContext, call: Call, p: Params) -> dict[str, Any]:
    ref = p.key_id()
    tag_keys = p.string_list("TagKeys", required=True)
    assert ref is not None and tag_keys is not None
    async with ctx.sessions.begin() as session:
        key, _store = await find_key(ctx, session, ref, allow_alias=False)
        require_not_pending_deletion(ctx, key)
        key.tags = [dict(t) for t in key.tags if t["TagKey"] not in set(tag_keys)]
    return {}


async def list_resource_tags(ctx: KmsContext, call: Call, p: Params) -> dict[str, Any]:
    ref = p.key_id()
    limit = p.limit(default=50, maximum=1000)
    marker = p.marker()
    assert ref is not None
    start = 0
    if marker is not None:
        if not (marker.isascii() and marker.isdigit()):
            raise KmsError.named("InvalidMarkerException", "The marker is not one this operation returned.")
        start = int(marker)
    async with ctx.sessions() as session:
        key, _store = await find_key(ctx, session, ref, allow_alias=False)
    page = key.tags[start : start + limit]
    result: dict[str, Any] = {"Tags": page, "Truncated": start + limit < len(key.tags)}
    if result["Truncated"]:
        result["NextMarker"] = str(start + limit)
    return result
