"""Prometheus metrics of the KMS emulator: the CloudWatch metrics KMS publishes for external key stores
(KMS measures them on its side of the proxy calls), labelled by key store id, plus KMS's own request
metrics. One registry per app (no globals). Names (CloudWatch -> here):

    XksProxyLatency                   kms_xks_proxy_latency_seconds{key_store_id,kms_operation,xks_operation}
    XksProxyErrors                    kms_xks_proxy_errors_total{...,error_type,exception_name}
    XksExternalKeyManagerStates       kms_xks_external_key_manager_states{key_store_id,state}
    XksProxyCertificateDaysToExpire   kms_xks_proxy_certificate_days_to_expire{key_store_id}
    XksProxyCredentialAge             kms_xks_proxy_credential_age_days{key_store_id}
    ExternalKeyStoreThrottle          kms_external_key_store_throttle_total{key_store_id,kms_operation}

With ``kms serve --workers N`` a scrape is the service's (xkslab_shared/metrics_mp.py): counters and
histograms summed over the workers. The per-store gauges are read from the answering worker's memory at
scrape time (``StoreGauges``): prometheus_client cannot drop a deleted store's series from the workers'
files, and these gauges must drop them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from kms_emulator.xks_client import ProxyCall
from xkslab_shared import metrics_mp

# KMS's per-call budget is 250 ms: buckets resolve the range around it (as the proxy's own histogram).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.5, 1.0, 2.5)
HEALTH_STATES = ("ACTIVE", "DEGRADED", "UNAVAILABLE")
XKS_OPERATIONS = {
    "health": "GetHealthStatus",
    "metadata": "GetKeyMetadata",
    "encrypt": "Encrypt",
    "decrypt": "Decrypt",
}
# Worth retrying: the proxy or its key manager was slow, busy or briefly unreachable.
_RETRYABLE_NAMES = frozenset({"ThrottlingException", "DependencyTimeoutException", "InternalException"})
_RETRYABLE_CODES = frozenset({"XKS_PROXY_TIMED_OUT", "XKS_PROXY_NOT_REACHABLE"})
DAY_S = 86400.0


class StoreGauges(Collector):
    """The per-store gauges, kept in this process's memory and read at scrape time."""

    def __init__(self) -> None:
        self.ekm_states: dict[tuple[str, str], float] = {}  # (key store id, state) -> managers
        self.cert_days: dict[str, float] = {}
        self.credential_age: dict[str, float] = {}

    def collect(self) -> Iterator[Metric]:
        states = GaugeMetricFamily(
            "kms_xks_external_key_manager_states",
            "XksExternalKeyManagerStates: external key managers in each state, from the proxy's last "
            "GetHealthStatus answer.",
            labels=["key_store_id", "state"],
        )
        for labels, count in self.ekm_states.items():
            states.add_metric(list(labels), count)
        days = GaugeMetricFamily(
            "kms_xks_proxy_certificate_days_to_expire",
            "XksProxyCertificateDaysToExpire: days until the proxy's TLS certificate expires, as of the last "
            "HTTPS call.",
            labels=["key_store_id"],
        )
        for store, value in self.cert_days.items():
            days.add_metric([store], value)
        age = GaugeMetricFamily(
            "kms_xks_proxy_credential_age_days",
            "XksProxyCredentialAge: days since the key store's proxy credential was set.",
            labels=["key_store_id"],
        )
        for store, value in self.credential_age.items():
            age.add_metric([store], value)
        return iter((states, days, age))


class KmsMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "kms_requests",
            "KMS requests answered, by operation and outcome (success or __type).",
            ["operation", "outcome"],
            registry=r,
        )
        self.gone = Counter(
            "kms_client_gone",
            "KMS requests not answered: the client closed its connection before KMS read them.",
            ["operation"],
            registry=r,
        )
        self.request_latency = Histogram(
            "kms_request_latency_seconds",
            "Time KMS took to answer, by operation.",
            ["operation"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.xks_latency = Histogram(
            "kms_xks_proxy_latency_seconds",
            "XksProxyLatency: time the XKS proxy took to answer KMS, by key store, KMS and XKS operation.",
            ["key_store_id", "kms_operation", "xks_operation"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.xks_errors = Counter(
            "kms_xks_proxy_errors",
            "XksProxyErrors: failed XKS proxy calls, by error type (Retryable, Non-retryable) and exception "
            "name (the proxy's errorName, else KMS's ConnectionErrorCode).",
            ["key_store_id", "kms_operation", "xks_operation", "error_type", "exception_name"],
            registry=r,
        )
        self.gauges = StoreGauges()
        r.register(self.gauges)
        self.throttle = Counter(
            "kms_external_key_store_throttle",
            "ExternalKeyStoreThrottle: KMS requests on an external key store refused as throttled: past the "
            "store's request quota (kms.xks_store_rps), or the proxy answered ThrottlingException.",
            ["key_store_id", "kms_operation"],
            registry=r,
        )
        # key store id -> when this process last saw its credential set (CreateCustomKeyStore, Update).
        self._credential_set_at: dict[str, float] = {}
        # The children of the per-request series, by their labels: labels() takes a lock and builds a
        # tuple each time, a few microseconds per request. Only series that are never removed.
        self._request_series: dict[tuple[str, str], tuple[Counter, Histogram]] = {}
        self._latency_series: dict[tuple[str, str, str], Histogram] = {}

    def observe_request(self, operation: str, error_name: str | None, seconds: float) -> None:
        key = (operation or "-", error_name or "success")
        series = self._request_series.get(key)
        if series is None:
            series = (self.requests.labels(*key), self.request_latency.labels(key[0]))
            self._request_series[key] = series
        series[0].inc()
        series[1].observe(seconds)

    def client_gone(self, operation: str) -> None:
        self.gone.labels(operation or "-").inc()

    def observe_proxy_call(self, call: ProxyCall) -> None:
        store = call.key_store_id or "-"
        xks_operation = XKS_OPERATIONS.get(call.xks_operation, call.xks_operation)
        key = (store, call.kms_operation, xks_operation)
        latency = self._latency_series.get(key)
        if latency is None:
            latency = self._latency_series[key] = self.xks_latency.labels(*key)
        latency.observe(call.seconds)
        error = call.error
        if error is not None:
            name = error.error_name or error.connection_error_code
            retryable = error.error_name in _RETRYABLE_NAMES or (
                error.error_name is None and error.connection_error_code in _RETRYABLE_CODES
            )
            error_type = "Retryable" if retryable else "Non-retryable"
            self.xks_errors.labels(store, call.kms_operation, xks_operation, error_type, name).inc()
            if error.error_name == "ThrottlingException":
                self.throttle.labels(store, call.kms_operation).inc()
        if call.cert_not_after is not None:
            self.gauges.cert_days[store] = (call.cert_not_after - time.time()) / DAY_S
        if call.health_states is not None:
            for state in HEALTH_STATES:
                self.gauges.ekm_states[(store, state)] = call.health_states.count(state)

    def credential_set(self, key_store_id: str) -> None:
        self._credential_set_at[key_store_id] = time.time()

    def set_key_stores(self, stores: Iterable[tuple[str, datetime]]) -> None:
        """Before a scrape: the credential age of every key store (its creation, or a later credential
        change seen by this process); key stores that no longer exist drop out of the per-store gauges."""
        now = time.time()
        gauges = self.gauges
        ages = {}
        for store_id, created in stores:
            since = max(created.timestamp(), self._credential_set_at.get(store_id, 0.0))
            ages[store_id] = max(0.0, now - since) / DAY_S
        gauges.credential_age = ages
        gauges.cert_days = {s: v for s, v in gauges.cert_days.items() if s in ages or s == "-"}
        gauges.ekm_states = {k: v for k, v in gauges.ekm_states.items() if k[0] in ages or k[0] == "-"}

    def render(self) -> bytes:
        return metrics_mp.render(self.registry, own=[self.gauges])  # with workers: all of them
