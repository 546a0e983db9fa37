"""DSM REST API: message digests (``/crypto/v1/digest``) and MACs with a key, generated and verified, in
both URL styles the sdkms SDK's DigestApi uses: per key (``/crypto/v1/keys/{kid}/mac``, ``/macverify``;
what ``sdkms-cli hmac-digest`` and ``hmac-verify`` call) and "Ex" with a SobjectDescriptor in the body
(``/crypto/v1/mac``, ``/crypto/v1/macverify``, and their batch forms). An HMAC key MACs with the hash
``alg`` names; an AES key MACs by CMAC and takes no ``alg``. A digest uses no key, so it needs only a
session and is not audited; MACs are authorised and audited by KeyService like encrypt.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from dsm_emulator import digests
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
from dsm_emulator.api.sobjects import TRANSIENT_UNSUPPORTED, _any_descriptor, _object
from dsm_emulator.authz import Principal
from dsm_emulator.errors import BadRequest, Unsupported
from dsm_emulator.keys import KeyService

routes = web.RouteTableDef()


def _alg(body: dict[str, Any], *, required: bool) -> str | None:
    alg = field(body, "alg", str, required=required)
    if alg is None or alg in digests.DIGESTS:
        return alg  # type: ignore[no-any-return]
    if alg in digests.NOT_EMULATED:
        raise Unsupported(f"xkslab does not emulate digest algorithm {alg}")
    raise BadRequest(f"alg must be one of {', '.join(digests.DIGESTS)}")


def _data(body: dict[str, Any]) -> bytes:
    data = b64_field(body, "data", required=True)
    assert data is not None
    return data


def _given_mac(body: dict[str, Any]) -> bytes:
    """MacVerifyRequest carries the MAC in ``mac``, or in the deprecated ``digest`` (sdkms-cli sends that)."""
    mac, old = b64_field(body, "mac"), b64_field(body, "digest")
    if mac is not None and old is not None and mac != old:
        raise BadRequest("mac and digest (its deprecated name) differ; send one")
    given = mac if mac is not None else old
    if given is None:
        raise BadRequest("missing required field mac")
    return given


async def _kid_in_body(keys: KeyService, p: Principal, body: dict[str, Any]) -> str:
    value = body.get("key")
    if value is None:
        raise BadRequest("missing required field key")
    kid, name, token = _any_descriptor(value, "key")
    if token is not None:
        raise BadRequest(TRANSIENT_UNSUPPORTED)
    if kid is not None:
        return kid
    return (await keys.get(p, name=name)).kid


async def _mac(keys: KeyService, p: Principal, body: dict[str, Any], kid: str | None) -> dict[str, Any]:
    alg, data = _alg(body, required=False), _data(body)
    kid = kid if kid is not None else await _kid_in_body(keys, p, body)
    mac = b64(await keys.mac(p, kid, alg, data))
    # sdkms-cli prints the deprecated ``digest``; the SDK's newer callers read ``mac``.
    return {"kid": kid, "mac": mac, "digest": mac}


async def _mac_verify(
    keys: KeyService, p: Principal, body: dict[str, Any], kid: str | None
) -> dict[str, Any]:
    alg, data, given = _alg(body, required=False), _data(body), _given_mac(body)
    kid = kid if kid is not None else await _kid_in_body(keys, p, body)
    return {"kid": kid, "result": await keys.mac_verify(p, kid, alg, data, given)}


_MacOp = Callable[[KeyService, Principal, dict[str, Any], str | None], Awaitable[dict[str, Any]]]


async def _one(request: web.Request, op: _MacOp, kid: str | None) -> web.Response:
    body = _object(await read_json(request))
    return json_response(await op(core_of(request).keys, principal_of(request), body, kid))


async def _batch(request: web.Request, op: _MacOp) -> web.Response:
    """A JSON array of Ex requests (each names its key); one status per item, as batch encrypt answers."""
    return await run_batch(request, lambda keys, p, item: op(keys, p, item, None))


# The batch paths first: /crypto/v1/keys/{kid}/mac would take "batch" for a kid.
@routes.post("/crypto/v1/keys/batch/mac")
async def batch_mac(request: web.Request) -> web.Response:
    return await _batch(request, _mac)


@routes.post("/crypto/v1/keys/batch/macverify")
async def batch_mac_verify(request: web.Request) -> web.Response:
    return await _batch(request, _mac_verify)


@routes.post("/crypto/v1/digest")
async def digest(request: web.Request) -> web.Response:
    principal_of(request)  # a session is required, as for every /crypto call
    body = _object(await read_json(request))
    alg = _alg(body, required=True)
    assert alg is not None
    return json_response({"digest": b64(digests.digest(alg, _data(body)))})


@routes.post("/crypto/v1/keys/{kid}/mac")
async def mac(request: web.Request) -> web.Response:
    return await _one(request, _mac, request.match_info["kid"])


@routes.post("/crypto/v1/keys/{kid}/macverify")
async def mac_verify(request: web.Request) -> web.Response:
    return await _one(request, _mac_verify, request.match_info["kid"])


@routes.post("/crypto/v1/mac")
async def mac_ex(request: web.Request) -> web.Response:
    return await _one(request, _mac, None)


@routes.post("/crypto/v1/macverify")
async def mac_verify_ex(request: web.Request) -> web.Response:
    return await _one(request, _mac_verify, None)
