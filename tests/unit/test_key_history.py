"""Key history and undo in KeyService: what each reversible change records under a group's undo window,
reverts of revoke, destroy, delete, key_ops changes and moves, the move's permissions in both groups, a
move honoured at once by another process's cache, and the end of a window: the item and the sealed
material it kept are erased (a raw-bytes search of the database finds the blob gone) and the revert is
refused. Every test runs on SQLite and PostgreSQL (``sessions``); windows are ended by setting an item's
expiry in the past through the store, or by sweeping at a later time (``sweep_history(at=...)``)."""

from __future__ import annotations

import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text, update

from dsm_emulator.audit import AuditLog
from dsm_emulator.errors import AccessDenied, BadRequest, Conflict, InvalidState, NotFound, NotVisible
from dsm_emulator.keys import UNDO_WINDOW_MIN_S, KeyService, undo_window
from dsm_emulator.models import Group, KeyHistoryItem, SecurityObject
from dsm_emulator.views import sobject_view
from tests.unit import test_keys
from tests.unit.test_keys import PLAINTEXT, Env
from xkslab_shared.config import AuditSettings
from xkslab_shared.generation import Generation

WEEK = UNDO_WINDOW_MIN_S
env = test_keys.env


async def set_window(env: Env, group_id: str, seconds: int | None = WEEK) -> None:
    async with env.sessions.begin() as session:
        await session.execute(
            update(Group).where(Group.group_id == group_id).values(key_history_window_s=seconds)
        )


async def items(env: Env, kid: str) -> list[KeyHistoryItem]:
    async with env.sessions() as session:
        stmt = select(KeyHistoryItem).where(KeyHistoryItem.kid == kid).order_by(KeyHistoryItem.created_at)
        return list((await session.scalars(stmt)).all())


async def sealed(env: Env, kid: str) -> bytes | None:
    async with env.sessions() as session:
        return await session.scalar(select(SecurityObject.sealed_material).where(SecurityObject.kid == kid))


async def end_windows(env: Env, kid: str) -> None:
    """The windows of ``kid``'s items closed a second ago: what days of waiting would do."""
    past = datetime.now(UTC) - timedelta(seconds=1)
    async with env.sessions.begin() as session:
        await session.execute(update(KeyHistoryItem).where(KeyHistoryItem.kid == kid).values(expiry=past))


def stored_bytes(db_url: str) -> bytes:
    """Every byte the database keeps: the SQLite file and its logs, or a PostgreSQL dump."""
    if db_url.startswith("sqlite"):
        path = Path(db_url.split("///", 1)[1])
        return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
    dsn = db_url.replace("postgresql+asyncpg://", "postgresql://")
    proc = subprocess.run(["pg_dump", "--data-only", "--inserts", dsn], capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


async def checkpoint(env: Env) -> None:
    """On SQLite, move the log into the database file, as a lab that has run a while has done: the blob
    is then in the file's pages, not only in the log. Deleted content there must be zeroed, which some
    SQLite builds do by default and xkslab asks for on every connection."""
    async with env.sessions() as session:
        if (await session.connection()).dialect.name == "sqlite":
            assert (await session.execute(text("PRAGMA secure_delete"))).scalar() == 1
            await session.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))


def in_dump(blob: bytes, dump: bytes) -> bool:
    # pg_dump writes bytea as \x<hex>; SQLite holds the raw bytes.
    return blob in dump or blob.hex().encode() in dump


# ------------------------------------------------------------------------------------- policy


@pytest.mark.parametrize(
    ("policy", "field", "error"),
    [
        ({"undo_time_window": WEEK - 1}, "key_undo_policy", "604800 to 15552000"),
        ({"undo_time_window": 180 * 86400 + 1}, "key_history_policy", "604800 to 15552000"),
        ({"undo_time_window": True}, "key_undo_policy", "integer number of seconds"),
        ({"undo_time_window": "604800"}, "key_undo_policy", "integer number of seconds"),
        ({}, "key_history_policy", "integer number of seconds"),
        ({"undo_time_window": WEEK, "max_items": 3}, "key_history_policy", "does not implement max_items"),
        ("remove", "key_undo_policy", "must be"),
        (604800, "key_history_policy", "must be"),
    ],
)
def test_undo_window_is_checked(policy: object, field: str, error: str) -> None:
    with pytest.raises(BadRequest, match=error) as caught:
        undo_window(policy, field)
    assert field in caught.value.message


def test_undo_window_accepts_the_documented_range() -> None:
    assert undo_window({"undo_time_window": WEEK}, "key_undo_policy") == WEEK
    assert undo_window({"undo_time_window": 180 * 86400}, "key_history_policy") == 180 * 86400
    assert undo_window("remove", "key_history_policy") is None


# ------------------------------------------------------------------------------ record, revert


