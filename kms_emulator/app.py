"""The AWS KMS endpoint: AWS JSON 1.1 on ``POST /``, one handler per ``X-Amz-Target: TrentService.<Op>``.

Resources (database engine, the KMS sealer, the XKS proxy client) open and close in cleanup_ctx. Every
answer carries a fresh ``x-amzn-RequestId``, which is also the kmsRequestId of the XKS proxy calls the
request makes. Errors leave through ``errors.error_response`` only; anything unexpected is logged and
answered as KMSInternalException, never as a traceback. SigV4 is verified only with kms.verify_sigv4
(kms_emulator.callers), before anything else; otherwise any credentials are accepted and the access key
id is read only to name the caller in awsPrincipalArn.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from sqlalchemy import select

from kms_emulator import aliases, data, grants, keys, keystores, openapi, policies, proxy, rotation
from kms_emulator.callers import CallerCheck
from kms_emulator.context import Call, KmsContext, aware, principal_arn
from kms_emulator.errors import (
    CONTENT_TYPE,
    REQUEST_ID_HEADER,
    InternalError,
    KmsError,
    SerializationError,
    UnsupportedOperation,
    ValidationError,
    error_response,
)
from kms_emulator.metrics import KmsMetrics
from kms_emulator.models import CustomKeyStore
from kms_emulator.params import Params
from kms_emulator.sealing import KmsSealer
from kms_emulator.store_health import StoreWatch
from kms_emulator.throttle import StoreThrottle
from kms_emulator.xks_client import XksProxyClient
from xkslab_shared import body_encoding, db, health, json_body, logs, sigv4
from xkslab_shared import openapi as openapi_doc
from xkslab_shared.config import Settings
from xkslab_shared.generation import GenerationCache, invalidating_sessions
from xkslab_shared.serve import MALFORMED_REQUEST_KEY, HttpLimits, Listener, refusal_message
from xkslab_shared.workers_env import worker_count

log = logging.getLogger("kms_emulator")

Operation = Callable[[KmsContext, Call, Params], Awaitable[dict[str, Any]]]

TARGET_PREFIX = "TrentService."
MAX_BODY = 1 << 20

# The one dispatch table: every operation this KMS serves. Anything else is UnsupportedOperationException.
OPERATIONS: dict[str, Operation] = {
    "CreateCustomKeyStore": keystores.create_custom_key_store,
    "DescribeCustomKeyStores": keystores.describe_custom_key_stores,
    "UpdateCustomKeyStore": keystores.update_custom_key_store,
    "DeleteCustomKeyStore": keystores.delete_custom_key_store,
    "ConnectCustomKeyStore": keystores.connect_custom_key_store,
    "DisconnectCustomKeyStore": keystores.disconnect_custom_key_store,
    "CreateKey": keys.create_key,
    "DescribeKey": keys.describe_key,
    "ListKeys": keys.list_keys,
    "EnableKey": keys.enable_key,
    "DisableKey": keys.disable_key,
    "ScheduleKeyDeletion": keys.schedule_key_deletion,
    "CancelKeyDeletion": keys.cancel_key_deletion,
    "UpdateKeyDescription": keys.update_key_description,
    "GetKeyPolicy": policies.get_key_policy,
    "PutKeyPolicy": policies.put_key_policy,
    "ListKeyPolicies": policies.list_key_policies,
    "CreateGrant": grants.create_grant,
    "ListGrants": grants.list_grants,
    "ListRetirableGrants": grants.list_retirable_grants,
    "RetireGrant": grants.retire_grant,
    "RevokeGrant": grants.revoke_grant,
    "EnableKeyRotation": rotation.enable_key_rotation,
    "DisableKeyRotation": rotation.disable_key_rotation,
    "GetKeyRotationStatus": rotation.get_key_rotation_status,
    "RotateKeyOnDemand": rotation.rotate_key_on_demand,
    "ListKeyRotations": rotation.list_key_rotations,
    "TagResource": keys.tag_resource,
    "UntagResource": keys.untag_resource,
    "ListResourceTags": keys.list_resource_tags,
    "CreateAlias": aliases.create_alias,
    "DeleteAlias": aliases.delete_alias,
    "ListAliases": aliases.list_aliases,
    "UpdateAlias": aliases.update_alias,
    "Encrypt": data.encrypt,
    "Decrypt": data.decrypt,
    "ReEncrypt": data.re_encrypt,
    "GenerateDataKey": data.generate_data_key,
    "GenerateDataKeyWithoutPlaintext": data.generate_data_key_without_plaintext,
    "GenerateRandom": data.generate_random,
}

CONTEXT_KEY: web.AppKey[KmsContext] = web.AppKey("kms_context", KmsContext)
METRICS_KEY: web.AppKey[KmsMetrics] = web.AppKey("kms_metrics", KmsMetrics)


def xks_ca_file(settings: Settings) -> Path | None:
    """The CA bundle trusted for https:// proxies: kms.xks_ca, else the lab CA when it exists."""
    if settings.kms.xks_ca:
        return settings.path(Path(settings.kms.xks_ca))
    lab_ca = settings.data_dir / "tls" / "ca.crt"
    return lab_ca if lab_ca.is_file() else None


