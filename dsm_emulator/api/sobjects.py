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
import dataclasses
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from dsm_emulator.api.context import (
    b64,
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
from dsm_emulator.keys import Component, KeySpec
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


def _spec(body: dict[str, Any], *, with_size: bool) -> KeySpec:
    """A KeySpec from a SobjectRequest (or the object part of an UnwrapKeyRequest)."""
    enabled = field(body, "enabled", bool)
    return KeySpec(
        name=field(body, "name", str, required=True),
        obj_type=field(body, "obj_type", str, required=True),
        key_size=field(body, "key_size", int) if with_size else None,
        group_id=field(body, "group_id", str),
        key_ops=str_list_field(body, "key_ops"),
        description=field(body, "description", str),
        custom_metadata=str_map_field(body, "custom_metadata"),
        enabled=True if enabled is None else enabled,
        state=field(body, "state", str) if with_size else None,
        activation_date=_time(body, "activation_date") if with_size else None,
        deactivation_date=_time(body, "deactivation_date") if with_size else None,
    )


async def _views(request: web.Request, objs: list[SecurityObject]) -> list[dict[str, Any]]:
    """KeyObjects as they are read (not just made): compliance with their groups' policies worked out,
    and ``history`` for the keys under a history policy."""
    keys = core_of(request).keys
    history = await keys.history(objs)
    broken = await keys.noncompliant(objs)
    return [sobject_view(obj, compliant=obj.kid not in broken, history=history.get(obj.kid)) for obj in objs]


async def _stored_view(request: web.Request, obj: SecurityObject) -> dict[str, Any]:
    (view,) = await _views(request, [obj])
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


# ------------------------------------------------------------------------------ components
# Fortanix types the KCVs of ExportComponentsResponse and SobjectComponent as bytes (sdkms 5.6 decodes
# them as base64) and later as text: the lab answers the KCV's 3 bytes in base64 and takes either form.


def _known(body: dict[str, Any], allowed: frozenset[str], what: str) -> None:
    unknown = sorted(k for k, v in body.items() if v is not None and k not in allowed)
    if unknown:
        names = ", ".join(k[:40] for k in unknown)
        raise BadRequest(f"{what}: field(s) {names} are not implemented by the lab")


def _user(value: Any, what: str) -> str:
    present = {k: v for k, v in _object(value, f"field {what}").items() if v is not None}
    if list(present) != ["user"] or not isinstance(present["user"], str):
        raise BadRequest(f'{what} must be a user ({{"user": id}}): key custodians are users')
    return str(present["user"])


def _components_request(body: dict[str, Any], allowed: frozenset[str]) -> list[str]:
    """The custodians of an export or import by components, once its fields are known and its method is
    XOR (the only SplittingMethod)."""
    _known(body, allowed, "request body")
    if field(body, "method", str) not in (None, "XOR"):
        raise BadRequest("method: XOR is the only splitting method")
    custodians: list[Any] = field(body, "custodians", list, required=True)
    return [_user(item, f"custodians[{index}]") for index, item in enumerate(custodians)]


def _kcv_text(value: Any, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{what} must be a string")
    if len(value) == 6:  # hex: never a padded base64 string
        try:
            return bytes.fromhex(value).hex().upper()
        except ValueError:
            raise BadRequest(f"{what} must be hex or base64") from None
    raw = b64_field({what: value}, what)
    assert raw is not None
    return raw.hex().upper()


def _kcv_b64(kcv: str) -> str:
    return base64.b64encode(bytes.fromhex(kcv)).decode("ascii")


_EXPORT_COMPONENTS = frozenset({"key", "custodians", "method", "description", "wrap_key_params"})
_IMPORT_COMPONENTS = frozenset(
    {"key", "custodians", "components", "method", "description", "unwrap_key_params", "auth_config"}
)


@routes.post("/crypto/v1/keys/components/export")
async def export_components(request: web.Request) -> web.Response:
    p, body = principal_of(request), _object(await read_json(request))
    if body.get("wrap_key_params") is not None:
        raise not_implemented("wrap_key_params", "components leave only in the clear, to their custodians")
    custodians = _components_request(body, _EXPORT_COMPONENTS)
    kid, name, token = _any_descriptor(body.get("key"), "key")
    if token is not None:
        raise BadRequest(TRANSIENT_UNSUPPORTED)
    description = field(body, "description", str)
    _obj, components, kcv = await core_of(request).keys.export_components(p, custodians, kid=kid, name=name)
    answer: dict[str, Any] = {
        "components": [
            {
                "component": b64(c.value),
                "component_kcv": _kcv_b64(c.kcv or ""),
                "custodian": {"user": c.custodian},
            }
            for c in components
        ],
        "key_kcv": _kcv_b64(kcv),
    }
    if description is not None:
        answer["description"] = description
    return json_response(answer)


@routes.post("/crypto/v1/keys/components/import")
async def import_components(request: web.Request) -> web.Response:
    p, body = principal_of(request), _object(await read_json(request))
    if body.get("unwrap_key_params") is not None:
        raise not_implemented("unwrap_key_params", "components arrive only in the clear, from custodians")
    if body.get("auth_config") is not None:
        raise not_implemented("auth_config", "approval requests take the group policy's authentication")
    custodians = _components_request(body, _IMPORT_COMPONENTS)
    key = _object(body.get("key"), "field key")
    _no_transient(key)
    if key.get("value") is not None:
        raise BadRequest("key.value: an import by components takes the key from its components")
    spec = _spec(key, with_size=True)
    if spec.description is None and field(body, "description", str) is not None:
        spec = dataclasses.replace(spec, description=field(body, "description", str))
    parts: list[Any] = field(body, "components", list, required=True)
    components = []
    for index, item in enumerate(parts):
        what = f"components[{index}]"
        part = _object(item, f"field {what}")
        value = b64_field(part, "component", required=True)
        assert value is not None
        kcv = _kcv_text(part.get("component_kcv"), f"{what}.component_kcv")
        components.append(Component(_user(part.get("custodian"), f"{what}.custodian"), value, kcv))
    key_kcv = _kcv_text(key.get("kcv"), "key.kcv")
    obj = await core_of(request).keys.import_components(p, spec, custodians, components, key_kcv)
    return json_response(await _stored_view(request, obj), status=201)
