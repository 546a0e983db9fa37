"""The keyed hash chain: the one place a row's hash is defined.

The writer computes row hashes and verify() recomputes them, possibly years and a database migration
later; if the two ever encoded a row differently, every old row would stop verifying. Both therefore take
the column list, the canonical encoding and the keyed hash from here, and a new column of AuditRow must be
added to HASHED_COLUMNS deliberately.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

AUDIT_KEY_PURPOSE = "audit-chain"
ZERO_HASH = bytes(32)

# Every column except the two hashes, in a fixed list: adding a column to AuditRow must be a conscious
# decision here (a test checks the two agree), or old rows would stop verifying.
HASHED_COLUMNS = (
    "id", "chain", "seq", "time", "acct_id", "actor_type", "actor_id", "via", "action_type", "operation",
    "severity", "outcome", "message", "object_id", "group_ids", "client_ip", "kms_request_id",
    "kms_operation", "aws_principal_arn", "kms_key_arn", "response_time_us", "key_term",
)  # fmt: skip
_DOMAIN = b"xkslab-audit-row-v1\n"


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes (the UTC wall clock we wrote); PostgreSQL aware ones.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def canonical(values: Mapping[str, Any]) -> bytes:
    """Deterministic encoding of every hashed column: sorted-key ASCII JSON, time as a UTC ISO string
    with microseconds, so a row read back from either database encodes exactly as it was written."""
    doc = {name: values[name] for name in HASHED_COLUMNS}
    doc["time"] = _utc(doc["time"]).isoformat(timespec="microseconds")
    fast = _fast(doc)
    if fast is not None:
        return _DOMAIN + fast
    return _DOMAIN + json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _fast(doc: dict[str, Any]) -> bytes | None:
    """orjson's encoding of ``doc`` where it is provably the standard encoder's, byte for byte (about a
    tenth of its CPU, paid by every audit row); None where it may not be: a value other than a string, a
    64-bit integer, a bool, None or a list of strings (a float, say), or a byte outside printable ASCII
    in the result (``ensure_ascii`` escapes DEL and everything above it; orjson writes them as they are).
    Both escape quotes, backslashes and the control characters below 0x20 alike, and sort the same keys."""
    for value in doc.values():
        kind = type(value)
        if kind is str or kind is int or kind is bool or value is None:
            continue
        if (kind is list or kind is tuple) and all(type(item) is str for item in value):
            continue
        return None
    try:
        encoded = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:  # an integer past 64 bits
        return None
    if not encoded.isascii() or b"\x7f" in encoded:
        return None
    return encoded


def row_hash(key: bytes, prev_hash: bytes, values: Mapping[str, Any]) -> bytes:
    # HMAC-SHA256, through the one-shot C function: the same digest as hmac.new(...).digest() without
    # the HMAC object (the writer hashes every row on the event loop, before its commit).
    return hmac.digest(key, bytes(prev_hash) + canonical(values), "sha256")
