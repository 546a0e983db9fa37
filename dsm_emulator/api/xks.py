"""The internal endpoint XKS proxies call: one request per XKS operation (xkslab_shared.proxy_link has the
shape). Answers carry the domain outcome in the body, ``{"result"}`` or ``{"error": {"code"}}``, with
status 200, so the proxy maps DsmError classes to XKS errorNames in one place; a non-200 status means
the call itself was refused (wrong proxy token, malformed call)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from typing import Any

from aiohttp import web

from dsm_emulator.api.context import core_of, json_response, read_json
from dsm_emulator.core import DsmCore
from dsm_emulator.errors import AuthFailed, BadRequest, DsmError
from dsm_emulator.xks import PolicyVerdict, XksCall
from xkslab_shared import logs, sigv4, xks_wire
from xkslab_shared.proxy_link import CALL_PATH, PREFIXES_PATH, ForwardedCall

log = logging.getLogger(__name__)
routes = web.RouteTableDef()
PROXY_TOKEN_KEY: web.AppKey[str] = web.AppKey("xks_proxy_token", str)


def _require_proxy(request: web.Request) -> None:
    expected = request.app[PROXY_TOKEN_KEY].encode()
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
        raise AuthFailed("this endpoint is for XKS proxies: present the proxy token")


@routes.get(PREFIXES_PATH)
async def prefixes(request: web.Request) -> web.Response:
    _require_proxy(request)
    return json_response({"prefixes": await core_of(request).xks.prefixes()})


@routes.post(CALL_PATH)
async def call(request: web.Request) -> web.Response:
    _require_proxy(request)
    line = logs.access(request) if logs.access_enabled() else None
    return json_response(await run_call(core_of(request), await read_json(request), line))


async def run_call(core: DsmCore, data: Any, line: dict[str, Any] | None = None) -> dict[str, Any]:
    """One forwarded XKS call, whichever way it came (this endpoint, or the framed link: api/link.py):
    ``{"result"}`` or ``{"error"}``; BadRequest for a malformed call. ``line``: the access line's extras,
    filled with the operation, the kmsRequestId and the error's name (None: no access line is written)."""
    try:
        forwarded = ForwardedCall.from_json(data)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    xks_call = XksCall(
        app_id=forwarded.app_id,
        operation=forwarded.operation,
        key_id=forwarded.key_id,
        signed=sigv4.SignedRequest(
            method=forwarded.method,
            path=forwarded.path,
            query=forwarded.query,
            headers=forwarded.headers,
            body_sha256=hashlib.sha256(forwarded.body).hexdigest(),
        ),
        body=forwarded.body,
        limits=xks_wire.Limits(forwarded.max_plaintext_bytes, forwarded.max_aad_bytes),
        policy=None
        if forwarded.policy_allowed is None
        else PolicyVerdict(forwarded.policy_allowed, forwarded.policy_rule or ""),
        deadline=None
        if forwarded.budget_ms is None
        else asyncio.get_running_loop().time() + forwarded.budget_ms / 1000,
        on_metadata=None
        if line is None
        else lambda metadata: line.update(kmsRequestId=metadata.kms_request_id),
    )
    if line is not None:
        line.update(operation=forwarded.operation, kmsRequestId=_NOT_PARSED)
    try:
        result = await core.xks.call(xks_call)
    except DsmError as exc:
        if line is not None:
            line["error"] = exc.public_name
        return {"error": {"code": exc.public_name, "message": exc.message}}
    finally:
        if line is not None and line["kmsRequestId"] is _NOT_PARSED:
            # Refused before its body was parsed (or the body is not valid): read the id for the line
            # alone, best effort, as a log line someone reads wants it (the same id parse_metadata_only
            # would give, for half its CPU: every refusal of a flood of bad signatures comes here), and
            # only if the line is written (past the first refusals of a window only a count is).
            line["kmsRequestId"] = logs.Later(lambda: xks_wire.kms_request_id_only(forwarded.body))
    return {"result": result}


_NOT_PARSED = object()
