"""The audit chain's canonical encoding takes orjson's bytes only where they are the standard encoder's:
every row hashed since the chain began must still verify, so the shortcut is checked against the long
way on edge cases and on generated rows."""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dsm_emulator.audit import chain


def _reference(values: dict[str, Any]) -> bytes:
    """The encoding as it was defined before the shortcut (and as verify must keep reading it)."""
    doc = {name: values[name] for name in chain.HASHED_COLUMNS}
    doc["time"] = chain._utc(doc["time"]).isoformat(timespec="microseconds")
    return (
        b"xkslab-audit-row-v1\n"
        + json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    )


def _row(**changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "chain": "node-1",
        "seq": 42,
        "time": datetime(2026, 12, 7, 17, 0, 0, 123456),
        "acct_id": str(uuid.uuid4()),
        "actor_type": "app",
        "actor_id": str(uuid.uuid4()),
        "via": "xks-proxy",
        "action_type": "CRYPTOOPERATION",
        "operation": "xks.encrypt",
        "severity": "INFO",
        "outcome": "success",
        "message": "Encrypted data via AWS XKS (key root-kek-1)",
        "object_id": str(uuid.uuid4()),
        "group_ids": [str(uuid.uuid4())],
        "client_ip": None,
        "kms_request_id": str(uuid.uuid4()),
        "kms_operation": "Encrypt",
        "aws_principal_arn": "arn:aws:iam::123456789012:user/Alice",
        "kms_key_arn": "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        "response_time_us": 412,
        "key_term": None,
    }
    row.update(changes)
    return row


EDGE_VALUES: list[Any] = [
    "",
    'quote " and backslash \\ and slash /',
    "controls \x00\x01\x07\x08\t\n\x0b\x0c\r\x1b\x1f",
    "DEL \x7f",
    "latin é, CJK 中, emoji \U0001f600, lone surrogate \ud800, line separator \u2028",
    0,
    -1,
    2**63 - 1,
    -(2**63),
    2**64,
    2**80,
    True,
    False,
    None,
    1.5,
    1e16,
    float("nan"),
    [],
    ["a", "b"],
    ("a", "é"),
    ["a", 1],
]


@pytest.mark.parametrize("value", EDGE_VALUES, ids=repr)
@pytest.mark.parametrize("column", ["message", "group_ids", "response_time_us", "kms_request_id"])
def test_edge_values_encode_as_the_standard_encoder_does(column: str, value: Any) -> None:
    row = _row(**{column: value})
    assert chain.canonical(row) == _reference(row)


def test_aware_and_naive_times_encode_alike() -> None:
    naive = _row(time=datetime(2026, 1, 2, 3, 4, 5, 6))
    aware = _row(time=datetime(2026, 1, 2, 4, 4, 5, 6, tzinfo=UTC) - timedelta(hours=1))
    assert chain.canonical(naive) == _reference(naive)
    assert chain.canonical(aware) == _reference(aware)


def test_generated_rows_encode_as_the_standard_encoder_does() -> None:
    rng = random.Random(22)
    alphabet = [chr(c) for c in range(0, 0x80)] + ["é", "中", "\u2028", "\U0001f600", "\ud800"]
    for _ in range(3000):
        changes: dict[str, Any] = {}
        for column in ("message", "actor_id", "kms_request_id", "aws_principal_arn", "client_ip"):
            if rng.random() < 0.5:
                changes[column] = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 12)))
        if rng.random() < 0.3:
            changes["group_ids"] = ["".join(rng.choice(alphabet) for _ in range(4)) for _ in range(3)]
        if rng.random() < 0.3:
            changes["response_time_us"] = rng.choice([rng.randrange(-(2**70), 2**70), rng.random() * 1e6])
        row = _row(**changes)
        assert chain.canonical(row) == _reference(row), row


def test_the_shortcut_is_taken_for_a_usual_row() -> None:
    # Not a correctness property, but the point of it: an ordinary XKS row goes through orjson.
    assert chain._fast({name: value for name, value in _row(time="t").items()}) is not None
