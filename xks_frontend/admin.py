"""The proxy's admin endpoint for fault injection (``xkslab faults``): its own path beside the XKS API,
never served without the admin token (xks.admin_token_file, 0600, created on first start), which is
compared in constant time. The XKS credential is no use here and the admin token no use on the XKS API."""

from __future__ import annotations

import hmac
from collections.abc import Callable

from aiohttp import web

from xks_frontend.fault_store import FaultStore
from xkslab_shared import body_encoding, json_body
from xkslab_shared.faults_wire import FAULTS_PATH, Fault, FaultSpecError, parse_faults


def add_routes(
    app: web.Application,
    book: FaultStore,
    token: str,
    *,
    prepare: Callable[[list[Fault]], None] | None = None,
) -> None:
    """``prepare`` gets the faults of a POST before they are set (the TLS faults' certificates); a
    ValueError from it refuses them with 400."""
    expected = f"Bearer {token}".encode()

    def authorized(request: web.Request) -> bool:
        given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
        return hmac.compare_digest(given, expected)

    def reply(data: object, status: int = 200) -> web.Response:
        return web.Response(body=json_body.dumps(data), status=status, content_type="application/json")

    def refused() -> web.Response:
        response = reply({"error": "the xkslab admin token is required (Authorization: Bearer ...)"}, 401)
        response.headers["WWW-Authenticate"] = 'Bearer realm="xkslab"'
        return response

    async def list_faults(request: web.Request) -> web.Response:
        if not authorized(request):
            return refused()
        return reply({"faults": await book.list()})

    async def set_faults(request: web.Request) -> web.Response:
        if not authorized(request):
            return refused()
        try:
            raw = await body_encoding.read(request, body_encoding.NONE)  # bounded by client_max_size
        except body_encoding.BodyEncodingError as exc:
            return reply({"error": exc.message}, exc.status)
        try:
            faults = parse_faults(json_body.loads(raw))
            if prepare is not None:
                prepare(faults)
            ids = await book.add(faults)
        except (ValueError, FaultSpecError) as exc:  # JSONDecodeError and a full book are ValueErrors too
            return reply({"error": str(exc)}, 400)
        return reply({"ids": ids})

    async def clear_faults(request: web.Request) -> web.Response:
        if not authorized(request):
            return refused()
        return reply({"cleared": await book.clear(request.match_info.get("fault_id"))})

    app.router.add_get(FAULTS_PATH, list_faults)
    app.router.add_post(FAULTS_PATH, set_faults)
    app.router.add_delete(FAULTS_PATH, clear_faults)
    app.router.add_delete(FAULTS_PATH + "/{fault_id}", clear_faults)
