"""The console's static files (``static/``, shipped as package data), each answered with a strict
Content-Security-Policy: scripts, styles and connections from this origin only, no inline script or
style, no framing. ``/console`` is the page; every other file is named under ``/console/``."""

from __future__ import annotations

import re
from pathlib import Path

from aiohttp import web

STATIC = Path(__file__).resolve().parent / "static"
PREFIX = "/console"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
_NAME = re.compile(r"(?:[a-z0-9_-]+/)*[a-z0-9_-]+\.(?:html|js|css|svg)")

routes = web.RouteTableDef()


def is_asset(method: str, path: str) -> bool:
    if method not in ("GET", "HEAD"):
        return False
    return path in (PREFIX, PREFIX + "/") or (
        path.startswith(PREFIX + "/") and not path.startswith(PREFIX + "/api/")
    )


def _file(name: str) -> web.Response:
    if not _NAME.fullmatch(name):
        raise web.HTTPNotFound(reason="no such console file")
    path = (STATIC / name).resolve()
    if STATIC not in path.parents or not path.is_file():
        raise web.HTTPNotFound(reason="no such console file")
    response = web.Response(body=path.read_bytes(), content_type=None)
    response.headers["Content-Type"] = TYPES[path.suffix]
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-cache"
    return response


@routes.get(PREFIX)
@routes.get(PREFIX + "/")
async def index(request: web.Request) -> web.Response:
    return _file("index.html")


@routes.get(PREFIX + "/{name:(?!api/).+}")
async def asset(request: web.Request) -> web.Response:
    return _file(request.match_info["name"])
