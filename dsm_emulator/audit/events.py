"""What an audited operation may say about itself, checked where the event is built.

An event is an allowlist of fields, never a free-form dict, so plaintext or key material has nowhere to
go; and each value is validated and bounded when the event is created rather than when it is committed,
because one bad row in a group commit would refuse every caller in the batch. The writer, the chain hash
and the readers all build on this shape, so it stands on its own.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import String

from dsm_emulator.audit.chain import row_hash
from dsm_emulator.authz import Principal
from dsm_emulator.errors import DsmError
from dsm_emulator.models import AuditRow

ACTION_TYPES = frozenset({"ADMINISTRATIVE", "AUTH", "CRYPTOOPERATION", "OTHER"})
ACTOR_TYPES = frozenset({"User", "App", "System"})
SEVERITIES = frozenset({"INFO", "WARNING", "ERROR", "CRITICAL"})
OUTCOMES = frozenset({"success", "refused", "failed"})

_TABLE = AuditRow.__table__
_MAX_LEN = {c.key: c.type.length for c in _TABLE.columns if isinstance(c.type, String) and c.type.length}
_ENUMS = {"action_type": ACTION_TYPES, "actor_type": ACTOR_TYPES, "severity": SEVERITIES, "outcome": OUTCOMES}


def _clean(value: str, limit: int | None) -> str:
    # A value the database would reject (too long for PostgreSQL, NUL, lone surrogate) would fail the
    # whole group commit, refusing every caller in the batch; store a recognisable, bounded copy instead.
    if not value.isascii() or "\x00" in value:  # the common case (ASCII, no NUL) needs no copy
        value = value.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
    return value if limit is None or len(value) <= limit else value[: limit - 1] + "\u2026"


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """What an operation reports about itself. These fields are the ONLY things stored (an allowlist,
    no free-form dict), so plaintext or key material has nowhere to go but ``message``, which callers
    write from fixed text and identifiers."""

    operation: str
    action_type: str
    message: str
    actor_type: str
    actor_id: str | None = None
    acct_id: str | None = None
    via: str | None = None
    severity: str = "INFO"
    outcome: str = "success"
    object_id: str | None = None
    group_ids: tuple[str, ...] = ()
    client_ip: str | None = None
    kms_request_id: str | None = None
    kms_operation: str | None = None
    aws_principal_arn: str | None = None
    kms_key_arn: str | None = None
    response_time_us: int | None = None

    def __post_init__(self) -> None:
        # Checked here, not at commit time: one bad event must not fail the batch it is committed in.
        for name, required, limit, allowed in _FIELD_RULES:
            value = getattr(self, name)
            if allowed is not None and value not in allowed:
                raise ValueError(f"audit event {name} must be one of {sorted(allowed)}")
            if name == "response_time_us":
                if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                    raise TypeError("audit event response_time_us must be an int or None")
            elif name == "group_ids":
                if isinstance(value, str) or not all(isinstance(g, str) for g in value):
                    raise TypeError("audit event group_ids must be a sequence of str")
                object.__setattr__(self, name, tuple(_clean(g, None) for g in value))
            elif value is not None or required:
                if not isinstance(value, str) or (name == "operation" and not value):
                    raise TypeError(f"audit event {name} must be a non-empty str")
                object.__setattr__(self, name, _clean(value, limit))

    @classmethod
    def by(
        cls, p: Principal, operation: str, message: str, *, action_type: str = "ADMINISTRATIVE", **fields: Any
    ) -> AuditEvent:
        """An event whose actor is ``p`` (and the proxy, when it acted for ``p``)."""
        return cls(
            operation=operation,
            action_type=action_type,
            message=message,
            actor_type=p.actor_type,
            actor_id=p.id,
            acct_id=p.acct_id,
            via=p.via,
            **fields,
        )

    def refused(self, error: Exception) -> AuditEvent:
        """The refusal row for this event. Only a DsmError's message is used: those are written to be
        safe to show; str() of anything else could carry input or key material."""
        msg = error.audit_message if isinstance(error, DsmError) else type(error).__name__
        return dataclasses.replace(
            self, outcome="refused", severity="WARNING", message=f"{self.message}: refused: {msg}"
        )


def chained_rows(
    key: bytes, term: int, chain: str, events: Sequence[AuditEvent], seq: int, prev: bytes, now: datetime
) -> list[dict[str, Any]]:
    """The rows of ``events``, every column, chained onto the row (``seq``, ``prev``) of ``chain``: the
    one definition of a new row, used by the writer (ORM and raw) and the benchmark's bulk fill."""
    rows: list[dict[str, Any]] = []
    for event in events:
        seq += 1
        values: dict[str, Any] = {f: getattr(event, f) for f in _EVENT_FIELDS}
        values.update(id=str(uuid.uuid4()), chain=chain, seq=seq, time=now, key_term=term)
        values["group_ids"] = list(event.group_ids)
        digest = row_hash(key, prev, values)
        rows.append({**values, "prev_hash": prev, "row_hash": digest})
        prev = digest
    return rows


# (name, required, max length, allowed values) per field, computed once: events are built per request.
_FIELD_RULES = tuple(
    (f.name, f.default is dataclasses.MISSING, _MAX_LEN.get(f.name), _ENUMS.get(f.name))
    for f in dataclasses.fields(AuditEvent)
)
_EVENT_FIELDS = tuple(f.name for f in dataclasses.fields(AuditEvent))