async def test_no_policy_records_nothing_and_destroys_for_good(env: Env) -> None:
    key = await env.aes("plain")
    await env.keys.revoke(env.admin, key.kid, "CessationOfOperation")
    await env.keys.destroy(env.admin, key.kid)
    assert await items(env, key.kid) == [] and await sealed(env, key.kid) is None
    assert (await env.keys.history([key]))[key.kid] is None
    assert "history" not in sobject_view(key, history=None)


async def test_destroy_under_the_policy_is_reverted_and_old_ciphertexts_decrypt(env: Env) -> None:
    await set_window(env, env.group_id)
    key = await env.aes("kek")
    blob = await sealed(env, key.kid)
    ct = await env.keys.encrypt(env.admin, key.kid, "GCM", PLAINTEXT)
    await env.keys.revoke(env.admin, key.kid, "CessationOfOperation", "retired")
    await env.keys.destroy(env.admin, key.kid)
    stored = await env.keys.get(env.admin, kid=key.kid)
    assert stored.state == "Destroyed" and stored.sealed_material is None
    with pytest.raises(InvalidState):
        await env.keys.decrypt(env.admin, key.kid, "GCM", ct.cipher, iv=ct.iv, tag=ct.tag)
    revoked, destroyed = await items(env, key.kid)
    assert (revoked.operation, revoked.state["state"], revoked.state["has_key"]) == (
        "key.revoke",
        "Active",
        True,
    )
    assert (destroyed.operation, destroyed.state["state"]) == ("key.destroy", "Deactivated")
    assert destroyed.sealed_material == blob and revoked.sealed_material is None  # one place only
    assert destroyed.expiry - destroyed.created_at == timedelta(seconds=WEEK)

    view = sobject_view(stored, history=(await env.keys.history([stored]))[key.kid])
    assert [h["id"] for h in view["history"]] == [revoked.id, destroyed.id]
    assert view["history"][1]["state"]["revocation_reason"] == "CessationOfOperation"
    assert view["history"][0]["state"]["has_key"] is True and view["history"][0]["state"]["group_id"]
    assert len(view["history"][0]["expiry"]) == 16 and view["history"][0]["expiry"].endswith("Z")

    back = await env.keys.revert(env.admin, key.kid, [revoked.id])
    assert back.state == "Active" and back.destruction_date is None and back.revocation_reason is None
    assert await sealed(env, key.kid) == blob
    plain = await env.keys.decrypt(env.admin, key.kid, "GCM", ct.cipher, iv=ct.iv, tag=ct.tag)
    assert plain == PLAINTEXT
    # The revert is recorded too, and the blob left the destroy item: it is in one row again.
    after = await items(env, key.kid)
    assert [i.operation for i in after] == ["key.revoke", "key.destroy", "key.revert"]
    assert all(i.sealed_material is None for i in after)
    assert after[2].state["state"] == "Destroyed" and after[2].state["has_key"] is False
    # ... so the revert can be undone: back to Destroyed, with the blob in the new item.
    await env.keys.revert(env.admin, key.kid, [after[2].id])
    assert (await env.keys.get(env.admin, kid=key.kid)).state == "Destroyed"
    assert await sealed(env, key.kid) is None
    assert [i.sealed_material for i in await items(env, key.kid)][-1] == blob

    rows = [(r.operation, r.outcome) for r in await env.rows(object_id=key.kid)]
    assert rows == [
        ("key.create", "success"),
        ("crypto.encrypt", "success"),
        ("key.revoke", "success"),
        ("key.destroy", "success"),
        ("crypto.decrypt", "refused"),
        ("key.revert", "success"),
        ("crypto.decrypt", "success"),
        ("key.revert", "success"),
    ]
    reverts = await env.rows(operation="key.revert")
    assert len(reverts) == 2 and revoked.id in reverts[0].message and "state Active" in reverts[0].message


async def test_compromise_activate_and_key_ops_are_recorded_and_reverted(env: Env) -> None:
    await set_window(env, env.group_id)
    pre = await env.aes("later", state="PreActive")
    await env.keys.activate(env.admin, pre.kid)
    await env.keys.revoke(env.admin, pre.kid, "KeyCompromise")
    await env.keys.update(env.admin, pre.kid, key_ops=["DECRYPT"])
    await env.keys.update(env.admin, pre.kid, key_ops=["DECRYPT"], description="same ops: not recorded")
    activated, compromised, ops = await items(env, pre.kid)
    assert [activated.state["state"], compromised.state["state"], ops.state["state"]] == [
        "PreActive",
        "Active",
        "Compromised",
    ]
    assert "ENCRYPT" in ops.state["key_ops"]
    await env.keys.revert(env.admin, pre.kid, [ops.id])
    key = await env.keys.get(env.admin, kid=pre.kid)
    assert "ENCRYPT" in key.key_ops and key.state == "Compromised" and key.compromise_date is not None
    await env.keys.revert(env.admin, pre.kid, [activated.id])
    key = await env.keys.get(env.admin, kid=pre.kid)
    assert key.state == "PreActive" and key.activation_date is None and key.compromise_date is None


