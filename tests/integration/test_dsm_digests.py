"""Digests and MACs over the DSM REST API (the whole app, real logins) on SQLite and PostgreSQL: an HMAC
key imported with an RFC 4231 key MACs the RFC's data to the RFC's MAC in both URL styles, an AES key
CMACs to RFC 4493's; verification says yes and no; key_ops, app permissions and key types are enforced;
every MAC and its refusals are audited; digests match FIPS vectors and unemulated algorithms answer 501."""

from __future__ import annotations

import base64
from typing import Any

from sqlalchemy import select

from dsm_emulator.models import AuditRow
from tests.integration.test_approvals import ADMIN, BOB, Lab, lab, quorum
from tests.unit.test_digests import ABC, CMAC_KEY, CMAC_VECTORS, HMAC_VECTORS

__all__ = ["lab"]  # the fixture


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def import_key(lab: Lab, name: str, obj_type: str, value: bytes, **extra: Any) -> str:
    body = {"name": name, "obj_type": obj_type, "value": b64(value), **extra}
    return str((await lab.call(ADMIN, "PUT", "/crypto/v1/keys", body, status=201))["kid"])


async def app_token(lab: Lab, perms: list[str]) -> str:
    body = {"name": "mac-app", "add_groups": {lab.group_id: perms}, "default_group": lab.group_id}
    app = await lab.call(ADMIN, "POST", "/sys/v1/apps", body)
    cred = await lab.call(ADMIN, "GET", f"/sys/v1/apps/{app['app_id']}/credential")
    api_key = b64(f"{app['app_id']}:{cred['credential']['secret']}".encode())
    resp = await lab.client.post("/sys/v1/session/auth", headers={"Authorization": f"Basic {api_key}"})
    assert resp.status == 200, await resp.text()
    lab.tokens["app"] = (await resp.json())["access_token"]
    return str(app["app_id"])


async def audit_rows(lab: Lab, kid: str) -> list[AuditRow]:
    async with lab.core.sessions() as session:
        return list(await session.scalars(select(AuditRow).where(AuditRow.object_id == kid)))


async def test_hmac_keys_mac_the_rfc_4231_data_to_the_rfc_macs(lab: Lab) -> None:
    for index, (key, data, alg, expected) in enumerate(HMAC_VECTORS):
        kid = await import_key(lab, f"hmac-{index}", "HMAC", key)
        body = {"alg": alg, "data": b64(data)}
        by_kid = await lab.call(ADMIN, "POST", f"/crypto/v1/keys/{kid}/mac", body)
        assert base64.b64decode(by_kid["mac"]).hex() == expected
        assert by_kid["digest"] == by_kid["mac"] and by_kid["kid"] == kid
        by_name = await lab.call(ADMIN, "POST", "/crypto/v1/mac", {**body, "key": {"name": f"hmac-{index}"}})
        assert by_name["mac"] == by_kid["mac"] and by_name["kid"] == kid

    key, data, alg, expected = HMAC_VECTORS[1]
    kid = await import_key(lab, "verify-me", "HMAC", key)
    mac = bytes.fromhex(expected)
    wrong = mac[:-1] + bytes([mac[-1] ^ 1])
    verify = f"/crypto/v1/keys/{kid}/macverify"
    good = {"alg": alg, "data": b64(data), "mac": b64(mac)}
    assert (await lab.call(ADMIN, "POST", verify, good))["result"] is True
    # sdkms-cli sends the MAC under its deprecated name, digest
    old_style = {"alg": alg, "data": b64(data), "digest": b64(mac)}
    assert (await lab.call(ADMIN, "POST", verify, old_style))["result"] is True
    assert (await lab.call(ADMIN, "POST", verify, {**good, "mac": b64(wrong)}))["result"] is False
    assert (await lab.call(ADMIN, "POST", verify, {**good, "data": b64(data + b"!")}))["result"] is False
    assert (await lab.call(ADMIN, "POST", verify, {**good, "alg": "SHA512"}))["result"] is False
    ex = await lab.call(ADMIN, "POST", "/crypto/v1/macverify", {**good, "key": {"kid": kid}})
    assert ex == {"kid": kid, "result": True}

    missing = {"kid": "00000000-0000-4000-8000-000000000000"}
    batch = await lab.call(
        ADMIN,
        "POST",
        "/crypto/v1/keys/batch/mac",
        [{"key": {"name": "verify-me"}, "alg": alg, "data": b64(data)}, {"key": missing, **good}, "x"],
    )
    assert [item["status"] for item in batch] == [200, 404, 400]
    assert base64.b64decode(batch[0]["body"]["mac"]).hex() == expected and "error" in batch[1]
    checks = [{"key": {"kid": kid}, **good}, {"key": {"kid": kid}, **good, "mac": b64(wrong)}]
    verified = await lab.call(ADMIN, "POST", "/crypto/v1/keys/batch/macverify", checks)
    assert [(item["status"], item["body"]["result"]) for item in verified] == [(200, True), (200, False)]
    await lab.call(ADMIN, "POST", "/crypto/v1/keys/batch/mac", {"not": "a list"}, 400)

    rows = await audit_rows(lab, kid)
    ops = [(row.operation, row.outcome, row.action_type) for row in rows]
    assert ops.count(("crypto.macverify", "success", "CRYPTOOPERATION")) == 8, ops
    assert ops.count(("crypto.mac", "success", "CRYPTOOPERATION")) == 1, ops
    assert all(expected not in row.message and b64(mac) not in row.message for row in rows)


