"""The XKS Proxy API v1 edge: one dispatcher for the four operations under every URI path prefix.

A request reads in a straight line: match the raw path (404 InvalidUriPathException before anything
else) -> POST only (405) -> read the body (501 past the size limit) -> secondary-authorization verdict
from the policy file (not for health) -> ONE call to the key manager, which verifies SigV4, validates,
finds the key, applies the verdict and does the crypto -> the answer, or the XKS error it maps to.
Injected faults (faults.py), when any are set, act just before the key manager call and on the answer.

A client that closes its connection before its body is read (a load generator ending its run with
requests still queued in the proxy, a KMS giving up) gets no answer, since there is no one to give it
to: the request is counted as gone (``xks_proxy_client_gone_total``), its access line says 499 (the
"client closed request" of nginx's logs), and no errorName is counted for it. It used to reach the
catch-all below: an ERROR traceback and an InternalException (500) in the metrics, 26-44 a run under
``scripts/login_flood.py --kinds bad-signature``, for answers nobody was sent.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from xks_frontend import faults
from xks_frontend.dsm_client import DsmClient, DsmTimeout, DsmUnreachable
from xks_frontend.errors import XksError, error_response
from xks_frontend.metrics import XksMetrics
from xks_frontend.policy import PolicyFile, RequestFacts
from xkslab_shared import body_deadline, body_encoding, json_body, logs, sigv4, xks_wire
from xkslab_shared.nodes import LiveCount
from xkslab_shared.proxy_link import ForwardedCall

log = logging.getLogger("xks_frontend")

PATH = xks_wire.URI_PATH
# The Fortanix-style prefix names its app; recognised even when the DSM cannot be asked for the table.
CANONICAL = re.compile(
    r"/crypto/v1/apps/(?P<app>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})/aws"
)
XKS_OPERATION = {
    "health": "GetHealthStatus",
    "metadata": "GetKeyMetadata",
    "encrypt": "Encrypt",
    "decrypt": "Decrypt",
}
# The path templates of the access log (and of the OpenAPI document): neither a prefix nor a key id is
# written to the log.
ROUTE_TEMPLATE = {
    op: f"/{{uriPathPrefix}}/kms/xks/v1/{'health' if op == 'health' else f'keys/{{externalKeyId}}/{op}'}"
    for op in XKS_OPERATION
}
VENDOR = "xkslab"
PROXY_MODEL = "xkslab XKS proxy 0.1"
EKM_VENDOR = "xkslab (Fortanix DSM emulator)"
MAX_FLEET = 10
_NOT_UTF8 = re.compile("[\ud800-\udfff]")
# The metrics' outcome of a request whose body did not arrive in time (408, xkslab_shared.body_deadline):
# no XKS errorName covers it, so it is named after its HTTP status.
BODY_TIMEOUT_OUTCOME = "RequestTimeout"


class PrefixTable:
    """URI path prefix -> app id, from the DSM; refreshed when stale, and on a miss at most once a
    second, so a new app or alias works without a restart while junk paths cannot flood the DSM."""

    def __init__(self, client: DsmClient, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._client = client
        self._ttl = ttl_s
        self._clock = clock
        self._table: dict[str, str] | None = None
        self._loaded_at = float("-inf")
        self._tried_at = float("-inf")
        self._lock = asyncio.Lock()

    async def _refresh(self, *, force_after: float) -> None:
        async with self._lock:
            if self._clock() - self._tried_at < force_after:
                return  # another request refreshed while this one waited
            self._tried_at = self._clock()
            try:
                self._table = await self._client.prefixes()
                self._loaded_at = self._clock()
            except XksError:
                if self._table is None:
                    raise

    async def resolve(self, prefix: str) -> str | None:
        try:
            if self._clock() - self._loaded_at > self._ttl:
                await self._refresh(force_after=min(self._ttl, 1.0))
            if self._table is None:
                raise DsmUnreachable()
            if prefix not in self._table and self._clock() - self._tried_at > 1.0:
                await self._refresh(force_after=1.0)
        except XksError:
            match = CANONICAL.fullmatch(prefix)
            if match is None:
                raise
            return match["app"]
        return self._table.get(prefix)


class PrefixQuota:
    """A token bucket per URI path prefix: the spec lets a proxy give each prefix its own request quota
    and answer ThrottlingException past it. The quota is the fleet's: with ``fleet`` (the live proxy
    processes of the node registry, workers and nodes alike) each process takes rate/N and burst/N (at
    least 1), N as last read (at most every ``fleet.heartbeat_s``). A fair split when the load balancer
    or the kernel spreads requests evenly, and never more than the rate in all; a proxy that joins or
    leaves shifts the shares within a heartbeat."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # prefix -> (tokens, at)
        self.fleet: LiveCount | None = None

    def take(self, prefix: str) -> bool:
        if self._rate <= 0:
            return True
        share = 1 if self.fleet is None else self.fleet.peek()
        rate, burst = self._rate / share, max(1.0, self._burst / share)
        now = self._clock()
        tokens, at = self._buckets.get(prefix, (burst, now))
        tokens = min(burst, tokens + (now - at) * rate)
        allowed = tokens >= 1.0
        self._buckets[prefix] = (tokens - 1.0 if allowed else tokens, now)
        return allowed


