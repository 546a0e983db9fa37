"""What an approval request is as callers see it: the identities in it, its effective status (expiry
included) and Fortanix's ``ApprovalRequest`` shape. Pure functions over a row, shared by the service and
its readers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dsm_emulator.authz import Principal
from dsm_emulator.errors import AccessDenied
from dsm_emulator.keyring import Keyring
from dsm_emulator.models import ApprovalRequest

Entity = tuple[str, str]  # ("user" | "app", id)

# Exports and imports by key components: their custodians review them too, and an export's custodians
# (not its requester) each fetch their own component.
EXPORT_COMPONENTS = "/crypto/v1/keys/components/export"
IMPORT_COMPONENTS = "/crypto/v1/keys/components/import"


@dataclass(frozen=True)
class Approved:
    """What the REST edge needs to run an approved request's operation once."""

    method: str
    operation: str
    body: bytes | None
    approved_ids: frozenset[str]
    # An export by components fetched by one of its custodians: their component is all they get, from
    # the split already made (``stored``, the whole answer) or from the one this run makes.
    custodian: bool = False
    stored: dict[str, Any] | None = None
    requester: Entity | None = None  # whom a custodian's fetch runs the export as


def now() -> datetime:
    return datetime.now(UTC)


def aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def body_context(request_id: str) -> bytes:
    return f"approval|{request_id}".encode()


def result_context(request_id: str) -> bytes:
    return f"approval-result|{request_id}".encode()


def is_components(row: ApprovalRequest) -> bool:
    return row.method == "POST" and row.operation in (EXPORT_COMPONENTS, IMPORT_COMPONENTS)


async def open_body(keyring: Keyring, row: ApprovalRequest) -> Any:
    if row.sealed_body is None:
        return None
    return json.loads(await keyring.open(row.sealed_body, body_context(row.request_id)))


def custodians_in(body: Any) -> list[Entity]:
    """The custodians an export or import by components names (its handler checked them at creation)."""
    custodians = body.get("custodians") if isinstance(body, dict) else None
    if not isinstance(custodians, list):
        return []
    return [("user", str(c["user"])) for c in custodians if isinstance(c, dict) and c.get("user")]


def withheld(row: ApprovalRequest, body: Any) -> Any:
    """The body as reviewers see it: an import's components are the custodians' secrets, never shown."""
    if row.operation != IMPORT_COMPONENTS or not isinstance(body, dict):
        return body
    parts = body.get("components")
    if not isinstance(parts, list):
        return body
    hidden = [{**part, "component": None} if isinstance(part, dict) else None for part in parts]
    return {**body, "components": hidden}


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
    body = withheld(row, await open_body(keyring, row))
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
