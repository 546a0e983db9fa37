"""DSM REST API: the security objects themselves (``/crypto/v1/keys...``): generate, import, list, info,
export, rekey and the per-key lifecycle paths (a PATCH with a new ``group_id`` moves the key; ``revert``
undoes a change recorded in its history). They are kept apart from the crypto endpoints
(``dsm_emulator.api.crypto``) because these manage objects rather than use them; the request parsing both
need (JSON objects, SobjectDescriptors, a SobjectRequest as a KeySpec) lives here, where the objects are
described. Each handler parses and type-checks its input, makes one KeyService call and serialises the
answer in Fortanix's shapes (``sobject_view``; bytes as padded base64). Errors are DsmError subclasses,
turned into ``{"message"}`` responses by the error middleware.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from dsm_emulator.api.context import (
    b64_field,
    core_of,
    field,
    json_response,
    no_content,
    principal_of,
    query_int,
    read_json,
    str_list_field,
    str_map_field,
)
from dsm_emulator.errors import BadRequest
from dsm_emulator.keys import KeySpec
from dsm_emulator.models import SecurityObject
from dsm_emulator.policies import not_implemented
from dsm_emulator.views import sobject_view

routes = web.RouteTableDef()

TRANSIENT_UNSUPPORTED = "transient keys are not supported by this operation"


# ---------------------------------------------------------------------------------- parsing


def _object(body: Any, what: str = "request body") -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest(f"{what} must be a JSON object")
    return body


def _time(body: dict[str, Any], name: str) -> datetime | None:
    text = field(body, name, str)
    if text is None:
        return None
    try:
        return datetime.strptime(text, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise BadRequest(f"field {name} must be a time like 20170509T070912Z") from None


def _no_transient(body: dict[str, Any]) -> None:
    if field(body, "transient", bool):
        raise BadRequest(TRANSIENT_UNSUPPORTED)


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


_RSA_OPTIONS = frozenset({"key_size", "public_exponent"})


def _asymmetric_options(body: dict[str, Any], key_size: int | None) -> tuple[int | None, int | None]:
    """(key_size, pub_exponent) once ``rsa`` (RsaOptions) has been merged in; its policies, and the
    options of key types the lab does not have, are refused rather than dropped."""
    for name in ("dsa", "bls"):
        if body.get(name) is not None:
            raise not_implemented(name, f"xkslab has no {name.upper()} keys")
    if body.get("deterministic_signatures"):
        raise not_implemented("deterministic_signatures")
    exponent: int | None = field(body, "pub_exponent", int)
    rsa = field(body, "rsa", dict)
    if rsa is None:
        return key_size, exponent
    rsa = {k: v for k, v in rsa.items() if v is not None}
    unknown = sorted(set(rsa) - _RSA_OPTIONS)
    if unknown:
        raise not_implemented(f"rsa.{unknown[0][:40]}", "RSA keys allow every padding")
    for name, given in (("key_size", key_size), ("public_exponent", exponent)):
        value = field(rsa, name, int)
        if value is not None and given is not None and value != given:
            raise BadRequest(f"rsa.{name} does not match the request's {name.replace('public_', 'pub_')}")
    return key_size or field(rsa, "key_size", int), exponent or field(rsa, "public_exponent", int)


def _spec(body: dict[str, Any], *, with_size: bool) -> KeySpec:
    """A KeySpec from a SobjectRequest (or the object part of an UnwrapKeyRequest)."""
    enabled = field(body, "enabled", bool)
    key_size, exponent = _asymmetric_options(body, field(body, "key_size", int) if with_size else None)
    return KeySpec(
        name=field(body, "name", str, required=True),
        obj_type=field(body, "obj_type", str, required=True),
        key_size=key_size,
        group_id=field(body, "group_id", str),
        key_ops=str_list_field(body, "key_ops"),
        description=field(body, "description", str),
        custom_metadata=str_map_field(body, "custom_metadata"),
        enabled=True if enabled is None else enabled,
        state=field(body, "state", str) if with_size else None,
        activation_date=_time(body, "activation_date") if with_size else None,
        deactivation_date=_time(body, "deactivation_date") if with_size else None,
        elliptic_curve=field(body, "elliptic_curve", str),
        pub_exponent=exponent,
    )


async def _views(request: web.Request, objs: list[SecurityObject]) -> list[dict[str, Any]]:
    """KeyObjects as they are read (not just made): compliance with their groups' policies worked out,
    and ``history`` for the keys under a history policy."""
    keys = core_of(request).keys
    history = await keys.history(objs)
    broken = await keys.noncompliant(objs)
    return [sobject_view(obj, compliant=obj.kid not in broken, history=history.get(obj.kid)) for obj in objs]


async def _stored_view(request: web.Request, obj: SecurityObject) -> dict[str, Any]:
    """One object as read by kid or name. A certificate shows its ``value`` (the DER certificate), as
    Fortanix always returns an OPAQUE's or CERTIFICATE's value; listings leave it out (no unsealing per
    row)."""
    (view,) = await _views(request, [obj])
    if obj.obj_type == "CERTIFICATE" and obj.sealed_material is not None:
        view["value"] = base64.b64encode(await core_of(request).keys.material(obj)).decode("ascii")
    return view


def _query_bool(request: web.Request, name: str) -> bool:
    text = request.query.get(name)
    if text is None or text == "":
        return False
    if text.lower() in ("true", "1"):
        return True
    if text.lower() in ("false", "0"):
        return False
    raise BadRequest(f"query parameter {name} must be true or false")


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
    (view,) = await _views(request, [obj])
    return json_response(view, status=201)


@routes.put("/crypto/v1/keys")
async def import_key(request: web.Request) -> web.Response:
    p, body = principal_of(request), _object(await read_json(request))
    _no_transient(body)
    value = b64_field(body, "value", required=True)
    obj = await core_of(request).keys.create(p, _spec(body, with_size=True), value)
    (view,) = await _views(request, [obj])
    return json_response(view, status=201)


@routes.get("/crypto/v1/keys")
async def list_keys(request: web.Request) -> web.Response:
    p, q = principal_of(request), request.query
    objs = await core_of(request).keys.list(
        p,
        name=q.get("name") or None,
        group_id=q.get("group_id") or None,
        obj_type=q.get("obj_type") or None,
        limit=query_int(request, "limit", 100, 1, 1000),
        offset=query_int(request, "offset", 0, 0),
        sort=q.get("sort") or "kid:asc",
        start=q.get("start") or None,
        show_destroyed=_query_bool(request, "show_destroyed"),
        show_deleted=_query_bool(request, "show_deleted"),
    )
    return json_response(await _views(request, objs))


@routes.post("/crypto/v1/keys/info")
async def key_info(request: web.Request) -> web.Response:
    p = principal_of(request)
    kid, name, token = _any_descriptor(await read_json(request), "request body")
    if token is not None:
        return json_response(core_of(request).keys.transient_info(p, token))
    return json_response(await _stored_view(request, await core_of(request).keys.get(p, kid=kid, name=name)))


@routes.post("/crypto/v1/keys/export")
async def export_key_ex(request: web.Request) -> web.Response:
    p = principal_of(request)
    kid, name, token = _any_descriptor(await read_json(request), "request body")
    if token is not None:
        view, _value = await core_of(request).keys.export_transient(p, token)
        return json_response(view)
    obj, value = await core_of(request).keys.export(p, kid=kid, name=name)
    return json_response(sobject_view(obj, value=value))


_REKEY_FIELDS = frozenset({"kid", "name", "value", "deactivate_rotated_key"})


@routes.post("/crypto/v1/keys/rekey")
async def rekey(request: web.Request) -> web.Response:
    p, body = principal_of(request), _object(await read_json(request))
    kid, name = field(body, "kid", str), field(body, "name", str)
    if (kid is None) == (name is None):
        raise BadRequest("identify the object to rekey by exactly one of name or kid")
    others = sorted(k for k, v in body.items() if v is not None and k not in _REKEY_FIELDS)
    if others:
        raise not_implemented(f"{others[0][:64]} on rekey", "the new key copies the old one's metadata")
    deactivate = bool(field(body, "deactivate_rotated_key", bool))
    value = b64_field(body, "value")  # sdkms-cli rotate-secret sends the new secret
    obj = await core_of(request).keys.rekey(
        p, name=name, kid=kid, deactivate_rotated_key=deactivate, value=value
    )
    return json_response(await _stored_view(request, obj))


# --------------------------------------------------------------------------- per-key paths


@routes.get("/crypto/v1/keys/{kid}")
async def get_key(request: web.Request) -> web.Response:
    p, keys, kid = principal_of(request), core_of(request).keys, request.match_info["kid"]
    obj = await (keys.get_deleted(p, kid) if _query_bool(request, "show_deleted") else keys.get(p, kid=kid))
    return json_response(await _stored_view(request, obj))


@routes.patch("/crypto/v1/keys/{kid}")
async def update_key(request: web.Request) -> web.Response:
    p, body = principal_of(request), _object(await read_json(request))
    obj = await core_of(request).keys.update(
        p,
        request.match_info["kid"],
        name=field(body, "name", str),
        description=field(body, "description", str),
        enabled=field(body, "enabled", bool),
        key_ops=str_list_field(body, "key_ops"),
        custom_metadata=str_map_field(body, "custom_metadata"),
        deactivation_date=_time(body, "deactivation_date"),
        group_id=field(body, "group_id", str),
    )
    (view,) = await _views(request, [obj])
    return json_response(view)


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


@routes.put("/crypto/v1/keys/{kid}/revert")
async def revert_key(request: web.Request) -> web.Response:
    p, body = principal_of(request), _object(await read_json(request))
    ids = str_list_field(body, "ids")
    if ids is None:
        raise BadRequest("missing required field ids")
    await core_of(request).keys.revert(p, request.match_info["kid"], ids)
    return no_content()
