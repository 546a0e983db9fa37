"""``xkslab user``: the account's users (the lab has no invitations: a user logs in at once)."""

from __future__ import annotations

from typing import Any

import click

from xkslab.cli.common import emit, json_option, with_core

ROLES = ("ACCOUNTMEMBER", "ACCOUNTADMINISTRATOR", "ACCOUNTAUDITOR")


@click.group()
def user() -> None:
    """Users of the account (quorum approvers, administrators)."""


@user.command("create")
@click.argument("email")
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True, help="Its password.")
@click.option("--role", type=click.Choice(ROLES), default="ACCOUNTMEMBER", show_default=True)
@json_option
@with_core
async def user_create(core: Any, p: Any, email: str, password: str, role: str, as_json: bool) -> None:
    """A user of the account, who can log in at once."""
    created = await core.admin.create_user(p, email, password, role)
    view = {"user_id": created.user_id, "user_email": created.email, "role": role}
    emit(view, as_json, lambda v: f"{v['user_id']}  {v['user_email']}  {v['role']}")
