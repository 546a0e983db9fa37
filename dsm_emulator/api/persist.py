"""``POST /crypto/v1/keys/persist`` (the SDK's persist_security_object, ``sdkms-cli persist-key``): a
transient key stored as a new object with the same material, type and size. The request names the new
object (PersistTransientKeyRequest); what it leaves out is taken from the transient key."""

from __future__ import annotations

from aiohttp import web

from dsm_emulator.api.context import (
    core_of,
    field,
    json_response,
    principal_of,
    read_json,
    str_list_field,
    str_map_field,
)
from dsm_emulator.errors import BadRequest
from dsm_emulator.keys import KeySpec
from dsm_emulator.views import sobject_view

routes = web.RouteTableDef()


@routes.post("/crypto/v1/keys/persist")
async def persist_key(request: web.Request) -> web.Response:
    p, body = principal_of(request), await read_json(request)
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    keys = core_of(request).keys
    key = keys.visible_transient(p, field(body, "transient_key", str, required=True))
    enabled = field(body, "enabled", bool)
    metadata = str_map_field(body, "custom_metadata")
    spec = KeySpec(
        name=field(body, "name", str, required=True),
        obj_type=key.obj_type,
        group_id=field(body, "group_id", str) or key.group_id,
        key_ops=str_list_field(body, "key_ops"),
        description=field(body, "description", str) or key.description,
        custom_metadata=dict(key.custom_metadata) if metadata is None else metadata,
        enabled=key.enabled if enabled is None else enabled,
    )
    obj = await keys.persist(p, key, spec)
    broken = await keys.noncompliant([obj])
    history = await keys.history([obj])
    return json_response(
        sobject_view(obj, compliant=obj.kid not in broken, history=history.get(obj.kid)), status=201
    )
