"""Export and import by key components over the DSM REST API (the whole app, real logins) on SQLite and
PostgreSQL: what a request by components must name and what it may not ask for (each refused when the
request is made, naming the field), the group's export policy still applying, and a split whose request
expires before every custodian fetched theirs being erased. The happy path through the real sdkms SDK is
test_sdkms_sdk_components."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import update

from dsm_emulator.authz import system_principal
from dsm_emulator.models import ApprovalRequest
from tests.integration.test_approvals import ADMIN, BOB, Lab, lab

__all__ = ["lab"]  # the fixture

CAROL, CAROL_PW = "carol@xkslab.local", "carol's own password"
EXPORT = "/crypto/v1/keys/components/export"
IMPORT = "/crypto/v1/keys/components/import"


async def custody_group(lab: Lab, name: str = "custody", **extra: Any) -> str:
    await lab.core.admin.create_user(system_principal(lab.acct_id), CAROL, CAROL_PW)
    await lab.login(CAROL, CAROL_PW)
    bob, carol = lab.ids[BOB], lab.ids[CAROL]
    body = {
        "name": name,
        "approval_policy": {"quorum": {"n": 1, "members": [{"user": bob}]}},
        "custodian_policy": {"quorum": {"n": 2, "members": [{"user": bob}, {"user": carol}]}},
        **extra,
    }
    return str((await lab.call(ADMIN, "POST", "/sys/v1/groups", body))["group_id"])


async def key(
    lab: Lab, gid: str, name: str, obj_type: str = "AES", ops: tuple[str, ...] = ("EXPORT",)
) -> str:
    body = {"name": name, "obj_type": obj_type, "key_size": 256, "group_id": gid, "key_ops": list(ops)}
    return str((await lab.call(ADMIN, "POST", "/crypto/v1/keys", body, status=201))["kid"])


async def ask(lab: Lab, operation: str, body: dict[str, Any], status: int = 201) -> Any:
    request = {"method": "POST", "operation": operation, "body": body}
    return await lab.call(ADMIN, "POST", "/sys/v1/approval_requests", request, status=status)


async def test_a_request_by_components_is_checked_when_it_is_made(lab: Lab) -> None:
    gid = await custody_group(lab)
    bob, carol = lab.ids[BOB], lab.ids[CAROL]
    both = [{"user": bob}, {"user": carol}]
    kid = await key(lab, gid, "k")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"key": {"kid": kid}, "custodians": [{"user": bob}, {"user": lab.ids[ADMIN]}]}, "not a custodian"),
        ({"key": {"kid": kid}, "custodians": [{"user": bob}]}, "needs 2 custodians"),
        ({"key": {"kid": kid}, "custodians": [{"user": bob}, {"user": bob}]}, "named twice"),
        ({"key": {"kid": kid}, "custodians": [{"app": bob}, {"user": carol}]}, "custodians[0]"),
        ({"key": {"kid": kid}, "custodians": both, "method": "SHAMIR"}, "XOR"),
        (
            {"key": {"kid": kid}, "custodians": both, "wrap_key_params": {"key": {"kid": kid}}},
            "wrap_key_params",
        ),
        ({"key": {"kid": kid}, "custodians": both, "split": 3}, "split"),
        ({"key": {"kid": await key(lab, gid, "hmac", "HMAC")}, "custodians": both}, "HMAC"),
        ({"key": {"kid": await key(lab, gid, "no-export", ops=("ENCRYPT",))}, "custodians": both}, "EXPORT"),
    ]
    for body, named in cases:
        refused = await ask(lab, EXPORT, body, status=400)
        assert named in refused["message"], (body, refused)
    # The group's export policy still applies: components are clear key material.
    wrapped_only = await custody_group_again(lab)
    other = await key(lab, wrapped_only, "wrapped-only")
    refused = await ask(lab, EXPORT, {"key": {"kid": other}, "custodians": both}, status=400)
    assert "export_policy" in refused["message"]

    part = {"component": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "custodian": {"user": bob}}
    imported = {
        "key": {"name": "joined", "obj_type": "AES", "group_id": gid},
        "custodians": both,
        "components": [{**part, "component_kcv": "000000"}, {**part, "custodian": {"user": carol}}],
    }
    refused = await ask(lab, IMPORT, imported, status=400)
    assert "components[0].component_kcv" in refused["message"]
    refused = await ask(lab, IMPORT, {**imported, "unwrap_key_params": {"key": {"kid": kid}}}, status=400)
    assert "unwrap_key_params" in refused["message"]
    assert await lab.call(ADMIN, "GET", "/sys/v1/approval_requests") == []


async def custody_group_again(lab: Lab) -> str:
    bob, carol = lab.ids[BOB], lab.ids[CAROL]
    body = {
        "name": "wrapped-only",
        "approval_policy": {"quorum": {"n": 1, "members": [{"user": bob}]}},
        "custodian_policy": {"quorum": {"n": 2, "members": [{"user": bob}, {"user": carol}]}},
        "export_policy": {"$type": "Wrapped", "by": {"$type": "Any"}},
    }
    return str((await lab.call(ADMIN, "POST", "/sys/v1/groups", body))["group_id"])


async def test_a_split_not_fetched_before_expiry_is_erased(lab: Lab) -> None:
    gid = await custody_group(lab)
    bob, carol = lab.ids[BOB], lab.ids[CAROL]
    kid = await key(lab, gid, "k")
    made = await ask(lab, EXPORT, {"key": {"kid": kid}, "custodians": [{"user": bob}, {"user": carol}]})
    path = f"/sys/v1/approval_requests/{made['request_id']}"
    await lab.call(BOB, "POST", f"{path}/approve", {})
    assert (await lab.call(CAROL, "POST", f"{path}/approve", {}))["status"] == "APPROVED"
    # Dropping the custodians is a change of the group: held by its quorum like any other.
    body = {"custodian_policy": "remove"}
    refused = await lab.call(ADMIN, "PATCH", f"/sys/v1/groups/{gid}", body, status=403)
    assert "requires quorum approval" in refused["message"]

    mine = await lab.call(BOB, "POST", f"{path}/result")
    assert mine["status"] == 200 and [c["custodian"] for c in mine["body"]["components"]] == [{"user": bob}]
    async with lab.core.sessions() as session:
        row = await session.get(ApprovalRequest, made["request_id"])
        assert row is not None and row.sealed_result is not None  # sealed for carol
    async with lab.core.sessions() as session, session.begin():
        await session.execute(
            update(ApprovalRequest)
            .where(ApprovalRequest.request_id == made["request_id"])
            .values(expiry=datetime.now(UTC) - timedelta(seconds=1))
        )
    refused = await lab.call(CAROL, "POST", f"{path}/result", status=409)
    assert "expired" in refused["message"]
    async with lab.core.sessions() as session:
        row = await session.get(ApprovalRequest, made["request_id"])
        assert row is not None and row.sealed_result is None and row.status == "FAILED"
    assert (await lab.call(ADMIN, "GET", path))["status"] == "FAILED"