@dataclass
class Edge:
    """What the dispatcher needs, built once by create_app."""

    client: DsmClient
    prefixes: PrefixTable
    policy: PolicyFile | None
    metrics: XksMetrics
    limits: xks_wire.Limits
    quota: PrefixQuota
    faults: faults.FaultBook
    # How many proxies are live (the node registry), for xksProxyFleetSize; None: this one alone.
    proxy_fleet: LiveCount | None = None


async def dispatch(edge: Edge, request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    operation, error_name, request_id, route = "Unknown", None, None, logs.NO_ROUTE
    gone = False
    line_id: str | logs.Later | None = None  # the access line's kmsRequestId
    match: re.Match[str] | None = None
    try:
        raw_path, _, query = request.raw_path.partition("?")
        match = PATH.fullmatch(raw_path)
        app_id = None if match is None else await edge.prefixes.resolve(match["prefix"])
        if match is None or app_id is None:
            raise XksError("InvalidUriPathException", "no XKS operation at this URI path")
        op = "health" if match["health"] else match["op"]
        operation, route = XKS_OPERATION[op], ROUTE_TEMPLATE[op]
        if request.method != "POST":
            return web.Response(status=405, headers={"Allow": "POST"})
        if not edge.quota.take(match["prefix"]):
            raise XksError("ThrottlingException", "the request quota of this URI path prefix is exceeded")
        body = await _read_body(request)
        # The metadata only serves the policy, the faults and the log line: without them the body is
        # parsed once, by the key manager, and a refused request is not parsed here at all; for the log
        # line alone only the kmsRequestId is read, and only if the line is written.
        metadata = None
        if edge.policy is not None or edge.faults.set_any:
            metadata = xks_wire.parse_metadata_only(body)
            request_id = line_id = metadata.kms_request_id if metadata else None
        elif logs.access_enabled():  # read only if the line is written (a refusal's may be only counted)
            line_id = logs.Later(lambda: xks_wire.kms_request_id_only(body))
        facts = faults.Facts(
            match["prefix"], match["key"], operation, metadata.kms_operation if metadata else None
        )
        plan = await edge.faults.take(facts, request_id)
        injected = await faults.before_call(plan, request)
        if injected is not None:
            return injected
        call = ForwardedCall(
            app_id=app_id,
            operation=op,
            key_id=match["key"],
            method=request.method,
            path=raw_path,
            query=query,
            headers=_signed_headers(request),
            body=body,
            max_plaintext_bytes=edge.limits.max_plaintext_bytes,
            max_aad_bytes=edge.limits.max_aad_bytes,
            **_verdict(request, edge.policy, op, match, metadata),
        )
        if op == "health":
            result = faults.shape_health(plan, await _health(edge, call), MAX_FLEET)
            edge.metrics.set_ekm_states(
                [node.get("healthStatus", "UNAVAILABLE") for node in result["ekmFleetDetails"]]
            )
        else:
            result = await edge.client.call(call)
        return await faults.answer(plan, request, json_body.dumps(result))
    except XksError as exc:
        error_name = exc.name
        return error_response(exc)
    except body_encoding.ClientGone:
        gone = True  # the status is for the access line alone: the connection is closed
        return web.Response(status=body_encoding.CLIENT_GONE_STATUS)
    except asyncio.CancelledError:
        if body_deadline.body_expired(request):
            # Answered 408 by the shared body deadline: an error, not the success it used to count as.
            # The deadline may cut in while the prefix is still being resolved: the path names the
            # operation all the same.
            error_name = BODY_TIMEOUT_OUTCOME
            if operation == "Unknown" and match is not None:
                op = "health" if match["health"] else match["op"]
                operation, route = XKS_OPERATION[op], ROUTE_TEMPLATE[op]
        raise
    except Exception:
        error_name = "InternalException"
        log.exception("unexpected error in the XKS proxy")
        return error_response(XksError("InternalException", "internal error"))
    finally:
        seconds = time.perf_counter() - started
        if gone:
            edge.metrics.client_gone(operation)
        else:
            edge.metrics.observe(operation, error_name, seconds)
        if logs.access_enabled():  # the request's one log line, written by the server (xkslab_shared.logs)
            logs.access(request).update(
                route=route, operation=operation, kmsRequestId=line_id, error=error_name
            )


async def _read_body(request: web.Request) -> bytes:
    try:
        return await body_encoding.read(request, body_encoding.NONE)
    except body_encoding.BodyEncodingError as exc:
        raise XksError("ValidationException", exc.message) from None
    except web.HTTPRequestEntityTooLarge:
        raise XksError("UnsupportedOperationException", "the request body is larger than supported") from None


def _signed_headers(request: web.Request) -> dict[str, str]:
    names = sigv4.header_names_to_forward(request.headers.get("Authorization"))
    headers = {name: ",".join(request.headers.getall(name)) for name in names if name in request.headers}
    # aiohttp keeps bytes that are not UTF-8 as lone surrogates, which the key manager's JSON refuses; a
    # signature over such a header cannot be checked, so it is refused here as the DSM would refuse it.
    if any(_NOT_UTF8.search(value) for value in headers.values()):
        raise XksError("AuthenticationFailedException", "a signed header is not UTF-8 text")
    return headers


def _verdict(
    request: web.Request,
    policy: PolicyFile | None,
    op: str,
    match: re.Match[str],
    metadata: xks_wire.RequestMetadata | None,
) -> dict[str, Any]:
    """The policy's decision, forwarded so that the DSM applies it after the key lookup (the spec's
    order) and audits it; never for health. A body without readable metadata is refused by the DSM
    anyway (401 or 400), so it gets no verdict."""
    if policy is None or op == "health" or metadata is None:
        return {}
    decision = policy.decide(RequestFacts(match["prefix"], match["key"], metadata.as_dict()))
    if logs.access_enabled():  # on the request's access line, not a line of its own
        logs.access(request)["policy"] = decision.describe()
    return {"policy_allowed": decision.allowed, "policy_rule": decision.rule}


async def _health(edge: Edge, call: ForwardedCall) -> dict[str, Any]:
    """Every DSM node checks itself; an unreachable node is reported UNAVAILABLE rather than failing the
    whole answer, so KMS sees the fleet's real state. Authentication and validation failures still win.

    Only a node's answer proves the signature: the proxy holds no SigV4 secret. When no node answered,
    the request is refused as every other operation is then (500, or 503 after a timeout), never given
    a 200 that a forged signature would earn as well."""
    answers = await edge.client.call_each(call)
    for answer in answers:
        if answer.error is not None and answer.error.name in (
            "AuthenticationFailedException",
            "ValidationException",
        ):
            raise answer.error
    if all(answer.result is None for answer in answers):
        _check_without_dsm(call)
        raise _no_verdict([answer.error for answer in answers if answer.error is not None])
    fleet: list[dict[str, str]] = []
    for index, answer in enumerate(answers, 1):
        details = (answer.result or {}).get("ekmFleetDetails")
        if answer.error is None and isinstance(details, list) and details:
            fleet.extend(details)
        else:
            label = f"dsm-node-{index}"  # its place in xks.dsm_urls: no internal address in the answer
            fleet.append(
                {"id": label, "model": "xkslab DSM emulator (unreachable)", "healthStatus": "UNAVAILABLE"}
            )
    fleet = fleet[:MAX_FLEET]
    return {
        "xksProxyFleetSize": 1 if edge.proxy_fleet is None else await edge.proxy_fleet.get(),
        "xksProxyVendor": VENDOR,
        "xksProxyModel": PROXY_MODEL,
        "ekmVendor": EKM_VENDOR,
        "ekmFleetDetails": fleet,
    }


def _no_verdict(errors: list[XksError]) -> XksError:
    """What to answer when no node verified a health check: a node's own refusal if one gave one,
    else what the last node's failure was (as DsmClient's fail-over reports it)."""
    transport = (DsmUnreachable, DsmTimeout)
    spoken = [error for error in errors if not isinstance(error, transport)]
    return (spoken or errors or [DsmUnreachable()])[-1]


def _check_without_dsm(call: ForwardedCall) -> None:
    """No DSM node could verify the request: still give the answer that needs no secret (401 for no or a
    malformed signature, 400 for an invalid body), which KMS would get with a DSM as well."""
    try:
        sigv4.parse_authorization(call.headers.get("authorization", ""))
    except sigv4.SigV4Error:
        raise XksError("AuthenticationFailedException", "the request is not signed with SigV4") from None
    try:
        xks_wire.parse_request("health", call.body, xks_wire.Limits())
    except xks_wire.XksRequestError as exc:
        raise XksError(exc.error_name, exc.message) from None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