async def test_delete_under_the_policy_hides_the_key_until_reverted(env: Env) -> None:
    await set_window(env, env.group_id)
    key = await env.aes("deleted-softly")
    ct = await env.keys.encrypt(env.admin, key.kid, "GCM", PLAINTEXT)
    await env.keys.delete(env.admin, key.kid)
    for lookup in (dict(kid=key.kid), dict(name="deleted-softly")):
        with pytest.raises(NotFound):
            await env.keys.get(env.admin, **lookup)  # type: ignore[arg-type]
    with pytest.raises(NotFound):
        await env.keys.decrypt(env.admin, key.kid, "GCM", ct.cipher, iv=ct.iv, tag=ct.tag)
    with pytest.raises(NotFound):
        await env.keys.delete(env.admin, key.kid)
    assert await env.keys.list(env.admin, show_destroyed=True) == []
    (shown,) = await env.keys.list(env.admin, show_deleted=True)
    assert shown.state == "Deleted" and shown.deletion_date is not None
    with pytest.raises(Conflict):  # the name stays the deleted key's while it can come back
        await env.aes("deleted-softly")

    (deleted,) = await items(env, key.kid)
    assert deleted.operation == "key.delete" and deleted.sealed_material is not None
    await env.keys.revert(env.admin, key.kid, [deleted.id])
    back = await env.keys.get(env.admin, name="deleted-softly")
    assert back.state == "Active" and back.deletion_date is None
    assert await env.keys.decrypt(env.admin, key.kid, "GCM", ct.cipher, iv=ct.iv, tag=ct.tag) == PLAINTEXT


async def test_revert_ids_are_checked(env: Env) -> None:
    await set_window(env, env.group_id)
    key, other = await env.aes("one"), await env.aes("two")
    await env.keys.update(env.admin, key.kid, key_ops=["ENCRYPT", "DECRYPT"])
    await env.keys.update(env.admin, other.kid, key_ops=["DECRYPT"])
    (mine,), (theirs,) = await items(env, key.kid), await items(env, other.kid)
    for ids, error in [
        ([], "exactly one"),
        ([mine.id, mine.id], "exactly one"),
        ([str(uuid.uuid4())], "not a history item"),
        (["not-a-uuid"], "not a history item"),
        ([theirs.id], "not a history item"),
    ]:
        with pytest.raises(BadRequest, match=error):
            await env.keys.revert(env.admin, key.kid, ids)
    refused = await env.rows(operation="key.revert", outcome="refused")
    assert len(refused) == 5 and all(r.object_id == key.kid for r in refused)
    # A PATCH that names the group the key is already in moves nothing and says so.
    await env.keys.update(env.admin, key.kid, group_id=env.group_id)
    assert (await env.rows(operation="key.update"))[-1].message == "Updated one"


# ---------------------------------------------------------------------------------------- move


async def test_move_needs_manage_in_both_groups_and_is_revertible(env: Env) -> None:
    await set_window(env, env.group_id)
    key = await env.aes("mover")
    both = env.app({env.group_id: {"MANAGE"}, env.other_group_id: {"MANAGE"}})
    source_only = env.app({env.group_id: {"MANAGE"}})
    no_manage_there = env.app({env.group_id: {"MANAGE"}, env.other_group_id: {"ENCRYPT"}})
    dest_only = env.app({env.other_group_id: {"MANAGE"}})
    with pytest.raises(NotFound, match="group does not exist"):
        await env.keys.update(source_only, key.kid, group_id=env.other_group_id)
    with pytest.raises(AccessDenied, match="destination group"):
        await env.keys.update(no_manage_there, key.kid, group_id=env.other_group_id)
    with pytest.raises(NotVisible):
        await env.keys.update(dest_only, key.kid, group_id=env.other_group_id)
    with pytest.raises(NotFound, match="group does not exist"):
        await env.keys.update(env.admin, key.kid, group_id=str(uuid.uuid4()))
    assert (await env.keys.get(env.admin, kid=key.kid)).group_id == env.group_id
    assert await items(env, key.kid) == []  # refusals record nothing

    moved = await env.keys.update(both, key.kid, group_id=env.other_group_id)
    assert moved.group_id == env.other_group_id
    with pytest.raises(NotFound):
        await env.keys.get(source_only, kid=key.kid)
    (row,) = [r for r in await env.rows(operation="key.update", outcome="success") if r.object_id == key.kid]
    assert row.message == f"Moved mover from group {env.group_id} to group {env.other_group_id}"
    assert sorted(row.group_ids) == sorted([env.group_id, env.other_group_id])
    refused = [r for r in await env.rows(operation="key.update", outcome="refused") if r.object_id == key.kid]
    assert len(refused) == 4

    (item,) = await items(env, key.kid)  # recorded under the source group's window
    assert item.state["group_id"] == env.group_id
    with pytest.raises(NotFound, match="group does not exist"):
        await env.keys.revert(dest_only, key.kid, [item.id])  # a revert is a move back: both groups
    await env.keys.revert(both, key.kid, [item.id])
    assert (await env.keys.get(source_only, kid=key.kid)).group_id == env.group_id


