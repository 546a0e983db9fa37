"""How KMS notices that a CONNECTED external key store's proxy keeps failing: a count of consecutive
failures per store, fed by data-plane calls and by the periodic KmsHealthCheck (proxy.py, app.py). At
``kms.xks_failure_threshold`` the store turns FAILED with the ConnectionErrorCode of the last failure, and
stays so until it is disconnected and connected again, as a FAILED store does in KMS. Kept in the KMS
process's memory: the count is a detector, the store's state in the database is the outcome.

Only failures that say something about the store count on a data call (timeout, unreachable, TLS, an
answer KMS cannot read, a rejected credential, a wrong URI path); a proper key-level answer such as
KeyNotFoundException proves the proxy works and resets the count. On a health check every failure counts.
"""

from __future__ import annotations

from kms_emulator.xks_errors import ConnectionErrorCode, XksProxyError

STORE_LEVEL = frozenset(
    {
        ConnectionErrorCode.XKS_PROXY_TIMED_OUT,
        ConnectionErrorCode.XKS_PROXY_NOT_REACHABLE,
        ConnectionErrorCode.XKS_PROXY_INVALID_TLS_CONFIGURATION,
        ConnectionErrorCode.XKS_PROXY_INVALID_RESPONSE,
        ConnectionErrorCode.INVALID_CREDENTIALS,
        ConnectionErrorCode.XKS_PROXY_INVALID_CONFIGURATION,
    }
)


class StoreWatch:
    def __init__(self, threshold: int) -> None:
        self.threshold = threshold
        self._failures: dict[str, int] = {}

    def record(self, store_id: str, error: XksProxyError | None, *, health: bool = False) -> str | None:
        """Count one outcome; the ConnectionErrorCode the store now fails with, or None."""
        if self.threshold <= 0:
            return None
        if error is None or (not health and error.connection_error_code not in STORE_LEVEL):
            self._failures.pop(store_id, None)
            return None
        count = self._failures.get(store_id, 0) + 1
        if count < self.threshold:
            self._failures[store_id] = count
            return None
        self._failures.pop(store_id, None)
        return error.connection_error_code

    def reset(self, store_id: str) -> None:
        self._failures.pop(store_id, None)

    def failures(self, store_id: str) -> int:
        return self._failures.get(store_id, 0)
