"""DSM REST API: the audit log, ``GET /sys/v1/logs`` (reference §7, §13 row 19).

The answer is Fortanix's Elasticsearch shape, ``{"hits": [{"_id", "_source": {...}}]}``, newest first
(time, chain, seq descending). Every ``_source`` key sdkms-cli indexes is always present (null when
unknown), so ``sdkms-cli audit-log`` never dies with a KeyError.

Paging: ``size`` (1..1000, default 100; anything else is a 400), ``from`` (an offset) and ``previous_id``
(continue strictly after that row in the same ordering: keyset paging, so a caller looping on the last
``_id`` visits each row once and always reaches an empty page). An unknown ``previous_id`` (or one of a
row the caller may not see) gives an empty page rather than an error: a looping client then stops cleanly.

Visibility: only rows of the caller's account. An administrator sees all of them; any other caller (an
app) sees only the rows it is the actor of. Filters: ``range_from``/``range_to`` (epoch seconds,
inclusive to the second), ``action_type``/``actor_type``/``severity`` (one value, a comma list, repeated
parameters or Go's ``[A B]`` form), ``actor_id`` and ``object_id``.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from sqlalchemy import ColumnElement, Select, select, tuple_, union_all
from sqlalchemy.orm import aliased

from dsm_emulator.api.context import core_of, json_response, principal_of, query_int
from dsm_emulator.errors import BadRequest, redact_hidden
from dsm_emulator.models import AuditRow

routes = web.RouteTableDef()

DEFAULT_SIZE = 100
MAX_SIZE = 1000
_ACTOR_TYPES = {"user": "User", "app": "App", "system": "System", "plugin": "Plugin"}
_ORDER = (AuditRow.time.desc(), AuditRow.chain.desc(), AuditRow.seq.desc())


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes (the UTC wall clock that was written); PostgreSQL aware ones.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _epoch_param(request: web.Request, name: str) -> float | None:
    raw = request.query.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        raise BadRequest(f"query parameter {name} must be seconds since the epoch") from None
    if not math.isfinite(value) or value < 0 or value > 253402300799:  # up to 9999-12-31T23:59:59Z
        raise BadRequest(f"query parameter {name} is out of range")
    return value


def _uuid_param(request: web.Request, name: str) -> str | None:
    raw = request.query.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        return str(uuid.UUID(raw.strip()))
    except ValueError:
        raise BadRequest(f"query parameter {name} must be a UUID") from None


def _list_param(request: web.Request, name: str) -> list[str]:
    """Every value of a multi-valued parameter: ``a``, ``a,b``, ``?x=a&x=b`` or Go's ``[a b]``."""
    values: list[str] = []
    for raw in request.query.getall(name, []):
        text = raw.strip()
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        values.extend(v for v in text.replace(",", " ").split() if v)
    return values


