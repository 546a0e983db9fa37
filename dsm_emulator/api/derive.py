"""DSM REST API: keys made from keys, and key check values.

* ``POST /crypto/v1/keys/{kid}/derive`` (sdkms ``derive_key``, ``sdkms-cli derive-key``) and
  ``POST /crypto/v1/derive`` (``derive_key_ex``, the base key as a SobjectDescriptor in ``key``): a
  DeriveKeyRequest, whose ``mechanism`` is ``encrypt_data`` (an EncryptRequest) or ``hkdf``; the BIP32
  mechanisms answer 501.
* ``POST /crypto/v1/agree`` (``agree_key``, ``sdkms-cli agree-key``): an AgreeKeyRequest, ECDH between
  ``private_key`` and ``public_key`` (``mechanism`` ``diffie_hellman``).
* ``POST /crypto/v1/keys/kcv`` (``get_security_object_kcv``): the KCV of a key named by a
  SobjectDescriptor, as base64 of its 3 bytes (sdkms 5.6 reads this field as bytes); and
  ``POST /crypto/v1/keys/kcv/verify`` (``verify_kcv``): whether a KCV belongs to the key material given.

Each handler parses its whole input before any lookup and answers a new key as a KeyObject.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
from typing import Any

from aiohttp import web

from dsm_emulator import derivation, digests, symmetric
from dsm_emulator.api.context import b64, b64_field, core_of, field, json_response, principal_of, read_json
from dsm_emulator.api.crypto import _resolve
from dsm_emulator.api.not_emulated import not_emulated_message
from dsm_emulator.api.sobjects import _any_descriptor, _object, _spec
from dsm_emulator.errors import BadRequest, Unsupported
from dsm_emulator.keys import KeyService, KeySpec, Made
from dsm_emulator.keys.crypto_ops import run_crypto
from dsm_emulator.views import sobject_view

routes = web.RouteTableDef()

MECHANISMS = ("encrypt_data", "hkdf")
_BIP32 = ("bip32_master_key", "bip32_hardened_child")
AGREE_MECHANISMS = ("diffie_hellman",)
_HEX_KCV = re.compile(r"[0-9A-Fa-f]{6}")


# ---------------------------------------------------------------------------------- parsing


def _encrypt_data(value: Any) -> derivation.EncryptData:
    body = _object(value, "field mechanism.encrypt_data")
    plain = b64_field(body, "plain", required=True)
    assert plain is not None
    return derivation.EncryptData(
        alg=field(body, "alg", str, required=True),
        mode=field(body, "mode", str, required=True),
        plain=plain,
        iv=b64_field(body, "iv"),
        ad=b64_field(body, "ad"),
        tag_len=field(body, "tag_len", int),
    )


def _hkdf(value: Any) -> derivation.Hkdf:
    body = _object(value, "field mechanism.hkdf")
    hash_alg = str(field(body, "hash_alg", str, required=True))
    if hash_alg in digests.NOT_EMULATED:
        raise Unsupported(not_emulated_message(f"digest algorithm {hash_alg}"))
    return derivation.Hkdf(hash_alg=hash_alg, salt=b64_field(body, "salt"), info=b64_field(body, "info"))


def _mechanism(body: dict[str, Any]) -> derivation.Mechanism:
    mechanism = _object(field(body, "mechanism", dict, required=True), "field mechanism")
    given = {k: v for k, v in mechanism.items() if v is not None}
    if len(given) != 1:
        raise BadRequest(f"field mechanism must hold exactly one of {', '.join(MECHANISMS)}")
    ((kind, value),) = given.items()
    if kind in _BIP32:
        raise Unsupported(not_emulated_message(f"BIP32 key derivation (mechanism.{kind})"))
    if kind == "encrypt_data":
        return _encrypt_data(value)
    if kind == "hkdf":
        return _hkdf(value)
    raise BadRequest(f"mechanism.{kind[:40]} is not a derivation mechanism; one of {', '.join(MECHANISMS)}")


def _new_key(body: dict[str, Any]) -> tuple[KeySpec, bool]:
    """The new key a DeriveKeyRequest or AgreeKeyRequest describes (its type is ``key_type``), and
    whether it is transient."""
    key_type = field(body, "key_type", str, required=True)
    obj_type = field(body, "obj_type", str)
    if obj_type is not None and obj_type != key_type:
        raise BadRequest("the new key's type is key_type; obj_type, if sent, must be the same")
    for name in ("elliptic_curve", "pub_exponent", "rsa"):
        if body.get(name) is not None:
            raise BadRequest(f"field {name} does not apply to a derived or agreed key")
    transient = bool(field(body, "transient", bool))
    spec = _spec({**body, "obj_type": key_type}, with_size=True)
    if spec.key_size is None:
        raise BadRequest("missing required field key_size")
    if transient and (spec.state or spec.activation_date or spec.deactivation_date):
        raise BadRequest("state, activation_date and deactivation_date do not apply to a transient key")
    return spec, transient


def _made(made: Made) -> web.Response:
    if made.obj is not None:
        return json_response(sobject_view(made.obj))
    return json_response(made.transient_view)


# ------------------------------------------------------------------------------------ derive


async def _derive(request: web.Request, kid: str | None) -> web.Response:
    p, body, keys = principal_of(request), _object(await read_json(request)), core_of(request).keys
    mechanism = _mechanism(body)
    spec, transient = _new_key(body)
    if kid is None:
        kid = await _resolve(keys, p, body, "key")
    return _made(await keys.derive(p, kid, mechanism, spec, transient=transient))


@routes.post("/crypto/v1/derive")
async def derive_key_ex(request: web.Request) -> web.Response:
    return await _derive(request, None)


@routes.post("/crypto/v1/keys/{kid}/derive")
async def derive_key(request: web.Request) -> web.Response:
    return await _derive(request, request.match_info["kid"])


@routes.post("/crypto/v1/agree")
async def agree_key(request: web.Request) -> web.Response:
    p, body, keys = principal_of(request), _object(await read_json(request)), core_of(request).keys
    mechanism = field(body, "mechanism", str, required=True)
    if mechanism not in AGREE_MECHANISMS:
        raise BadRequest(f"mechanism must be {' or '.join(AGREE_MECHANISMS)}")
    spec, transient = _new_key(body)
    for what in ("private_key", "public_key"):
        if body.get(what) is None:
            raise BadRequest(f"missing required field {what}")
        _any_descriptor(body[what], what)
    private = await _resolve(keys, p, body, "private_key")
    public = await _resolve(keys, p, body, "public_key")
    return _made(await keys.agree(p, private, public, spec, transient=transient))


# --------------------------------------------------------------------------------------- KCV


def _kcv_b64(kcv: str) -> str:
    return b64(bytes.fromhex(kcv))


async def _kcv_of(keys: KeyService, request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
    p = principal_of(request)
    kid, name, token = _any_descriptor(body, "request body")
    if token is not None:  # a transient key: not stored, so (like its other uses) not audited
        key = keys.visible_transient(p, token)
        kcv = symmetric.kcv(key.obj_type, key.material)
        if kcv is None:
            raise BadRequest(f"a key check value is defined for AES, DES and DES3 keys, not {key.obj_type}")
        return {"kcv": _kcv_b64(kcv)}
    found, kcv = await keys.kcv(p, kid=kid, name=name)
    return {"kid": found, "kcv": _kcv_b64(kcv)}


@routes.post("/crypto/v1/keys/kcv")
async def kcv(request: web.Request) -> web.Response:
    body = _object(await read_json(request))
    return json_response(await _kcv_of(core_of(request).keys, request, body))


def _given_kcv(text: str) -> bytes:
    """A KCV as the KeyObject shows it (6 hex digits) or as get_security_object_kcv answers it (base64)."""
    if _HEX_KCV.fullmatch(text):
        return bytes.fromhex(text)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 3:
        raise BadRequest("field kcv must be 3 bytes, as 6 hex digits or as base64")
    return raw


@routes.post("/crypto/v1/keys/kcv/verify")
async def verify_kcv(request: web.Request) -> web.Response:
    principal_of(request)  # no key is used, so (like a digest) a session is all it needs
    body = _object(await read_json(request))
    given = _given_kcv(field(body, "kcv", str, required=True))
    value = b64_field(body, "value", required=True)
    assert value is not None
    obj_type = field(body, "obj_type", str, required=True)
    if obj_type not in symmetric.KCV_TYPES:
        raise BadRequest(f"obj_type must be one of {', '.join(symmetric.KCV_TYPES)}")
    actual = run_crypto(lambda: symmetric.kcv(obj_type, value))
    assert actual is not None
    return json_response({"verified": hmac.compare_digest(bytes.fromhex(actual), given)})
