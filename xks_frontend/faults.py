"""Faults injected into the proxy at run time, for chaos tests, set over the token-protected admin
endpoint (admin.py). This book is what a request reads, in memory; with a database, fault_store.py keeps
it equal to the fleet's rows (and claims the applications of counted faults); without one it is this
process's alone.

The dispatcher asks the book for a :class:`Plan` once it knows a request's prefix, key, operation and
kmsOperation, then applies it at three points: before the key manager is called (drop, latency, error,
throttle), on the health answer (per-node states), and on the way out (malformed, truncated). TLS faults
act earlier, per handshake on the HTTPS listener (:meth:`FaultBook.handshake`, tls_faults.py). Every
application is counted (``xks_proxy_faults_injected_total{kind}``) and logged.
"""

from __future__ import annotations

import asyncio
import builtins
import itertools
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from xks_frontend.errors import XksError
from xkslab_shared.faults_wire import MAX_FAULTS, TLS_KINDS, Fault

log = logging.getLogger("xks_frontend.faults")

# One fault that ends a request wins; latency adds to any of them. Health only shapes a health answer.
_ENDING = ("drop", "throttle", "error", "truncated", "malformed", "health")


@dataclass
class Entry:
    id: str
    fault: Fault
    starts_at: float
    left: int | None
    applied: int = 0
    # Of ``applied``, how many the shared book has already counted in the database (claims included).
    claimed: int = 0

    def ends_at(self) -> float | None:
        return None if self.fault.duration_s is None else self.starts_at + self.fault.duration_s

    def state(self, now: float) -> str:
        if now < self.starts_at:
            return "pending"
        ends = self.ends_at()
        if (self.left is not None and self.left <= 0) or (ends is not None and now >= ends):
            return "done"
        return "active"

    def to_json(self, now: float) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "fault": self.fault.to_json(),
            "state": self.state(now),
            "applied": self.applied,
            "describe": self.fault.describe(),
        }
        if now < self.starts_at:
            data["starts_in_s"] = round(self.starts_at - now, 3)
        ends = self.ends_at()
        if ends is not None and now < ends:
            data["ends_in_s"] = round(ends - now, 3)
        if self.left is not None:
            data["left"] = self.left
        return data


@dataclass(frozen=True)
class Facts:
    """What a fault's filters see of a request."""

    prefix: str
    key_id: str | None
    operation: str
    kms_operation: str | None


@dataclass
class Plan:
    """The faults one request gets, already counted."""

    latency_s: float = 0.0
    ending: Entry | None = None
    applied: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str | None:
        return None if self.ending is None else self.ending.fault.kind


