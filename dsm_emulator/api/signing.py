"""DSM REST API: signatures with RSA and EC keys (``sign`` and ``verify``), in the three styles sdkms
uses: the legacy per-key paths (``/crypto/v1/keys/{kid}/sign``), the "Ex" paths that carry a
SobjectDescriptor in the body (``/crypto/v1/sign``), and their batch forms (a list of Ex requests).

The data to sign is given as a digest (``hash`` with ``hash_alg``), as sdkms-cli sends it, or as the
message itself (``data``, which the lab digests with ``hash_alg``; an Ed25519 key signs it as it is);
exactly one of the two. ``deterministic_signature`` is refused with a 400 that names it rather than
ignored. Each handler parses its input before any lookup, makes one KeyService call and answers in
Fortanix's shapes (bytes as padded base64).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from dsm_emulator.api.context import (
    b64,
    b64_field,
    core_of,
    field,
    json_response,
    principal_of,
    read_json,
    run_batch,
)
from dsm_emulator.api.crypto import _descriptor
from dsm_emulator.api.sobjects import _object
from dsm_emulator.asymmetric import Message
from dsm_emulator.authz import Principal
from dsm_emulator.errors import BadRequest
from dsm_emulator.keys import KeyService
from dsm_emulator.policies import not_implemented

routes = web.RouteTableDef()


@dataclass(frozen=True)
class _SignArgs:
    message: Message
    mode: dict[str, Any] | None


def _sign_args(body: dict[str, Any]) -> _SignArgs:
    if body.get("deterministic_signature"):
        raise not_implemented("deterministic_signature")
    hash_alg = field(body, "hash_alg", str)
    digest = b64_field(body, "hash")
    data = b64_field(body, "data")
    if (digest is None) == (data is None):
        raise BadRequest("exactly one of hash and data is required")
    if digest is not None and hash_alg is None:
        raise BadRequest("missing required field hash_alg")
    mode = field(body, "mode", dict)
    return _SignArgs(Message(hash_alg, digest=digest, data=data), mode)


async def _kid(keys: KeyService, p: Principal, body: dict[str, Any]) -> str:
    value = body.get("key")
    if value is None:
        raise BadRequest("missing required field key")
    kid, name = _descriptor(value, "key")
    return kid if kid is not None else (await keys.get(p, name=name)).kid


async def _sign(keys: KeyService, p: Principal, kid: str, body: dict[str, Any]) -> dict[str, Any]:
    a = _sign_args(body)
    signature = await keys.sign(p, kid, a.message, a.mode)
    return {"kid": kid, "signature": b64(signature)}


async def _verify(keys: KeyService, p: Principal, kid: str, body: dict[str, Any]) -> dict[str, Any]:
    a = _sign_args(body)
    signature = b64_field(body, "signature", required=True)
    assert signature is not None
    result = await keys.verify(p, kid, a.message, signature, a.mode)
    return {"kid": kid, "result": result}


Operation = Callable[[KeyService, Principal, str, dict[str, Any]], Awaitable[dict[str, Any]]]


async def _ex(request: web.Request, operation: Operation) -> web.Response:
    p, body, keys = principal_of(request), _object(await read_json(request)), core_of(request).keys
    _sign_args(body)  # a malformed request is a 400 before the key is looked up
    return json_response(await operation(keys, p, await _kid(keys, p, body), body))


async def _per_key(request: web.Request, operation: Operation) -> web.Response:
    p, body = principal_of(request), _object(await read_json(request))
    return json_response(await operation(core_of(request).keys, p, request.match_info["kid"], body))


async def _batch(request: web.Request, operation: Operation) -> web.Response:
    """A BatchSignRequest or BatchVerifyRequest: a list of Ex requests, each answered with its own status."""

    async def one(keys: KeyService, p: Principal, item: dict[str, Any]) -> dict[str, Any]:
        _sign_args(item)
        return await operation(keys, p, await _kid(keys, p, item), item)

    return await run_batch(request, one)


# Batch paths first: /crypto/v1/keys/{kid}/sign would take "batch" as a kid.
@routes.post("/crypto/v1/keys/batch/sign")
async def batch_sign(request: web.Request) -> web.Response:
    return await _batch(request, _sign)


@routes.post("/crypto/v1/keys/batch/verify")
async def batch_verify(request: web.Request) -> web.Response:
    return await _batch(request, _verify)


@routes.post("/crypto/v1/sign")
async def sign_ex(request: web.Request) -> web.Response:
    return await _ex(request, _sign)


@routes.post("/crypto/v1/verify")
async def verify_ex(request: web.Request) -> web.Response:
    return await _ex(request, _verify)


@routes.post("/crypto/v1/keys/{kid}/sign")
async def sign(request: web.Request) -> web.Response:
    return await _per_key(request, _sign)


@routes.post("/crypto/v1/keys/{kid}/verify")
async def verify(request: web.Request) -> web.Response:
    return await _per_key(request, _verify)
