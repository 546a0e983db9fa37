"""DSM REST API: export and import of a key split into components between its group's key custodians
(``/crypto/v1/keys/components/...``), kept apart from the other security-object handlers because its
requests and answers have their own shapes (custodians, component KCVs)."""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

from aiohttp import web

from dsm_emulator.api.context import b64, b64_field, core_of, field, json_response, principal_of, read_json
from dsm_emulator.api.sobjects import (
    TRANSIENT_UNSUPPORTED,
    _any_descriptor,
    _no_transient,
    _object,
    _spec,
    _stored_view,
)
from dsm_emulator.errors import BadRequest
from dsm_emulator.keys import Component
from dsm_emulator.policies import not_implemented

routes = web.RouteTableDef()

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