class FaultBook:
    """The faults set on this proxy, in the order set; finished ones are forgotten when next looked at."""

    def __init__(
        self,
        registry: CollectorRegistry,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._entries: builtins.list[Entry] = []
        self._clock = self.clock = clock
        self._rng = rng or random.Random()
        self._ids = itertools.count(1)
        # Set by the shared book (fault_store.py): claims one application of a counted fault fleet-wide.
        self.claim: Callable[[Entry], Awaitable[bool]] | None = None
        self._unsynced_gone: dict[str, int] = {}
        self.injected = Counter(
            "xks_proxy_faults_injected",
            "Faults the proxy applied to requests (xkslab fault injection), by fault kind.",
            ["kind"],
            registry=registry,
        )

    @property
    def set_any(self) -> bool:
        """Whether any fault is set (finished ones included until plan() forgets them)."""
        return bool(self._entries)

    def add(self, faults: list[Fault]) -> list[str]:
        self._forget_done()
        if len(self._entries) + len(faults) > MAX_FAULTS:
            raise ValueError(f"at most {MAX_FAULTS} faults are kept")
        now = self._clock()
        added = []
        for fault in faults:
            entry = Entry(f"f{next(self._ids)}", fault, now + fault.start_s, fault.count)
            self._entries.append(entry)
            added.append(entry)
        for entry in added:
            log.warning(
                "%s",
                json.dumps({"event": "xks_fault_set", "faultId": entry.id, "fault": entry.fault.to_json()}),
            )
        return [entry.id for entry in added]

    def replace(self, entries: builtins.list[Entry]) -> None:
        """The shared book's entries (fault_store.py) in place of this book's: what this process applied
        and has not yet counted in the database is carried over, so it is neither lost nor counted twice."""
        unsynced = self.unsynced()
        for entry in entries:
            extra = unsynced.get(entry.id, 0)
            entry.applied += extra
            if entry.left is not None:  # a TLS fault's handshakes, counted here and not written yet
                entry.left -= extra
        self._entries = entries
        self._forget_done()

    def unsynced(self) -> dict[str, int]:
        """Applications of each fault not yet counted in the database (the shared book writes them),
        finished faults' included."""
        pending = dict(self._unsynced_gone)
        pending.update({e.id: e.applied - e.claimed for e in self._entries if e.applied > e.claimed})
        return pending

    def synced(self, counts: dict[str, int]) -> None:
        for entry in self._entries:
            entry.claimed += counts.get(entry.id, 0)
        for fault_id in counts:
            self._unsynced_gone.pop(fault_id, None)

    def list(self) -> list[dict[str, Any]]:
        self._forget_done()
        now = self._clock()
        return [entry.to_json(now) for entry in self._entries]

    def clear(self, fault_id: str | None = None) -> int:
        before = len(self._entries)
        self._entries = [e for e in self._entries if fault_id is not None and e.id != fault_id]
        cleared = before - len(self._entries)
        log.warning("%s", json.dumps({"event": "xks_fault_cleared", "faultId": fault_id, "cleared": cleared}))
        return cleared

    def plan(self, facts: Facts, kms_request_id: str | None) -> Plan | None:
        """The faults that apply to this request, or None (the common case, and cheap: no faults set).
        Counts are this book's own; :meth:`take` counts them fleet-wide."""
        if not self._entries:
            return None
        return self._build(self._choose(facts), facts, kms_request_id)

    async def take(self, facts: Facts, kms_request_id: str | None) -> Plan | None:
        """:meth:`plan`, except that a fault with a count is first claimed through ``claim`` (the
        shared book's one database write, fleet-wide exact): a claim refused (the fleet used the count
        up) marks the fault done here, and the request does not get it."""
        if not self._entries:
            return None
        chosen = self._choose(facts)
        claim = self.claim
        if claim is not None:
            kept = []
            for entry in chosen:
                if entry.left is None:
                    kept.append(entry)
                elif await claim(entry):
                    entry.claimed += 1
                    kept.append(entry)
                else:
                    entry.left = 0
            chosen = kept
        return self._build(chosen, facts, kms_request_id)

    def _choose(self, facts: Facts) -> builtins.list[Entry]:
        now = self._clock()
        latency: Entry | None = None
        ending: Entry | None = None
        for entry in self._entries:
            if entry.state(now) != "active" or not _matches(entry.fault, facts):
                continue  # TLS faults never match a request: they act on handshakes
            kind = entry.fault.kind
            if kind == "latency" and latency is None:
                latency = entry
            elif kind != "latency" and (
                ending is None or _ENDING.index(kind) < _ENDING.index(ending.fault.kind)
            ):
                ending = entry
        return [e for e in (latency, ending) if e is not None and self._rng.random() < e.fault.probability]

    def _build(self, chosen: builtins.list[Entry], facts: Facts, kms_request_id: str | None) -> Plan | None:
        plan = Plan()
        for entry in chosen:
            self._apply(entry, facts, kms_request_id)
            plan.applied.append(entry.fault.kind)
            if entry.fault.kind == "latency":
                plan.latency_s = self._latency_s(entry.fault)
            else:
                plan.ending = entry
        self._forget_done()
        return plan if plan.applied else None

    def handshake(self) -> str | None:
        """The TLS fault kind a new handshake gets (the first active one set, counted), or None."""
        if not self._entries:
            return None
        now = self._clock()
        for entry in self._entries:
            if entry.fault.kind not in TLS_KINDS or entry.state(now) != "active":
                continue
            if self._rng.random() >= entry.fault.probability:
                return None
            self._apply(entry, Facts("", None, "(TLS handshake)", None), None)
            self._forget_done()
            return entry.fault.kind
        return None

    def tls_active(self) -> bool:
        """Whether a TLS fault is in force now (so connections made before it should not be kept)."""
        now = self._clock()
        return any(e.fault.kind in TLS_KINDS and e.state(now) == "active" for e in self._entries)

    def _apply(self, entry: Entry, facts: Facts, kms_request_id: str | None) -> None:
        entry.applied += 1
        if entry.left is not None:
            entry.left -= 1
        self.injected.labels(entry.fault.kind).inc()
        log.warning(
            "%s",
            json.dumps(
                {
                    "event": "xks_fault",
                    "faultId": entry.id,
                    "kind": entry.fault.kind,
                    "operation": facts.operation,
                    "keyId": facts.key_id,
                    "kmsOperation": facts.kms_operation,
                    "kmsRequestId": kms_request_id,
                }
            ),
        )

    def _latency_s(self, fault: Fault) -> float:
        if fault.latency_max_ms is None:
            return fault.latency_ms / 1000
        return self._rng.uniform(fault.latency_ms, fault.latency_max_ms) / 1000

    def _forget_done(self) -> None:
        now = self._clock()
        kept = []
        for entry in self._entries:
            if entry.state(now) != "done":
                kept.append(entry)
            elif entry.applied > entry.claimed and self.claim is not None:
                # Its last applications are still to be written to the shared book.
                self._unsynced_gone[entry.id] = entry.applied - entry.claimed
        self._entries = kept


def _matches(fault: Fault, facts: Facts) -> bool:
    if fault.kind in TLS_KINDS:
        return False
    if fault.kind == "health" and facts.operation != "GetHealthStatus":
        return False
    return (
        (fault.uri_prefix is None or fault.uri_prefix == facts.prefix)
        and (fault.key_id is None or fault.key_id == facts.key_id)
        and (fault.operation is None or fault.operation == facts.operation)
        and (fault.kms_operation is None or fault.kms_operation == facts.kms_operation)
    )


async def before_call(plan: Plan | None, request: web.Request) -> web.StreamResponse | None:
    """Latency first (it adds to whatever follows), then a fault that answers instead of the key
    manager; a response returned here is the request's answer."""
    if plan is None:
        return None
    if plan.latency_s > 0:
        await asyncio.sleep(plan.latency_s)
    kind = plan.kind
    if kind == "drop":
        return _drop(request)
    if kind == "throttle":
        raise XksError("ThrottlingException", "injected fault: the request rate is too high")
    if kind == "error":
        assert plan.ending is not None and plan.ending.fault.error_name is not None
        raise XksError(plan.ending.fault.error_name, "injected fault")
    return None


def shape_health(plan: Plan | None, answer: dict[str, Any], max_fleet: int) -> dict[str, Any]:
    """Node i reports the fault's i-th state; states past the real fleet add nodes of their own."""
    if plan is None or plan.kind != "health":
        return answer
    assert plan.ending is not None
    fleet = [dict(node) for node in answer["ekmFleetDetails"]]
    for index, state in enumerate(plan.ending.fault.health):
        if index < len(fleet):
            fleet[index]["healthStatus"] = state
        else:
            fleet.append(
                {"id": f"fault-node-{index + 1}", "model": "xkslab injected node", "healthStatus": state}
            )
    return {**answer, "ekmFleetDetails": fleet[:max_fleet]}


async def answer(plan: Plan | None, request: web.Request, body: bytes) -> web.StreamResponse:
    """The 200 answer, or what a malformed or truncated fault makes of it."""
    if plan is not None and plan.kind == "malformed":
        return web.Response(text='{"xkslab":"injected malformed answer"}', content_type="application/json")
    if plan is not None and plan.kind == "truncated":
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.content_length = len(body)  # promised in full, then cut: the client sees a short body
        await response.prepare(request)
        await response.write(body[: len(body) // 2])
        _drop(request)
        return response
    return web.Response(body=body, content_type="application/json")


def _drop(request: web.Request) -> web.Response:
    # The transport goes away with no bytes of an answer; aiohttp then writes the returned response
    # nowhere, quietly (the protocol is told to close first, so it does not try to keep the connection).
    transport = request.transport
    request.protocol.force_close()
    if transport is not None:
        transport.abort()
    return web.Response(status=204)
