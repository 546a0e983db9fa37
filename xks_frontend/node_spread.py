"""Which DSM node a proxy call goes to (issue 23): calls are spread over the nodes believed up, the one
with the fewest calls in flight first, ties taken in turn (so an idle fleet is served round robin and a
slow node gets fewer calls); a node that failed (no connection, a lost one, a timeout, a refusal of the
proxy) is left out for a back-off (BACKOFF_S, doubled at each failure in a row up to MAX_BACKOFF_S) and
then probed in the background with a read-only request, not with a client's call; its first answer
brings it back. A node believed down is still tried, after every node believed up, when a call may try
another node at all (dsm_client.py says when), so a fleet whose every node failed once is not refused
without being asked."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

BACKOFF_S = 0.5
MAX_BACKOFF_S = 5.0


@dataclass
class NodeState:
    url: str
    outstanding: int = 0
    failures: int = 0  # in a row; 0 while the node answers
    down_until: float = 0.0  # loop time; the node is left out of the spread until its probe answers
    probing: bool = False

    @property
    def down(self) -> bool:
        return self.failures > 0


class NodeSpread:
    def __init__(self, urls: list[str], probe: Callable[[str], Awaitable[object]]) -> None:
        self.nodes = [NodeState(url) for url in urls]
        self._probe = probe
        self._turn = itertools.cycle(range(len(urls)))
        self._probes: set[asyncio.Task[None]] = set()

    def order(self) -> list[NodeState]:
        """The nodes in the order a call tries them: those believed up, fewest in flight first, ties
        from a start that moves by one each call; then those believed down, the soonest back first."""
        if len(self.nodes) == 1:
            return self.nodes
        start = next(self._turn)
        turn = self.nodes[start:] + self.nodes[:start]
        up = sorted((n for n in turn if not n.down), key=lambda n: n.outstanding)
        if len(up) == len(turn):
            return up
        now = asyncio.get_running_loop().time()
        down = sorted((n for n in turn if n.down), key=lambda n: n.down_until)
        for node in down:
            if node.down_until <= now and not node.probing:
                self._start_probe(node)
        return up + down

    def answered(self, node: NodeState) -> None:
        if node.failures:
            log.warning("DSM node %s answers again: back in the spread", node.url)
        node.failures = 0

    def failed(self, node: NodeState) -> None:
        if len(self.nodes) == 1:
            return  # nothing to spread over: the one node is always tried
        if not node.failures:
            log.warning(
                "DSM node %s failed: left out of the spread, probed again from time to time", node.url
            )
        node.failures += 1
        backoff = min(MAX_BACKOFF_S, BACKOFF_S * 2 ** (node.failures - 1))
        node.down_until = asyncio.get_running_loop().time() + backoff

    def _start_probe(self, node: NodeState) -> None:
        node.probing = True

        async def probe() -> None:
            try:
                await self._probe(node.url)
            except Exception:
                self.failed(node)
            else:
                self.answered(node)
            finally:
                node.probing = False

        task = asyncio.get_running_loop().create_task(probe())
        self._probes.add(task)
        task.add_done_callback(self._probes.discard)

    async def close(self) -> None:
        for task in list(self._probes):
            task.cancel()
        await asyncio.gather(*self._probes, return_exceptions=True)