async def test_aes_keys_mac_by_cmac(lab: Lab) -> None:
    ops = ["MACGENERATE", "MACVERIFY", "ENCRYPT"]
    kid = await import_key(lab, "cmac", "AES", CMAC_KEY, key_ops=ops)
    for data, expected in CMAC_VECTORS:
        got = await lab.call(ADMIN, "POST", f"/crypto/v1/keys/{kid}/mac", {"data": b64(data)})
        assert base64.b64decode(got["mac"]).hex() == expected
    data, expected = CMAC_VECTORS[1]
    body = {"data": b64(data), "mac": b64(bytes.fromhex(expected))}
    assert (await lab.call(ADMIN, "POST", f"/crypto/v1/keys/{kid}/macverify", body))["result"] is True
    refused = await lab.call(ADMIN, "POST", f"/crypto/v1/keys/{kid}/mac", {**body, "alg": "SHA256"}, 400)
    assert "alg does not apply" in refused["message"]


async def test_macs_are_refused_by_key_ops_permissions_types_and_bad_input(lab: Lab) -> None:
    key, data, alg, _ = HMAC_VECTORS[1]
    body = {"alg": alg, "data": b64(data)}
    no_gen = await import_key(lab, "verify-only", "HMAC", key, key_ops=["MACVERIFY"])
    refused = await lab.call(ADMIN, "POST", f"/crypto/v1/keys/{no_gen}/mac", body, 400)
    assert "MACGENERATE" in refused["message"]
    verify_body = {**body, "mac": b64(b"x" * 32)}
    no_verify = await import_key(lab, "gen-only", "HMAC", key, key_ops=["MACGENERATE"])
    refused = await lab.call(ADMIN, "POST", f"/crypto/v1/keys/{no_verify}/macverify", verify_body, 400)
    assert "MACVERIFY" in refused["message"]
    rows = await audit_rows(lab, no_gen)
    assert [(r.operation, r.outcome) for r in rows if r.operation == "crypto.mac"] == [
        ("crypto.mac", "refused")
    ]

    secret = await import_key(lab, "a-secret", "SECRET", key, key_ops=["MACGENERATE"])
    refused = await lab.call(ADMIN, "POST", f"/crypto/v1/keys/{secret}/mac", body, 400)
    assert "SECRET objects cannot" in refused["message"]

    hmac_kid = await import_key(lab, "hmac", "HMAC", key)
    for bad, needle in [
        ({"data": b64(data)}, "alg"),
        ({"alg": "MD5", "data": b64(data)}, "alg must be one of"),
        ({"alg": alg}, "data"),
        ({"alg": alg, "data": "not base64!"}, "data"),
    ]:
        refused = await lab.call(ADMIN, "POST", f"/crypto/v1/keys/{hmac_kid}/mac", bad, 400)
        assert needle in refused["message"], refused
    refused = await lab.call(ADMIN, "POST", f"/crypto/v1/keys/{hmac_kid}/macverify", body, 400)
    assert "mac" in refused["message"]
    both = {**body, "mac": b64(b"a" * 32), "digest": b64(b"b" * 32)}
    refused = await lab.call(ADMIN, "POST", f"/crypto/v1/keys/{hmac_kid}/macverify", both, 400)
    assert "differ" in refused["message"]
    refused = await lab.call(ADMIN, "POST", "/crypto/v1/mac", {**body, "key": {"transient_key": "x"}}, 400)
    assert "transient" in refused["message"]
    missing = "/crypto/v1/keys/00000000-0000-4000-8000-000000000000/mac"
    await lab.call(ADMIN, "POST", missing, body, 404)

    # an app needs MACGENERATE / MACVERIFY in the key's group
    await app_token(lab, ["MACVERIFY"])
    refused = await lab.call("app", "POST", f"/crypto/v1/keys/{hmac_kid}/mac", body, 403)
    assert "MACGENERATE" in refused["message"]
    mac = bytes.fromhex(HMAC_VECTORS[1][3])
    ok = await lab.call("app", "POST", f"/crypto/v1/keys/{hmac_kid}/macverify", {**body, "mac": b64(mac)})
    assert ok["result"] is True


