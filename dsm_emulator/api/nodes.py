"""DSM REST API: the fleet's nodes, ``GET /sys/v1/nodes`` (an xkslab extension, not Fortanix's).

Every serving DSM node and XKS proxy of the database, from the node registry (xkslab_shared/nodes.py):
what it is, where it listens, when it started and last beat, and whether it is live (a heartbeat younger
than ``fleet.node_timeout_s``). Administrators only: it names internal addresses.
"""

from __future__ import annotations

from aiohttp import web

from dsm_emulator.api.context import core_of, json_response, principal_of
from dsm_emulator.errors import AccessDenied
from xkslab_shared.nodes import list_nodes

routes = web.RouteTableDef()


@routes.get("/sys/v1/nodes")
async def nodes(request: web.Request) -> web.Response:
    if not principal_of(request).is_admin:
        raise AccessDenied("only an account administrator may list the fleet's nodes")
    core = core_of(request)
    rows = await list_nodes(core.sessions, core.settings.fleet.node_timeout_s)
    return json_response(
        {
            "node_timeout_s": core.settings.fleet.node_timeout_s,
            "live": sum(1 for row in rows if row.live),
            "nodes": [row.as_json() for row in rows],
        }
    )