async def _read_raw(request: web.Request) -> bytes:
    try:
        return await body_encoding.read(request, body_encoding.NONE)
    except body_encoding.BodyEncodingError as exc:
        raise SerializationError(_sentence(exc.message)) from None
    except web.HTTPRequestEntityTooLarge:
        raise ValidationError(f"The request body is larger than {MAX_BODY} bytes.") from None


def _parse_body(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        return {}
    try:
        body = json_body.loads(raw)
    except json_body.JsonValueError as exc:
        raise ValidationError(_sentence(exc.message)) from None
    except json_body.JsonBodyError as exc:
        raise SerializationError(_sentence(exc.message)) from None
    if not isinstance(body, dict):
        raise SerializationError("The request body must be a JSON object.")
    return body


def _refusal(status: int) -> KmsError:
    """A request refused before it reached the dispatcher; a refused connection is AWS KMS's own
    ThrottlingException (HTTP 400), which the AWS SDKs retry with backoff."""
    if status == 503:
        return KmsError(_sentence(refusal_message(status, body_encoding.NONE)), "ThrottlingException")
    if status == 415:
        return SerializationError(_sentence(refusal_message(status, body_encoding.NONE)))
    return ValidationError(refusal_message(status, body_encoding.NONE))


def _sentence(message: str) -> str:
    """KMS's own messages are capitalised sentences."""
    return message[:1].upper() + message[1:] + "."


async def _caller(request: web.Request, ctx: KmsContext, raw: bytes) -> str:
    """awsPrincipalArn of this request; with kms.verify_sigv4, only once its signature is right."""
    if ctx.callers is None:
        return principal_arn(request.headers.get("Authorization"), ctx.settings.account_id)
    path, _, query = request.raw_path.partition("?")
    signed = sigv4.SignedRequest(
        method=request.method,
        path=path,
        query=query,
        headers={name.lower(): ",".join(request.headers.getall(name)) for name in request.headers},
        body_sha256=hashlib.sha256(raw).hexdigest(),
    )
    return await ctx.callers.principal_arn(signed, datetime.now(UTC))


async def _dispatch(request: web.Request, request_id: str) -> dict[str, Any]:
    ctx = request.app[CONTEXT_KEY]
    raw = await _read_raw(request)
    caller = await _caller(request, ctx, raw)  # as AWS: who is asking comes before what is asked
    target = request.headers.get("X-Amz-Target", "")
    name = target[len(TARGET_PREFIX) :] if target.startswith(TARGET_PREFIX) else ""
    operation = OPERATIONS.get(name)
    if operation is None:
        raise UnsupportedOperation(f"Operation {target or '(no X-Amz-Target)'} is not supported by this KMS.")
    return await operation(ctx, Call(name, request_id, caller), Params(_parse_body(raw)))


async def handle(request: web.Request) -> web.Response:
    request_id = str(uuid.uuid4())
    started = time.perf_counter()
    target = request.headers.get("X-Amz-Target", "")
    operation = target[len(TARGET_PREFIX) :] if target[len(TARGET_PREFIX) :] in OPERATIONS else "unsupported"
    metrics = request.app[METRICS_KEY]
    # Its request id is also the kmsRequestId of the XKS calls it makes: one id finds both log lines.
    line = logs.access(request) if logs.access_enabled() else {}
    line.update(operation=operation, kmsRequestId=request_id)
    try:
        result = await _dispatch(request, request_id)
    except body_encoding.ClientGone:
        # No one to answer (xkslab_shared.body_encoding): counted as gone, not as an outcome.
        metrics.client_gone(operation)
        return web.Response(status=body_encoding.CLIENT_GONE_STATUS)  # for the access line
    except KmsError as exc:
        metrics.observe_request(operation, exc.code, time.perf_counter() - started)
        line["error"] = exc.code
        return error_response(exc, request_id)
    except Exception:
        log.exception("KMS request %s failed unexpectedly", request_id)
        metrics.observe_request(operation, "KMSInternalException", time.perf_counter() - started)
        line["error"] = "KMSInternalException"
        return error_response(InternalError("The request failed inside KMS."), request_id)
    metrics.observe_request(operation, None, time.perf_counter() - started)
    response = web.Response(body=json_body.dumps(result))
    response.headers["Content-Type"] = CONTENT_TYPE
    response.headers[REQUEST_ID_HEADER] = request_id
    return response


async def not_served(request: web.Request) -> web.Response:
    error = UnsupportedOperation(f"{request.method} {request.path} is not an AWS KMS API call: use POST /.")
    return error_response(error, str(uuid.uuid4()))


async def metrics_page(request: web.Request) -> web.Response:
    """GET /metrics: Prometheus text; per-store gauges are brought up to date from the database first."""
    metrics = request.app[METRICS_KEY]
    ctx = request.app[CONTEXT_KEY]
    async with ctx.sessions() as session:
        rows = (await session.execute(select(CustomKeyStore.id, CustomKeyStore.creation_date))).all()
    metrics.set_key_stores((store_id, aware(created)) for store_id, created in rows)
    response = web.Response(body=metrics.render())
    response.headers["Content-Type"] = metrics.content_type
    return response


def create_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    body_encoding.install(app)
    app[MALFORMED_REQUEST_KEY] = lambda status: error_response(_refusal(status), str(uuid.uuid4()))
    metrics = KmsMetrics()
    app[METRICS_KEY] = metrics

    async def resources(app: web.Application) -> AsyncIterator[None]:
        database = settings.database
        engine = db.create_engine(
            settings.database_url, busy_timeout_ms=database.busy_timeout_ms, pool_size=database.pool_size
        )
        try:
            await db.check_schema(engine)
            sealer = KmsSealer.open(settings.path(settings.kms.seal_key_file))
            client = XksProxyClient(
                timeout_s=settings.kms.xks_timeout_ms / 1000,
                ca_file=xks_ca_file(settings),
                client_cert=(
                    settings.path(settings.kms.xks_client_cert),
                    settings.path(settings.kms.xks_client_key),
                ),
            )
            client.observer = metrics.observe_proxy_call
            await client.open()
            try:
                sessions, generation = invalidating_sessions(engine, database.cache_poll_ms / 1000)
                generation.listen(settings.database_url)  # PostgreSQL: NOTIFY, the poll as fallback
                usable_keys: GenerationCache[Any, Any] = GenerationCache(generation, database.cache_max_age_s)
                callers = (
                    CallerCheck(
                        settings.kms, sessions, sealer, GenerationCache(generation, database.cache_max_age_s)
                    )
                    if settings.kms.verify_sigv4
                    else None
                )
                watch = StoreWatch(settings.kms.xks_failure_threshold, sessions)
                # `kms serve --workers N`: each worker takes its share of every store's quota.
                throttle = StoreThrottle(settings.kms.xks_store_rps, share=worker_count())
                ctx = KmsContext(
                    settings.kms, sessions, sealer, client, usable_keys, metrics, watch, callers, throttle
                )
                app[CONTEXT_KEY] = ctx
                interval = settings.kms.xks_health_check_s
                checker = (
                    asyncio.create_task(proxy.health_check_loop(ctx, interval)) if interval > 0 else None
                )
                try:
                    yield
                finally:
                    if checker is not None:
                        checker.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await checker
                    await generation.close()
            finally:
                await client.close()
        finally:
            await engine.dispose()

    app.cleanup_ctx.append(resources)
    app.router.add_post("/", handle)
    app.router.add_get("/metrics", metrics_page)
    app.router.add_get(health.HEALTH_PATH, health.handler("kms", {"database": _database}))
    app.router.add_get(openapi_doc.OPENAPI_PATH, openapi_doc.handler(openapi.build()))
    app.router.add_route("*", "/{tail:[\\s\\S]*}", not_served)
    return app


async def _database(request: web.Request) -> None:
    await db.ping(request.app[CONTEXT_KEY].sessions)


def listener(settings: Settings, app: web.Application | None = None) -> Listener:
    """Plain HTTP on kms.host:kms.port, as ``--endpoint-url http://...`` and AWS_ENDPOINT_URL_KMS expect."""
    return Listener(
        "AWS KMS",
        app if app is not None else create_app(settings),
        settings.kms.host,
        settings.kms.port,
        limits=HttpLimits.of(settings),
        service="kms",
        access_log=settings.log.access,
        section="kms",
    )
