"""The proxy's only caller of the key manager: a pooled aiohttp session, with fail-over across the
configured DSM nodes, and the timeout that turns a slow key manager into DependencyTimeoutException
before KMS's own 250 ms budget runs out."""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from xks_frontend.errors import XksError, from_dsm
from xkslab_shared import json_body
from xkslab_shared.proxy_link import CALL_PATH, PREFIXES_PATH, ForwardedCall, budget_for

log = logging.getLogger(__name__)

_JSON = {"Content-Type": "application/json"}


class DsmUnreachable(XksError):
    """No DSM node answered (refused, reset, TLS failure, garbage): InternalException."""

    def __init__(self, message: str = "the key manager is unreachable") -> None:
        super().__init__("InternalException", message)


class DsmTimeout(XksError):
    def __init__(self) -> None:
        super().__init__("DependencyTimeoutException", "the key manager did not answer in time")


@dataclass(frozen=True)
class NodeAnswer:
    url: str
    result: dict[str, Any] | None = None
    error: XksError | None = None


class DsmClient:
    def __init__(self, urls: list[str], token: str, *, timeout_s: float, ssl_context: ssl.SSLContext | None):
        self.urls = urls
        self._token = token
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._budget_ms = budget_for(int(timeout_s * 1000))
        self._ssl = ssl_context
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        connector = aiohttp.TCPConnector(limit=256, ssl=self._ssl if self._ssl is not None else True)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            headers={"Authorization": f"Bearer {self._token}"},
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    @staticmethod
    def node_label(url: str) -> str:
        parts = urlsplit(url)
        return parts.netloc or url

    async def _request(self, url: str, method: str, path: str, body: Any = None) -> dict[str, Any]:
        assert self._session is not None, "DsmClient.open() was not called"
        try:
            data = None if body is None else json_body.dumps(body)
            async with self._session.request(method, url + path, data=data, headers=_JSON) as response:
                if response.status != 200:
                    log.error("DSM %s answered %s to %s", self.node_label(url), response.status, path)
                    raise DsmUnreachable("the key manager refused the proxy's call")
                answer = json_body.parse_trusted(await response.read())
        except TimeoutError:
            raise DsmTimeout() from None
        except (aiohttp.ClientError, ValueError) as exc:
            log.warning("DSM %s unreachable: %s", self.node_label(url), type(exc).__name__)
            raise DsmUnreachable() from None
        if not isinstance(answer, dict):
            raise DsmUnreachable("the key manager gave a malformed answer")
        return answer

    async def _first(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        """Ask the nodes in order until one answers; a timeout is reported as such if no node answers."""
        last: XksError = DsmUnreachable()
        for url in self.urls:
            try:
                return await self._request(url, method, path, body)
            except (DsmUnreachable, DsmTimeout) as exc:
                last = exc
        raise last

    def _with_budget(self, call: ForwardedCall) -> dict[str, Any]:
        # Each node gets the whole timeout (fail-over), so each gets the same budget.
        body = call.to_json()
        body["budget_ms"] = self._budget_ms
        return body

    async def prefixes(self) -> dict[str, str]:
        data = await self._first("GET", PREFIXES_PATH)
        table = data.get("prefixes")
        if not isinstance(table, dict):
            raise DsmUnreachable("the key manager gave a malformed answer")
        return {str(k): str(v) for k, v in table.items()}

    async def call(self, call: ForwardedCall) -> dict[str, Any]:
        return _outcome(await self._first("POST", CALL_PATH, self._with_budget(call)))

    async def call_each(self, call: ForwardedCall) -> list[NodeAnswer]:
        """The same call on every node at once (health: each node reports itself)."""
        body = self._with_budget(call)

        async def one(url: str) -> NodeAnswer:
            try:
                return NodeAnswer(url, result=_outcome(await self._request(url, "POST", CALL_PATH, body)))
            except XksError as exc:
                return NodeAnswer(url, error=exc)

        return list(await asyncio.gather(*(one(url) for url in self.urls)))


def _outcome(data: dict[str, Any]) -> dict[str, Any]:
    error = data.get("error")
    if isinstance(error, dict):
        raise from_dsm(str(error.get("code", "")), str(error.get("message", "")))
    result = data.get("result")
    if not isinstance(result, dict):
        raise DsmUnreachable("the key manager gave a malformed answer")
    return result
