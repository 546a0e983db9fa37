"""DSM REST API: multipart encrypt and decrypt, in both URL styles the SDK uses: per key
(``/crypto/v1/keys/{kid}/encrypt/init``) and "Ex" with a SobjectDescriptor ``key`` in every body
(``/crypto/v1/encrypt/init``, what sdkms-cli calls for files of 350 KiB and more).

Each handler checks the body's fields (a field the request may not carry is a 400 naming it), makes one
KeyService call (``dsm_emulator.keys.multipart``) and answers in Fortanix's shapes; the ``state`` is the
service's sealed token as base64, opaque to the client. Modes: CBC, CBCNOPAD, CTR, CFB, OFB and GCM (``ad``
at init, ``tag_len`` at an encrypt's final, ``tag`` at a decrypt's final), as Fortanix serves them in
pieces; every other mode (CCM, whose first block encodes the whole length, ECB, KW, KWP) is a 400.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from dsm_emulator.api.context import b64, b64_field, core_of, field, json_response, principal_of, read_json
from dsm_emulator.api.crypto import resolve_key_ref
from dsm_emulator.crypto_stream import STREAM_MODES
from dsm_emulator.errors import BadRequest
from dsm_emulator.keys import KeyRef

routes = web.RouteTableDef()

# The fields each request may carry, besides ``key`` in the Ex style (ad, tag_len and tag: GCM only).
_FIELDS = {
    ("encrypt", "init"): ("alg", "mode", "iv", "ad"),
    ("decrypt", "init"): ("alg", "mode", "iv", "ad"),
    ("encrypt", "update"): ("plain", "state"),
    ("decrypt", "update"): ("cipher", "state"),
    ("encrypt", "final"): ("state", "tag_len"),
    ("decrypt", "final"): ("state", "tag"),
}


def _body(raw: Any, direction: str, step: str, *, ex: bool) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise BadRequest("request body must be a JSON object")
    allowed = set(_FIELDS[direction, step]) | ({"key"} if ex else set())
    extra = sorted(name for name, value in raw.items() if value is not None and name not in allowed)
    if extra:
        raise BadRequest(f"{direction} {step} does not take {', '.join(name[:40] for name in extra[:5])}")
    return raw


def _mode(body: dict[str, Any]) -> str:
    alg = field(body, "alg", str, required=True)
    if alg != "AES":
        raise BadRequest(f"alg {str(alg)[:40]} is not supported; only AES is")
    mode = str(field(body, "mode", str, required=True))
    if mode not in STREAM_MODES:
        raise BadRequest(f"mode for multipart must be one of {', '.join(STREAM_MODES)}")
    return mode


def _state(body: dict[str, Any]) -> bytes:
    state = b64_field(body, "state", required=True)
    assert state is not None
    return state


async def _key(request: web.Request, body: dict[str, Any], *, ex: bool) -> KeyRef:
    if not ex:
        return KeyRef(kid=request.match_info["kid"])
    return await resolve_key_ref(core_of(request).keys, principal_of(request), body, "key")


def _kid(key: KeyRef) -> dict[str, str]:
    return {} if key.kid is None else {"kid": key.kid}


async def _init(request: web.Request, direction: str, ex: bool) -> web.Response:
    p, keys = principal_of(request), core_of(request).keys
    body = _body(await read_json(request), direction, "init", ex=ex)
    mode, iv, aad = _mode(body), b64_field(body, "iv"), b64_field(body, "ad")
    key = await _key(request, body, ex=ex)
    encrypt = direction == "encrypt"
    state, used_iv = await keys.multipart_init(p, key, mode, iv, aad, encrypt=encrypt)
    answer = {**_kid(key), "state": b64(state)}
    if encrypt:
        answer["iv"] = b64(used_iv)
    return json_response(answer)


async def _update(request: web.Request, direction: str, ex: bool) -> web.Response:
    p, keys = principal_of(request), core_of(request).keys
    body = _body(await read_json(request), direction, "update", ex=ex)
    data_field, out_field = ("plain", "cipher") if direction == "encrypt" else ("cipher", "plain")
    data, state = b64_field(body, data_field, required=True), _state(body)
    assert data is not None
    key = await _key(request, body, ex=ex)
    out, following = await keys.multipart_update(p, key, state, data, encrypt=direction == "encrypt")
    return json_response({out_field: b64(out), "state": b64(following)})


async def _final(request: web.Request, direction: str, ex: bool) -> web.Response:
    p, keys = principal_of(request), core_of(request).keys
    body = _body(await read_json(request), direction, "final", ex=ex)
    state, tag_len, tag = _state(body), field(body, "tag_len", int), b64_field(body, "tag")
    key = await _key(request, body, ex=ex)
    encrypt = direction == "encrypt"
    out, made = await keys.multipart_final(p, key, state, encrypt=encrypt, tag_len_bits=tag_len, tag=tag)
    answer = {"cipher" if encrypt else "plain": b64(out)}
    if made is not None:
        answer["tag"] = b64(made)
    return json_response(answer)


Step = Callable[[web.Request, str, bool], Awaitable[web.Response]]
_STEPS: dict[str, Step] = {"init": _init, "update": _update, "final": _final}


def _handler(step: Step, direction: str, ex: bool) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        return await step(request, direction, ex)

    return handle


for _direction in ("encrypt", "decrypt"):
    for _step, _fn in _STEPS.items():
        routes.post(f"/crypto/v1/keys/{{kid}}/{_direction}/{_step}")(_handler(_fn, _direction, False))
        routes.post(f"/crypto/v1/{_direction}/{_step}")(_handler(_fn, _direction, True))
