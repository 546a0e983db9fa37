"""Prometheus metrics, named after the CloudWatch metrics KMS publishes for an external key store
(XksProxyLatency, XksProxyErrors, XksExternalKeyManagerStates), one registry per app (no globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from xkslab_shared import metrics_mp

OPERATIONS = ("GetHealthStatus", "GetKeyMetadata", "Encrypt", "Decrypt")
# KMS's per-call budget is 250 ms: buckets resolve the range around it.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.5, 1.0, 2.5)
HEALTH_STATES = ("ACTIVE", "DEGRADED", "UNAVAILABLE")


class XksMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "xks_proxy_requests",
            "XKS requests answered, by XKS operation and outcome (success or errorName).",
            ["operation", "outcome"],
            registry=self.registry,
        )
        self.errors = Counter(
            "xks_proxy_errors",
            "XKS requests answered with an error, by XKS operation and errorName.",
            ["operation", "error_name"],
            registry=self.registry,
        )
        self.gone = Counter(
            "xks_proxy_client_gone",
            "XKS requests not answered: the client closed its connection before the proxy read them.",
            ["operation"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "xks_proxy_latency_seconds",
            "Time from request to response, by XKS operation.",
            ["operation"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ekm_states = Gauge(
            "xks_external_key_manager_states",
            "Key manager nodes in each health state, as of the last health check.",
            ["state"],
            registry=self.registry,
            multiprocess_mode="mostrecent",  # with workers: the last health check any of them made
        )
        # Bounded: operations are the four of OPERATIONS and "Unknown", outcomes the XKS errorNames.
        self._series: dict[tuple[str, str | None], tuple[Counter, Counter | None, Histogram]] = {}

    def observe(self, operation: str, error_name: str | None, seconds: float) -> None:
        # The labelled series of each (operation, outcome), found once: labels() validates and locks on
        # every call, which cost an answer (a flood of refused ones included) as much as the rest here.
        series = self._series.get((operation, error_name))
        if series is None:
            series = self._series[(operation, error_name)] = (
                self.requests.labels(operation, error_name or "success"),
                None if error_name is None else self.errors.labels(operation, error_name),
                self.latency.labels(operation),
            )
        requests, errors, latency = series
        requests.inc()
        if errors is not None:
            errors.inc()
        latency.observe(seconds)

    def client_gone(self, operation: str) -> None:
        self.gone.labels(operation).inc()

    def set_ekm_states(self, states: list[str]) -> None:
        for state in HEALTH_STATES:
            self.ekm_states.labels(state).set(states.count(state))

    def render(self) -> bytes:
        return metrics_mp.render(self.registry)  # with workers: all of them (metrics_mp.py)