async def test_a_mac_in_a_quorum_group_is_held_and_runs_once_approved(lab: Lab) -> None:
    held_crypto = quorum(2, lab.ids[ADMIN], lab.ids[BOB], protect_crypto_operations=True)
    group = await lab.call(ADMIN, "POST", "/sys/v1/groups", {"name": "held", "approval_policy": held_crypto})
    key, data, alg, expected = HMAC_VECTORS[1]
    kid = await import_key(lab, "held-hmac", "HMAC", key, group_id=group["group_id"])
    body = {"alg": alg, "data": b64(data)}
    refused = await lab.call(ADMIN, "POST", f"/crypto/v1/keys/{kid}/mac", body, 403)
    assert "requires quorum approval" in refused["message"], refused

    ask = {"method": "POST", "operation": f"/crypto/v1/keys/{kid}/mac", "body": body}
    rid = (await lab.call(ADMIN, "POST", "/sys/v1/approval_requests", ask, status=201))["request_id"]
    await lab.call(ADMIN, "POST", f"/sys/v1/approval_requests/{rid}/approve", {})
    await lab.call(BOB, "POST", f"/sys/v1/approval_requests/{rid}/approve", {})
    result = await lab.call(ADMIN, "POST", f"/sys/v1/approval_requests/{rid}/result")
    assert result["status"] == 200 and base64.b64decode(result["body"]["mac"]).hex() == expected
    await lab.call(ADMIN, "POST", f"/crypto/v1/keys/{kid}/mac", body, 403)  # the approval covered one MAC


async def test_digests_match_fips_vectors_and_unemulated_algorithms_answer_501(lab: Lab) -> None:
    for alg, expected in ABC.items():
        got = await lab.call(ADMIN, "POST", "/crypto/v1/digest", {"alg": alg, "data": b64(b"abc")})
        assert base64.b64decode(got["digest"]).hex() == expected
    refused = await lab.call(ADMIN, "POST", "/crypto/v1/digest", {"alg": "Blake2b256", "data": ""}, 501)
    assert "does not emulate" in refused["message"]
    refused = await lab.call(ADMIN, "POST", "/crypto/v1/digest", {"alg": "sha256", "data": ""}, 400)
    assert "SHA256" in refused["message"]
    await lab.call(ADMIN, "POST", "/crypto/v1/digest", {"alg": "SHA256"}, 400)
    await lab.call(ADMIN, "POST", "/crypto/v1/digest", ["SHA256"], 400)
    resp = await lab.client.post("/crypto/v1/digest", json={"alg": "SHA256", "data": ""})
    assert resp.status == 401 and "message" in await resp.json()
