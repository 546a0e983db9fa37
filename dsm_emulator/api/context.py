"""What every DSM REST handler needs from the request: the core services, the caller, the JSON body,
and Fortanix-shaped responses. Declared once so that handlers stay short and alike."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from aiohttp import web

from dsm_emulator.authz import Principal
from dsm_emulator.core import DsmCore
from dsm_emulator.errors import AuthFailed, BadRequest
from xkslab_shared import json_body

CORE_KEY: web.AppKey[DsmCore] = web.AppKey("dsm_core", DsmCore)
# Set by the authentication middleware for every route that is not public. A RequestKey, not a plain
# string: aiohttp 3.14 warns on string request keys (and the test suite makes warnings errors).
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("xkslab.principal", Principal)
# The body of an operation dispatched for an approval request (dsm_emulator.api.approvals): its handler
# reads this instead of the HTTP body of the request that carried the approval call.
DISPATCHED_BODY: web.RequestKey[bytes] = web.RequestKey("xkslab.dispatched_body", bytes)


def core_of(request: web.Request) -> DsmCore:
    return request.app[CORE_KEY]


def principal_of(request: web.Request) -> Principal:
    principal: Principal | None = request.get(PRINCIPAL)
    if principal is None:
        raise AuthFailed("authentication required")
    return principal


async def read_json(request: web.Request, *, allow_empty: bool = False) -> Any:
    """The parsed body. Clients send junk fields and explicit nulls (sdkms-cli does), so callers treat
    a None value as absent; anything that is not JSON, or JSON no service accepts (json_body), is a 400
    with a message."""
    dispatched = request.get(DISPATCHED_BODY)
    raw = dispatched if dispatched is not None else await request.read()
    if not raw.strip():
        if allow_empty:
            return {}
        raise BadRequest("request body is required")
    try:
        return json_body.loads(raw)
    except json_body.JsonBodyError as exc:
        raise BadRequest(exc.message) from None


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=json_body.dumps(data), status=status, content_type="application/json")


def no_content() -> web.Response:
    return web.Response(status=204)


def field(body: Any, name: str, kind: type | tuple[type, ...], *, required: bool = False) -> Any:
    """One field of a JSON object body, type-checked; None and absent are the same."""
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    value = body.get(name)
    if value is None:
        if required:
            raise BadRequest(f"missing required field {name}")
        return None
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise BadRequest(f"field {name} has the wrong type")
    if not isinstance(value, kind):
        raise BadRequest(f"field {name} has the wrong type")
    return value


def b64_field(body: Any, name: str, *, required: bool = False) -> bytes | None:
    """A standard, padded base64 field (what every Fortanix client sends); anything else is a 400."""
    text = field(body, name, str, required=required)
    if text is None:
        return None
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"field {name} is not valid base64") from None


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
