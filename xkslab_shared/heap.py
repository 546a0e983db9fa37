"""The garbage collector of a long-running service process, set once start-up is done.

Everything a service builds while starting (modules, the ORM's mappers, routes, caches) lives as long as the
process, yet CPython's collector walked it again on every full collection: under load the XKS proxy ran
seven full collections of about 65 ms each in 15 s, each one a pause of every request in flight.
``gc.freeze()`` moves what exists after start-up out of the collector's sight, and a higher generation-0
threshold makes the young collections rarer (each request allocates a few hundred container objects);
cycles are still collected, only less often.
"""

from __future__ import annotations

import gc

# Container allocations (net of deallocations) between two young collections; CPython's default is 700.
GEN0_THRESHOLD = 10_000


def settle_after_start(gen0_threshold: int = GEN0_THRESHOLD) -> None:
    """Collect what start-up left behind, freeze the rest, and raise the young generation's threshold.
    Call once, when the service is ready to serve (xkslab_shared/serve.py does)."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(gen0_threshold, gen1, gen2)
