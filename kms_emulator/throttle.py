"""AWS's request quota for external key stores: cryptographic operations on the KMS keys of one external
key store share 1,800 requests per second (``kms.xks_store_rps``; 0 turns it off). Past it KMS answers
ThrottlingException without calling the proxy, and counts the request in ExternalKeyStoreThrottle.

A token bucket per key store, holding one second's worth of requests, in this process's memory: several
KMS processes on one database each allow the full rate (the quota is AWS's, not a property of the data).
"""

from __future__ import annotations

import time
from collections.abc import Callable

THROTTLED = "You have exceeded the rate at which you may call KMS. Reduce the frequency of your calls."


class StoreThrottle:
    def __init__(self, rate_per_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate_per_s
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # store id -> (tokens, when counted)

    def take(self, store_id: str) -> bool:
        """One request on ``store_id``: True if it is within the quota."""
        if self.rate <= 0:
            return True
        now = self._clock()
        tokens, counted = self._buckets.get(store_id, (self.rate, now))
        tokens = min(self.rate, tokens + (now - counted) * self.rate)
        if tokens < 1:
            self._buckets[store_id] = (tokens, now)
            return False
        self._buckets[store_id] = (tokens - 1, now)
        return True
