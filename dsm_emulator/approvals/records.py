"""What an approval request is as callers see it: the identities in it, its effective status (expiry
included) and Fortanix's ``ApprovalRequest`` shape. Pure functions over a row, shared by the service and
its readers."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from dsm_emulator.authz import Principal
from dsm_emulator.errors import AccessDenied
from dsm_emulator.keyring import Keyring
from dsm_emulator.models import ApprovalRequest

Entity = tuple[str, str]  # ("user" | "app", id)


def now() -> datetime:
    return datetime.now(UTC)


def aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def body_context(request_id: str) -> bytes:
    return f"approval|{request_id}".encode()


def entity_of(p: Principal) -> Entity:
    if p.kind not in ("user", "app") or p.id is None:
        raise AccessDenied("approval requests are made and reviewed by users and apps")
    return (p.kind, p.id)


def entity_dict(entity: Entity) -> dict[str, str]:
    return {entity[0]: entity[1]}


def entity_key(value: Any) -> Entity:
    ((kind, ident),) = value.items()
    return (str(kind), str(ident))


def effective_status(row: ApprovalRequest, at: datetime | None = None) -> str:
    """The status as callers see it: an expired request that never ran has FAILED."""
    if row.status in ("PENDING", "APPROVED") and not row.result_viewed and (at or now()) >= aware(row.expiry):
        return "FAILED"
    return row.status


def expired(row: ApprovalRequest) -> bool:
    return now() >= aware(row.expiry)


async def request_view(keyring: Keyring, row: ApprovalRequest, reviewers: set[Entity]) -> dict[str, Any]:
    """Fortanix's ``ApprovalRequest`` (times as ``YYYYMMDDTHHMMSSZ``)."""
    body = None
    if row.sealed_body is not None:
        body = json.loads(await keyring.open(row.sealed_body, body_context(row.request_id)))
    view: dict[str, Any] = {
        "request_id": row.request_id,
        "requester": entity_dict((row.requester_type, row.requester_id)),
        "created_at": aware(row.created_at).strftime("%Y%m%dT%H%M%SZ"),
        "expiry": aware(row.expiry).strftime("%Y%m%dT%H%M%SZ"),
        "acct_id": row.acct_id,
        "operation": row.operation,
        "method": row.method,
        "body": body,
        "approvers": list(row.approvers),
        "status": effective_status(row),
        "reviewers": [entity_dict(e) for e in sorted(reviewers)],
        "subjects": list(row.subjects),
        "result_viewed": row.result_viewed,
    }
    if row.denier is not None:
        view["denier"] = row.denier
    if row.description is not None:
        view["description"] = row.description
    return view
