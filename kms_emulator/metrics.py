"""Prometheus metrics of the KMS emulator: the CloudWatch metrics KMS publishes for external key stores
(KMS measures them on its side of the proxy calls), labelled by key store id, plus KMS's own request
metrics. One registry per app (no globals). Names (CloudWatch -> here):

    XksProxyLatency                   kms_xks_proxy_latency_seconds{key_store_id,kms_operation,xks_operation}
    XksProxyErrors                    kms_xks_proxy_errors_total{...,error_type,exception_name}
    XksExternalKeyManagerStates       kms_xks_external_key_manager_states{key_store_id,state}
    XksProxyCertificateDaysToExpire   kms_xks_proxy_certificate_days_to_expire{key_store_id}
    XksProxyCredentialAge             kms_xks_proxy_credential_age_days{key_store_id}
    ExternalKeyStoreThrottle          kms_external_key_store_throttle_total{key_store_id,kms_operation}
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from kms_emulator.xks_client import ProxyCall

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
        self.ekm_states = Gauge(
            "kms_xks_external_key_manager_states",
            "XksExternalKeyManagerStates: external key managers in each state, from the proxy's last "
            "GetHealthStatus answer.",
            ["key_store_id", "state"],
            registry=r,
        )
        self.cert_days = Gauge(
            "kms_xks_proxy_certificate_days_to_expire",
            "XksProxyCertificateDaysToExpire: days until the proxy's TLS certificate expires, as of the last "
            "HTTPS call.",
            ["key_store_id"],
            registry=r,
        )
        self.credential_age = Gauge(
            "kms_xks_proxy_credential_age_days",
            "XksProxyCredentialAge: days since the key store's proxy credential was set.",
            ["key_store_id"],
            registry=r,
        )
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
        # Certificate days by key store: set on every HTTPS call; dropped with the store (set_key_stores).
        self._cert_series: dict[str, Gauge] = {}

    def observe_request(self, operation: str, error_name: str | None, seconds: float) -> None:
        key = (operation or "-", error_name or "success")
        series = self._request_series.get(key)
        if series is None:
            series = (self.requests.labels(*key), self.request_latency.labels(key[0]))
            self._request_series[key] = series
        series[0].inc()
        series[1].observe(seconds)

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
            days = self._cert_series.get(store)
            if days is None:
                days = self._cert_series[store] = self.cert_days.labels(store)
            days.set((call.cert_not_after - time.time()) / DAY_S)
        if call.health_states is not None:
            for state in HEALTH_STATES:
                self.ekm_states.labels(store, state).set(call.health_states.count(state))

    def credential_set(self, key_store_id: str) -> None:
        self._credential_set_at[key_store_id] = time.time()

    def set_key_stores(self, stores: Iterable[tuple[str, datetime]]) -> None:
        """Before a scrape: the credential age of every key store (its creation, or a later credential
        change seen by this process); key stores that no longer exist drop out of the per-store gauges."""
        now = time.time()
        alive = set()
        self.credential_age.clear()
        for store_id, created in stores:
            alive.add(store_id)
            since = max(created.timestamp(), self._credential_set_at.get(store_id, 0.0))
            self.credential_age.labels(store_id).set(max(0.0, now - since) / DAY_S)
        for gauge in (self.cert_days, self.ekm_states):
            for labels in list(gauge._metrics):  # prometheus_client keeps children by label tuple
                if labels[0] not in alive and labels[0] != "-":
                    gauge.remove(*labels)
                    self._cert_series.pop(labels[0], None)

    def render(self) -> bytes:
        return generate_latest(self.registry)
