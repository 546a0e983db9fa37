"""Quorum approval over the DSM REST API (the whole app, real logins, aiohttp's test client): group
approval policies, protected operations refused when called directly, approval requests approved, denied
and expired, the approved operation run once for its requester, and awsxks apps kept out of groups that
would hold their crypto operations. The flows that touch storage run on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from dsm_emulator.api.app import create_app
from dsm_emulator.api.context import CORE_KEY
from dsm_emulator.authz import system_principal
from dsm_emulator.models import ApprovalRequest, AuditRow
from tests.integration.test_cli import init
from xkslab_shared.config import ConfigError, load_settings

ADMIN, ADMIN_PW = "admin@xkslab.local", "correct horse battery"
BOB, BOB_PW = "bob@xkslab.local", "bob's own password"


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


class Lab:
    """The app under test, its core, and a logged-in session per user."""

    def __init__(self, client: Any, info: dict[str, Any]) -> None:
        self.client = client
        self.core = client.server.app[CORE_KEY]
        self.acct_id: str = info["acct_id"]
        self.group_id: str = info["default_group_id"]
        self.tokens: dict[str, str] = {}
        self.ids: dict[str, str] = {}

    async def login(self, email: str, password: str) -> None:
        resp = await self.client.post("/sys/v1/session/auth", headers=basic(email, password))
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        self.tokens[email], self.ids[email] = body["access_token"], body["entity_id"]

    async def call(self, who: str, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"}
        resp = await self.client.request(method, path, json=body, headers=headers)
        text = await resp.text()
        assert resp.status == status, f"{method} {path}: {resp.status} {text}"
        return await resp.json() if text else None


@pytest.fixture
async def lab(empty_db_url: str, tmp_path: Path, aiohttp_client: Any) -> Lab:
    data_dir = tmp_path / "data"
    info = init(data_dir, empty_db_url)
    client = await aiohttp_client(create_app(load_settings(data_dir, environ={})))
    lab = Lab(client, info)
    await lab.core.admin.create_user(system_principal(lab.acct_id), BOB, BOB_PW)
    await lab.login(ADMIN, ADMIN_PW)
    await lab.login(BOB, BOB_PW)
    return lab


def quorum(n: int, *members: str, **extra: Any) -> dict[str, Any]:
    return {"quorum": {"n": n, "members": [{"user": m} for m in members], **extra.pop("q", {})}, **extra}


async def protected_group(lab: Lab, policy: dict[str, Any], name: str = "vault") -> str:
    group = await lab.call(ADMIN, "POST", "/sys/v1/groups", {"name": name, "approval_policy": policy})
    return str(group["group_id"])


async def new_key(lab: Lab, group_id: str, name: str = "k1") -> str:
    body = {
        "name": name,
        "obj_type": "AES",
        "key_size": 256,
        "group_id": group_id,
        "key_ops": ["ENCRYPT", "DECRYPT", "WRAPKEY", "UNWRAPKEY", "EXPORT", "APPMANAGEABLE"],
    }
    return str((await lab.call(ADMIN, "POST", "/crypto/v1/keys", body, status=201))["kid"])


async def audit_messages(lab: Lab, operation: str) -> list[str]:
    async with lab.core.sessions() as session:
        rows = await session.scalars(select(AuditRow).where(AuditRow.operation == operation))
        return [row.message for row in rows]


# --------------------------------------------------------------------------------- the flow


async def test_export_needs_a_quorum_and_runs_once_for_the_requester(lab: Lab) -> None:
    admin, bob = lab.ids[ADMIN], lab.ids[BOB]
    gid = await protected_group(lab, quorum(2, admin, bob))
    shown = await lab.call(ADMIN, "GET", f"/sys/v1/groups/{gid}")
    assert shown["approval_policy"]["quorum"]["n"] == 2
    listed = await lab.call(ADMIN, "GET", "/sys/v1/groups")
    assert [g["approval_policy"] for g in listed if g["group_id"] == gid] == [shown["approval_policy"]]
    kid = await new_key(lab, gid)

    # Called directly, export and delete are refused in Fortanix's shape, and nothing happens.
    refused = await lab.call(ADMIN, "GET", f"/crypto/v1/keys/{kid}/export", status=403)
    assert (
        "requires quorum approval" in refused["message"] and "/sys/v1/approval_requests" in refused["message"]
    )
    await lab.call(ADMIN, "DELETE", f"/crypto/v1/keys/{kid}", status=403)
    await lab.call(ADMIN, "GET", f"/crypto/v1/keys/{kid}")

    req = await lab.call(
        ADMIN,
        "POST",
        "/sys/v1/approval_requests",
        {"method": "POST", "operation": "/crypto/v1/keys/export", "body": {"kid": kid}},
        status=201,
    )
    rid = req["request_id"]
    assert req["status"] == "PENDING" and req["requester"] == {"user": admin}
    assert {"sobject": kid} in req["subjects"] and {"group": gid} in req["subjects"]
    assert sorted(map(str, req["reviewers"])) == sorted(map(str, [{"user": admin}, {"user": bob}]))
    assert req["body"] == {"kid": kid}

    # The requester alone is one member: a quorum of 2 is not met, and there is no result yet.
    after_self = await lab.call(ADMIN, "POST", f"/sys/v1/approval_requests/{rid}/approve", {})
    assert after_self["status"] == "PENDING" and after_self["approvers"] == [{"user": admin}]
    await lab.call(ADMIN, "POST", f"/sys/v1/approval_requests/{rid}/approve", {}, status=409)
    await lab.call(ADMIN, "POST", f"/sys/v1/approval_requests/{rid}/result", status=409)

    approved = await lab.call(BOB, "POST", f"/sys/v1/approval_requests/{rid}/approve", {})
    assert approved["status"] == "APPROVED"
    # Only the requester runs it, and only once.
    await lab.call(BOB, "POST", f"/sys/v1/approval_requests/{rid}/result", status=403)
    result = await lab.call(ADMIN, "POST", f"/sys/v1/approval_requests/{rid}/result")
    assert result["status"] == 200 and result["body"]["kid"] == kid
    assert len(base64.b64decode(result["body"]["value"], validate=True)) == 32
    again = await lab.call(ADMIN, "POST", f"/sys/v1/approval_requests/{rid}/result", status=409)
    assert "already been fetched" in again["message"]
    shown = await lab.call(BOB, "GET", f"/sys/v1/approval_requests/{rid}")
    assert shown["status"] == "APPROVED" and shown["result_viewed"] is True

    # The approval covered that one export: the key is as protected as before.
    await lab.call(ADMIN, "GET", f"/crypto/v1/keys/{kid}/export", status=403)

    # Filters: by requester, reviewer, subject, status.
    for query in (f"requester={admin}", f"reviewer={bob}", f"subject={kid}", "status=APPROVED"):
        found = await lab.call(BOB, "GET", f"/sys/v1/approval_requests?{query}")
        assert [r["request_id"] for r in found] == [rid], query
    assert await lab.call(BOB, "GET", "/sys/v1/approval_requests?status=PENDING") == []

    # Every step is audited; the body (a key id here, plaintext elsewhere) is not in the rows.
    assert any(rid in m for m in await audit_messages(lab, "approval.create"))
    assert len([m for m in await audit_messages(lab, "approval.approve") if rid in m]) == 2
    results = [m for m in await audit_messages(lab, "approval.result") if rid in m]
    assert any("status 200" in m for m in results)
    assert any("Exported key" in m for m in await audit_messages(lab, "key.export"))


async def test_denied_or_expired_request_never_runs(lab: Lab) -> None:
    bob = lab.ids[BOB]
    gid = await protected_group(lab, quorum(1, bob))
    kid = await new_key(lab, gid)
    body = {"method": "DELETE", "operation": f"/crypto/v1/keys/{kid}"}

    denied = await lab.call(ADMIN, "POST", "/sys/v1/approval_requests", body, status=201)
    # The requester is no member here: it may neither approve nor deny.
    await lab.call(ADMIN, "POST", f"/sys/v1/approval_requests/{denied['request_id']}/approve", {}, status=403)
    shown = await lab.call(BOB, "POST", f"/sys/v1/approval_requests/{denied['request_id']}/deny")
    assert shown["status"] == "DENIED" and shown["denier"] == {"user": bob}
    await lab.call(BOB, "POST", f"/sys/v1/approval_requests/{denied['request_id']}/approve", {}, status=409)
    refused = await lab.call(
        ADMIN, "POST", f"/sys/v1/approval_requests/{denied['request_id']}/result", status=409
    )
    assert "DENIED" in refused["message"]
    await lab.call(ADMIN, "GET", f"/crypto/v1/keys/{kid}")

    expiring = await lab.call(ADMIN, "POST", "/sys/v1/approval_requests", body, status=201)
    rid = expiring["request_id"]
    await lab.call(BOB, "POST", f"/sys/v1/approval_requests/{rid}/approve", {})
    async with lab.core.sessions() as session, session.begin():
        await session.execute(
            update(ApprovalRequest)
            .where(ApprovalRequest.request_id == rid)
            .values(expiry=datetime.now(UTC) - timedelta(seconds=1))
        )
    shown = await lab.call(ADMIN, "GET", f"/sys/v1/approval_requests/{rid}")
    assert shown["status"] == "FAILED"
    refused = await lab.call(ADMIN, "POST", f"/sys/v1/approval_requests/{rid}/result", status=409)
    assert "expired" in refused["message"]
    await lab.call(ADMIN, "GET", f"/crypto/v1/keys/{kid}")
    assert [
        r["request_id"] for r in await lab.call(ADMIN, "GET", "/sys/v1/approval_requests?status=FAILED")
    ] == [rid]

    # Approved and fetched: the delete runs (204 inside the result) and the key is gone. Two fetches at
    # once: one runs it, the other is refused (the claim is taken under the row's lock).
    ok = await lab.call(ADMIN, "POST", "/sys/v1/approval_requests", body, status=201)
    await lab.call(BOB, "POST", f"/sys/v1/approval_requests/{ok['request_id']}/approve", {})
    path = f"/sys/v1/approval_requests/{ok['request_id']}/result"
    headers = {"Authorization": f"Bearer {lab.tokens[ADMIN]}"}
    first, second = await asyncio.gather(
        lab.client.post(path, headers=headers), lab.client.post(path, headers=headers)
    )
    answers = sorted([(first.status, await first.json()), (second.status, await second.json())])
    assert answers[0] == (200, {"status": 204, "body": None})
    assert answers[1][0] == 409
    await lab.call(ADMIN, "GET", f"/crypto/v1/keys/{kid}", status=404)

    # The requester withdraws a request; it is gone.
    await lab.call(ADMIN, "DELETE", f"/sys/v1/approval_requests/{rid}", status=204)
    await lab.call(ADMIN, "GET", f"/sys/v1/approval_requests/{rid}", status=404)
    assert any(rid in m for m in await audit_messages(lab, "approval.delete"))


@pytest.mark.parametrize("db_backend", ["sqlite"])
async def test_crypto_operations_and_password(lab: Lab) -> None:
    admin, bob = lab.ids[ADMIN], lab.ids[BOB]
    gid = await protected_group(
        lab, quorum(1, bob, q={"require_password": True}, protect_crypto_operations=True)
    )
    kid = await new_key(lab, gid)
    plain = base64.b64encode(b"the plaintext").decode()
    enc = {"key": {"kid": kid}, "alg": "AES", "mode": "GCM", "plain": plain}
    await lab.call(ADMIN, "POST", "/crypto/v1/encrypt", enc, status=403)
    await lab.call(ADMIN, "POST", f"/crypto/v1/keys/{kid}/encrypt", enc, status=403)

    req = await lab.call(
        ADMIN,
        "POST",
        "/sys/v1/approval_requests",
        {"operation": "/crypto/v1/encrypt", "body": enc, "description": "one encrypt"},
        status=201,
    )
    rid = req["request_id"]
    assert req["method"] == "POST" and req["description"] == "one encrypt"
    missing = await lab.call(BOB, "POST", f"/sys/v1/approval_requests/{rid}/approve", {}, status=400)
    assert "password" in missing["message"]
    await lab.call(BOB, "POST", f"/sys/v1/approval_requests/{rid}/approve", {"password": "nope"}, status=403)
    await lab.call(
        BOB, "POST", f"/sys/v1/approval_requests/{rid}/approve", {"password": "x", "u2f": {}}, status=400
    )
    done = await lab.call(BOB, "POST", f"/sys/v1/approval_requests/{rid}/approve", {"password": BOB_PW})
    assert done["status"] == "APPROVED"
    result = await lab.call(ADMIN, "POST", f"/sys/v1/approval_requests/{rid}/result")
    assert result["status"] == 200 and result["body"]["kid"] == kid and result["body"]["cipher"]

    # So is each step of a multipart operation.
    init = {"alg": "AES", "mode": "CBC"}
    held = await lab.call(ADMIN, "POST", f"/crypto/v1/keys/{kid}/encrypt/init", init, status=403)
    assert "requires quorum approval" in held["message"]

    # Each item of a batch is held like a direct call.
    batch = [{"kid": kid, "request": {"alg": "AES", "mode": "GCM", "plain": plain}}]
    items = await lab.call(ADMIN, "POST", "/crypto/v1/keys/batch/encrypt", batch)
    assert items[0]["status"] == 403 and "requires quorum approval" in items[0]["error"]

    # Wrapping a key of the group (an export of it) goes through a request too.
    other = await new_key(lab, gid, "k2")
    wrap = {"key": {"kid": other}, "subject": {"kid": kid}, "alg": "AES", "mode": "KW"}
    await lab.call(ADMIN, "POST", "/crypto/v1/wrapkey", wrap, status=403)
    req = await lab.call(
        ADMIN,
        "POST",
        "/sys/v1/approval_requests",
        {"operation": "/crypto/v1/wrapkey", "body": wrap},
        status=201,
    )
    assert {"sobject": kid} in req["subjects"] and {"sobject": other} in req["subjects"]
    await lab.call(
        BOB, "POST", f"/sys/v1/approval_requests/{req['request_id']}/approve", {"password": BOB_PW}
    )
    wrapped = await lab.call(ADMIN, "POST", f"/sys/v1/approval_requests/{req['request_id']}/result")
    assert wrapped["status"] == 200 and len(base64.b64decode(wrapped["body"]["wrapped_key"])) == 40

    # The plaintext is sealed in the database, not stored in the clear.
    async with lab.core.sessions() as session:
        row = await session.get(ApprovalRequest, rid)
        assert row is not None and row.sealed_body is not None and plain.encode() not in row.sealed_body
    assert admin in [
        r["requester"].get("user") for r in await lab.call(BOB, "GET", "/sys/v1/approval_requests")
    ]


@pytest.mark.parametrize("db_backend", ["sqlite"])
async def test_request_refusals(lab: Lab) -> None:
    bob = lab.ids[BOB]
    kid = await new_key(lab, lab.group_id)  # no policy on the default group
    body = {"method": "GET", "operation": f"/crypto/v1/keys/{kid}/export"}
    not_held = await lab.call(ADMIN, "POST", "/sys/v1/approval_requests", body, status=400)
    assert "not held by any approval policy" in not_held["message"]
    await lab.call(ADMIN, "POST", "/sys/v1/approval_requests", {"operation": "/nowhere"}, status=400)
    listing = {"method": "GET", "operation": "/crypto/v1/keys"}
    refused = await lab.call(ADMIN, "POST", "/sys/v1/approval_requests", listing, status=400)
    assert "cannot be held" in refused["message"]
    gid = await protected_group(lab, quorum(1, bob))
    # A request the operation itself refuses is refused at creation, with the operation's error.
    missing = {"operation": "/crypto/v1/keys/export", "body": {"kid": "5b3e9cf0-8a5e-4b1d-9d43-7f7e0c0f0000"}}
    await lab.call(ADMIN, "POST", "/sys/v1/approval_requests", missing, status=404)

    # The group itself changes only with approval; with it, the policy can be removed.
    await lab.call(ADMIN, "PATCH", f"/sys/v1/groups/{gid}", {"description": "x"}, status=403)
    await lab.call(ADMIN, "DELETE", f"/sys/v1/groups/{gid}", status=403)
    req = await lab.call(
        ADMIN,
        "POST",
        "/sys/v1/approval_requests",
        {"method": "PATCH", "operation": f"/sys/v1/groups/{gid}", "body": {"approval_policy": "remove"}},
        status=201,
    )
    assert req["subjects"] == [{"group": gid}]
    await lab.call(BOB, "POST", f"/sys/v1/approval_requests/{req['request_id']}/approve", {})
    result = await lab.call(ADMIN, "POST", f"/sys/v1/approval_requests/{req['request_id']}/result")
    assert result["status"] == 200 and "approval_policy" not in result["body"]
    await lab.call(ADMIN, "PATCH", f"/sys/v1/groups/{gid}", {"description": "free again"})


POLICY_REFUSALS = [
    ({"quorum": {"n": 1, "members": [{"user": "U"}], "require_2fa": True}}, "require_2fa"),
    ({"quorum": {"n": 1, "members": [{"user": "U"}], "weird": 1}}, "weird"),
    ({"quorum": {"n": 1, "members": [{"user": "U"}]}, "protect_manage_operations": True}, "protect_manage"),
    ({"quorum": {"n": 1, "members": [{"user": "U"}]}, "user": {"x": 1}}, "approval_policy.user"),
    (
        {"quorum": {"n": 1, "members": [{"user": "U"}]}, "protect_permissions": ["GET_SOBJECTS"]},
        "GET_SOBJECTS",
    ),
    ({"quorum": {"n": 1, "members": [{"user": "U"}]}, "protect_permissions": ["NOPE"]}, "NOPE"),
    ({"quorum": {"n": 2, "members": [{"user": "U"}]}}, "n must be"),
    ({"quorum": {"n": 1, "members": [{"user": "6c1f8a84-1b5e-4f4e-8a55-1d2b3c4d5e6f"}]}}, "not a user"),
    ({"quorum": {"n": 1, "members": [{"app": "U"}]}}, "not a app"),
    ({"protect_crypto_operations": True}, "quorum is required"),
]


@pytest.mark.parametrize("db_backend", ["sqlite"])
async def test_policy_fields_enforced_or_refused_by_name(lab: Lab) -> None:
    def fill(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fill(v) for v in value]
        return lab.ids[BOB] if value == "U" else value

    for policy, named in POLICY_REFUSALS:
        body = {"name": "g", "approval_policy": fill(policy)}
        refused = await lab.call(ADMIN, "POST", "/sys/v1/groups", body, status=400)
        assert named in refused["message"], (policy, refused)
        assert [g for g in await lab.call(ADMIN, "GET", "/sys/v1/groups") if g["name"] == "g"] == []


async def test_nested_quorum_and_apps_as_members(lab: Lab) -> None:
    admin, bob = lab.ids[ADMIN], lab.ids[BOB]
    app, _ = await lab.core.admin.create_app(system_principal(lab.acct_id), "approver", groups=[lab.group_id])
    policy = {
        "quorum": {
            "n": 2,
            "members": [
                {"user": admin},
                {"quorum": {"n": 1, "members": [{"user": bob}, {"app": app.app_id}]}},
            ],
        },
        "protect_permissions": ["DESTROY_SOBJECTS"],
    }
    gid = await protected_group(lab, policy)
    kid = await new_key(lab, gid)
    # Only DESTROY_SOBJECTS (and export, always) are held: a revoke runs directly.
    await lab.call(ADMIN, "POST", f"/crypto/v1/keys/{kid}/revoke", {"code": "Unspecified"}, status=204)
    await lab.call(ADMIN, "POST", f"/crypto/v1/keys/{kid}/destroy", status=403)
    req = await lab.call(
        ADMIN,
        "POST",
        "/sys/v1/approval_requests",
        {"operation": f"/crypto/v1/keys/{kid}/destroy"},
        status=201,
    )
    rid = req["request_id"]
    await lab.call(ADMIN, "POST", f"/sys/v1/approval_requests/{rid}/approve", {})
    # Bob is in the nested quorum: with the requester that makes 2.
    assert (await lab.call(BOB, "POST", f"/sys/v1/approval_requests/{rid}/approve", {}))[
        "status"
    ] == "APPROVED"
    assert (await lab.call(ADMIN, "POST", f"/sys/v1/approval_requests/{rid}/result"))["status"] == 204
    assert (await lab.call(ADMIN, "GET", f"/crypto/v1/keys/{kid}"))["state"] == "Destroyed"


@pytest.mark.parametrize("db_backend", ["sqlite"])
async def test_awsxks_app_never_in_a_group_that_holds_crypto(lab: Lab) -> None:
    bob = lab.ids[BOB]
    held = await protected_group(lab, quorum(1, bob, protect_crypto_operations=True), name="held")
    xks_app = {"name": "xks", "add_groups": [held], "credential": {"awsxks": {}}}
    refused = await lab.call(ADMIN, "POST", "/sys/v1/apps", xks_app, status=400)
    assert "awsxks" in refused["message"] and "250 ms" in refused["message"]

    app = await lab.call(ADMIN, "POST", "/sys/v1/apps", {**xks_app, "add_groups": [lab.group_id]})
    refused = await lab.call(
        ADMIN, "PATCH", f"/sys/v1/apps/{app['app_id']}", {"add_groups": [held]}, status=400
    )
    assert "250 ms" in refused["message"]

    free = await lab.call(ADMIN, "POST", "/sys/v1/groups", {"name": "free"})
    await lab.call(ADMIN, "PATCH", f"/sys/v1/apps/{app['app_id']}", {"add_groups": [free["group_id"]]})
    refused = await lab.call(
        ADMIN,
        "PATCH",
        f"/sys/v1/groups/{free['group_id']}",
        {"approval_policy": quorum(1, bob, protect_crypto_operations=True)},
        status=400,
    )
    assert "awsxks" in refused["message"] and "protect_crypto_operations" in refused["message"]
    # A policy that does not hold crypto operations is fine beside an awsxks app.
    ok = await lab.call(
        ADMIN, "PATCH", f"/sys/v1/groups/{free['group_id']}", {"approval_policy": quorum(1, bob)}
    )
    assert ok["approval_policy"]["protect_crypto_operations"] is False


async def test_a_move_out_and_a_revert_are_held_like_the_other_key_changes(lab: Lab) -> None:
    """A group_id change would carry a key past every operation its group's policy holds, and a revert
    can bring back a destroyed key: both wait for the quorum (MOVE_SOBJECTS, REVERT_SOBJECTS), and run
    once approved."""
    admin, bob = lab.ids[ADMIN], lab.ids[BOB]
    policy = {**quorum(2, admin, bob), "protect_permissions": ["MOVE_SOBJECTS", "REVERT_SOBJECTS"]}
    vault = await lab.call(
        ADMIN,
        "POST",
        "/sys/v1/groups",
        {"name": "vault", "approval_policy": policy, "key_history_policy": {"undo_time_window": 604800}},
    )
    kid = await new_key(lab, vault["group_id"])
    await lab.call(ADMIN, "POST", f"/crypto/v1/keys/{kid}/revoke", {"code": "Unspecified"}, 204)
    await lab.call(ADMIN, "PATCH", f"/crypto/v1/keys/{kid}", {"group_id": lab.group_id}, status=403)
    item = (await lab.call(ADMIN, "GET", f"/crypto/v1/keys/{kid}"))["history"][-1]["id"]
    revert = {"ids": [item]}
    await lab.call(ADMIN, "PUT", f"/crypto/v1/keys/{kid}/revert", revert, status=403)
    key = await lab.call(ADMIN, "GET", f"/crypto/v1/keys/{kid}")
    assert (key["group_id"], key["state"]) == (vault["group_id"], "Deactivated")
    ask = {"method": "PUT", "operation": f"/crypto/v1/keys/{kid}/revert", "body": revert}
    rid = (await lab.call(ADMIN, "POST", "/sys/v1/approval_requests", ask, status=201))["request_id"]
    await lab.call(ADMIN, "POST", f"/sys/v1/approval_requests/{rid}/approve", {})
    await lab.call(BOB, "POST", f"/sys/v1/approval_requests/{rid}/approve", {})
    result = await lab.call(ADMIN, "POST", f"/sys/v1/approval_requests/{rid}/result")
    assert result["status"] == 204
    assert (await lab.call(ADMIN, "GET", f"/crypto/v1/keys/{kid}"))["state"] == "Active"


async def test_expiry_is_a_setting_and_an_expired_request_never_runs(
    empty_db_url: str, tmp_path: Path, aiohttp_client: Any
) -> None:
    """dsm.approval_expiry_s set small: a request approved but fetched after its expiry has FAILED, its
    result is refused and the operation never runs."""
    with pytest.raises(ConfigError, match=r"dsm\.approval_expiry_s"):
        load_settings(tmp_path, environ={"XKSLAB_DSM_APPROVAL_EXPIRY_S": "0"})
    data_dir = tmp_path / "data"
    info = init(data_dir, empty_db_url)
    expiry_s = 0.4
    settings = load_settings(data_dir, environ={"XKSLAB_DSM_APPROVAL_EXPIRY_S": str(expiry_s)})
    assert settings.dsm.approval_expiry_s == expiry_s
    lab = Lab(await aiohttp_client(create_app(settings)), info)
    await lab.core.admin.create_user(system_principal(lab.acct_id), BOB, BOB_PW)
    await lab.login(ADMIN, ADMIN_PW)
    await lab.login(BOB, BOB_PW)
    gid = await protected_group(lab, quorum(1, lab.ids[BOB]))
    kid = await new_key(lab, gid)
    body = {"method": "DELETE", "operation": f"/crypto/v1/keys/{kid}"}

    late = await lab.call(ADMIN, "POST", "/sys/v1/approval_requests", body, status=201)
    rid = late["request_id"]
    async with lab.core.sessions() as session:
        row = await session.get(ApprovalRequest, rid)
        assert row is not None
        made, expires = row.created_at, row.expiry
    assert abs((expires - made).total_seconds() - expiry_s) < 1e-3
    await lab.call(BOB, "POST", f"/sys/v1/approval_requests/{rid}/approve", {})
    await asyncio.sleep(expiry_s + 0.2)
    assert (await lab.call(ADMIN, "GET", f"/sys/v1/approval_requests/{rid}"))["status"] == "FAILED"
    refused = await lab.call(ADMIN, "POST", f"/sys/v1/approval_requests/{rid}/result", status=409)
    assert "expired" in refused["message"]
    await lab.call(BOB, "POST", f"/sys/v1/approval_requests/{rid}/approve", {}, status=409)
    await lab.call(ADMIN, "GET", f"/crypto/v1/keys/{kid}")  # never deleted
