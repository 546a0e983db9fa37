"""Prometheus metrics of the DSM REST API on GET /metrics (public, like the proxy's): requests by route
template and status, their latency, the audit writer's group commits (AuditStats) and the hit/load
counters of the in-memory caches that the database generation keeps honest (xkslab_shared/generation.py).
Counters the core already keeps are read at scrape time, not copied."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from dsm_emulator.api import session
from dsm_emulator.api.context import CORE_KEY
from dsm_emulator.api.link import LINK_STATS_KEY
from xkslab_shared import metrics_mp

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.5, 1.0, 2.5)


class _CoreCollector(Collector):
    """Reads the audit writer's and the caches' counters of the app's DsmCore when scraped."""

    def __init__(self, app: web.Application) -> None:
        self._app = app

    def collect(self) -> Iterator[Metric]:
        core = self._app.get(CORE_KEY)
        batches = CounterMetricFamily("dsm_audit_commit_batches", "Audit group commits (transactions).")
        rows = CounterMetricFamily("dsm_audit_rows", "Audit rows committed.")
        failures = CounterMetricFamily("dsm_audit_commit_failures", "Audit group commits that failed.")
        hits = CounterMetricFamily("dsm_cache_hits", "Cache look-ups answered from memory.", labels=["cache"])
        loads = CounterMetricFamily(
            "dsm_cache_loads", "Cache look-ups that read the database.", labels=["cache"]
        )
        reads = CounterMetricFamily(
            "dsm_cache_generation_reads", "Reads of the database generation that validates the caches."
        )
        commit = GaugeMetricFamily(
            "dsm_audit_commit_seconds",
            "Seconds from an audit row's submission to its batch's COMMIT, over the last 4,096 batches.",
            labels=["quantile"],
        )
        link_calls = CounterMetricFamily(
            "dsm_link_calls",
            "Calls of XKS proxies over the framed link, by operation and outcome.",
            labels=["op", "outcome"],
        )
        link_stats = self._app.get(LINK_STATS_KEY)
        if link_stats is not None:
            for (op, outcome), count in sorted(link_stats.calls.items()):
                link_calls.add_metric([op, outcome], count)
        yield link_calls
        if core is not None:
            stats = core.audit.stats
            for q in ("0.5", "0.9", "0.99"):
                if (value := stats.commit_quantile(float(q))) is not None:
                    commit.add_metric([q], value)
            batches.add_metric([], stats.batches)
            rows.add_metric([], stats.rows)
            failures.add_metric([], stats.failures)
            caches = dict(core.xks.caches())
            basic = self._app[session.SESSION_STATE_KEY].basic_cache
            if basic is not None:
                caches["basic_auth"] = basic
            for name, cache in sorted(caches.items()):
                hits.add_metric([name], cache.hits)
                loads.add_metric([name], cache.loads)
            reads.add_metric([], core.generation.reads)
        yield from (batches, rows, failures, commit, hits, loads, reads)


class DsmMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, app: web.Application) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "dsm_requests",
            "DSM REST requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "dsm_request_latency_seconds",
            "Time from request to response, by route template.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._core = _CoreCollector(app)
        self.registry.register(self._core)

    def render(self) -> bytes:
        # With workers, requests and latency are every worker's; the core's figures this worker's own.
        return metrics_mp.render(self.registry, [self._core])


METRICS_KEY: web.AppKey[DsmMetrics] = web.AppKey("dsm_metrics", DsmMetrics)


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: sees the status the error middleware chose. Routes are templates, so labels stay few."""
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        metrics = request.app[METRICS_KEY]
        metrics.requests.labels(request.method, route, str(status)).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - started)


async def metrics_page(request: web.Request) -> web.Response:
    metrics = request.app[METRICS_KEY]
    response = web.Response(body=metrics.render())
    response.headers["Content-Type"] = metrics.content_type
    return response
