"""``xkslab approval``: the account's quorum approval requests, for its administrator. Approving or
denying is done as a named user of the account (a member of the policy's quorum): the operator of the
data directory picks who, and gives that user's password when the policy requires one."""

from __future__ import annotations

from typing import Any

import click

from xkslab.cli.common import details, emit, json_option, with_core

STATUSES = ("PENDING", "APPROVED", "DENIED", "FAILED")


def _line(r: dict[str, Any]) -> str:
    (kind, ident), *_ = r["requester"].items()
    return f"{r['request_id']}  {r['status']:<8}  {r['method']} {r['operation']}  by {kind} {ident}"


def _lines(views: list[dict[str, Any]]) -> str:
    return "\n".join(map(_line, views)) if views else "no approval requests"


@click.group()
def approval() -> None:
    """Quorum approval requests: list, show, approve, deny."""


@approval.command("list")
@click.option("--status", type=click.Choice(STATUSES), default=None)
@click.option("--requester", default=None, help="A user or app id.")
@click.option("--reviewer", default=None, help="A user or app id.")
@click.option("--subject", default=None, help="A key id or group id.")
@json_option
@with_core
async def approval_list(
    core: Any,
    p: Any,
    status: str | None,
    requester: str | None,
    reviewer: str | None,
    subject: str | None,
    as_json: bool,
) -> None:
    """Approval requests of the account, newest first."""
    views = await core.approvals.list(
        p, requester=requester, reviewer=reviewer, subject=subject, status=status
    )
    emit(views, as_json, _lines)


@approval.command("show")
@click.argument("request_id")
@json_option
@with_core
async def approval_show(core: Any, p: Any, request_id: str, as_json: bool) -> None:
    """One request: its operation, body, reviewers, approvers and status."""
    emit(await core.approvals.get(p, request_id), as_json, details)


_as_option = click.option(
    "--as",
    "email",
    default=None,
    help="The user who reviews (a member of the quorum); default: the account's administrator.",
)


async def _reviewer(core: Any, p: Any, email: str | None) -> Any:
    user = await core.admin.user_by_email(p, email)
    return await core.admin.principal_for_user(user, p.acct_id)


@approval.command("approve")
@click.argument("request_id")
@_as_option
@click.option(
    "--password",
    default=None,
    envvar="XKSLAB_APPROVER_PASSWORD",
    help="The reviewer's password, for policies with require_password (or XKSLAB_APPROVER_PASSWORD).",
)
@json_option
@with_core
async def approval_approve(
    core: Any, p: Any, request_id: str, email: str | None, password: str | None, as_json: bool
) -> None:
    """Approve a request as a member of its quorum."""
    view = await core.approvals.approve(await _reviewer(core, p, email), request_id, password)
    emit(view, as_json, _line)


@approval.command("deny")
@click.argument("request_id")
@_as_option
@json_option
@with_core
async def approval_deny(core: Any, p: Any, request_id: str, email: str | None, as_json: bool) -> None:
    """Deny a request as a member of its quorum: it will never run."""
    view = await core.approvals.deny(await _reviewer(core, p, email), request_id)
    emit(view, as_json, _line)
