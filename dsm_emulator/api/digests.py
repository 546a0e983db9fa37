"""DSM REST API: message digests (``/crypto/v1/digest``) and MACs with a key, generated and verified, in
both URL styles the sdkms SDK's DigestApi uses: per key (``/crypto/v1/keys/{kid}/mac``, ``/macverify``;
what ``sdkms-cli hmac-digest`` and ``hmac-verify`` call) and "Ex" with a SobjectDescriptor in the body
(``/crypto/v1/mac``, ``/crypto/v1/macverify``). An HMAC key MACs with the hash ``alg`` names; an AES key
MACs by CMAC and takes no ``alg``. A digest uses no key, so it needs only a session and is not audited;
MACs are authorised and audited by KeyService like encrypt.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from dsm_emulator import digests
from dsm_emulator.api.context import b64, b64_field, core_of, field, json_response, principal_of, read_json
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


async def _mac(request: web.Request, body: dict[str, Any], kid: str | None) -> web.Response:
    p, keys = principal_of(request), core_of(request).keys
    alg, data = _alg(body, required=False), _data(body)
    kid = kid if kid is not None else await _kid_in_body(keys, p, body)
    mac = b64(await keys.mac(p, kid, alg, data))
    # sdkms-cli prints the deprecated ``digest``; the SDK's newer callers read ``mac``.
    return json_response({"kid": kid, "mac": mac, "digest": mac})


async def _mac_verify(request: web.Request, body: dict[str, Any], kid: str | None) -> web.Response:
    p, keys = principal_of(request), core_of(request).keys
    alg, data, given = _alg(body, required=False), _data(body), _given_mac(body)
    kid = kid if kid is not None else await _kid_in_body(keys, p, body)
    return json_response({"kid": kid, "result": await keys.mac_verify(p, kid, alg, data, given)})


@routes.post("/crypto/v1/digest")
async def digest(request: web.Request) -> web.Response:
    principal_of(request)  # a session is required, as for every /crypto call
    body = _object(await read_json(request))
    alg = _alg(body, required=True)
    assert alg is not None
    return json_response({"digest": b64(digests.digest(alg, _data(body)))})


@routes.post("/crypto/v1/keys/{kid}/mac")
async def mac(request: web.Request) -> web.Response:
    return await _mac(request, _object(await read_json(request)), request.match_info["kid"])


@routes.post("/crypto/v1/keys/{kid}/macverify")
async def mac_verify(request: web.Request) -> web.Response:
    return await _mac_verify(request, _object(await read_json(request)), request.match_info["kid"])


@routes.post("/crypto/v1/mac")
async def mac_ex(request: web.Request) -> web.Response:
    return await _mac(request, _object(await read_json(request)), None)


@routes.post("/crypto/v1/macverify")
async def mac_verify_ex(request: web.Request) -> web.Response:
    return await _mac_verify(request, _object(await read_json(request)), None)