async def test_a_move_is_honoured_at_once_by_another_process(env: Env, db_url: str) -> None:
    """Two KeyServices with their own generation-checked caches stand for two processes on one database;
    the second polls the generation on every call, so only a move that raises it is seen."""
    other_generation = Generation(env.sessions, poll_s=0.0)
    other = KeyService(env.sessions, env.keyring, env.audit, max_age_s=3600.0, generation=other_generation)
    mover_generation = Generation(env.sessions, poll_s=3600.0)
    audit = AuditLog(env.sessions, env.keyring, AuditSettings(node_id="mover"), mover_generation)
    await audit.start()
    try:
        mover = KeyService(env.sessions, env.keyring, audit, generation=mover_generation)
        key = await env.aes("hot")
        app = env.app({env.group_id: {"ENCRYPT", "DECRYPT"}})
        await other.encrypt(app, key.kid, "GCM", PLAINTEXT)  # cached in the other process now
        await mover.update(env.admin, key.kid, group_id=env.other_group_id)
        with pytest.raises(NotFound):
            await other.encrypt(app, key.kid, "GCM", PLAINTEXT)
    finally:
        await audit.close()


# ------------------------------------------------------------------------------ end of window


async def test_after_the_window_the_material_is_erased_and_the_revert_refused(env: Env, db_url: str) -> None:
    await set_window(env, env.group_id)
    key = await env.aes("erased")
    blob = await sealed(env, key.kid)
    assert blob is not None
    await env.keys.revoke(env.admin, key.kid, "Superseded")
    await env.keys.destroy(env.admin, key.kid)
    revoked, _destroyed = await items(env, key.kid)
    await checkpoint(env)
    assert in_dump(blob, stored_bytes(db_url))  # kept, sealed, while the window is open

    await end_windows(env, key.kid)
    with pytest.raises(BadRequest, match="undo window"):
        await env.keys.revert(env.admin, key.kid, [revoked.id])
    assert await items(env, key.kid) == []
    assert not in_dump(blob, stored_bytes(db_url))
    (row,) = await env.rows(operation="key.history.expire")
    assert row.actor_type == "System" and row.object_id == key.kid
    assert "2 history item(s) erased, with the key material they kept" in row.message
    stored = await env.keys.get(env.admin, kid=key.kid)  # metadata kept: a destroyed key stays listed
    assert stored.state == "Destroyed"


async def test_a_deleted_key_is_gone_for_good_when_its_window_closes(env: Env, db_url: str) -> None:
    await set_window(env, env.group_id)
    key = await env.aes("deleted-for-good")
    blob = await sealed(env, key.kid)
    assert blob is not None
    await env.keys.delete(env.admin, key.kid)
    await checkpoint(env)
    assert in_dump(blob, stored_bytes(db_url))
    assert await env.keys.sweep_history() == 0  # nothing has expired yet
    assert await env.keys.sweep_history(at=datetime.now(UTC) + timedelta(seconds=WEEK - 60)) == 0
    assert await env.keys.sweep_history(at=datetime.now(UTC) + timedelta(seconds=WEEK + 1)) == 1
    with pytest.raises(NotFound):
        await env.keys.get_deleted(env.admin, key.kid)
    assert not in_dump(blob, stored_bytes(db_url))
    (row,) = await env.rows(operation="key.history.expire")
    assert row.message.endswith("the deleted key is gone for good")
    again = await env.aes("deleted-for-good")  # the name is free now
    assert again.kid != key.kid


async def test_items_keep_their_window_when_the_policy_goes(env: Env) -> None:
    await set_window(env, env.group_id)
    key = await env.aes("policy-removed")
    await env.keys.update(env.admin, key.kid, key_ops=["ENCRYPT"])
    await set_window(env, env.group_id, None)
    await env.keys.update(env.admin, key.kid, key_ops=["DECRYPT"])  # no policy now: not recorded
    (item,) = await items(env, key.kid)
    history = (await env.keys.history([await env.keys.get(env.admin, kid=key.kid)]))[key.kid]
    assert history is not None and [h.id for h in history] == [item.id]
    await env.keys.revert(env.admin, key.kid, [item.id])
    assert "ENCRYPT" in (await env.keys.get(env.admin, kid=key.kid)).key_ops
