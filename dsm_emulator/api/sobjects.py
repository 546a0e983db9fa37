"""DSM REST API: security objects and the crypto operations on them (``/crypto/v1/...``).

Each handler parses and type-checks its input, makes one KeyService call and serialises the answer in
Fortanix's shapes (``sobject_view``; bytes as padded base64). Errors are DsmError subclasses, turned into
``{"message"}`` responses by the error middleware. Both URL styles are served: the legacy per-key paths
(``/crypto/v1/keys/{kid}/encrypt``) and the "Ex" paths that carry a SobjectDescriptor in the body.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from dsm_emulator import crypto
from dsm_emulator.api.context import (
    b64,
    b64_field,
    core_of,
    field,
    json_response,
    no_content,
    principal_of,
    read_json,
)
from dsm_emulator.authz import Principal
from dsm_emulator.errors import BadRequest, DsmError
from dsm_emulator.keys import KeyService, KeySpec
from dsm_emulator.views import sobject_view

routes = web.RouteTableDef()

TRANSIENT_UNSUPPORTED = "transient keys are not supported by this operation"
KEY_FORMATS = ("Default",)
MAX_BATCH_ITEMS = 1000


# ---------------------------------------------------------------------------------- parsing


def _object(body: Any, what: str = "request body") -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest(f"{what} must be a JSON object")
    return body


def _str_list(body: dict[str, Any], name: str) -> list[str] | None:
    value = field(body, name, list)
    if value is not None and not all(isinstance(item, str) for item in value):
        raise BadRequest(f"field {name} has the wrong type")
    return value


def _str_map(body: dict[str, Any], name: str) -> dict[str, str] | None:
    value = field(body, name, dict)
    if value is not None and not all(isinstance(v, str) for v in value.values()):
        raise BadRequest(f"field {name} has the wrong type")
    return value


def _time(body: dict[str, Any], name: str) -> datetime | None:
    text = field(body, name, str)
    if text is None:
        return None
    try:
        return datetime.strptime(text, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise BadRequest(f"field {name} must be a time like 20170509T070912Z") from None


def _alg(body: dict[str, Any], *, required: bool) -> None:
    alg = field(body, "alg", str, required=required)
    if alg is not None and alg != "AES":
        raise BadRequest(f"alg {alg[:40]} is not supported; only AES is")


def _mode(body: dict[str, Any]) -> str:
    mode = field(body, "mode", str, required=True)
    if mode not in crypto.MODES:
        raise BadRequest(f"mode must be one of {', '.join(sorted(crypto.MODES))}")
    return str(mode)


def _tag_len(body: dict[str, Any]) -> int | None:
    return field(body, "tag_len", int)  # type: ignore[no-any-return]


def _no_transient(body: dict[str, Any]) -> None:
    if field(body, "transient", bool):
        raise BadRequest(TRANSIENT_UNSUPPORTED)


def _descriptor(value: Any, what: str) -> tuple[str | None, str | None]:
    """A SobjectDescriptor naming a stored object: (kid, name), exactly one set."""
    kid, name, token = _any_descriptor(value, what)
    if token is not None:
        raise BadRequest(TRANSIENT_UNSUPPORTED)
    return kid, name


def _any_descriptor(value: Any, what: str) -> tuple[str | None, str | None, str | None]:
    """A SobjectDescriptor: (kid, name, transient_key), exactly one set."""
    desc = _object(value, f"field {what}")
    kid = field(desc, "kid", str)
    name = field(desc, "name", str)
    token = field(desc, "transient_key", str)
    if sum(item is not None for item in (kid, name, token)) != 1:
        raise BadRequest(
            f"field {what} must identify the object by exactly one of kid, name or transient_key"
        )
    return kid, name, token


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


def _spec(body: dict[str, Any], *, with_size: bool) -> KeySpec:
    """A KeySpec from a SobjectRequest (or the object part of an UnwrapKeyRequest)."""
    enabled = field(body, "enabled", bool)
    return KeySpec(
        name=field(body, "name", str, required=True),
        obj_type=field(body, "obj_type", str, required=True),
        key_size=field(body, "key_size", int) if with_size else None,
        group_id=field(body, "group_id", str),
        key_ops=_str_list(body, "key_ops"),
        description=field(body, "description", str),
        custom_metadata=_str_map(body, "custom_metadata"),
        enabled=True if enabled is None else enabled,
        state=field(body, "state", str) if with_size else None,
        activation_date=_time(body, "activation_date") if with_size else None,
        deactivation_date=_time(body, "deactivation_date") if with_size else None,
    )


def _query_int(request: web.Request, name: str, default: int) -> int:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise BadRequest(f"query parameter {name} must be an integer") from None


def _query_bool(request: web.Request, name: str) -> bool:
    text = request.query.get(name)
    if text is None or text == "":
        return False
    if text.lower() in ("true", "1"):
        return True
    if text.lower() in ("false", "0"):
        return False
    raise BadRequest(f"query parameter {name} must be true or false")


def _ciphertext_view(kid: str | None, result: crypto.Ciphertext, field_name: str) -> dict[str, Any]:
    view: dict[str, Any] = {} if kid is None else {"kid": kid}
    view[field_name] = b64(result.cipher)
    if result.iv is not None:
        view["iv"] = b64(result.iv)
    if result.tag is not None:
        view["tag"] = b64(result.tag)
    return view


# ------------------------------------------------------------------------- operation bodies


@dataclass(frozen=True)
class _EncryptArgs:
    mode: str
    plain: bytes
    iv: bytes | None
    ad: bytes | None
    tag_len: int | None


@dataclass(frozen=True)
class _DecryptArgs:
    mode: str
    cipher: bytes
    iv: bytes | None
    ad: bytes | None
    tag: bytes | None


def _encrypt_args(body: dict[str, Any]) -> _EncryptArgs:
    _alg(body, required=True)
    mode = _mode(body)
    plain = b64_field(body, "plain", required=True)
    assert plain is not None
    return _EncryptArgs(mode, plain, b64_field(body, "iv"), b64_field(body, "ad"), _tag_len(body))


def _decrypt_args(body: dict[str, Any]) -> _DecryptArgs:
    _alg(body, required=False)
    mode = _mode(body)
    cipher = b64_field(body, "cipher", required=True)
    assert cipher is not None
    return _DecryptArgs(mode, cipher, b64_field(body, "iv"), b64_field(body, "ad"), b64_field(body, "tag"))


async def _encrypt(keys: KeyService, p: Principal, kid: str, body: dict[str, Any]) -> dict[str, Any]:
    a = _encrypt_args(body)
    result = await keys.encrypt(p, kid, a.mode, a.plain, iv=a.iv, aad=a.ad, tag_len_bits=a.tag_len)
    return _ciphertext_view(kid, result, "cipher")


async def _decrypt(keys: KeyService, p: Principal, kid: str, body: dict[str, Any]) -> dict[str, Any]:
    a = _decrypt_args(body)
    plain = await keys.decrypt(p, kid, a.mode, a.cipher, iv=a.iv, aad=a.ad, tag=a.tag)
    return {"kid": kid, "plain": b64(plain)}


# Transient keys: no kid in the answers, and (as in Fortanix) no audit row; see KeyService.


def _encrypt_transient(keys: KeyService, p: Principal, token: str, body: dict[str, Any]) -> dict[str, Any]:
    a = _encrypt_args(body)
    result = keys.encrypt_transient(p, token, a.mode, a.plain, iv=a.iv, aad=a.ad, tag_len_bits=a.tag_len)
    return _ciphertext_view(None, result, "cipher")


def _decrypt_transient(keys: KeyService, p: Principal, token: str, body: dict[str, Any]) -> dict[str, Any]:
    a = _decrypt_args(body)
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


# ------------------------------------------------------------------------ security objects


@routes.post("/crypto/v1/keys")
async def generate_key(request: web.Request) -> web.Response:
    p, body = principal_of(request), _object(await read_json(request))
    if field(body, "value", str) is not None:
        raise BadRequest("value is accepted only on import (PUT /crypto/v1/keys)")
    if field(body, "transient", bool):
        view, _token = await core_of(request).keys.create_transient(p, _spec(body, with_size=True))
        return json_response(view, status=201)
    obj = await core_of(request).keys.create(p, _spec(body, with_size=True))
    return json_response(sobject_view(obj), status=201)


@routes.put("/crypto/v1/keys")
async def import_key(request: web.Request) -> web.Response:
    p, body = principal_of(request), _object(await read_json(request))
    _no_transient(body)
    value = b64_field(body, "value", required=True)
    obj = await core_of(request).keys.create(p, _spec(body, with_size=True), value)
    return json_response(sobject_view(obj), status=201)


@routes.get("/crypto/v1/keys")
async def list_keys(request: web.Request) -> web.Response:
    p, q = principal_of(request), request.query
    objs = await core_of(request).keys.list(
        p,
        name=q.get("name") or None,
        group_id=q.get("group_id") or None,
        obj_type=q.get("obj_type") or None,
        limit=_query_int(request, "limit", 100),
        offset=_query_int(request, "offset", 0),
        sort=q.get("sort") or "kid:asc",
        start=q.get("start") or None,
        show_destroyed=_query_bool(request, "show_destroyed"),
    )
    return json_response([sobject_view(obj) for obj in objs])


@routes.post("/crypto/v1/keys/info")
async def key_info(request: web.Request) -> web.Response:
    p = principal_of(request)
    kid, name, token = _any_descriptor(await read_json(request), "request body")
    if token is not None:
        return json_response(core_of(request).keys.transient_info(p, token))
    return json_response(sobject_view(await core_of(request).keys.get(p, kid=kid, name=name)))


@routes.post("/crypto/v1/keys/export")
async def export_key_ex(request: web.Request) -> web.Response:
    p = principal_of(request)
    kid, name, token = _any_descriptor(await read_json(request), "request body")
    if token is not None:
        view, _value = core_of(request).keys.export_transient(p, token)
        return json_response(view)
    obj, value = await core_of(request).keys.export(p, kid=kid, name=name)
    return json_response(sobject_view(obj, value=value))


@routes.post("/crypto/v1/keys/rekey")
async def rekey(request: web.Request) -> web.Response:
    p, body = principal_of(request), _object(await read_json(request))
    kid, name = field(body, "kid", str), field(body, "name", str)
    if (kid is None) == (name is None):
        raise BadRequest("identify the object to rekey by exactly one of name or kid")
    deactivate = bool(field(body, "deactivate_rotated_key", bool))
    obj = await core_of(request).keys.rekey(p, name=name, kid=kid, deactivate_rotated_key=deactivate)
    return json_response(sobject_view(obj))


# ------------------------------------------------------------------------------------ batch


async def _batch(
    request: web.Request,
    op: Callable[[KeyService, Principal, str, dict[str, Any]], Awaitable[dict[str, Any]]],
) -> web.Response:
    p, body = principal_of(request), await read_json(request)
    if not isinstance(body, list):
        raise BadRequest("request body must be a JSON array")
    if len(body) > MAX_BATCH_ITEMS:
        raise BadRequest(f"a batch holds at most {MAX_BATCH_ITEMS} items")
    keys = core_of(request).keys
    results: list[dict[str, Any]] = []
    for index, item in enumerate(body):
        try:
            item = _object(item, f"batch item {index}")
            kid = field(item, "kid", str, required=True)
            inner = _object(field(item, "request", dict, required=True), "field request")
            results.append({"status": 200, "body": await op(keys, p, kid, inner)})
        except DsmError as exc:
            results.append({"status": exc.status, "error": exc.message})
    return json_response(results)


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


@routes.get("/crypto/v1/keys/{kid}")
async def get_key(request: web.Request) -> web.Response:
    p = principal_of(request)
    obj = await core_of(request).keys.get(p, kid=request.match_info["kid"])
    return json_response(sobject_view(obj))


@routes.patch("/crypto/v1/keys/{kid}")
async def update_key(request: web.Request) -> web.Response:
    p, body = principal_of(request), _object(await read_json(request))
    obj = await core_of(request).keys.update(
        p,
        request.match_info["kid"],
        name=field(body, "name", str),
        description=field(body, "description", str),
        enabled=field(body, "enabled", bool),
        key_ops=_str_list(body, "key_ops"),
        custom_metadata=_str_map(body, "custom_metadata"),
        deactivation_date=_time(body, "deactivation_date"),
    )
    return json_response(sobject_view(obj))


@routes.delete("/crypto/v1/keys/{kid}")
async def delete_key(request: web.Request) -> web.Response:
    await core_of(request).keys.delete(principal_of(request), request.match_info["kid"])
    return no_content()


@routes.get("/crypto/v1/keys/{kid}/export")
async def export_key(request: web.Request) -> web.Response:
    p = principal_of(request)
    obj, value = await core_of(request).keys.export(p, kid=request.match_info["kid"])
    return json_response(sobject_view(obj, value=value))


@routes.post("/crypto/v1/keys/{kid}/activate")
async def activate_key(request: web.Request) -> web.Response:
    await core_of(request).keys.activate(principal_of(request), request.match_info["kid"])
    return no_content()


@routes.post("/crypto/v1/keys/{kid}/revoke")
async def revoke_key(request: web.Request) -> web.Response:
    p, body = principal_of(request), _object(await read_json(request))
    await core_of(request).keys.revoke(
        p,
        request.match_info["kid"],
        field(body, "code", str, required=True),
        field(body, "message", str),
        _time(body, "compromise_occurance_date"),
    )
    return no_content()


@routes.post("/crypto/v1/keys/{kid}/destroy")
async def destroy_key(request: web.Request) -> web.Response:
    await core_of(request).keys.destroy(principal_of(request), request.match_info["kid"])
    return no_content()


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
