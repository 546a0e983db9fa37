"""Small builders for the services' OpenAPI 3.1 documents, the ``GET /openapi.json`` handler, and the
comparison of a document with the routes an aiohttp app really has (the CI check).

A document's operation may carry ``x-route: "METHOD PATH"`` when the aiohttp route that serves it is not
its own path: the XKS proxy serves its operations through one catch-all route, and KMS serves every
``/#X-Amz-Target=TrentService.<Op>`` pseudo-path (the convention of the published AWS OpenAPI
conversions) through ``POST /``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from aiohttp import web

OPENAPI_PATH = "/openapi.json"
METHODS = ("get", "put", "post", "patch", "delete")
Schema = dict[str, Any]
_TEMPLATE_NAME = re.compile(r"\{([^{}/]+)\}")


def obj(required: Iterable[str] = (), **properties: Schema) -> Schema:
    """A JSON object schema; members not listed are allowed (the services ignore unknown members)."""
    schema: Schema = {"type": "object", "properties": properties}
    needed = list(required)
    if needed:
        schema["required"] = needed
    return schema


def string(min_len: int | None = None, max_len: int | None = None, **extra: Any) -> Schema:
    schema: Schema = {"type": "string", **extra}
    if min_len is not None:
        schema["minLength"] = min_len
    if max_len is not None:
        schema["maxLength"] = max_len
    return schema


def array(items: Schema, **extra: Any) -> Schema:
    return {"type": "array", "items": items, **extra}


def nullable(schema: Schema) -> Schema:
    kind = schema.get("type", "string")
    return {**schema, "type": [kind, "null"]} if isinstance(kind, str) else schema


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def content(schema: Schema, media_type: str = "application/json") -> dict[str, Any]:
    return {media_type: {"schema": schema}}


def document(
    title: str, description: str, paths: Mapping[str, Any], components: Mapping[str, Any]
) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": "0.1.0", "description": description},
        "paths": {path: with_path_parameters(path, item) for path, item in paths.items()},
        "components": dict(components),
    }


def with_path_parameters(path: str, item: Mapping[str, Any]) -> dict[str, Any]:
    """The path item with every ``{name}`` of its template declared as a required string path parameter
    (OpenAPI requires each to be declared; an undeclared one makes the document invalid). Declared once,
    on the path item, so that no operation can forget it; one the item or its operations declare
    already is left as it is."""
    declared = {(p["name"], p["in"]) for p in item.get("parameters", [])}
    operations = [item[method] for method in METHODS if method in item]
    if operations:
        declared |= set.intersection(
            *({(p["name"], p["in"]) for p in operation.get("parameters", [])} for operation in operations)
        )
    missing = [name for name in _TEMPLATE_NAME.findall(path) if (name, "path") not in declared]
    if not missing:
        return dict(item)
    added = [{"name": name, "in": "path", "required": True, "schema": string()} for name in missing]
    return {**item, "parameters": [*item.get("parameters", []), *added]}


def handler(doc: Mapping[str, Any]) -> Callable[[web.Request], Awaitable[web.Response]]:
    """``GET /openapi.json``: the document, serialised once."""
    body = json.dumps(doc, indent=1).encode()

    async def openapi(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    return openapi


def served_routes(app: web.Application) -> set[tuple[str, str]]:
    """(METHOD, path template) of every route the app's router holds; HEAD comes with GET."""
    found: set[tuple[str, str]] = set()
    for route in app.router.routes():
        if route.method == "HEAD" or route.resource is None:
            continue
        found.add((route.method, route.resource.canonical))
    return found


def described_routes(doc: Mapping[str, Any]) -> dict[tuple[str, str], set[tuple[str, str]]]:
    """For each (METHOD, route) of an app, the document's operations (METHOD, path) that it serves."""
    found: dict[tuple[str, str], set[tuple[str, str]]] = {}
    for path, item in doc["paths"].items():
        for method in METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            route = operation.get("x-route", f"{method.upper()} {path}")
            route_method, route_path = route.split(" ", 1)
            found.setdefault((route_method, route_path), set()).add((method.upper(), path))
    return found


def health_path() -> dict[str, Any]:
    """``GET /health`` (xkslab_shared.health), the same on every service."""
    status = obj(
        ["service", "status", "checks"],
        service=string(),
        status={"enum": ["ok", "unavailable"]},
        checks={"type": "object", "additionalProperties": string()},
    )
    return {
        "get": {
            "operationId": "labHealth",
            "summary": "200 while the service can serve; 503 when a dependency it needs is down",
            "security": [],
            "responses": {
                "200": {"description": "healthy", "content": content(status)},
                "503": {"description": "a dependency is down", "content": content(status)},
            },
        }
    }
