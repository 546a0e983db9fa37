"""The fault book's scope rules on a clock the test turns (count, duration, start, probability, filters),
and what the fault and scenario parsers refuse."""

from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry

from xks_frontend.faults import Entry, Facts, FaultBook
from xkslab_shared.faults_wire import FaultSpecError, parse_fault, parse_faults, parse_scenario

ENCRYPT = Facts("/p", "k1", "Encrypt", "Encrypt")
HEALTH = Facts("/p", None, "GetHealthStatus", "KmsHealthCheck")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def book() -> tuple[FaultBook, Clock]:
    clock = Clock()
    return FaultBook(CollectorRegistry(), clock, random.Random(7)), clock


def kinds(faults: FaultBook, facts: Facts = ENCRYPT) -> list[str]:
    plan = faults.plan(facts, None)
    return [] if plan is None else plan.applied


def test_count_duration_and_start() -> None:
    faults, clock = book()
    faults.add([parse_fault({"kind": "drop", "count": 2})])
    assert [kinds(faults) for _ in range(3)] == [["drop"], ["drop"], []]
    faults.add([parse_fault({"kind": "throttle", "start_s": 5, "duration_s": 10})])
    assert kinds(faults) == [] and faults.list()[0]["state"] == "pending"
    clock.now += 5
    assert kinds(faults) == ["throttle"]
    clock.now += 10
    assert kinds(faults) == [] and faults.list() == []


def test_filters_latency_stacks_and_health_only_on_health() -> None:
    faults, _ = book()
    faults.add(
        [
            parse_fault({"kind": "latency", "latency_ms": 5, "latency_max_ms": 9}),
            parse_fault({"kind": "error", "error_name": "InternalException", "key_id": "k2"}),
            parse_fault({"kind": "malformed", "kms_operation": "Decrypt"}),
            parse_fault({"kind": "health", "health": "DEGRADED,UNAVAILABLE"}),
        ]
    )
    plan = faults.plan(ENCRYPT, "r1")
    assert plan is not None and plan.applied == ["latency"] and 0.005 <= plan.latency_s <= 0.009
    assert kinds(faults, Facts("/p", "k2", "Encrypt", "Encrypt")) == ["latency", "error"]
    assert kinds(faults, HEALTH) == ["latency", "health"]
    assert faults.injected.labels("latency")._value.get() == 3


def test_probability() -> None:
    faults, _ = book()
    faults.add([parse_fault({"kind": "drop", "probability": 0.5})])
    hits = sum(bool(kinds(faults)) for _ in range(400))
    assert 100 < hits < 300
    faults.clear()
    faults.add([parse_fault({"kind": "drop", "probability": 0})])
    assert not any(kinds(faults) for _ in range(50))


@pytest.mark.parametrize(
    ("spec", "word"),
    [
        ({"kind": "nope"}, "kind"),
        ({"kind": "latency"}, "latency_ms"),
        ({"kind": "latency", "latency_ms": 50, "latency_max_ms": 10}, "latency_max_ms"),
        ({"kind": "error", "error_name": "Oops"}, "error_name"),
        ({"kind": "health", "health": ["UNHEALTHY"]}, "health"),
        ({"kind": "drop", "probability": 1.5}, "probability"),
        ({"kind": "drop", "count": 0}, "count"),
        ({"kind": "drop", "operation": "Sign"}, "operation"),
        ({"kind": "drop", "colour": "red"}, "colour"),
    ],
)
def test_bad_faults_name_the_field(spec: dict[str, object], word: str) -> None:
    with pytest.raises(FaultSpecError, match=word):
        parse_fault(spec)


def test_scenarios_and_bodies() -> None:
    with pytest.raises(FaultSpecError, match="faults"):
        parse_faults({"faults": []})
    with pytest.raises(FaultSpecError, match="TOML"):
        parse_scenario("[[fault]\n")
    with pytest.raises(FaultSpecError, match="fault 2: kind"):
        parse_scenario('[[fault]]\nkind = "drop"\n[[fault]]\nkind = "x"\n')
    (fault,) = parse_scenario('name = "n"\n[[fault]]\nkind = "throttle"\nstart_s = 2\n')
    assert fault.to_json() == {"kind": "throttle", "probability": 1.0, "start_s": 2.0}
    assert parse_fault(fault.to_json()) == fault


def test_a_null_field_is_an_absent_one() -> None:
    # Found by mypy --strict: a null latency_ms reached the range check as None (a TypeError, a 500 on the
    # admin endpoint) and a null probability tripped an assert.
    assert parse_fault({"kind": "latency", "latency_ms": None, "latency_max_ms": 9}) == parse_fault(
        {"kind": "latency", "latency_max_ms": 9}
    )
    assert parse_fault({"kind": "drop", "probability": None}).probability == 1.0
    assert parse_fault({"kind": "throttle", "start_s": None, "count": None}) == parse_fault(
        {"kind": "throttle"}
    )


async def test_take_claims_counted_faults_and_a_refused_claim_ends_the_fault() -> None:
    faults, _ = book()
    claims: list[str] = []
    allowed = iter([True, False])

    async def claim(entry: Entry) -> bool:
        claims.append(entry.id)
        return next(allowed)

    faults.claim = claim
    faults.add([parse_fault({"kind": "drop", "count": 5}), parse_fault({"kind": "latency", "latency_ms": 1})])
    first = await faults.take(ENCRYPT, None)
    assert first is not None and first.applied == ["latency", "drop"]
    second = await faults.take(ENCRYPT, None)  # the fleet used the count up: no drop, latency alone
    assert second is not None and second.applied == ["latency"]
    assert claims == ["f1", "f1"] and [f["fault"]["kind"] for f in faults.list()] == ["latency"]
    # Claimed applications are already in the database; the uncounted latency ones are still to write.
    assert faults.unsynced() == {"f2": 2}


def test_handshakes_counted_here_survive_a_reload_until_written() -> None:
    faults, _ = book()

    async def claim(entry: Entry) -> bool:
        return True

    faults.claim = claim
    faults.add([parse_fault({"kind": "tls_expired", "count": 1})])
    assert faults.handshake() == "tls_expired" and faults.list() == []
    assert faults.unsynced() == {"f1": 1}
    # A reload from the database before the handshake was written: it stays done, and still to write.
    faults.replace([Entry("f1", parse_fault({"kind": "tls_expired", "count": 1}), 0.0, 1)])
    assert faults.handshake() is None and faults.unsynced() == {"f1": 1}
    faults.synced({"f1": 1})
    assert faults.unsynced() == {}
