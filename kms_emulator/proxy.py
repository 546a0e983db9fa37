"""KMS's side of every XKS proxy call: which proxy (from the key store row), what requestMetadata, and
how a proxy failure becomes the KMS error real KMS returns.

- Key store calls (Create/Update/Connect) map failures with the XKS client's ``key_store_exception``.
- CreateKey maps GetKeyMetadata failures with ``create_key_exception``.
- Data-plane calls (Encrypt, Decrypt, ReEncrypt, GenerateDataKey*) turn every proxy failure into
  KMSInvalidStateException, with a message naming the cause (the messages below).
- Data-plane outcomes and the periodic KmsHealthCheck feed the store's failure count (store_health.py);
  enough failures in a row turn a CONNECTED store FAILED.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

from sqlalchemy import select

from kms_emulator.context import Call, KmsContext
from kms_emulator.envelope import OuterLayer
from kms_emulator.errors import InvalidState, KmsError
from kms_emulator.models import CustomKeyStore, KmsKey
from kms_emulator.sealing import PROXY_SECRET
from kms_emulator.throttle import THROTTLED
from kms_emulator.xks_client import (
    EncryptResult,
    XksProxyConfig,
    XksProxyError,
    create_key_exception,
    key_store_exception,
    request_metadata,
)

log = logging.getLogger("kms_emulator")

_PREFIX = "The external key store proxy"
HEALTH_CHECK_OPERATION = "KmsHealthCheck"
# Unsealed proxy configurations kept (KmsContext.proxy_configs): far above the stores of a lab.
MAX_PROXY_CONFIGS = 256

# The proxy's errorName -> why KMS refused a data-plane request.
_BY_ERROR_NAME = {
    "InvalidStateException": f"{_PREFIX} rejected the request because the external key is disabled",
    "KeyNotFoundException": f"{_PREFIX} rejected the request because it could not find the external key",
    "InvalidKeyUsageException": (
        f"{_PREFIX} rejected the request because the external key does not support the requested operation"
    ),
    "InvalidCiphertextException": (
        f"{_PREFIX} rejected the request because the ciphertext or additional authenticated data is "
        "corrupted, missing, or otherwise invalid"
    ),
    "AuthenticationFailedException": (
        f"{_PREFIX} rejected the request because the key store's proxy authentication credential is not valid"
    ),
    "AccessDeniedException": f"{_PREFIX} denied access to the operation (secondary authorization)",
    "ValidationException": f"{_PREFIX} rejected the request as invalid",
    "ThrottlingException": f"{_PREFIX} rejected the request because the request rate is too high",
    "DependencyTimeoutException": f"{_PREFIX} timed out waiting for the external key manager",
    "InternalException": f"{_PREFIX} failed with an internal error",
    "UnsupportedOperationException": f"{_PREFIX} does not support the requested operation",
    "InvalidUriPathException": f"{_PREFIX} rejected the key store's proxy URI path",
}
# Failures with no errorName (transport, TLS, timeout, a response KMS cannot read), by connection error code.
_BY_CONNECTION_CODE = {
    "XKS_PROXY_TIMED_OUT": f"{_PREFIX} did not respond within the time allowed by KMS (timed out)",
    "XKS_PROXY_NOT_REACHABLE": "KMS cannot reach the external key store proxy (connection failed)",
    "XKS_PROXY_INVALID_TLS_CONFIGURATION": (
        "KMS cannot establish a TLS connection to the external key store proxy"
    ),
    "XKS_PROXY_INVALID_RESPONSE": "KMS cannot interpret the response from the external key store proxy",
    "INVALID_CREDENTIALS": _BY_ERROR_NAME["AuthenticationFailedException"],
    "XKS_PROXY_ACCESS_DENIED": _BY_ERROR_NAME["AccessDeniedException"],
    "XKS_PROXY_INVALID_CONFIGURATION": _BY_ERROR_NAME["InvalidUriPathException"],
}


def data_plane_error(error: XksProxyError) -> InvalidState:
    message = _BY_ERROR_NAME.get(error.error_name or "") or _BY_CONNECTION_CODE.get(
        error.connection_error_code, f"{_PREFIX} request failed"
    )
    return InvalidState(f"{message}.")


def proxy_config(ctx: KmsContext, store: CustomKeyStore) -> XksProxyConfig:
    """The store's proxy as the XKS client calls it, its secret unsealed once per version of the row
    (the sealed secret changes with every new credential, so a changed row is a new entry)."""
    row = (store.id, store.uri_endpoint, store.uri_path, store.access_key_id, store.sealed_secret)
    cached = ctx.proxy_configs.get(row)
    if cached is not None:
        return cached
    secret = ctx.sealer.unseal(store.sealed_secret, purpose=PROXY_SECRET, row_id=store.id)
    cfg = XksProxyConfig(
        uri_endpoint=store.uri_endpoint,
        uri_path=store.uri_path,
        access_key_id=store.access_key_id,
        secret=secret.decode(),
        region=ctx.settings.region,
        key_store_id=store.id,
    )
    if len(ctx.proxy_configs) >= MAX_PROXY_CONFIGS:  # old rows of changed stores: start again
        ctx.proxy_configs.clear()
    ctx.proxy_configs[row] = cfg
    return cfg


_NO_KEY_MANAGER = "the XKS proxy reports every external key manager instance UNAVAILABLE"


async def _probe(ctx: KmsContext, call: Call, cfg: XksProxyConfig) -> None:
    """The proxy's health check, and at least one key manager behind it that can serve: KMS treats a
    proxy whose whole fleet is UNAVAILABLE like one it cannot reach (a DEGRADED one still serves)."""
    health = await ctx.xks.health(cfg, kms_operation=call.operation, kms_request_id=call.request_id)
    if all(node.get("healthStatus") == "UNAVAILABLE" for node in health["ekmFleetDetails"]):
        raise XksProxyError("XKS_PROXY_NOT_REACHABLE", _NO_KEY_MANAGER)


async def health_check(ctx: KmsContext, call: Call, cfg: XksProxyConfig) -> None:
    """Create/Update: the proxy must answer its health check, else the modelled XksProxy* exception."""
    try:
        await _probe(ctx, call, cfg)
    except XksProxyError as exc:
        raise KmsError.named(key_store_exception(exc), exc.message) from None


async def connection_error(ctx: KmsContext, call: Call, cfg: XksProxyConfig) -> str | None:
    """Connect: None when the proxy is healthy, else the ConnectionErrorCode the store gets."""
    try:
        await _probe(ctx, call, cfg)
    except XksProxyError as exc:
        return exc.connection_error_code
    return None


async def _observe(
    ctx: KmsContext, store_id: str, error: XksProxyError | None, *, health: bool = False
) -> None:
    code = await ctx.watch.record(store_id, error, health=health)  # turns the store FAILED at the threshold
    if code is None:
        return
    log.warning(
        "%s",
        json.dumps(
            {
                "event": "xks_store_failed",
                "customKeyStoreId": store_id,
                "connectionErrorCode": code,
                "after": ctx.watch.threshold,
                "source": "KmsHealthCheck" if health else "data plane",
            }
        ),
    )


async def health_check_all(ctx: KmsContext) -> None:
    """One KmsHealthCheck of every CONNECTED store's proxy, each outcome counted (store_health.py)."""
    async with ctx.sessions() as session:
        stores = (
            await session.scalars(
                select(CustomKeyStore).where(CustomKeyStore.connection_state == "CONNECTED")
            )
        ).all()
    for store in stores:
        call = Call(HEALTH_CHECK_OPERATION, str(uuid.uuid4()), "")
        try:
            await _probe(ctx, call, proxy_config(ctx, store))
            error = None
        except XksProxyError as exc:
            error = exc
        await _observe(ctx, store.id, error, health=True)


