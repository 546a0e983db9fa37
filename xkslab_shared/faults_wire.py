"""Injected faults as the XKS proxy's admin endpoint and the ``xkslab faults`` command both read them: the
one place that says what a fault is, so the CLI (which talks to the proxy only over HTTP) and the proxy
validate a fault the same way.

    GET    /xkslab/v1/faults         -> {"faults": [<fault and its state>, ...]}
    POST   /xkslab/v1/faults         {"faults": [<fault>, ...]} -> {"ids": [...]}   (a schedule: start_s)
    DELETE /xkslab/v1/faults         -> {"cleared": n}
    DELETE /xkslab/v1/faults/<id>    -> {"cleared": 0 | 1}

Every call carries ``Authorization: Bearer <admin token>`` (``xks.admin_token_file``, 0600).

A scenario file is TOML: ``[[fault]]`` tables, each a fault with its ``start_s`` (seconds after loading).
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, field
from typing import Any, overload

from xkslab_shared.xks_wire import ERROR_STATUS

FAULTS_PATH = "/xkslab/v1/faults"
TLS_KINDS = ("tls_expired", "tls_wrong_host")
#: The only name in the certificate a tls_wrong_host fault presents (.invalid never resolves, RFC 6761).
WRONG_HOST = "wrong-host.invalid"
KINDS = ("latency", "error", "throttle", "health", "malformed", "truncated", "drop", *TLS_KINDS)
OPERATIONS = ("GetHealthStatus", "GetKeyMetadata", "Encrypt", "Decrypt")
HEALTH_STATES = ("ACTIVE", "DEGRADED", "UNAVAILABLE")
MAX_FLEET = 10
# Far above what a test wants, and under what would look like a hung proxy to an operator.
MAX_LATENCY_MS = 600_000
MAX_FAULTS = 1000


class FaultSpecError(ValueError):
    """A fault or scenario that cannot be applied; the message names the field."""


@dataclass(frozen=True)
class Fault:
    """One fault. ``kind`` decides which of the effect fields matter:

    - latency: wait ``latency_ms`` (or a random time up to ``latency_max_ms``) before answering as usual;
    - error: answer ``error_name`` with the spec's status for it; throttle: 429 ThrottlingException;
    - health: GetHealthStatus reports node i as ``health[i]`` (more states than nodes add nodes);
    - malformed: a 200 whose JSON is not the operation's answer; truncated: the real answer cut short
      (Content-Length promises all of it); drop: the connection closes with no answer;
    - tls_expired, tls_wrong_host: new TLS handshakes on the HTTPS listener get a certificate from the lab
      CA that has expired, or that names another host (``wrong-host.invalid``). They act per handshake,
      before any request is read, so they take no filters; ``count`` counts handshakes.

    Filters (all optional, all must match): ``uri_prefix`` (the path before /kms/xks/v1, exactly),
    ``key_id``, ``operation`` (XKS operation), ``kms_operation`` (requestMetadata). Scope: ``count``
    applications, ``duration_s`` from its start, and ``probability`` per matching request.
    """

    kind: str
    latency_ms: int = 0
    latency_max_ms: int | None = None
    error_name: str | None = None
    health: tuple[str, ...] = field(default_factory=tuple)
    uri_prefix: str | None = None
    key_id: str | None = None
    operation: str | None = None
    kms_operation: str | None = None
    count: int | None = None
    duration_s: float | None = None
    probability: float = 1.0
    start_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["health"] = list(self.health)
        return {
            k: v for k, v in data.items() if v is not None and v != [] and not (k == "latency_ms" and not v)
        }

    def describe(self) -> str:
        effect = {
            "latency": f"+{self.latency_ms}"
            + (f"-{self.latency_max_ms}" if self.latency_max_ms is not None else "")
            + " ms",
            "error": f"{self.error_name} ({ERROR_STATUS.get(self.error_name or '', '?')})",
            "throttle": "ThrottlingException (429)",
            "health": ",".join(self.health),
            "tls_expired": "new TLS handshakes get an expired certificate",
            "tls_wrong_host": f"new TLS handshakes get a certificate for {WRONG_HOST}",
        }.get(self.kind, "")
        where = [
            f"{name}={value}"
            for name, value in (
                ("prefix", self.uri_prefix),
                ("key", self.key_id),
                ("op", self.operation),
                ("kmsOp", self.kms_operation),
            )
            if value is not None
        ]
        scope = []
        if self.count is not None:
            scope.append(f"count={self.count}")
        if self.duration_s is not None:
            scope.append(f"for {self.duration_s:g}s")
        if self.probability < 1.0:
            scope.append(f"p={self.probability:g}")
        if self.start_s > 0:
            scope.append(f"from +{self.start_s:g}s")
        return " ".join(part for part in (self.kind, effect, " ".join(where), " ".join(scope)) if part)


_FILTERS = ("uri_prefix", "key_id", "operation", "kms_operation")
_FIELDS = {
    "kind",
    "latency_ms",
    "latency_max_ms",
    "error_name",
    "health",
    "uri_prefix",
    "key_id",
    "operation",
    "kms_operation",
    "count",
    "duration_s",
    "probability",
    "start_s",
}


def parse_fault(data: Any) -> Fault:
    """A fault from its JSON (or TOML) form; FaultSpecError names what is wrong."""
    if not isinstance(data, dict):
        raise FaultSpecError("a fault is an object")
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise FaultSpecError(f"unknown fault field(s): {', '.join(unknown)}")
    kind = data.get("kind")
    if kind not in KINDS:
        raise FaultSpecError(f"kind must be one of {', '.join(KINDS)}")
    latency = _int(data, "latency_ms", 0, MAX_LATENCY_MS, default=0)
    latency_max = _int(data, "latency_max_ms", latency, MAX_LATENCY_MS, default=None)
    if kind == "latency" and latency == 0 and latency_max is None:
        raise FaultSpecError("a latency fault needs latency_ms (and optionally latency_max_ms)")
    error_name = _str(data, "error_name")
    if kind == "error" and error_name not in ERROR_STATUS:
        raise FaultSpecError(f"error_name must be an XKS errorName: {', '.join(ERROR_STATUS)}")
    health = data.get("health", [])
    if isinstance(health, str):
        health = [part.strip() for part in health.split(",") if part.strip()]
    if not isinstance(health, list) or any(state not in HEALTH_STATES for state in health):
        raise FaultSpecError(f"health is a list of {', '.join(HEALTH_STATES)}")
    if kind == "health" and not 1 <= len(health) <= MAX_FLEET:
        raise FaultSpecError(f"a health fault names 1 to {MAX_FLEET} node states")
    operation = _str(data, "operation")
    if kind in TLS_KINDS and any(data.get(name) is not None for name in _FILTERS):
        raise FaultSpecError(f"a {kind} fault acts on the TLS handshake and takes no {', '.join(_FILTERS)}")
    if operation is not None and operation not in OPERATIONS:
        raise FaultSpecError(f"operation must be one of {', '.join(OPERATIONS)}")
    probability = _float(data, "probability", 0.0, 1.0, default=1.0)
    return Fault(
        kind=kind,
        latency_ms=latency if kind == "latency" else 0,
        latency_max_ms=latency_max if kind == "latency" else None,
        error_name=error_name if kind == "error" else None,
        health=tuple(health) if kind == "health" else (),
        uri_prefix=_str(data, "uri_prefix"),
        key_id=_str(data, "key_id"),
        operation=operation,
        kms_operation=_str(data, "kms_operation"),
        count=_int(data, "count", 1, 10**9, default=None),
        duration_s=_float(data, "duration_s", 0.0, 10**7, default=None),
        probability=probability,
        start_s=_float(data, "start_s", 0.0, 10**7, default=0.0),
    )


def parse_faults(data: Any) -> list[Fault]:
    """The body of a POST: ``{"faults": [...]}``."""
    items = data.get("faults") if isinstance(data, dict) else None
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_FAULTS:
        raise FaultSpecError(f'the body is {{"faults": [...]}} with 1 to {MAX_FAULTS} faults')
    faults = []
    for index, item in enumerate(items):
        try:
            faults.append(parse_fault(item))
        except FaultSpecError as exc:
            raise FaultSpecError(f"fault {index + 1}: {exc}") from None
    return faults


def parse_scenario(text: str) -> list[Fault]:
    """A scenario file: ``[[fault]]`` tables (an optional top-level ``name`` and ``description`` are
    for people)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise FaultSpecError(f"not TOML: {exc}") from None
    unknown = sorted(set(data) - {"name", "description", "fault"})
    if unknown:
        raise FaultSpecError(f"unknown scenario key(s): {', '.join(unknown)}")
    return parse_faults({"faults": data.get("fault")})


def _str(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is not None and (not isinstance(value, str) or not 1 <= len(value) <= 256):
        raise FaultSpecError(f"{name} is a string of 1 to 256 characters")
    return value


@overload
def _int(data: dict[str, Any], name: str, low: int, high: int, *, default: int) -> int: ...
@overload
def _int(data: dict[str, Any], name: str, low: int, high: int, *, default: None) -> int | None: ...
def _int(data: dict[str, Any], name: str, low: int, high: int, *, default: int | None) -> int | None:
    # A null is an absent field: it takes the default rather than reaching the range check as None.
    value = data.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise FaultSpecError(f"{name} is a whole number from {low} to {high}")
    return value


@overload
def _float(data: dict[str, Any], name: str, low: float, high: float, *, default: float) -> float: ...
@overload
def _float(data: dict[str, Any], name: str, low: float, high: float, *, default: None) -> float | None: ...
def _float(
    data: dict[str, Any], name: str, low: float, high: float, *, default: float | None
) -> float | None:
    value = data.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise FaultSpecError(f"{name} is a number from {low:g} to {high:g}")
    if not low <= value <= high:
        raise FaultSpecError(f"{name} is a number from {low:g} to {high:g}")
    return float(value)
