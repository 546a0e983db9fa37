"""The proxy's only caller of the key manager: the framed link (link_client.py) to the nodes with a
link:// or link+unix:// URL and a pooled aiohttp session to the http(s):// ones, calls spread over the
configured DSM nodes (node_spread.py: the nodes believed up, fewest calls in flight first), and the
timeout that turns a slow key manager into DependencyTimeoutException before KMS's own 250 ms budget
runs out.

The timeout is one deadline for the whole call, across nodes: KMS waits 250 ms for the proxy's answer,
however many nodes the proxy tried. Each node is told the deadline of its own attempt (``budget_ms``),
so its audit row agrees with what the proxy answered.

When a call is tried on another node (the one rule, ``_may_retry``): a call that changes nothing on the
key manager (GetKeyMetadata, Decrypt, health, the prefix table) may be asked again anywhere, whatever
became of the first attempt: asking twice gives the same answer, and leaves at most a second audit row
of the same KMS request id. Such a call gives a node that stalls only its share of what is left (the
time remaining divided by the nodes still to try), so a node after it still gets a turn. An Encrypt has
no side effect on the keys either (a fresh IV each time, nothing stored but its audit row), but once a
node may have done it, its ciphertext and its audit row exist, and a second node's would be a second
encryption of one KMS request: so an Encrypt moves to another node only when no answer came back and
the node cannot still be working on it: the connection refused or failed before the call was sent, or
closed or reset by the node before any byte of its answer (the node went away). After a timeout the
node may still be doing it: DependencyTimeoutException, and the attempt had the whole deadline. A node's
own answer (an error in the protocol's shape) is the answer, never retried."""

from __future__ import annotations

import asyncio
import errno
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from xks_frontend.errors import XksError, from_dsm
from xks_frontend.link_client import LinkDown, LinkNode
from xks_frontend.node_spread import NodeSpread, NodeState
from xkslab_shared import json_body
from xkslab_shared.link_frames import parse_link_url
from xkslab_shared.proxy_link import CALL_PATH, PREFIXES_PATH, ForwardedCall, budget_for

log = logging.getLogger(__name__)

_JSON = {"Content-Type": "application/json"}


class DsmUnreachable(XksError):
    """No DSM node answered (refused, reset, TLS failure, garbage): InternalException. ``unanswered``
    when nothing came back and the node is not working on the call (the connection refused, or lost
    before any byte of an answer): the one failure after which an Encrypt may go to another node."""

    def __init__(self, message: str = "the key manager is unreachable", *, unanswered: bool = False) -> None:
        super().__init__("InternalException", message)
        self.unanswered = unanswered


# The operations that change nothing on the key manager (the module's docstring): asked again anywhere.
READ_ONLY = frozenset({"metadata", "decrypt", "health"})
# aiohttp's failures that mean no answer came back: no connection (refused, unreachable, TLS), or the
# node closed or reset it before its answer began (a reset once the body had begun is a payload error).
_UNANSWERED = (
    aiohttp.ClientConnectorError,
    aiohttp.ServerDisconnectedError,
    aiohttp.ClientConnectionResetError,
)
_RESET = (errno.ECONNRESET, errno.EPIPE)


def _unanswered(exc: Exception) -> bool:
    return isinstance(exc, _UNANSWERED) or (isinstance(exc, aiohttp.ClientOSError) and exc.errno in _RESET)


class DsmTimeout(XksError):
    def __init__(self) -> None:
        super().__init__("DependencyTimeoutException", "the key manager did not answer in time")


@dataclass(frozen=True)
class NodeAnswer:
    url: str
    result: dict[str, Any] | None = None
    error: XksError | None = None