def _duration(us: int | None) -> dict[str, int] | None:
    if us is None:
        return None
    us = max(us, 0)
    return {"secs": us // 1_000_000, "nanos": (us % 1_000_000) * 1000}


def _context(row: AuditRow) -> str | None:
    ctx = {
        "kmsRequestId": row.kms_request_id,
        "kmsOperation": row.kms_operation,
        "awsPrincipalArn": row.aws_principal_arn,
        "kmsKeyArn": row.kms_key_arn,
    }
    if all(v is None for v in ctx.values()):
        return None
    return json.dumps(ctx, separators=(",", ":"))


def hit(row: AuditRow, *, admin: bool = True) -> dict[str, Any]:
    """One row in Fortanix's ``EsAuditLog`` shape; for a caller who is not an administrator, without what
    its refusals kept from it (objects outside its groups)."""
    return {
        "_id": row.id,
        "_source": {
            "acct_id": row.acct_id,
            "actor_type": row.actor_type,
            # System rows (the local operator) have no actor id: name the account instead of null.
            "actor_id": row.actor_id if row.actor_id is not None else row.acct_id,
            "action_type": row.action_type,
            "severity": row.severity,
            "message": row.message if admin else redact_hidden(row.message),
            "object_id": row.object_id,
            "group_ids": list(row.group_ids or []),
            "time": _utc(row.time).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "client_ip": row.client_ip,
            "response_time": _duration(row.response_time_us),
            "client_provided_context": _context(row),
        },
    }


@dataclass
class LogQuery:
    """What one ``/sys/v1/logs`` request selects. Every filter has an index that ends in the answer's
    order (models.AUDIT_FILTER_INDEXES), and paging after a row is a row-value comparison on that order,
    so a page is read off an index and costs the same at a million rows as at a thousand."""

    acct_id: str
    own_rows_of: str | None = None  # a caller that is not an administrator: only rows it is the actor of
    range_from: float | None = None
    range_to: float | None = None
    actor_id: str | None = None
    object_id: str | None = None
    action_types: list[str] = field(default_factory=list)
    severities: list[str] = field(default_factory=list)
    actor_types: list[str] = field(default_factory=list)

    def visible(self) -> list[ColumnElement[bool]]:
        """The rows the caller may see at all (also where a ``previous_id`` is looked up)."""
        where: list[ColumnElement[bool]] = [AuditRow.acct_id == self.acct_id]
        if self.own_rows_of is not None:
            where.append(AuditRow.actor_id == self.own_rows_of)
        return where

    def _lists(self) -> list[tuple[Any, list[str]]]:
        return [
            (AuditRow.action_type, self.action_types),
            (AuditRow.severity, self.severities),
            (AuditRow.actor_type, self.actor_types),
        ]

    def where(self, split: Any = None) -> list[ColumnElement[bool]]:
        """The conditions; ``split`` (a list filter's column) is left out, for page() to split on."""
        where = self.visible()
        if self.range_from is not None:
            where.append(AuditRow.time >= datetime.fromtimestamp(math.floor(self.range_from), UTC))
        if self.range_to is not None:  # inclusive to the second shown in "time"
            end = datetime.fromtimestamp(math.floor(self.range_to), UTC) + timedelta(seconds=1)
            where.append(AuditRow.time < end)
        if self.actor_id is not None:
            where.append(AuditRow.actor_id == self.actor_id)
        if self.object_id is not None:
            where.append(AuditRow.object_id == self.object_id)
        for column, values in self._lists():
            if column is split:
                continue
            if len(values) == 1:  # "=", not a one-value IN: every planner then uses the filter's index
                where.append(column == values[0])
            elif values:
                where.append(column.in_(values))
        return where

    def page(self, size: int, offset: int = 0, after: tuple[datetime, str, int] | None = None) -> Select[Any]:
        """One page. A filter with several values (``severity=ERROR,CRITICAL``) is one index range per
        value, which no index reads in the answer's order: each value's first ``offset + size`` rows
        are read off its index in order and only those are merged, instead of reading the account's rows
        in order until enough match (which grows with the log when the values are rare)."""
        split = next(((c, v) for c, v in self._lists() if len(set(v)) > 1), None)
        keyset: list[ColumnElement[bool]] = []
        if after is not None:  # strictly after that row in the answer's (descending) order
            keyset.append(tuple_(AuditRow.time, AuditRow.chain, AuditRow.seq) < tuple_(*after))
        if split is None:
            where = self.where() + keyset
            return select(AuditRow).where(*where).order_by(*_ORDER).offset(offset).limit(size)
        column, values = split
        where = self.where(split=column) + keyset
        parts = [
            select(AuditRow).where(*where, column == v).order_by(*_ORDER).limit(offset + size).subquery()
            for v in sorted(set(values))
        ]
        merged = union_all(*(select(p) for p in parts)).subquery()
        row = aliased(AuditRow, merged)
        order = (row.time.desc(), row.chain.desc(), row.seq.desc())
        return select(row).order_by(*order).offset(offset).limit(size)


@routes.get("/sys/v1/logs")
async def get_logs(request: web.Request) -> web.Response:
    principal = principal_of(request)
    core = core_of(request)
    size = query_int(request, "size", DEFAULT_SIZE, 1, MAX_SIZE)
    offset = query_int(request, "from", 0, 0)
    previous_id = _uuid_param(request, "previous_id")
    if not principal.is_admin and principal.id is None:
        return json_response({"hits": []})
    query = LogQuery(
        acct_id=principal.acct_id,
        own_rows_of=None if principal.is_admin else principal.id,
        range_from=_epoch_param(request, "range_from"),
        range_to=_epoch_param(request, "range_to"),
        actor_id=_uuid_param(request, "actor_id"),
        object_id=_uuid_param(request, "object_id"),
        action_types=[v.upper() for v in _list_param(request, "action_type")],
        severities=[v.upper() for v in _list_param(request, "severity")],
        actor_types=[_ACTOR_TYPES.get(v.lower(), v) for v in _list_param(request, "actor_type")],
    )
    after = None
    async with core.sessions() as session:
        if previous_id is not None:
            stmt = select(AuditRow.time, AuditRow.chain, AuditRow.seq)
            anchor = (await session.execute(stmt.where(AuditRow.id == previous_id, *query.visible()))).first()
            if anchor is None:
                return json_response({"hits": []})
            after = (anchor.time, anchor.chain, anchor.seq)
        rows = (await session.scalars(query.page(size, offset, after))).all()
    return json_response({"hits": [hit(r, admin=principal.is_admin) for r in rows]})
