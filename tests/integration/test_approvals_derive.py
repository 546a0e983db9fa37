"""Derive and agree under a group's ``protect_crypto_operations``: held like encrypt (403 when called
directly, audited), and run once through an approval request for its requester."""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import ec

from tests.integration.test_approvals import ADMIN, BOB, Lab, audit_messages, lab, protected_group, quorum

__all__ = ["lab"]  # the fixture


async def test_derive_and_agree_are_held_for_approval(lab: Lab) -> None:
    gid = await protected_group(lab, quorum(1, lab.ids[BOB], protect_crypto_operations=True))
    base = {"name": "base", "obj_type": "AES", "key_size": 256, "group_id": gid, "key_ops": ["DERIVEKEY"]}
    kid = (await lab.call(ADMIN, "POST", "/crypto/v1/keys", base, status=201))["kid"]
    plain = base64.b64encode(bytes(32)).decode()
    body = {
        "key": {"kid": kid},
        "name": "derived",
        "key_type": "AES",
        "key_size": 256,
        "group_id": gid,
        "mechanism": {"encrypt_data": {"alg": "AES", "mode": "ECB", "plain": plain}},
    }
    held = await lab.call(ADMIN, "POST", "/crypto/v1/derive", body, status=403)
    assert "requires quorum approval" in held["message"]
    await lab.call(ADMIN, "POST", f"/crypto/v1/keys/{kid}/derive", body, status=403)
    assert any("Derived a new AES key" in m for m in await audit_messages(lab, "crypto.derive"))

    req = await lab.call(
        ADMIN,
        "POST",
        "/sys/v1/approval_requests",
        {"operation": "/crypto/v1/derive", "body": body},
        status=201,
    )
    assert {"sobject": kid} in req["subjects"]
    await lab.call(BOB, "POST", f"/sys/v1/approval_requests/{req['request_id']}/approve", {})
    result = await lab.call(ADMIN, "POST", f"/sys/v1/approval_requests/{req['request_id']}/result")
    assert result["status"] == 200 and result["body"]["name"] == "derived" and result["body"]["kid"] != kid
    await lab.call(ADMIN, "POST", f"/sys/v1/approval_requests/{req['request_id']}/result", status=409)

    def pkcs8() -> str:
        key = ec.generate_private_key(ec.SECP256R1())
        der = key.private_bytes(ser.Encoding.DER, ser.PrivateFormat.PKCS8, ser.NoEncryption())
        return base64.b64encode(der).decode()

    pair = []
    for name in ("ours", "theirs"):
        ec_key = {"name": name, "obj_type": "EC", "group_id": gid, "key_ops": ["AGREEKEY"], "value": pkcs8()}
        pair.append((await lab.call(ADMIN, "PUT", "/crypto/v1/keys", ec_key, status=201))["kid"])
    agree = {
        "private_key": {"kid": pair[0]},
        "public_key": {"kid": pair[1]},
        "mechanism": "diffie_hellman",
        "name": "agreed",
        "key_type": "SECRET",
        "key_size": 256,
        "group_id": gid,
    }
    held = await lab.call(ADMIN, "POST", "/crypto/v1/agree", agree, status=403)
    assert "requires quorum approval" in held["message"]
