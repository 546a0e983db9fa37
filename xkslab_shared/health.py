"""``GET /health`` of every service: a small JSON status for load balancers, scripts and ``xkslab wait
--health``, 200 while the service can serve and 503 when a dependency it needs is down.

    {"service": "xks", "status": "ok", "checks": {"dsm": "ok"}}
    {"service": "dsm", "status": "unavailable", "checks": {"database": "unavailable (TimeoutError)"}}

Each check is one cheap round trip (a ``SELECT 1``, one call to the key manager), bounded by
``CHECK_TIMEOUT_S``. A failure is named by its exception's class only: an exception's text may quote a
database URL, password included.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

HEALTH_PATH = "/health"
CHECK_TIMEOUT_S = 2.0
OK = "ok"
UNAVAILABLE = "unavailable"

# A check raises (anything) when its dependency cannot be used; what it returns is not read.
Check = Callable[[web.Request], Awaitable[object]]

log = logging.getLogger("xkslab.health")


def handler(service: str, checks: Mapping[str, Check]) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def health(request: web.Request) -> web.Response:
        results = {name: await _run(service, name, check, request) for name, check in checks.items()}
        healthy = all(result == OK for result in results.values())
        return web.json_response(
            {"service": service, "status": OK if healthy else UNAVAILABLE, "checks": results},
            status=200 if healthy else 503,
            headers={"Cache-Control": "no-store"},
        )

    return health


async def _run(service: str, name: str, check: Check, request: web.Request) -> str:
    try:
        await asyncio.wait_for(check(request), CHECK_TIMEOUT_S)
    except Exception as exc:  # any failure of a dependency makes the service unavailable, none a 500
        log.warning("%s: health check %s failed: %s", service, name, type(exc).__name__)
        return f"{UNAVAILABLE} ({type(exc).__name__})"
    return OK
