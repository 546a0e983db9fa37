"""DSM REST API: approval requests (``ApprovalRequestsApi``, ``/sys/v1/approval_requests``).

An operation is never copied here: creating a request dispatches the operation through the app's router
to its own handler, as the requester, with a probing principal, so the handler parses the body, resolves
names, checks permissions and stops at the quorum gate, which reports what the operation would touch
(``ApprovalProbe``); nothing runs. Fetching the result of an approved request dispatches it the same way,
once, with the requester's principal allowed past the gate for exactly the objects the request named, and
answers Fortanix's ``ApprovableResult {status, body}`` with the handler's own status and JSON. An export
by key components is fetched by each of its custodians instead, and each sees only their own component.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

from aiohttp import web

from dsm_emulator.api.context import (
    DISPATCHED_BODY,
    PRINCIPAL,
    core_of,
    field,
    json_response,
    no_content,
    principal_of,
    read_json,
)
from dsm_emulator.approvals.gate import ApprovalProbe
from dsm_emulator.authz import Principal
from dsm_emulator.errors import BadRequest, DsmError
from xkslab_shared import json_body

log = logging.getLogger("dsm_emulator.api")
routes = web.RouteTableDef()

# The routes whose handlers reach the quorum gate, and so can be held for approval. A request for any
# other operation is refused before it is dispatched: a probe must never run an operation.
APPROVABLE = frozenset(
    {
        ("GET", "/crypto/v1/keys/{kid}/export"),
        ("POST", "/crypto/v1/keys/export"),
        ("POST", "/crypto/v1/keys/components/export"),
        ("POST", "/crypto/v1/keys/components/import"),
        ("PATCH", "/crypto/v1/keys/{kid}"),
        ("DELETE", "/crypto/v1/keys/{kid}"),
        ("POST", "/crypto/v1/keys/{kid}/activate"),
        ("POST", "/crypto/v1/keys/{kid}/revoke"),
        ("POST", "/crypto/v1/keys/{kid}/destroy"),
        ("PUT", "/crypto/v1/keys/{kid}/revert"),
        ("POST", "/crypto/v1/keys/rekey"),
        ("POST", "/crypto/v1/encrypt"),
        ("POST", "/crypto/v1/decrypt"),
        ("POST", "/crypto/v1/wrapkey"),
        ("POST", "/crypto/v1/unwrapkey"),
        ("POST", "/crypto/v1/keys/{kid}/encrypt"),
        ("POST", "/crypto/v1/keys/{kid}/decrypt"),
        ("POST", "/crypto/v1/keys/{kid}/wrapkey"),
        ("POST", "/crypto/v1/keys/{kid}/unwrapkey"),
        ("POST", "/crypto/v1/mac"),
        ("POST", "/crypto/v1/macverify"),
        ("POST", "/crypto/v1/keys/{kid}/mac"),
        ("POST", "/crypto/v1/keys/{kid}/macverify"),
        ("POST", "/crypto/v1/sign"),
        ("POST", "/crypto/v1/verify"),
        ("POST", "/crypto/v1/keys/{kid}/sign"),
        ("POST", "/crypto/v1/keys/{kid}/verify"),
        ("POST", "/crypto/v1/derive"),
        ("POST", "/crypto/v1/keys/{kid}/derive"),
        ("POST", "/crypto/v1/agree"),
        ("PATCH", "/sys/v1/groups/{group_id}"),
        ("DELETE", "/sys/v1/groups/{group_id}"),
    }
)
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})
MAX_OPERATION = 1024


async def _dispatch(
    template: web.Request, method: str, operation: str, body: bytes | None, principal: Principal
) -> web.StreamResponse:
    """Run ``method operation`` through this app's router, as ``principal``, with ``body``. ``template``
    is a clone of the incoming request made before its body was read (aiohttp clones only unread
    requests)."""
    inner = template.clone(method=method, rel_url=operation)
    inner[PRINCIPAL] = principal
    inner[DISPATCHED_BODY] = body or b""
    match = await template.app.router.resolve(inner)
    if match.http_exception is not None:
        raise BadRequest(f"{method} {operation} is not an operation of this DSM")
    resource = match.route.resource
    if (method, resource.canonical if resource is not None else "") not in APPROVABLE:
        raise BadRequest(f"{method} {operation} cannot be held for approval by the lab")
    match.add_app(template.app)
    match.freeze()
    # What aiohttp's own dispatcher does before calling a handler (web_app._handle); there is no public
    # setter, and the handlers read their path parameters from it.
    inner._match_info = match
    return await match.handler(inner)


def _operation(body: dict[str, Any]) -> tuple[str, str, bytes | None, str | None]:
    method = (field(body, "method", str) or "POST").upper()
    if method not in METHODS:
        raise BadRequest(f"method must be one of {', '.join(sorted(METHODS))}")
    operation = field(body, "operation", str, required=True)
    if not operation.startswith("/") or len(operation) > MAX_OPERATION or "?" in operation:
        raise BadRequest(f"operation must be a path of at most {MAX_OPERATION} characters, without a query")
    inner = body.get("body")
    raw = None if inner is None else json_body.dumps(inner)
    return method, operation, raw, field(body, "description", str)


@routes.post("/sys/v1/approval_requests")
async def create_request(request: web.Request) -> web.Response:
    template = request.clone()
    p = principal_of(request)
    body = await read_json(request)
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    method, operation, raw, description = _operation(body)
    try:
        await _dispatch(template, method, operation, raw, dataclasses.replace(p, probe=True))
    except ApprovalProbe as probe:
        view = await core_of(request).approvals.create(p, method, operation, raw, description, probe)
        return json_response(view, status=201)
    # The handler ended without reaching the gate (a transient key: nothing stored, nothing to hold).
    raise BadRequest(f"{method} {operation} is not held by any approval policy: call it directly")


@routes.get("/sys/v1/approval_requests")
async def list_requests(request: web.Request) -> web.Response:
    q = request.query
    views = await core_of(request).approvals.list(
        principal_of(request),
        requester=q.get("requester") or None,
        reviewer=q.get("reviewer") or None,
        subject=q.get("subject") or None,
        status=q.get("status") or None,
    )
    return json_response(views)


@routes.get("/sys/v1/approval_requests/{request_id}")
async def get_request(request: web.Request) -> web.Response:
    view = await core_of(request).approvals.get(principal_of(request), request.match_info["request_id"])
    return json_response(view)


@routes.delete("/sys/v1/approval_requests/{request_id}")
async def delete_request(request: web.Request) -> web.Response:
    await core_of(request).approvals.delete(principal_of(request), request.match_info["request_id"])
    return no_content()


@routes.post("/sys/v1/approval_requests/{request_id}/approve")
async def approve(request: web.Request) -> web.Response:
    body = await read_json(request, allow_empty=True)
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    for name in ("u2f", "fido2_auth_request"):
        if body.get(name) is not None:
            raise BadRequest(f"{name}: the lab has no second factor, so it does not take one")
    if body.get("body") is not None:
        raise BadRequest("body: approving with a changed body is not implemented by the lab")
    view = await core_of(request).approvals.approve(
        principal_of(request), request.match_info["request_id"], field(body, "password", str)
    )
    return json_response(view)


@routes.post("/sys/v1/approval_requests/{request_id}/deny")
async def deny(request: web.Request) -> web.Response:
    view = await core_of(request).approvals.deny(principal_of(request), request.match_info["request_id"])
    return json_response(view)


@routes.post("/sys/v1/approval_requests/{request_id}/result")
async def result(request: web.Request) -> web.Response:
    template = request.clone()
    p = principal_of(request)
    request_id = request.match_info["request_id"]
    approvals = core_of(request).approvals
    approved = await approvals.claim_result(p, request_id)
    if approved.stored is not None:  # a custodian's component from the split an earlier fetch made
        return json_response({"status": 200, "body": approved.stored})
    runs_as = p
    if approved.requester is not None:
        runs_as = await approvals.custody.requester_principal(p.acct_id, approved.requester)
    runner = dataclasses.replace(runs_as, approved=approved.approved_ids)
    try:
        response = await _dispatch(template, approved.method, approved.operation, approved.body, runner)
        status = response.status
        raw = response.body if isinstance(response, web.Response) else None
        answer = json.loads(raw) if isinstance(raw, bytes) and raw else None
    except DsmError as exc:
        status, answer = exc.status, {"message": exc.message}
    except web.HTTPException as exc:
        status, answer = exc.status, {"message": exc.reason}
    except Exception:
        log.exception("approved request %s failed", request_id)
        status, answer = 500, {"message": "internal error"}
    if approved.custodian and status < 400 and isinstance(answer, dict):
        answer = await approvals.custody.keep(p, request_id, answer)
    await approvals.finish_result(p, request_id, status)
    return json_response({"status": status, "body": answer})
