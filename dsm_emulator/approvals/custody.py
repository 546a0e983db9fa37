"""The results of an approved export by key components: each custodian the request names fetches it, and
gets only their own component. The first fetch runs the export (as the requester) and the whole split is
kept sealed by the keyring for the other custodians, and erased when the last of them has fetched theirs;
no component is ever stored unsealed, logged or audited.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dsm_emulator.approvals.records import (
    Approved,
    Entity,
    body_context,
    effective_status,
    entity_dict,
    entity_key,
    entity_of,
    expired,
    result_context,
)
from dsm_emulator.audit import AuditEvent, AuditLog
from dsm_emulator.authz import Principal
from dsm_emulator.errors import AccessDenied, Conflict
from dsm_emulator.keyring import Keyring
from dsm_emulator.models import App, ApprovalRequest, User
from xkslab_shared import json_body

if TYPE_CHECKING:
    from dsm_emulator.admin import AdminService


def own_component(answer: dict[str, Any], who: Entity) -> dict[str, Any]:
    parts = answer.get("components") or []
    return {**answer, "components": [c for c in parts if c.get("custodian") == entity_dict(who)]}


async def claim_component(
    keyring: Keyring, row: ApprovalRequest, p: Principal, custodians: list[Entity]
) -> tuple[Approved | None, AuditEvent]:
    """One custodian's fetch, under the request's row lock: the first runs the export (and the REST edge
    hands its answer to :meth:`Custody.keep`); each later one gets its component from the sealed split,
    which is erased once the last custodian has fetched theirs. Past the request's expiry the split is
    erased instead and the request FAILED: None (the caller refuses the fetch once that is committed)."""
    who = entity_of(p)
    if who not in custodians:
        raise AccessDenied("only the key custodians the request names fetch its components")
    viewers = [entity_key(v) for v in row.result_viewers or []]
    if who in viewers:
        raise Conflict("you have already fetched your component of this request")
    if row.result_viewed and expired(row):
        row.sealed_result, row.status = None, "FAILED"
        event = AuditEvent.by(
            p,
            "approval.result",
            f"Approved request {row.request_id} expired before every custodian fetched their component: "
            "the rest of the split is erased",
            object_id=row.request_id,
            group_ids=tuple(row.group_ids),
            severity="WARNING",
        )
        return None, event
    status = effective_status(row)
    if status != "APPROVED":
        raise Conflict(
            f"the approval request is {status}{' (expired)' if expired(row) else ''}; "
            "only an APPROVED request has a result"
        )
    if row.result_viewed and row.sealed_result is None:
        raise Conflict("the components of this request are being made: fetch yours again")
    stored = None
    if row.sealed_result is not None:
        stored = json.loads(await keyring.open(row.sealed_result, result_context(row.request_id)))
    viewers.append(who)
    row.result_viewers = [entity_dict(v) for v in viewers]
    row.result_viewed = True
    left = len(custodians) - len(viewers)
    if left == 0:
        row.sealed_result = None
    body = None
    if row.sealed_body is not None:
        body = await keyring.open(row.sealed_body, body_context(row.request_id))
    ids = frozenset(ident for item in row.subjects for ident in item.values())
    event = AuditEvent.by(
        p,
        "approval.result",
        f"Custodian fetched their component of approved request {row.request_id} "
        f"({'made now' if stored is None else 'from the sealed split'}; {left} custodian(s) left)",
        object_id=row.request_id,
        group_ids=tuple(row.group_ids),
    )
    mine = None if stored is None else own_component(stored, who)
    requester = (row.requester_type, row.requester_id)
    approved = Approved(
        row.method, row.operation, body, ids, custodian=True, stored=mine, requester=requester
    )
    return approved, event


class Custody:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        keyring: Keyring,
        audit: AuditLog,
        admin: AdminService,
    ) -> None:
        self._sessions = sessions
        self._keyring = keyring
        self._audit = audit
        self._admin = admin

    async def requester_principal(self, acct_id: str, requester: Entity) -> Principal:
        """The requester as they are now (an export by components runs as its requester, even when one of
        its custodians fetches it: custodians need no permission on the key)."""
        kind, ident = requester
        async with self._sessions() as session:
            found = await session.get(User if kind == "user" else App, ident)
        if isinstance(found, User):
            return await self._admin.principal_for_user(found, acct_id)
        if isinstance(found, App):
            return await self._admin.principal_for_app(found)
        raise Conflict("the requester of this approval request no longer exists")

    async def keep(self, p: Principal, request_id: str, answer: dict[str, Any]) -> dict[str, Any]:
        """Seal the whole split the first custodian's fetch made, for the others; their own part back."""
        who = entity_of(p)

        async def work(session: AsyncSession) -> tuple[dict[str, Any], AuditEvent]:
            row = await session.get(ApprovalRequest, request_id, with_for_update=True)
            if row is None:
                raise Conflict("the approval request was deleted while its components were made")
            row.sealed_result = self._keyring.seal(json_body.dumps(answer), result_context(request_id))
            await session.flush()
            event = AuditEvent.by(
                p,
                "approval.result",
                f"Sealed the other components of approved request {request_id} for their custodians",
                object_id=request_id,
                group_ids=tuple(row.group_ids),
            )
            return own_component(answer, who), event

        return await self._audit.apply(work)
