"""The DSM REST application: core lifecycle, error mapping, authentication, routes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from dsm_emulator import console
from dsm_emulator.api import (
    admin,
    approvals,
    components,
    crypto,
    derive,
    digests,
    link,
    logs,
    multipart,
    nodes,
    not_emulated,
    openapi,
    persist,
    session,
    signing,
    sobjects,
    users,
    xks,
)
from dsm_emulator.api.context import ACCEPTED_ENCODINGS, CORE_KEY, core_of, json_response
from dsm_emulator.api.metrics import METRICS_KEY, DsmMetrics, metrics_middleware, metrics_page
from dsm_emulator.core import DsmCore
from dsm_emulator.errors import BadRequest, DsmError, TooManyAttempts
from dsm_emulator.models import is_uuid
from xkslab_shared import body_encoding, db, health
from xkslab_shared import openapi as openapi_doc
from xkslab_shared.config import Settings
from xkslab_shared.nodes import NodeRegistry
from xkslab_shared.proxy_link import INTERNAL_PREFIX, read_token
from xkslab_shared.serve import BOUND_URLS_KEY, MALFORMED_REQUEST_KEY, HttpLimits, Listener, refusal_message

log = logging.getLogger("dsm_emulator.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PUBLIC = (
    frozenset(
        {
            ("GET", "/sys/v1/health"),
            ("HEAD", "/sys/v1/health"),
            ("GET", health.HEALTH_PATH),
            ("HEAD", health.HEALTH_PATH),
            ("GET", "/sys/v1/version"),
            ("HEAD", "/sys/v1/version"),
            ("POST", "/sys/v1/session/auth"),
            # Scraped and read without credentials, as the XKS proxy's; neither holds anything secret.
            ("GET", "/metrics"),
            ("GET", openapi_doc.OPENAPI_PATH),
        }
    )
    | not_emulated.PUBLIC
)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        # Query values reach database lookups, and PostgreSQL refuses a NUL in one with an error (a 500).
        if any("\x00" in key or "\x00" in value for key, value in request.query.items()):
            raise BadRequest("query parameters must not contain NUL characters")
        return await handler(request)
    except body_encoding.ClientGone:
        # No one to answer (xkslab_shared.body_encoding): status 499 for the metrics and the access line.
        return web.Response(status=body_encoding.CLIENT_GONE_STATUS)
    except TooManyAttempts as exc:
        response = json_response({"message": exc.message}, status=exc.status)
        response.headers["Retry-After"] = str(exc.retry_after_s)
        return response
    except DsmError as exc:
        return json_response({"message": exc.message}, status=exc.status)
    except web.HTTPRequestEntityTooLarge:
        return json_response({"message": "request body is too large"}, status=413)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if isinstance(exc, web.HTTPMethodNotAllowed) and _names_no_object(request):
            return json_response({"message": "not found: no such endpoint"}, status=404)
        response = json_response({"message": exc.reason}, status=exc.status)
        for name, value in exc.headers.items():
            if name.lower() not in {"content-type", "content-length"}:
                response.headers[name] = value
        return response
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return json_response({"message": "internal error"}, status=500)


def _names_no_object(request: web.Request) -> bool:
    """Whether the path is ``<collection>/<word>`` where ``<collection>/{id}`` is a route and the word is
    no id. ``/crypto/v1/keys/{kid}`` serves GET, PATCH and DELETE for any word, so an operation the lab
    lacks (``POST /crypto/v1/keys/<word>``) would be "method not allowed"; DSM says 404: no such thing."""
    head, _, word = request.path.rpartition("/")
    if is_uuid(word):
        return False
    depth = head.count("/") + 1
    return any(
        resource.canonical.startswith(head + "/{")
        and resource.canonical.endswith("}")
        and resource.canonical.count("/") == depth
        for resource in request.app.router.resources()
    )


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    # The internal XKS endpoint checks the proxy token itself; DSM sessions do not apply there.
    if (
        (request.method, request.path) not in PUBLIC
        and not request.path.startswith(INTERNAL_PREFIX)
        and not console.is_public(request.method, request.path)
    ):
        await session.authenticate(request)
    return await handler(request)


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        client_max_size=settings.dsm.max_body_bytes,
        middlewares=[metrics_middleware, error_middleware, auth_middleware],
    )
    app[METRICS_KEY] = DsmMetrics(app)
    body_encoding.install(app)
    app[MALFORMED_REQUEST_KEY] = lambda status: json_response(
        {"message": refusal_message(status, ACCEPTED_ENCODINGS)}, status=status
    )
    app[session.SESSION_STATE_KEY] = session.SessionState()
    app[xks.PROXY_TOKEN_KEY] = read_token(settings.path(settings.dsm.proxy_token_file), create=True)
    app[BOUND_URLS_KEY] = []
    app[link.LINK_STATS_KEY] = link.LinkStats()
    app[link.LINK_SERVERS_KEY] = []
    app.on_shutdown.append(link.close_links)

    async def core_ctx(app: web.Application) -> AsyncIterator[None]:
        core = await DsmCore.open(settings)
        app[CORE_KEY] = core
        # A node of the fleet: its row in the registry, and the cache changes of the others at once.
        core.generation.listen(settings.database_url)
        registry = NodeRegistry(
            core.sessions, settings.audit.node_id, "dsm", app[BOUND_URLS_KEY], settings.fleet.heartbeat_s
        )
        await registry.start()
        summaries = asyncio.create_task(_login_summaries(core))
        sweeps = asyncio.create_task(_history_sweeps(core))
        try:
            yield
        finally:
            for task in (summaries, sweeps):
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
            try:
                await core.admin.flush_login_summaries(everything=True)
                await core.xks.refusals.flush(everything=True)
            finally:
                try:
                    await registry.close()
                    await core.generation.close()
                finally:
                    await core.close()

    app.cleanup_ctx.append(core_ctx)
    app.add_routes(session.routes)
    app.add_routes(users.routes)
    app.add_routes(admin.routes)
    app.add_routes(components.routes)
    app.add_routes(sobjects.routes)
    app.add_routes(persist.routes)
    app.add_routes(crypto.routes)
    # Before signing: /crypto/v1/keys/{kid}/verify would take "kcv" for a kid.
    app.add_routes(derive.routes)
    app.add_routes(signing.routes)
    app.add_routes(digests.routes)
    app.add_routes(multipart.routes)
    app.add_routes(logs.routes)
    app.add_routes(nodes.routes)
    app.add_routes(approvals.routes)
    app.add_routes(xks.routes)
    console.add_console(app, settings)
    app.add_routes(not_emulated.routes())
    app.router.add_get("/metrics", metrics_page)
    app.router.add_get(health.HEALTH_PATH, health.handler("dsm", {"database": _database}))
    app.router.add_get(openapi_doc.OPENAPI_PATH, openapi_doc.handler(openapi.build()))
    return app


async def _database(request: web.Request) -> None:
    await db.ping(core_of(request).sessions)


async def _login_summaries(core: DsmCore) -> None:
    """Write the summary rows of failed-login and refused-XKS bursts as their windows end. A failed
    round is logged and does not stop the next one."""
    interval = min(1.0, core.settings.dsm.login_window_s / 4)
    while True:
        await asyncio.sleep(interval)
        try:
            await core.admin.flush_login_summaries()
            await core.xks.refusals.flush()
        except Exception:
            log.exception("could not write the failed-login summary rows")


# How often a DSM process erases the key history whose undo window has closed. Windows are days long,
# so a minute late is nothing; a revert sweeps its own key first and never restores an expired item.
HISTORY_SWEEP_INTERVAL_S = 60.0


async def _history_sweeps(core: DsmCore) -> None:
    """Erase expired key history (and the material it kept) in the background; a failed round is
    logged and the next one tries again. Several replicas may sweep at once: each key is swept under
    its row lock, and a key already swept is skipped."""
    while True:
        try:
            await core.keys.sweep_history()
        except Exception:
            log.exception("could not erase expired key history")
        await asyncio.sleep(HISTORY_SWEEP_INTERVAL_S)


def listener(settings: Settings, app: web.Application | None = None) -> Listener:
    """The DSM REST API on dsm.host:dsm.port, and on dsm.https_port when its certificate exists; beside
    it, the framed link for XKS proxies on dsm.link (api/link.py)."""
    dsm = settings.dsm
    return Listener(
        "DSM REST API",
        app if app is not None else create_app(settings),
        dsm.host,
        dsm.port,
        dsm.https_port,
        settings.path(dsm.tls_cert),
        settings.path(dsm.tls_key),
        limits=HttpLimits.of(settings),
        service="dsm",
        access_log=settings.log.access,
        section="dsm",
        beside=(link.starter(settings),),
    )
