"""AWS's request quota for external key stores: cryptographic operations on the KMS keys of one external
key store share 1,800 requests per second (``kms.xks_store_rps``; 0 turns it off). Past it KMS answers
ThrottlingException without calling the proxy, and counts the request in ExternalKeyStoreThrottle.

A token bucket per key store, holding one second's worth of requests, in this process's memory. The
workers of ``kms serve --workers N`` each take 1/N of it (``share``, told by their supervisor at start:
xkslab_shared/workers_env.py), so that together they allow the rate when the kernel spreads requests
evenly over them, and never more; a bucket holds at least one request. Several KMS processes started
apart on one database each allow the full rate.
"""

from __future__ import annotations

import time
from collections.abc import Callable

THROTTLED = "You have exceeded the rate at which you may call KMS. Reduce the frequency of your calls."


class StoreThrottle:
    def __init__(
        self, rate_per_s: float, clock: Callable[[], float] = time.monotonic, *, share: int = 1
    ) -> None:
        self.rate = rate_per_s / share
        self._capacity = max(1.0, self.rate)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # store id -> (tokens, when counted)

    def take(self, store_id: str) -> bool:
        """One request on ``store_id``: True if it is within the quota."""
        if self.rate <= 0:
            return True
        now = self._clock()
        tokens, counted = self._buckets.get(store_id, (self._capacity, now))
        tokens = min(self._capacity, tokens + (now - counted) * self.rate)
        if tokens < 1:
            self._buckets[store_id] = (tokens, now)
            return False
        self._buckets[store_id] = (tokens - 1, now)
        return True
