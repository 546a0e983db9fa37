"""AdminService's users of an account (dsm_emulator.admin.users), on SQLite and PostgreSQL: two
administrators demoting each other at the same time leave one administrator; a user named in a quorum
policy is not removed; names are set and cleared; a removed user's principal is refused."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select

from dsm_emulator import store
from dsm_emulator.admin import AccountChanges, AdminService, UserChanges
from dsm_emulator.audit import AuditLog
from dsm_emulator.errors import AccessDenied, BadRequest, Conflict, NotFound
from dsm_emulator.models import AccountMember, Group
from tests.unit.test_admin import Env, env
from xkslab_shared.config import AuditSettings

__all__ = ["env"]  # the fixture, shared with the other AdminService tests


async def test_two_administrators_demoting_each_other_leave_one(env: Env, db_url: str) -> None:
    bob = await env.admin.create_user(env.p, "bob@example.com", "bob pass", "ACCOUNTADMINISTRATOR")
    as_bob = await env.admin.principal_for_user(bob, env.acct_id)
    member = UserChanges(role="ACCOUNTMEMBER")
    # Two DSM nodes on the same database, as DsmCore opens it, each with its own audit writer (its own
    # chain), so that neither serialises the other's transactions.
    engine = store.create_engine(db_url, write_lock_first=True)
    nodes = [
        AuditLog(store.session_factory(engine), env.keyring, AuditSettings(node_id=n)) for n in ("a", "b")
    ]
    for node in nodes:
        await node.start()
    try:
        one, two = (AdminService(store.session_factory(engine), env.keyring, node) for node in nodes)
        results = await asyncio.gather(
            one.update_user(env.p, bob.user_id, member),
            two.update_user(as_bob, env.user.user_id, member),
            return_exceptions=True,
        )
    finally:
        for node in nodes:
            await node.close()
        await engine.dispose()
    refused = [r for r in results if isinstance(r, Exception)]
    assert len(refused) == 1 and isinstance(refused[0], Conflict), results
    async with env.sessions() as session:
        roles = (
            await session.scalars(select(AccountMember.roles).where(AccountMember.acct_id == env.acct_id))
        ).all()
    assert sorted(r[0] for r in roles) == ["ACCOUNTADMINISTRATOR", "ACCOUNTMEMBER"]


async def test_a_quorum_member_is_not_removed(env: Env) -> None:
    bob = await env.admin.create_user(env.p, "bob@example.com", "bob pass")
    async with env.sessions() as session, session.begin():
        group = await session.get(Group, env.group_id)
        assert group is not None
        group.approval_policy = {"quorum": {"n": 1, "members": [{"user": bob.user_id}]}}
    with pytest.raises(Conflict, match="quorum or custodian policy"):
        await env.admin.remove_user(env.p, bob.user_id)
    user, roles = await env.admin.get_user(env.p, bob.user_id)
    assert (user.email, roles) == ("bob@example.com", ["ACCOUNTMEMBER"])


async def test_names_set_and_cleared_and_a_removed_user_refused(env: Env) -> None:
    bob = await env.admin.create_user(env.p, "bob@example.com", "bob pass", names=("Bob", None))
    as_bob = await env.admin.principal_for_user(bob, env.acct_id)
    user, _ = await env.admin.update_user(
        as_bob, bob.user_id, UserChanges(first_name="", last_name="Builder")
    )
    assert (user.first_name, user.last_name) == (None, "Builder")
    with pytest.raises(AccessDenied):
        await env.admin.update_user(as_bob, env.user.user_id, UserChanges(first_name="Mallory"))
    with pytest.raises(BadRequest, match="enabled"):
        await env.admin.update_account(env.p, env.acct_id, AccountChanges(enabled=False))
    await env.admin.remove_user(env.p, bob.user_id)
    with pytest.raises(NotFound):
        await env.admin.get_user(env.p, bob.user_id)
    with pytest.raises(AccessDenied):
        await env.admin.principal_for_user(bob, env.acct_id)
