"""Key history, undo and the group move over the DSM REST API, on SQLite and PostgreSQL: the real ``sdkms``
SDK sets a group's ``key_undo_policy``, moves a key between groups (refused where the app may not manage
both), reads the key's ``history`` and reverts a move and a destroy (the old ciphertext decrypts again);
the policy's checks and its 2026 name (``key_history_policy``, ``"remove"``) over plain HTTP; and, after
the window, a refused revert with the sealed material gone from the database."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from sqlalchemy import select, update

from dsm_emulator import store
from dsm_emulator.api import app as dsm_app
from dsm_emulator.api.app import create_app
from dsm_emulator.keys import UNDO_WINDOW_MAX_S, UNDO_WINDOW_MIN_S
from dsm_emulator.models import AuditRow, KeyHistoryItem, SecurityObject
from tests.integration.test_cli import init
from tests.integration.test_dsm_api import EMAIL, PASSWORD, basic
from tests.integration.test_sdkms_sdk import login_admin, login_app
from tests.unit.test_key_history import in_dump, stored_bytes
from xkslab_shared.config import load_settings

WEEK = UNDO_WINDOW_MIN_S


@dataclass
class Dsm:
    url: str
    db_url: str


@pytest.fixture
async def dsm(empty_db_url: str, tmp_path: Path) -> AsyncIterator[Dsm]:
    data_dir = tmp_path / "data"
    await asyncio.to_thread(init, data_dir, empty_db_url)
    settings = load_settings(data_dir)
    runner = web.AppRunner(create_app(settings))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield Dsm(f"http://127.0.0.1:{port}", settings.database_url)
    finally:
        await runner.cleanup()


async def query(db_url: str, stmt: Any, *, write: bool = False) -> Any:
    engine = store.create_engine(db_url)
    try:
        async with engine.begin() as conn:
            result = await conn.execute(stmt)
            return None if write else result.all()
    finally:
        await engine.dispose()


def move_and_undo(url: str) -> dict[str, Any]:
    import sdkms.v1 as sdk
    from sdkms.v1.rest import ApiException

    def status(call: Any) -> int:
        try:
            call()
        except ApiException as exc:
            return int(exc.status)
        return 200

    admin = login_admin(sdk, url)
    groups = sdk.GroupsApi(api_client=admin)
    undo = groups.create_group(
        sdk.GroupRequest(name="undo", key_undo_policy=sdk.KeyUndoPolicy(undo_time_window=WEEK))
    )
    elsewhere = groups.create_group(sdk.GroupRequest(name="elsewhere"))
    out: dict[str, Any] = {
        "undo": undo.group_id,
        "elsewhere": elsewhere.group_id,
        "policy": groups.get_group(undo.group_id).key_undo_policy.undo_time_window,
        "no_policy": groups.get_group(elsewhere.group_id).key_undo_policy,
    }
    apps = sdk.AppsApi(api_client=admin)
    perms = ["ENCRYPT", "DECRYPT", "MANAGE"]

    def app(name: str, grants: dict[str, list[str]]) -> Any:
        made = apps.create_app(sdk.AppRequest(name=name, default_group=undo.group_id, add_groups=grants))
        secret = apps.get_credential(made.app_id).credential.secret
        client, _ = login_app(sdk, url, base64.b64encode(f"{made.app_id}:{secret}".encode()).decode())
        return client

    mover = app("mover", {undo.group_id: perms, elsewhere.group_id: perms})
    stayer = app("stayer", {undo.group_id: perms})
    watcher = app("watcher", {undo.group_id: perms, elsewhere.group_id: ["ENCRYPT"]})
    keys, stayer_keys = sdk.SecurityObjectsApi(api_client=mover), sdk.SecurityObjectsApi(api_client=stayer)
    watcher_keys = sdk.SecurityObjectsApi(api_client=watcher)
    crypto = sdk.EncryptionAndDecryptionApi(api_client=mover)
    key = keys.generate_security_object(
        sdk.SobjectRequest(
            name="kek", obj_type="AES", key_size=256, group_id=undo.group_id,
            key_ops=["ENCRYPT", "DECRYPT", "APPMANAGEABLE"],
        )
    )  # fmt: skip
    out["kid"] = key.kid
    enc = crypto.encrypt(
        key.kid, sdk.EncryptRequest(alg="AES", plain=bytearray(b"old data"), mode="GCM", tag_len=128)
    )

    def decrypts() -> bool:
        dec = crypto.decrypt(
            key.kid, sdk.DecryptRequest(alg="AES", cipher=enc.cipher, mode="GCM", iv=enc.iv, tag=enc.tag)
        )
        return bytes(dec.plain) == b"old data"

    move = sdk.SobjectRequest(group_id=elsewhere.group_id)
    out["stayer_move"] = status(lambda: stayer_keys.update_security_object(key.kid, move))
    out["watcher_move"] = status(lambda: watcher_keys.update_security_object(key.kid, move))
    out["moved_to"] = keys.update_security_object(key.kid, move).group_id
    out["stayer_after"] = status(lambda: stayer_keys.get_security_object(key.kid))
    out["decrypts_moved"] = decrypts()
    seen = keys.get_security_object(key.kid)
    (item,) = seen.history
    # sdkms 5.6's HistoryItemState has no has_key (the 2026 model's); the HTTP test reads it.
    out["item"] = (item.state.group_id, item.state.state.value, sorted(op.value for op in item.state.key_ops))
    out["item_times"] = (item.created_at, item.expiry)
    keys.revert_history_item(key.kid, {"ids": [item.id]})
    out["reverted_to"] = keys.get_security_object(key.kid).group_id
    out["stayer_sees"] = stayer_keys.get_security_object(key.kid).kid

    keys.revoke_security_object(key.kid, sdk.RevocationReason(code="CessationOfOperation"))
    keys.destroy_security_object(key.kid)
    out["destroyed_decrypt"] = status(decrypts)
    history = keys.get_security_object(key.kid).history
    out["history"] = [
        (h.state.state.value, h.state.revocation_reason and h.state.revocation_reason.value) for h in history
    ]
    active = [h for h in history if h.state.state.value == "Active"][-1]
    keys.revert_history_item(key.kid, {"ids": [active.id]})
    out["state_after_undo"] = keys.get_security_object(key.kid).state.value
    out["decrypts_after_undo"] = decrypts()
    return out


async def test_sdkms_moves_a_key_and_undoes_the_move_and_a_destroy(dsm: Dsm) -> None:
    r = await asyncio.to_thread(move_and_undo, dsm.url)
    assert r["policy"] == WEEK and r["no_policy"] is None
    assert r["stayer_move"] == 404  # not a member of the destination: it does not exist for the app
    assert r["watcher_move"] == 403  # a member without MANAGE there
    assert r["moved_to"] == r["elsewhere"] and r["stayer_after"] == 404 and r["decrypts_moved"]
    assert r["item"] == (r["undo"], "Active", ["APPMANAGEABLE", "DECRYPT", "ENCRYPT"])
    created, expiry = (datetime.strptime(t, "%Y%m%dT%H%M%SZ") for t in r["item_times"])
    assert expiry - created == timedelta(seconds=WEEK)
    assert r["reverted_to"] == r["undo"] and r["stayer_sees"] == r["kid"]
    assert r["destroyed_decrypt"] == 400
    assert r["history"][-2:] == [("Active", None), ("Deactivated", "CessationOfOperation")]
    assert r["state_after_undo"] == "Active" and r["decrypts_after_undo"]

    rows = await query(
        dsm.db_url,
        select(AuditRow.operation, AuditRow.outcome, AuditRow.message, AuditRow.group_ids)
        .where(AuditRow.object_id == r["kid"], AuditRow.operation.in_(["key.update", "key.revert"]))
        .order_by(AuditRow.time, AuditRow.seq),
    )
    assert [(op, outcome) for op, outcome, _, _ in rows] == [
        ("key.update", "refused"),
        ("key.update", "refused"),
        ("key.update", "success"),
        ("key.revert", "success"),
        ("key.revert", "success"),
    ]
    moved = rows[2]
    assert moved[2] == f"Moved kek from group {r['undo']} to group {r['elsewhere']}"
    assert sorted(moved[3]) == sorted([r["undo"], r["elsewhere"]])


async def test_group_history_policy_over_http(dsm: Dsm) -> None:
    async with aiohttp.ClientSession(dsm.url, headers=basic(EMAIL, PASSWORD)) as http:
        async with http.post("/sys/v1/session/auth") as resp:
            token = (await resp.json())["access_token"]
        http.headers["Authorization"] = f"Bearer {token}"

        async def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
            async with http.request(method, path, json=body) as resp:
                return resp.status, await resp.json() if resp.status != 204 else None

        status, group = await call(
            "POST", "/sys/v1/groups", {"name": "h", "key_history_policy": {"undo_time_window": WEEK}}
        )
        assert status == 200 and group["key_history_policy"] == group["key_undo_policy"] == {
            "undo_time_window": WEEK
        }
        gid = group["group_id"]
        for body, named in [
            ({"key_history_policy": {"undo_time_window": WEEK - 1}}, "key_history_policy.undo_time_window"),
            (
                {"key_undo_policy": {"undo_time_window": UNDO_WINDOW_MAX_S + 1}},
                "key_undo_policy.undo_time_window",
            ),
            ({"key_undo_policy": "remove"}, "key_undo_policy"),
            ({"key_history_policy": {"undo_time_window": WEEK, "extra": 1}}, "does not implement extra"),
            (
                {
                    "key_undo_policy": {"undo_time_window": WEEK},
                    "key_history_policy": {"undo_time_window": 2 * WEEK},
                },
                "disagree",
            ),
        ]:
            status, error = await call("PATCH", f"/sys/v1/groups/{gid}", body)
            assert status == 400 and named in error["message"], (body, error)
            status, error = await call("POST", "/sys/v1/groups", {"name": "refused", **body})
            assert status == 400 and named in error["message"], (body, error)
        status, group = await call(
            "PATCH", f"/sys/v1/groups/{gid}", {"key_undo_policy": {"undo_time_window": UNDO_WINDOW_MAX_S}}
        )
        assert (await call("GET", f"/sys/v1/groups/{gid}"))[1]["key_history_policy"] == {
            "undo_time_window": UNDO_WINDOW_MAX_S
        }

        status, key = await call(
            "POST", "/crypto/v1/keys", {"name": "k", "obj_type": "AES", "key_size": 256, "group_id": gid}
        )
        assert status == 201 and key["history"] == []  # under a policy, with nothing recorded yet
        kid = key["kid"]
        (blob,) = (
            row[0]
            for row in await query(
                dsm.db_url, select(SecurityObject.sealed_material).where(SecurityObject.kid == kid)
            )
        )
        assert (await call("DELETE", f"/crypto/v1/keys/{kid}"))[0] == 204
        assert (await call("GET", f"/crypto/v1/keys/{kid}"))[0] == 404
        status, deleted = await call("GET", f"/crypto/v1/keys/{kid}?show_deleted=true")
        assert status == 200 and deleted["state"] == "Deleted" and deleted["deletion_date"]
        (item,) = deleted["history"]
        assert item["state"]["state"] == "Active" and item["state"]["has_key"] is True
        listed = (await call("GET", "/crypto/v1/keys?show_deleted=true"))[1]
        assert kid in [k["kid"] for k in listed] and kid not in [
            k["kid"] for k in (await call("GET", "/crypto/v1/keys"))[1]
        ]

        assert (await call("DELETE", f"/sys/v1/groups/{gid}"))[0] == 409  # it still holds the deleted key
        status, group = await call("PATCH", f"/sys/v1/groups/{gid}", {"key_history_policy": "remove"})
        assert status == 200 and "key_history_policy" not in group and "key_undo_policy" not in group
        for bad in ({}, {"ids": "x"}, {"ids": []}, {"ids": [item["id"], item["id"]]}):
            assert (await call("PUT", f"/crypto/v1/keys/{kid}/revert", bad))[0] == 400

        past = datetime.now(UTC) - timedelta(seconds=1)
        await query(
            dsm.db_url,
            update(KeyHistoryItem).where(KeyHistoryItem.kid == kid).values(expiry=past),
            write=True,
        )
        status, error = await call("PUT", f"/crypto/v1/keys/{kid}/revert", {"ids": [item["id"]]})
        # The revert swept the key first: its window had closed, so it is gone for good.
        assert status == 404 and error["message"] == "sobject does not exist"
        assert (await call("GET", f"/crypto/v1/keys/{kid}?show_deleted=true"))[0] == 404
        assert not in_dump(blob, await asyncio.to_thread(stored_bytes, dsm.db_url))


async def test_every_dsm_process_sweeps_in_the_background_and_survives_a_failed_round(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rounds: list[str] = []
    done = asyncio.Event()

    async def sweep_history() -> int:
        rounds.append("round")
        if len(rounds) == 1:
            raise RuntimeError("the database went away for a moment")
        done.set()
        return 0

    monkeypatch.setattr(dsm_app, "HISTORY_SWEEP_INTERVAL_S", 0.0)
    task = asyncio.create_task(
        dsm_app._history_sweeps(SimpleNamespace(keys=SimpleNamespace(sweep_history=sweep_history)))
    )  # type: ignore[arg-type]
    try:
        await asyncio.wait_for(done.wait(), 60)
    finally:
        task.cancel()
    assert len(rounds) >= 2  # the failed first round did not end the loop