class DsmClient:
    def __init__(
        self,
        urls: list[str],
        token: str,
        *,
        timeout_s: float,
        ssl_context: ssl.SSLContext | None,
        link_connections: int = 2,
        link_max_answer_bytes: int = 1 << 20,
    ):
        self.urls = urls
        self.spread = NodeSpread(urls, self._probe)
        self._token = token
        self._timeout_s = timeout_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._ssl = ssl_context
        self._session: aiohttp.ClientSession | None = None
        # The nodes reached over the framed link (link:// and link+unix:// URLs); the others over HTTP.
        self._links: dict[str, LinkNode] = {}
        for url in urls:
            address = parse_link_url(url)
            if address is not None:
                self._links[url] = LinkNode(
                    address, token, size=link_connections, max_payload=link_max_answer_bytes
                )

    async def open(self) -> None:
        connector = aiohttp.TCPConnector(limit=256, ssl=self._ssl if self._ssl is not None else True)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            headers={"Authorization": f"Bearer {self._token}"},
        )

    async def close(self) -> None:
        await self.spread.close()
        for node in self._links.values():
            await node.close()
        if self._session is not None:
            await self._session.close()

    @staticmethod
    def node_label(url: str) -> str:
        parts = urlsplit(url)
        return parts.netloc or url

    async def _request(
        self, url: str, method: str, path: str, body: Any = None, *, timeout_s: float | None = None
    ) -> dict[str, Any]:
        link = self._links.get(url)
        if link is not None:
            return await self._over_link(
                link, url, path, body, self._timeout_s if timeout_s is None else timeout_s
            )
        assert self._session is not None, "DsmClient.open() was not called"
        timeout = self._timeout if timeout_s is None else aiohttp.ClientTimeout(total=timeout_s)
        try:
            data = None if body is None else json_body.dumps(body)
            async with self._session.request(
                method, url + path, data=data, headers=_JSON, timeout=timeout
            ) as response:
                if response.status != 200:
                    log.error("DSM %s answered %s to %s", self.node_label(url), response.status, path)
                    raise DsmUnreachable("the key manager refused the proxy's call")
                answer = json_body.parse_trusted(await response.read())
        except TimeoutError:
            raise DsmTimeout() from None
        except (aiohttp.ClientError, ValueError) as exc:
            log.warning("DSM %s unreachable: %s", self.node_label(url), type(exc).__name__)
            raise DsmUnreachable(unanswered=_unanswered(exc)) from None
        if not isinstance(answer, dict):
            raise DsmUnreachable("the key manager gave a malformed answer")
        return answer

    async def _over_link(
        self, link: LinkNode, url: str, path: str, body: Any, timeout_s: float
    ) -> dict[str, Any]:
        """The same call as an HTTP request to ``path``, as one frame on the link: the same answer."""
        request = {"op": "prefixes"} if path == PREFIXES_PATH else {"op": "call", "call": body}
        try:
            answer = await link.request(request, timeout_s=timeout_s)
        except TimeoutError:
            raise DsmTimeout() from None
        except LinkDown as exc:
            if exc.refused:
                log.error("DSM %s refused the proxy's link: %s", self.node_label(url), exc)
                raise DsmUnreachable("the key manager refused the proxy's call") from None
            log.warning("DSM %s unreachable: %s", self.node_label(url), exc)
            raise DsmUnreachable(unanswered=True) from None
        refused = answer.get("refused")
        if refused is not None:
            log.error("DSM %s refused the proxy's call to %s: %s", self.node_label(url), path, refused)
            raise DsmUnreachable("the key manager refused the proxy's call")
        return answer

    async def _spread(
        self, method: str, path: str, body: Callable[[float], Any] | None = None, *, read_only: bool
    ) -> dict[str, Any]:
        """One call on the nodes in the spread's order, all within one deadline, moving to the next node
        only as the module's docstring says; ``body`` builds the request for the seconds an attempt has.
        A timeout is reported as such if no node answered."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s
        last: XksError | None = None  # made only on failure: an exception built per call cost 2-3 us
        order = self.spread.order()
        for index, node in enumerate(order):
            remaining = deadline - loop.time()
            if remaining <= 0:
                last = DsmTimeout()
                break
            share = remaining
            if read_only:  # a later node must still get a turn after this one stalls
                later = order[index:]
                up = sum(1 for n in later if not n.down)
                share = remaining / (up if up and not node.down else len(later))
            try:
                return await self._attempt(node, method, path, body, share)
            except (DsmUnreachable, DsmTimeout) as exc:
                last = exc
                if not _may_retry(read_only, exc):
                    break
        raise last if last is not None else DsmUnreachable()

    async def _attempt(
        self,
        node: NodeState,
        method: str,
        path: str,
        body: Callable[[float], Any] | None,
        timeout_s: float,
    ) -> dict[str, Any]:
        node.outstanding += 1
        try:
            data = None if body is None else body(timeout_s)
            answer = await self._request(node.url, method, path, data, timeout_s=timeout_s)
        except (DsmUnreachable, DsmTimeout):
            self.spread.failed(node)
            raise
        finally:
            node.outstanding -= 1
        self.spread.answered(node)
        return answer

    async def _probe(self, url: str) -> None:
        """Whether a node left out of the spread answers again: the prefix table, which reads only."""
        await self._request(url, "GET", PREFIXES_PATH)

    def _with_budget(self, call: ForwardedCall, timeout_s: float) -> dict[str, Any]:
        """The call as sent to a node the proxy waits ``timeout_s`` for: the node gets a deadline a
        margin shorter, so its refusal (and audit row) is committed before the proxy gives up."""
        body = call.to_json()
        body["budget_ms"] = budget_for(int(timeout_s * 1000))
        return body

    async def prefixes(self) -> dict[str, str]:
        data = await self._spread("GET", PREFIXES_PATH, read_only=True)
        table = data.get("prefixes")
        if not isinstance(table, dict):
            raise DsmUnreachable("the key manager gave a malformed answer")
        return {str(k): str(v) for k, v in table.items()}

    async def call(self, call: ForwardedCall) -> dict[str, Any]:
        return _outcome(
            await self._spread(
                "POST",
                CALL_PATH,
                lambda timeout_s: self._with_budget(call, timeout_s),
                read_only=call.operation in READ_ONLY,
            )
        )

    async def call_each(self, call: ForwardedCall) -> list[NodeAnswer]:
        """The same call on every node at once (health: each node reports itself), each with the whole
        timeout, since they run side by side."""
        body = self._with_budget(call, self._timeout_s)

        async def one(url: str) -> NodeAnswer:
            try:
                return NodeAnswer(url, result=_outcome(await self._request(url, "POST", CALL_PATH, body)))
            except XksError as exc:
                return NodeAnswer(url, error=exc)

        return list(await asyncio.gather(*(one(url) for url in self.urls)))


def _may_retry(read_only: bool, failure: XksError) -> bool:
    """Whether a call whose attempt failed so may go to another node (the module's docstring)."""
    return read_only or (isinstance(failure, DsmUnreachable) and failure.unanswered)


def _outcome(data: dict[str, Any]) -> dict[str, Any]:
    error = data.get("error")
    if isinstance(error, dict):
        raise from_dsm(str(error.get("code", "")), str(error.get("message", "")))
    result = data.get("result")
    if not isinstance(result, dict):
        raise DsmUnreachable("the key manager gave a malformed answer")
    return result