async def health_check_loop(ctx: KmsContext, interval_s: float) -> None:
    """KMS's periodic health check, every ``interval_s``, until cancelled; a failed round is logged and
    the next one runs as planned."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await health_check_all(ctx)
        except Exception:
            log.exception("the periodic KmsHealthCheck failed")


async def key_metadata(ctx: KmsContext, call: Call, store: CustomKeyStore, xks_key_id: str) -> dict[str, Any]:
    metadata = request_metadata(
        kms_operation=call.operation, kms_request_id=call.request_id, aws_principal_arn=call.principal_arn
    )
    try:
        return await ctx.xks.key_metadata(proxy_config(ctx, store), xks_key_id, metadata)
    except XksProxyError as exc:
        raise KmsError.named(create_key_exception(exc), exc.message) from None


def _metadata(ctx: KmsContext, call: Call, key: KmsKey) -> dict[str, str]:
    return request_metadata(
        kms_operation=call.operation,
        kms_request_id=call.request_id,
        aws_principal_arn=call.principal_arn,
        kms_key_arn=ctx.key_arn(key.key_id),
    )


def _within_quota(ctx: KmsContext, call: Call, store: CustomKeyStore) -> None:
    """AWS's per-external-key-store quota (kms.xks_store_rps): past it, ThrottlingException and no
    proxy call."""
    if ctx.throttle is not None and not ctx.throttle.take(store.id):
        ctx.metrics.throttle.labels(store.id, call.operation).inc()
        raise KmsError.named("ThrottlingException", THROTTLED)


async def outer_encrypt(
    ctx: KmsContext, call: Call, store: CustomKeyStore, key: KmsKey, inner: bytes
) -> OuterLayer:
    assert key.xks_key_id is not None
    _within_quota(ctx, call, store)
    aad = ctx.key_arn(key.key_id).encode()
    try:
        result = await ctx.xks.encrypt(
            proxy_config(ctx, store), key.xks_key_id, inner, aad, _metadata(ctx, call, key)
        )
    except XksProxyError as exc:
        await _observe(ctx, store.id, exc)
        raise data_plane_error(exc) from None
    await _observe(ctx, store.id, None)
    return OuterLayer(result.ciphertext, result.iv, result.tag, result.ciphertext_metadata)


async def outer_decrypt(
    ctx: KmsContext, call: Call, store: CustomKeyStore, key: KmsKey, outer: OuterLayer
) -> bytes:
    assert key.xks_key_id is not None
    _within_quota(ctx, call, store)
    aad = ctx.key_arn(key.key_id).encode()
    sent = EncryptResult(
        ciphertext=outer.ciphertext, iv=outer.iv, tag=outer.tag, ciphertext_metadata=outer.metadata
    )
    try:
        plain = await ctx.xks.decrypt(
            proxy_config(ctx, store), key.xks_key_id, sent, aad, _metadata(ctx, call, key)
        )
    except XksProxyError as exc:
        await _observe(ctx, store.id, exc)
        raise data_plane_error(exc) from None
    await _observe(ctx, store.id, None)
    return plain
