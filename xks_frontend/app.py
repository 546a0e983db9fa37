"""The XKS proxy application: resources in cleanup_ctx, GET /ping and /metrics, the fault-injection admin
endpoint (admin.py), the mTLS subject check, and every other path to the XKS dispatcher (which answers 404
InvalidUriPathException itself)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from xks_frontend import admin, openapi
from xks_frontend.dsm_client import DsmClient
from xks_frontend.errors import XksError, error_response
from xks_frontend.fault_store import FaultStore
from xks_frontend.faults import FaultBook
from xks_frontend.handlers import Edge, Handler, PrefixQuota, PrefixTable, dispatch
from xks_frontend.metrics import XksMetrics
from xks_frontend.policy import PolicyFile
from xks_frontend.tls_faults import TlsFaults
from xkslab_shared import body_encoding, db, health, tls, xks_wire
from xkslab_shared import openapi as openapi_doc
from xkslab_shared.config import Settings
from xkslab_shared.faults_wire import FAULTS_PATH
from xkslab_shared.generation import Generation
from xkslab_shared.nodes import LiveCount, NodeRegistry, list_nodes
from xkslab_shared.proxy_link import read_token
from xkslab_shared.serve import BOUND_URLS_KEY, MALFORMED_REQUEST_KEY, HttpLimits, Listener, refusal_message

EDGE_KEY: web.AppKey[Edge] = web.AppKey("xks_edge", Edge)
TLS_FAULTS_KEY: web.AppKey[TlsFaults] = web.AppKey("xks_tls_faults", TlsFaults)
_OPEN_PATHS = frozenset({"/ping", health.HEALTH_PATH, "/metrics", openapi_doc.OPENAPI_PATH})


def body_limit(limits: xks_wire.Limits) -> int:
    """Enough for the largest accepted request (Base64 grows data by 4/3) plus metadata and slack."""
    return (limits.max_plaintext_bytes + limits.max_aad_bytes) * 4 // 3 + 64 * 1024


def create_app(settings: Settings) -> web.Application:
    xks = settings.xks
    limits = xks_wire.Limits(xks.max_plaintext_bytes, xks.max_aad_bytes)
    policy = PolicyFile(settings.path(Path(xks.policy_file))) if xks.policy_file else None
    client_ca = settings.xks_client_ca()
    client_subject = settings.xks_client_subject()
    mtls = client_ca is not None

    @web.middleware
    async def client_certificate(request: web.Request, handler: Handler) -> web.StreamResponse:
        # The handshake refused a client certificate from another CA or for another name (a TLS alert);
        # the exact subject rule (no wildcards, CN= for the CN alone) is checked here, before anything
        # else, for what OpenSSL's host-name rule let by; plain HTTP cannot satisfy mTLS at all.
        # The admin endpoint has a token of its own, so `xkslab faults` can use the plain HTTP listener.
        if mtls and request.path not in _OPEN_PATHS and not request.path.startswith(FAULTS_PATH):
            peercert = request.transport.get_extra_info("peercert") if request.transport else None
            if not request.secure or peercert is None:
                return _refuse("a client certificate is required")
            if client_subject and not tls.subject_matches(peercert, client_subject):
                return _refuse("the client certificate's subject is not accepted")
        return await handler(request)

    app = web.Application(client_max_size=body_limit(limits), middlewares=[client_certificate])
    body_encoding.install(app)
    # A refused connection is the spec's ThrottlingException (429), which KMS passes on as throttling.
    app[MALFORMED_REQUEST_KEY] = lambda status: error_response(
        XksError(
            "ThrottlingException" if status == 503 else "ValidationException",
            refusal_message(status, body_encoding.NONE),
        )
    )
    dsm_ca = settings.path(Path(xks.dsm_ca)) if xks.dsm_ca else None
    client = DsmClient(
        xks.dsm_url_list,
        read_token(settings.path(xks.dsm_token_file)),
        timeout_s=xks.dsm_timeout_ms / 1000,
        ssl_context=tls.client_context(dsm_ca) if dsm_ca is not None else None,
        link_connections=xks.dsm_link_connections,
        # An answer is at most the largest request's data again, Base64 in JSON: twice the body limit.
        link_max_answer_bytes=2 * body_limit(limits),
    )
    metrics = XksMetrics()
    edge = Edge(
        client=client,
        prefixes=PrefixTable(client, xks.prefix_cache_s),
        policy=policy,
        metrics=metrics,
        limits=limits,
        quota=PrefixQuota(xks.rate_limit_rps, xks.rate_limit_burst),
        faults=FaultBook(metrics.registry),
    )
    app[EDGE_KEY] = edge
    tls_faults = TlsFaults(
        edge.faults, settings.path(xks.tls_cert), settings.path(xks.tls_key), client_ca, client_subject
    )
    app[TLS_FAULTS_KEY] = tls_faults
    app.middlewares.append(tls_faults.middleware)

    async def dsm_client_ctx(app: web.Application) -> AsyncIterator[None]:
        await client.open()
        try:
            yield
        finally:
            await client.close()

    async def ping(request: web.Request) -> web.Response:
        return web.Response(text="pong\n")

    async def metrics_route(request: web.Request) -> web.Response:
        response = web.Response(body=edge.metrics.render())
        response.headers["Content-Type"] = edge.metrics.content_type
        return response

    async def xks_route(request: web.Request) -> web.StreamResponse:
        return await dispatch(edge, request)

    app.cleanup_ctx.append(dsm_client_ctx)
    app[BOUND_URLS_KEY] = []
    fault_store = FaultStore(edge.faults)
    if settings.database.url or (settings.data_dir / "xkslab.db").exists():
        fleet = settings.fleet
        edge.proxy_fleet = LiveCount("xks", fleet.node_timeout_s, fleet.heartbeat_s)
        edge.quota.fleet = edge.proxy_fleet
        app.cleanup_ctx.append(_registered(settings, app[BOUND_URLS_KEY], edge.proxy_fleet, fault_store))
    app.router.add_get("/ping", ping)
    app.router.add_get("/metrics", metrics_route)
    # The key manager answers the proxy's own call (the URI path prefix table), token and all.
    app.router.add_get(health.HEALTH_PATH, health.handler("xks", {"dsm": lambda _: client.prefixes()}))
    app.router.add_get(openapi_doc.OPENAPI_PATH, openapi_doc.handler(openapi.build()))
    token = read_token(settings.path(xks.admin_token_file), create=True)
    admin.add_routes(app, fault_store, token, prepare=tls_faults.prepare)
    app.router.add_route("*", "/{tail:[\\s\\S]*}", xks_route)
    return app


def _registered(
    settings: Settings, urls: list[str], proxy_fleet: LiveCount, fault_store: FaultStore
) -> Callable[[web.Application], AsyncIterator[None]]:
    """The proxy's row in the fleet's node registry (xkslab_shared/nodes.py), on a small engine of its
    own, the number of live proxies it reads back (xksProxyFleetSize, and each proxy's share of the
    request quota), and the fleet's fault book (fault_store.py); nothing else from the database. Only
    where there is a database (a data directory without one is not given one); a database that cannot
    be written never stops the proxy."""

    async def registered(app: web.Application) -> AsyncIterator[None]:
        engine = db.create_engine(settings.database_url, pool_size=2)
        sessions = db.session_factory(engine)
        registry = NodeRegistry(sessions, settings.xks.node_id, "xks", urls, settings.fleet.heartbeat_s)
        proxy_fleet.sessions = sessions  # xksProxyFleetSize: the live proxies of the registry
        generation = Generation(sessions, settings.database.cache_poll_ms / 1000)
        counting: asyncio.Task[None] | None = None
        try:
            await registry.start()
            generation.listen(settings.database_url)  # PostgreSQL: NOTIFY, the poll as fallback
            alone = await _alone(sessions, settings)
            await fault_store.start(sessions, generation, alone=alone)
            counting = asyncio.create_task(proxy_fleet.follow(), name="count-live-proxies")
            yield
        finally:
            try:
                if counting is not None:
                    proxy_fleet.stop()
                    try:
                        await asyncio.wait_for(asyncio.shield(counting), 5.0)
                    except TimeoutError:
                        counting.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await counting
                await fault_store.close()
                await generation.close()
                await registry.close()
            finally:
                await engine.dispose()

    return registered


async def _alone(sessions: async_sessionmaker[AsyncSession], settings: Settings) -> bool:
    """Whether no other proxy is live (False when the registry cannot be read: keep what is set)."""
    try:
        nodes = await list_nodes(sessions, settings.fleet.node_timeout_s, "xks")
    except Exception:
        return False
    return not any(node.live and node.id != settings.xks.node_id for node in nodes)


def _refuse(message: str) -> web.Response:
    response = error_response(XksError("AccessDeniedException", message))
    response.force_close()
    return response


def listener(settings: Settings, app: web.Application | None = None) -> Listener:
    """The proxy on xks.host:xks.port, and on xks.https_port (mTLS with xks.client_ca or xks.mtls) when
    its certificate exists; the HTTPS listener's TLS is hooked for TLS faults (tls_faults.py)."""
    xks = settings.xks
    app = app if app is not None else create_app(settings)
    return Listener(
        "XKS proxy",
        app,
        xks.host,
        xks.port,
        xks.https_port,
        settings.path(xks.tls_cert),
        settings.path(xks.tls_key),
        client_ca=settings.xks_client_ca(),
        client_subject=settings.xks_client_subject(),
        limits=HttpLimits.of(settings),
        section="xks",
        tls_setup=tls_faults.install if (tls_faults := app.get(TLS_FAULTS_KEY)) is not None else None,
        service="xks",
        access_log=settings.log.access,
    )
