"""DSM REST API: the crypto operations (``/crypto/v1/...``): encrypt, decrypt, wrap and unwrap, their
batch forms, and the same on transient keys. They are kept apart from the security-object handlers
(``dsm_emulator.api.sobjects``) because they use a key rather than manage it, and because each is served
in both URL styles: the legacy per-key paths (``/crypto/v1/keys/{kid}/encrypt``) and the "Ex" paths that
carry a SobjectDescriptor in the body. Each handler parses and type-checks its input, makes one
KeyService call and serialises the answer in Fortanix's shapes (bytes as padded base64); errors are
DsmError subclasses, turned into ``{"message"}`` responses by the error middleware.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from dsm_emulator import crypto
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
from dsm_emulator.api.sobjects import (  # the request parsing shared with the object handlers
    TRANSIENT_UNSUPPORTED,
    _any_descriptor,
    _no_transient,
    _object,
    _spec,
)
from dsm_emulator.asymmetric import RSA_ENCRYPTION_MODES
from dsm_emulator.authz import Principal
from dsm_emulator.errors import BadRequest
from dsm_emulator.keys import KeyRef, KeyService, KeySpec
from dsm_emulator.views import sobject_view

routes = web.RouteTableDef()

KEY_FORMATS = ("Default",)


# ---------------------------------------------------------------------------------- parsing


def _alg(body: dict[str, Any], *, required: bool, algs: tuple[str, ...] = ("AES",)) -> str | None:
    alg: str | None = field(body, "alg", str, required=required)
    if alg is not None and alg not in algs:
        raise BadRequest(f"alg {alg[:40]} is not supported; only {' and '.join(algs)}")
    return alg


def _mode(body: dict[str, Any], modes: Collection[str] = crypto.MODES) -> str:
    mode = field(body, "mode", str, required=True)
    if mode not in modes:
        raise BadRequest(f"mode must be one of {', '.join(sorted(modes))}")
    return str(mode)


def _tag_len(body: dict[str, Any]) -> int | None:
    return field(body, "tag_len", int)  # type: ignore[no-any-return]


def _descriptor(value: Any, what: str) -> tuple[str | None, str | None]:
    """A SobjectDescriptor naming a stored object: (kid, name), exactly one set."""
    kid, name, token = _any_descriptor(value, what)
    if token is not None:
        raise BadRequest(TRANSIENT_UNSUPPORTED)
    return kid, name


async def _resolve(keys: KeyService, p: Principal, body: dict[str, Any], what: str) -> str:
    """The kid named by the descriptor ``body[what]`` (a name is looked up)."""
    value = body.get(what)
    if value is None:
        raise BadRequest(f"missing required field {what}")
    kid, name = _descriptor(value, what)
    if kid is not None:
        return kid
    return (await keys.get(p, name=name)).kid


async def _resolve_any(
    keys: KeyService, p: Principal, body: dict[str, Any], what: str
) -> tuple[str | None, str | None]:
    """(kid, None) for a stored object named by ``body[what]``, (None, token) for a transient key."""
    value = body.get(what)
    if value is None:
        raise BadRequest(f"missing required field {what}")
    kid, name, token = _any_descriptor(value, what)
    if token is not None:
        return None, token
    if kid is not None:
        return kid, None
    return (await keys.get(p, name=name)).kid, None


async def resolve_key_ref(keys: KeyService, p: Principal, body: dict[str, Any], what: str) -> KeyRef:
    """The key the descriptor ``body[what]`` names: a stored object (a name is looked up) or a
    transient key."""
    kid, token = await _resolve_any(keys, p, body, what)
    return KeyRef(kid=kid, token=token)


def _ciphertext_view(kid: str | None, result: crypto.Ciphertext, field_name: str) -> dict[str, Any]:
    view: dict[str, Any] = {} if kid is None else {"kid": kid}
    view[field_name] = b64(result.cipher)
    if result.iv is not None:
        view["iv"] = b64(result.iv)
    if result.tag is not None:
        view["tag"] = b64(result.tag)
    return view


# ------------------------------------------------------------------------- operation bodies


# Encrypt and decrypt also take DES, DES3 and RSA keys (alg RSA, an RSA padding as the mode); wrap and
# unwrap do not.
_CIPHER_ALGS = ("AES", "DES", "DES3", "RSA")
_CIPHER_MODES = crypto.MODES | frozenset(RSA_ENCRYPTION_MODES)


@dataclass(frozen=True)
class _EncryptArgs:
    alg: str | None
    mode: str
    plain: bytes
    iv: bytes | None
    ad: bytes | None
    tag_len: int | None


@dataclass(frozen=True)
class _DecryptArgs:
    alg: str | None
    mode: str
    cipher: bytes
    iv: bytes | None
    ad: bytes | None
    tag: bytes | None


def _encrypt_args(body: dict[str, Any]) -> _EncryptArgs:
    alg = _alg(body, required=True, algs=_CIPHER_ALGS)
    mode = _mode(body, _CIPHER_MODES)
    plain = b64_field(body, "plain", required=True)
    assert plain is not None
    return _EncryptArgs(alg, mode, plain, b64_field(body, "iv"), b64_field(body, "ad"), _tag_len(body))


def _decrypt_args(body: dict[str, Any]) -> _DecryptArgs:
    alg = _alg(body, required=False, algs=_CIPHER_ALGS)
    mode = _mode(body, _CIPHER_MODES)
    cipher = b64_field(body, "cipher", required=True)
    assert cipher is not None
    return _DecryptArgs(
        alg, mode, cipher, b64_field(body, "iv"), b64_field(body, "ad"), b64_field(body, "tag")
    )


async def _encrypt(keys: KeyService, p: Principal, kid: str, body: dict[str, Any]) -> dict[str, Any]:
    a = _encrypt_args(body)
    result = await keys.encrypt(p, kid, a.mode, a.plain, iv=a.iv, aad=a.ad, tag_len_bits=a.tag_len, alg=a.alg)
    return _ciphertext_view(kid, result, "cipher")


async def _decrypt(keys: KeyService, p: Principal, kid: str, body: dict[str, Any]) -> dict[str, Any]:
    a = _decrypt_args(body)
    plain = await keys.decrypt(p, kid, a.mode, a.cipher, iv=a.iv, aad=a.ad, tag=a.tag, alg=a.alg)
    return {"kid": kid, "plain": b64(plain)}


def _transient_alg(alg: str | None) -> None:
    if alg not in (None, "AES"):
        raise BadRequest(f"alg {alg}: transient keys are symmetric")


# Transient keys: no kid in the answers, and (as in Fortanix) no audit row; see KeyService.


def _encrypt_transient(keys: KeyService, p: Principal, token: str, body: dict[str, Any]) -> dict[str, Any]:
    a = _encrypt_args(body)
    _transient_alg(a.alg)
    result = keys.encrypt_transient(p, token, a.mode, a.plain, iv=a.iv, aad=a.ad, tag_len_bits=a.tag_len)
    return _ciphertext_view(None, result, "cipher")


def _decrypt_transient(keys: KeyService, p: Principal, token: str, body: dict[str, Any]) -> dict[str, Any]:
    a = _decrypt_args(body)
    _transient_alg(a.alg)
    plain = keys.decrypt_transient(p, token, a.mode, a.cipher, iv=a.iv, aad=a.ad, tag=a.tag)
    return {"plain": b64(plain)}


def _key_format(body: dict[str, Any]) -> None:
    key_format = field(body, "key_format", str)
    if key_format is not None and key_format not in KEY_FORMATS:
        raise BadRequest("key_format must be Default")


async def _wrap(
    keys: KeyService, p: Principal, wrapping_kid: str, subject_kid: str, body: dict[str, Any]
) -> dict[str, Any]:
    result = await keys.wrap(
        p,
        wrapping_kid,
        subject_kid,
        _mode(body),
        iv=b64_field(body, "iv"),
        aad=b64_field(body, "ad"),
        tag_len_bits=_tag_len(body),
    )
    return _ciphertext_view(None, result, "wrapped_key")


def _check_wrap(body: dict[str, Any]) -> None:
    """Everything of a WrapKeyRequest except the key descriptors, before any lookup."""
    _alg(body, required=True)
    _mode(body)
    _key_format(body)
    b64_field(body, "iv")
    b64_field(body, "ad")
    _tag_len(body)


@dataclass(frozen=True)
class _UnwrapArgs:
    mode: str
    wrapped: bytes
    iv: bytes | None
    ad: bytes | None
    tag: bytes | None
    spec: KeySpec


def _unwrap_args(body: dict[str, Any]) -> _UnwrapArgs:
    _alg(body, required=True)
    _no_transient(body)
    mode = _mode(body)
    wrapped = b64_field(body, "wrapped_key", required=True)
    assert wrapped is not None
    iv, ad, tag = b64_field(body, "iv"), b64_field(body, "ad"), b64_field(body, "tag")
    return _UnwrapArgs(mode, wrapped, iv, ad, tag, _spec(body, with_size=False))


async def _unwrap(keys: KeyService, p: Principal, kid: str, a: _UnwrapArgs) -> web.Response:
    obj = await keys.unwrap(p, kid, a.wrapped, a.mode, a.spec, iv=a.iv, aad=a.ad, tag=a.tag)
    return json_response(sobject_view(obj))


# ------------------------------------------------------------------------------------ batch


async def _batch(
    request: web.Request,
    op: Callable[[KeyService, Principal, str, dict[str, Any]], Awaitable[dict[str, Any]]],
) -> web.Response:
    async def one(keys: KeyService, p: Principal, item: dict[str, Any]) -> dict[str, Any]:
        kid = field(item, "kid", str, required=True)
        return await op(keys, p, kid, _object(field(item, "request", dict, required=True), "field request"))

    return await run_batch(request, one)


@routes.post("/crypto/v1/keys/batch/encrypt")
async def batch_encrypt(request: web.Request) -> web.Response:
    return await _batch(request, _encrypt)


@routes.post("/crypto/v1/keys/batch/decrypt")
async def batch_decrypt(request: web.Request) -> web.Response:
    return await _batch(request, _decrypt)


# ------------------------------------------------------------------------------ Ex crypto


@routes.post("/crypto/v1/encrypt")
async def encrypt_ex(request: web.Request) -> web.Response:
    p, body, keys = principal_of(request), _object(await read_json(request)), core_of(request).keys
    _encrypt_args(body)  # a malformed request is a 400 before the key is looked up
    kid, token = await _resolve_any(keys, p, body, "key")
    if token is not None:
        return json_response(_encrypt_transient(keys, p, token, body))
    assert kid is not None
    return json_response(await _encrypt(keys, p, kid, body))


@routes.post("/crypto/v1/decrypt")
async def decrypt_ex(request: web.Request) -> web.Response:
    p, body, keys = principal_of(request), _object(await read_json(request)), core_of(request).keys
    _decrypt_args(body)
    kid, token = await _resolve_any(keys, p, body, "key")
    if token is not None:
        return json_response(_decrypt_transient(keys, p, token, body))
    assert kid is not None
    return json_response(await _decrypt(keys, p, kid, body))


@routes.post("/crypto/v1/wrapkey")
async def wrap_key_ex(request: web.Request) -> web.Response:
    p, body, keys = principal_of(request), _object(await read_json(request)), core_of(request).keys
    _check_wrap(body)
    wrapping = await _resolve(keys, p, body, "key")
    subject = await _resolve(keys, p, body, "subject")
    return json_response(await _wrap(keys, p, wrapping, subject, body))


@routes.post("/crypto/v1/unwrapkey")
async def unwrap_key_ex(request: web.Request) -> web.Response:
    p, body, keys = principal_of(request), _object(await read_json(request)), core_of(request).keys
    args = _unwrap_args(body)
    kid = await _resolve(keys, p, body, "key")
    return await _unwrap(keys, p, kid, args)


# --------------------------------------------------------------------------- per-key paths


@routes.post("/crypto/v1/keys/{kid}/encrypt")
async def encrypt(request: web.Request) -> web.Response:
    p, body = principal_of(request), _object(await read_json(request))
    return json_response(await _encrypt(core_of(request).keys, p, request.match_info["kid"], body))


@routes.post("/crypto/v1/keys/{kid}/decrypt")
async def decrypt(request: web.Request) -> web.Response:
    p, body = principal_of(request), _object(await read_json(request))
    return json_response(await _decrypt(core_of(request).keys, p, request.match_info["kid"], body))


@routes.post("/crypto/v1/keys/{kid}/wrapkey")
async def wrap_key(request: web.Request) -> web.Response:
    p, body = principal_of(request), _object(await read_json(request))
    _check_wrap(body)
    subject = field(body, "kid", str, required=True)
    return json_response(await _wrap(core_of(request).keys, p, request.match_info["kid"], subject, body))


@routes.post("/crypto/v1/keys/{kid}/unwrapkey")
async def unwrap_key(request: web.Request) -> web.Response:
    p, body = principal_of(request), _object(await read_json(request))
    return await _unwrap(core_of(request).keys, p, request.match_info["kid"], _unwrap_args(body))
