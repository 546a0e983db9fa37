"""What every DSM REST handler needs from the request: the core services, the caller, the JSON body,
and Fortanix-shaped responses. Declared once so that handlers stay short and alike."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias

from aiohttp import web

from dsm_emulator.authz import Principal
from dsm_emulator.core import DsmCore
from dsm_emulator.errors import AuthFailed, BadRequest, DsmError, UnsupportedMediaType
from xkslab_shared import body_encoding, json_body

if TYPE_CHECKING:
    from dsm_emulator.keys import KeyService

# Fortanix's API is plain HTTP: a gzip or deflate body is decompressed (within dsm.max_body_bytes).
ACCEPTED_ENCODINGS = body_encoding.GZIP_OR_DEFLATE

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
    if dispatched is not None:  # an approved request's body, run again for its requester
        raw = dispatched
    else:
        try:
            raw = await body_encoding.read(request, ACCEPTED_ENCODINGS)
        except body_encoding.BodyEncodingError as exc:
            raise (UnsupportedMediaType if exc.status == 415 else BadRequest)(exc.message) from None
    if not raw.strip():
        if allow_empty:
            return {}
        raise BadRequest("request body is required")
    try:
        return json_body.loads(raw)
    except json_body.JsonBodyError as exc:
        raise BadRequest(exc.message) from None


def query_int(request: web.Request, name: str, default: int, low: int, high: int = json_body.INT_MAX) -> int:
    """An integer query parameter of any DSM route, within [low, high]; the ceiling is at most what a
    BIGINT holds, since past it both databases fail deep in the driver (a 500). Every integer query
    parameter of the three services is read here: XKS and KMS take theirs in JSON bodies."""
    raw = request.query.get(name)
    if raw is None or raw.strip() == "":
        return default
    text = raw.strip()
    digits = text.lstrip("+-")
    if not (digits.isascii() and digits.isdigit()) or len(text) - len(digits) > 1:
        raise BadRequest(f"query parameter {name} must be an integer")
    # Judged on the digits first: a 5,000-digit value never reaches int() (which refuses past 4,300).
    value = int(text) if len(digits) <= len(str(json_body.INT_MAX)) else None
    if value is None or not low <= value <= high:
        raise BadRequest(f"query parameter {name} must be between {low} and {high}")
    return value


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


def str_list_field(body: Any, name: str) -> list[str] | None:
    """A list-of-strings field (key_ops and the like); None and absent are the same."""
    value: list[str] | None = field(body, name, list)
    if value is not None and not all(isinstance(item, str) for item in value):
        raise BadRequest(f"field {name} has the wrong type")
    return value


def str_map_field(body: Any, name: str) -> dict[str, str] | None:
    """A string-to-string map field (custom_metadata); None and absent are the same."""
    value: dict[str, str] | None = field(body, name, dict)
    if value is not None and not all(isinstance(v, str) for v in value.values()):
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


# The most items one batch request may hold (batch encrypt, decrypt, MAC, sign, verify).
MAX_BATCH_ITEMS = 1000
BatchItem: TypeAlias = "Callable[[KeyService, Principal, dict[str, Any]], Awaitable[dict[str, Any]]]"


async def run_batch(request: web.Request, one: BatchItem) -> web.Response:
    """A batch request: a JSON array of objects, each run by ``one`` and answered with its own
    ``{"status", "body"}`` or ``{"status", "error"}``, so one refused item does not refuse the others."""
    p, body = principal_of(request), await read_json(request)
    if not isinstance(body, list):
        raise BadRequest("request body must be a JSON array")
    if len(body) > MAX_BATCH_ITEMS:
        raise BadRequest(f"a batch holds at most {MAX_BATCH_ITEMS} items")
    keys = core_of(request).keys
    results: list[dict[str, Any]] = []
    for index, item in enumerate(body):
        try:
            if not isinstance(item, dict):
                raise BadRequest(f"batch item {index} must be a JSON object")
            results.append({"status": 200, "body": await one(keys, p, item)})
        except DsmError as exc:
            results.append({"status": exc.status, "error": exc.message})
    return json_response(results)
