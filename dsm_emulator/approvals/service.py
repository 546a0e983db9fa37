"""Approval requests (Fortanix ``ApprovalRequestsApi``): their records, who reviews them, and the steps
of their life, each committed together with its audit row.

    PENDING ──approve (quorum met)──▶ APPROVED ──result (requester, once)──▶ runs; FAILED if it failed
       │                                  │
       ├──deny (one reviewer)──▶ DENIED   └──expiry passes before the result is fetched──▶ FAILED
       └──expiry passes──▶ FAILED

The operation itself is not run here: the REST edge dispatches it through the app's router (so it is the
very handler a direct call reaches), once, for the requester, after :meth:`ApprovalService.claim_result`
has marked the result as viewed. The reviewers are the members of the quorums of the groups whose
policies hold the operation, read as they are now (a member removed from a policy no longer counts).
A request by key components is also reviewed by every custodian it names, is approved only once each of
them has approved, and an export's result is fetched by those custodians instead (``custody``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dsm_emulator.approvals.custody import Custody, claim_component
from dsm_emulator.approvals.gate import ApprovalProbe
from dsm_emulator.approvals.policy import members_of, requires_password, satisfied
from dsm_emulator.approvals.records import (
    EXPORT_COMPONENTS,
    Approved,
    Entity,
    body_context,
    custodians_in,
    effective_status,
    entity_dict,
    entity_key,
    entity_of,
    expired,
    is_components,
    now,
    open_body,
    request_view,
)
from dsm_emulator.audit import AuditEvent, AuditLog
from dsm_emulator.authz import Principal
from dsm_emulator.errors import AccessDenied, BadRequest, Conflict, NotFound
from dsm_emulator.keyring import Keyring
from dsm_emulator.models import ApprovalRequest, Group, is_uuid

# How long a request may wait for its quorum and then for its result (setting dsm.approval_expiry_s).
DEFAULT_EXPIRY = timedelta(hours=24)
STATUSES = ("PENDING", "APPROVED", "DENIED", "FAILED")
MAX_DESCRIPTION = 4096

if TYPE_CHECKING:
    from dsm_emulator.admin import AdminService


class ApprovalService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        keyring: Keyring,
        audit: AuditLog,
        admin: AdminService,
        *,
        expiry: timedelta = DEFAULT_EXPIRY,
    ) -> None:
        self._sessions = sessions
        self._keyring = keyring
        self._audit = audit
        self._admin = admin
        self._expiry = expiry
        self.custody = Custody(sessions, keyring, audit, admin)

    # ---------------------------------------------------------------------------------- reads

    @staticmethod
    async def _policies(session: AsyncSession, group_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        rows = (
            await session.execute(
                select(Group.group_id, Group.approval_policy).where(Group.group_id.in_(list(group_ids)))
            )
        ).all()
        return {gid: policy for gid, policy in rows if policy is not None}

    async def reviewers(self, session: AsyncSession, row: ApprovalRequest) -> set[Entity]:
        found: set[Entity] = set()
        for policy in (await self._policies(session, row.group_ids)).values():
            found |= members_of(policy["quorum"])
        return found | set(await self._custodians(row))

    async def _custodians(self, row: ApprovalRequest) -> list[Entity]:
        return custodians_in(await open_body(self._keyring, row)) if is_components(row) else []

    @staticmethod
    async def _custodian_password(session: AsyncSession, group_ids: Iterable[str]) -> bool:
        stmt = select(Group.custodian_policy).where(Group.group_id.in_(list(group_ids)))
        rows = await session.scalars(stmt)
        return any(policy is not None and requires_password(policy["quorum"]) for policy in rows)

    def _may_see(self, p: Principal, row: ApprovalRequest, reviewers: set[Entity]) -> bool:
        if p.acct_id != row.acct_id:
            return False
        if p.is_admin:
            return True
        who = (p.kind, p.id or "")
        return who == (row.requester_type, row.requester_id) or who in reviewers

    async def view(self, row: ApprovalRequest, reviewers: set[Entity]) -> dict[str, Any]:
        return await request_view(self._keyring, row, reviewers)

    async def _row(
        self, session: AsyncSession, p: Principal, request_id: str, *, lock: bool = False
    ) -> tuple[ApprovalRequest, set[Entity]]:
        row = None
        if is_uuid(request_id):
            stmt = select(ApprovalRequest).where(ApprovalRequest.request_id == request_id)
            row = await session.scalar(stmt.with_for_update() if lock else stmt)
        reviewers = await self.reviewers(session, row) if row is not None else set()
        if row is None or not self._may_see(p, row, reviewers):
            raise NotFound("approval request does not exist")
        return row, reviewers

    async def get(self, p: Principal, request_id: str) -> dict[str, Any]:
        async with self._sessions() as session:
            row, reviewers = await self._row(session, p, request_id)
            return await self.view(row, reviewers)

    async def list(
        self,
        p: Principal,
        *,
        requester: str | None = None,
        reviewer: str | None = None,
        subject: str | None = None,
        status: str | None = None,
    ) -> list[dict[str, Any]]:
        """The requests ``p`` may see, newest first; filters by requester id, reviewer id, subject id
        (a kid or group id) and status (as callers see it)."""
        for name, value in (("requester", requester), ("reviewer", reviewer), ("subject", subject)):
            if value is not None and not is_uuid(value):
                raise BadRequest(f"query parameter {name} must be an id")
        if status is not None and status not in STATUSES:
            raise BadRequest(f"query parameter status must be one of {', '.join(STATUSES)}")
        stmt = (
            select(ApprovalRequest)
            .where(ApprovalRequest.acct_id == p.acct_id)
            .order_by(ApprovalRequest.created_at.desc(), ApprovalRequest.request_id)
        )
        if requester is not None:
            stmt = stmt.where(ApprovalRequest.requester_id == requester)
        views = []
        async with self._sessions() as session:
            for row in (await session.scalars(stmt)).all():
                reviewers = await self.reviewers(session, row)
                if not self._may_see(p, row, reviewers):
                    continue
                if reviewer is not None and reviewer not in {ident for _, ident in reviewers}:
                    continue
                if subject is not None and subject not in {
                    ident for item in row.subjects for ident in item.values()
                }:
                    continue
                if status is not None and effective_status(row) != status:
                    continue
                views.append(await self.view(row, reviewers))
        return views

    # ------------------------------------------------------------------------------ mutations

    def _event(self, p: Principal, operation: str, message: str, row_id: str | None = None) -> AuditEvent:
        return AuditEvent.by(p, operation, message, object_id=row_id)

    async def create(
        self,
        p: Principal,
        method: str,
        operation: str,
        body: bytes | None,
        description: str | None,
        probe: ApprovalProbe,
    ) -> dict[str, Any]:
        """Record a request for ``method operation`` (what ``probe`` found it would touch)."""
        requester = entity_of(p)
        if description is not None and len(description) > MAX_DESCRIPTION:
            raise BadRequest(f"description must be at most {MAX_DESCRIPTION} characters")
        request_id = str(uuid.uuid4())
        refusal = self._event(p, "approval.create", f"Create approval request for {method} {operation}")
        if not probe.held:
            error = BadRequest(f"{method} {operation} is not held by any approval policy: call it directly")
            await self._audit.record(refusal.refused(error))
            raise error
        subjects: list[dict[str, str]] = []
        for touch in probe.touched:
            item = {touch.kind: touch.ident}
            if item not in subjects:
                subjects.append(item)
        for group_id in sorted(probe.held):
            if {"group": group_id} not in subjects:
                subjects.append({"group": group_id})
        sealed = None if body is None else self._keyring.seal(body, body_context(request_id))
        created = now()

        async def work(session: AsyncSession) -> tuple[dict[str, Any], AuditEvent]:
            row = ApprovalRequest(
                request_id=request_id,
                acct_id=p.acct_id,
                requester_type=requester[0],
                requester_id=requester[1],
                method=method,
                operation=operation,
                sealed_body=sealed,
                description=description,
                status="PENDING",
                subjects=subjects,
                group_ids=sorted(probe.held),
                approvers=[],
                denier=None,
                created_at=created,
                expiry=created + self._expiry,
                result_viewed=False,
            )
            session.add(row)
            await session.flush()
            held = ", ".join(sorted(set().union(*probe.held.values())))
            event = AuditEvent.by(
                p,
                "approval.create",
                f"Created approval request {request_id} for {method} {operation} ({held})",
                object_id=request_id,
                group_ids=tuple(sorted(probe.held)),
            )
            return await self.view(row, await self.reviewers(session, row)), event

        return await self._audit.apply(work, refusal.refused)

    async def delete(self, p: Principal, request_id: str) -> None:
        """The requester (or an administrator) withdraws a request."""
        refusal = self._event(p, "approval.delete", "Delete approval request", _id(request_id))

        async def work(session: AsyncSession) -> tuple[None, AuditEvent]:
            row, _ = await self._row(session, p, request_id, lock=True)
            if not p.is_admin and (p.kind, p.id) != (row.requester_type, row.requester_id):
                raise AccessDenied("only the requester or an administrator may delete an approval request")
            await session.delete(row)
            await session.flush()
            return None, AuditEvent.by(
                p,
                "approval.delete",
                f"Deleted approval request {row.request_id} ({effective_status(row)})",
                object_id=row.request_id,
                group_ids=tuple(row.group_ids),
            )

        await self._audit.apply(work, refusal.refused)

    async def _review(
        self, p: Principal, request_id: str, operation: str, verb: str, password: object = None
    ) -> dict[str, Any]:
        who = entity_of(p)
        refusal = self._event(p, operation, f"{verb.capitalize()} approval request", _id(request_id))
        password_ok: bool | None = None
        if verb == "approve" and who[0] == "user" and password is not None:
            password_ok = await self._admin.check_user_password(who[1], password)

        async def work(session: AsyncSession) -> tuple[dict[str, Any], AuditEvent]:
            row, reviewers = await self._row(session, p, request_id, lock=True)
            if who not in reviewers:
                raise AccessDenied(f"only a member of the approval policy's quorum may {verb} this request")
            status = effective_status(row)
            if status != "PENDING":
                raise Conflict(f"the approval request is {status}{' (expired)' if expired(row) else ''}")
            policies = await self._policies(session, row.group_ids)
            custodians = set(await self._custodians(row))
            detail = ""
            if verb == "deny":
                row.status, row.denier = "DENIED", entity_dict(who)
            else:
                password_needed = any(requires_password(policy["quorum"]) for policy in policies.values())
                if who in custodians and await self._custodian_password(session, row.group_ids):
                    password_needed = True
                if password_needed:
                    if who[0] != "user":
                        raise AccessDenied("this approval policy requires a password: only users can approve")
                    if password is None:
                        raise BadRequest("this approval policy requires the approver's password")
                    if not password_ok:
                        raise AccessDenied("the password is not correct")
                approvers = [entity_key(a) for a in row.approvers]
                if who in approvers:
                    raise Conflict("you have already approved this request")
                approvers.append(who)
                row.approvers = [entity_dict(a) for a in approvers]
                if (
                    policies
                    and all(satisfied(policy["quorum"], approvers) for policy in policies.values())
                    and custodians <= set(approvers)
                ):
                    row.status = "APPROVED"
                    detail = "; the quorum is met" + (" and every custodian approved" if custodians else "")
            await session.flush()
            past = "denied" if verb == "deny" else "approved"
            event = AuditEvent.by(
                p,
                operation,
                f"{past.capitalize()} approval request {row.request_id} "
                f"({row.method} {row.operation}){detail}",
                object_id=row.request_id,
                group_ids=tuple(row.group_ids),
            )
            return await self.view(row, reviewers), event

        return await self._audit.apply(work, refusal.refused)

    async def approve(self, p: Principal, request_id: str, password: object = None) -> dict[str, Any]:
        return await self._review(p, request_id, "approval.approve", "approve", password)

    async def deny(self, p: Principal, request_id: str) -> dict[str, Any]:
        return await self._review(p, request_id, "approval.deny", "deny")

    async def claim_result(self, p: Principal, request_id: str) -> Approved:
        """Mark an approved request's result as fetched (once, by its requester) and hand back what to run.
        Only after this commits does the operation run, so two concurrent fetches cannot both run it."""
        refusal = self._event(p, "approval.result", "Fetch approval request result", _id(request_id))

        async def work(session: AsyncSession) -> tuple[Approved | None, AuditEvent]:
            row, _ = await self._row(session, p, request_id, lock=True)
            if row.method == "POST" and row.operation == EXPORT_COMPONENTS:
                return await claim_component(self._keyring, row, p, await self._custodians(row))
            if (p.kind, p.id) != (row.requester_type, row.requester_id):
                raise AccessDenied("only the requester may fetch the result of an approval request")
            if row.result_viewed:
                raise Conflict("the result of this approval request has already been fetched")
            status = effective_status(row)
            if status != "APPROVED":
                raise Conflict(
                    f"the approval request is {status}{' (expired)' if expired(row) else ''}; "
                    "only an APPROVED request has a result"
                )
            row.result_viewed = True
            await session.flush()
            body = (
                None
                if row.sealed_body is None
                else await self._keyring.open(row.sealed_body, body_context(row.request_id))
            )
            ids = frozenset(ident for item in row.subjects for ident in item.values())
            event = AuditEvent.by(
                p,
                "approval.result",
                f"Running approved request {row.request_id} ({row.method} {row.operation}) for its requester",
                object_id=row.request_id,
                group_ids=tuple(row.group_ids),
            )
            return Approved(row.method, row.operation, body, ids), event

        claimed = await self._audit.apply(work, refusal.refused)
        if claimed is None:
            raise Conflict("the approval request is FAILED (expired): the rest of its components are erased")
        return claimed

    async def finish_result(self, p: Principal, request_id: str, status: int) -> None:
        """Record how the approved operation ended; a failure marks the request FAILED."""

        async def work(session: AsyncSession) -> tuple[None, AuditEvent]:
            row = await session.get(ApprovalRequest, request_id)
            failed = status >= 400
            if row is not None and failed:
                row.status = "FAILED"
                await session.flush()
            event = AuditEvent.by(
                p,
                "approval.result",
                f"Approved request {request_id} ran: status {status}",
                object_id=request_id,
                group_ids=tuple(row.group_ids) if row is not None else (),
                severity="WARNING" if failed else "INFO",
                outcome="failed" if failed else "success",
            )
            return None, event

        await self._audit.apply(work)


def _id(value: str) -> str | None:
    return value if is_uuid(value) else None
