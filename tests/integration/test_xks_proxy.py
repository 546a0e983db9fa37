"""The XKS proxy end to end: a real proxy and a real DSM on loopback ports, requests signed by botocore
as KMS signs them, and the DSM audit rows they leave."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from tests.xks_harness import KEY_ARN, PRINCIPAL_ARN, XksEnv, b64, metadata, xks_env, xks_template

__all__ = ["xks_env", "xks_template"]  # fixtures used by name


def unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


async def test_encrypt_decrypt_round_trip_with_aad_and_cdiv(xks_env: XksEnv) -> None:
    aad = b"project=nile,department=marketing"
    status, enc = await xks_env.encrypt(
        b"Hello World!", additionalAuthenticatedData=b64(aad), ciphertextDataIntegrityValueAlgorithm="SHA_256"
    )
    assert status == 200, enc
    iv, ct, tag, cm = (
        unb64(enc[k])
        for k in ("initializationVector", "ciphertext", "authenticationTag", "ciphertextMetadata")
    )
    assert len(iv) == 12 and len(tag) == 16 and len(ct) == len(b"Hello World!")
    assert cm == b"key_version=1"
    # The CDIV is recomputed here from the spec's formula, independently of the proxy.
    expected = base64.b64encode(hashlib.sha256(aad + cm + iv + ct + tag).digest()).decode()
    assert enc["ciphertextDataIntegrityValue"] == expected
    status, dec = await xks_env.decrypt(enc, additionalAuthenticatedData=b64(aad))
    assert status == 200, dec
    assert unb64(dec["plaintext"]) == b"Hello World!"


async def test_the_spec_aad_construction_is_what_the_key_uses(xks_env: XksEnv) -> None:
    """Decrypt locally with the key material and the spec's AAD bytes: the proxy used exactly those."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aad = b"context"
    status, enc = await xks_env.encrypt(b"secret data", additionalAuthenticatedData=b64(aad))
    assert status == 200
    obj = await xks_env.core.keys.get(xks_env.system, kid=xks_env.kek_id)
    material = await xks_env.core.keys.material(obj)
    cm = unb64(enc["ciphertextMetadata"])
    gcm_aad = len(aad).to_bytes(2, "big") + aad + len(cm).to_bytes(1, "big") + cm
    plain = AESGCM(material).decrypt(
        unb64(enc["initializationVector"]),
        unb64(enc["ciphertext"]) + unb64(enc["authenticationTag"]),
        gcm_aad,
    )
    assert plain == b"secret data"


async def test_get_key_metadata_maps_the_dsm_key(xks_env: XksEnv) -> None:
    body = {"requestMetadata": metadata("CreateKey")}
    status, meta = await xks_env.post(xks_env.url("metadata"), body)
    assert status == 200
    assert meta == {
        "keySpec": "AES_256",
        "keyUsage": ["ENCRYPT", "DECRYPT", "WRAP", "UNWRAP"],
        "keyStatus": "ENABLED",
    }
    # By name, too, when the name fits the XKS character set.
    status, by_name = await xks_env.post(xks_env.url("metadata", "root-kek-1"), body)
    assert (status, by_name) == (200, meta)
    small = await xks_env.create_key("small-kek", size=128, key_ops=["ENCRYPT"])
    status, meta = await xks_env.post(xks_env.url("metadata", small), body)
    assert (status, meta) == (200, {"keySpec": "AES_128", "keyUsage": ["ENCRYPT"], "keyStatus": "ENABLED"})
    disabled = await xks_env.create_key("off-kek", enabled=False)
    status, meta = await xks_env.post(xks_env.url("metadata", disabled), body)
    assert status == 200 and meta["keyStatus"] == "DISABLED"


async def test_health_reports_the_dsm_node(xks_env: XksEnv) -> None:
    status, health = await xks_env.post(
        xks_env.url("health"), {"requestMetadata": {"kmsRequestId": "r-1", "kmsOperation": "KmsHealthCheck"}}
    )
    assert status == 200, health
    assert health["xksProxyFleetSize"] == 1
    assert health["xksProxyVendor"] and health["xksProxyModel"] and health["ekmVendor"]
    assert health["ekmFleetDetails"] == [
        {"id": "dsm-1", "model": health["ekmFleetDetails"][0]["model"], "healthStatus": "ACTIVE"}
    ]


async def test_audit_rows_carry_request_metadata_and_never_plaintext(xks_env: XksEnv) -> None:
    secret = b"TOP-SECRET-PLAINTEXT-4f1d"
    status, enc = await xks_env.encrypt(secret)
    assert status == 200
    status, _ = await xks_env.decrypt(enc)
    assert status == 200
    rows = await xks_env.audit_rows()
    by_op = {row["operation"]: row for row in rows}
    for op in ("xks.encrypt", "xks.decrypt"):
        row = by_op[op]
        assert row["outcome"] == "success"
        assert row["kms_request_id"] == "4112f4d6-db54-4af4-ae30-c55a22a8dfae"
        assert row["kms_operation"] == ("Encrypt" if op == "xks.encrypt" else "Decrypt")
        assert row["aws_principal_arn"] == PRINCIPAL_ARN
        assert row["kms_key_arn"] == KEY_ARN
        assert row["actor_type"] == "App" and row["actor_id"] == xks_env.app_id and row["via"] == "xks-proxy"
        assert row["object_id"] == xks_env.kek_id
    dump = json.dumps(rows)
    assert secret.decode() not in dump and b64(secret) not in dump


async def test_unsigned_and_wrongly_signed_requests_are_refused_and_audited(xks_env: XksEnv) -> None:
    body = {"requestMetadata": metadata("CreateKey", kmsRequestId="bad-sig-1")}
    status, err = await xks_env.post(xks_env.url("metadata"), body, secret="A" * 44)
    assert status == 401 and err["errorName"] == "AuthenticationFailedException"
    async with xks_env.http.post(xks_env.url("metadata"), json=body) as response:
        assert response.status == 401
        assert (await response.json())["errorName"] == "AuthenticationFailedException"
    refused = [r for r in await xks_env.audit_rows() if r["outcome"] == "refused"]
    assert any(r["kms_request_id"] == "bad-sig-1" and r["action_type"] == "AUTH" for r in refused)


async def test_rekey_new_encryptions_use_the_new_version_and_old_ciphertexts_decrypt(xks_env: XksEnv) -> None:
    status, old = await xks_env.encrypt(b"before rekey")
    assert status == 200 and unb64(old["ciphertextMetadata"]) == b"key_version=1"
    await xks_env.core.keys.rekey(xks_env.system, kid=xks_env.kek_id)
    # Both the old kid and the name now stand for the newest key of the chain.
    for key_id in (xks_env.kek_id, "root-kek-1"):
        status, new = await xks_env.encrypt(b"after rekey", key_id)
        assert status == 200 and unb64(new["ciphertextMetadata"]) == b"key_version=2"
        status, dec = await xks_env.decrypt(old, key_id)
        assert status == 200 and unb64(dec["plaintext"]) == b"before rekey"
        status, dec = await xks_env.decrypt(new, key_id)
        assert status == 200 and unb64(dec["plaintext"]) == b"after rekey"
    # A version the chain does not have is an invalid ciphertext, not a crash.
    forged = dict(old, ciphertextMetadata=b64(b"key_version=7"))
    status, err = await xks_env.decrypt(forged)
    assert status == 400 and err["errorName"] == "InvalidCiphertextException"


async def test_credential_rotation_takes_effect_without_restart(xks_env: XksEnv) -> None:
    body: dict[str, Any] = {"requestMetadata": metadata("CreateKey")}
    old_akid, old_secret = xks_env.akid, xks_env.secret
    await xks_env.core.admin.reset_secret(xks_env.system, xks_env.app_id)
    creds = await xks_env.core.admin.get_credential(xks_env.system, xks_env.app_id)
    new_akid, new_secret = creds["awsxks"]["access_key_id"], creds["awsxks"]["secret_key"]
    assert new_akid != old_akid
    # Both the new and the previous credential work during the rotation ...
    for akid, secret in ((new_akid, new_secret), (old_akid, old_secret)):
        status, _ = await xks_env.post(xks_env.url("metadata"), body, akid=akid, secret=secret)
        assert status == 200
    # ... and the previous one stops once it is removed.
    await xks_env.core.admin.remove_previous_credential(xks_env.system, xks_env.app_id)
    status, err = await xks_env.post(xks_env.url("metadata"), body, akid=old_akid, secret=old_secret)
    assert status == 401 and err["errorName"] == "AuthenticationFailedException"
    status, _ = await xks_env.post(xks_env.url("metadata"), body, akid=new_akid, secret=new_secret)
    assert status == 200


async def test_ping_and_metrics(xks_env: XksEnv) -> None:
    async with xks_env.http.get(f"{xks_env.proxy_url}/ping") as response:
        assert response.status == 200
    await xks_env.encrypt(b"x")
    status, _ = await xks_env.encrypt(b"x", "no-such-key")
    assert status == 404
    async with xks_env.http.get(f"{xks_env.proxy_url}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    assert 'xks_proxy_requests_total{operation="Encrypt",outcome="success"} 1.0' in text
    assert 'xks_proxy_errors_total{error_name="KeyNotFoundException",operation="Encrypt"} 1.0' in text
    assert 'xks_proxy_latency_seconds_count{operation="Encrypt"} 2.0' in text


async def test_a_rotation_on_another_replica_is_seen_by_the_cached_credentials(xks_env: XksEnv) -> None:
    """Replicas share the database, not their caches: a new credential works at its first use, and a
    removed one is refused once the other replica's change has returned (it waits out the cache poll)."""
    from dsm_emulator.core import DsmCore
    from xkslab_shared.config import load_settings

    body: dict[str, Any] = {"requestMetadata": metadata("CreateKey")}
    status, _ = await xks_env.post(xks_env.url("metadata"), body)  # warms this replica's cache
    assert status == 200
    # the same node id on purpose: both write the chain dsm-1, as the CLI beside a running lab does
    other = await DsmCore.open(load_settings(xks_env.data_dir, environ={}))
    try:
        await other.admin.reset_secret(xks_env.system, xks_env.app_id)
        new = (await other.admin.get_credential(xks_env.system, xks_env.app_id))["awsxks"]
        status, _ = await xks_env.post(
            xks_env.url("metadata"), body, akid=new["access_key_id"], secret=new["secret_key"]
        )
        assert status == 200  # not in the cache yet: looked up again at once
        await other.admin.remove_previous_credential(xks_env.system, xks_env.app_id)
    finally:
        await other.close()
    status, err = await xks_env.post(xks_env.url("metadata"), body)
    assert status == 401 and err["errorName"] == "AuthenticationFailedException"


async def test_the_proxy_token_cannot_replay_a_signed_request_against_another_key(xks_env: XksEnv) -> None:
    """A signed request captured with the proxy token in hand still only does what it was signed for."""
    from tests.xks_harness import sign
    from xkslab_shared.proxy_link import CALL_PATH, ForwardedCall, read_token

    other = await xks_env.create_key("other-kek")
    url = xks_env.url("encrypt")
    body = json.dumps(
        {"requestMetadata": metadata(), "plaintext": b64(b"x"), "encryptionAlgorithm": "AES_GCM"}
    ).encode()
    signed = {k.lower(): v for k, v in sign(url, body, xks_env.akid, xks_env.secret).items()}
    signed["host"] = url.split("/")[2]
    token = read_token(xks_env.data_dir / "proxy.token")
    path = url.split(signed["host"], 1)[1]

    async def forward(operation: str, key_id: str | None) -> dict[str, Any]:
        call = ForwardedCall(
            app_id=xks_env.app_id,
            operation=operation,
            key_id=key_id,
            method="POST",
            path=path,
            query="",
            headers=signed,
            body=body,
            max_plaintext_bytes=4300,
            max_aad_bytes=8192,
        )
        async with xks_env.http.post(
            xks_env.dsm_url + CALL_PATH, json=call.to_json(), headers={"Authorization": f"Bearer {token}"}
        ) as response:
            assert response.status == 200
            return dict(await response.json())

    assert "result" in await forward("encrypt", xks_env.kek_id)  # as signed: fine
    for operation, key_id in (("encrypt", other), ("metadata", xks_env.kek_id), ("health", None)):
        answer = await forward(operation, key_id)
        assert answer["error"]["code"] == "AuthFailed", (operation, key_id)


async def test_decrypt_reports_the_key_state_before_looking_at_the_ciphertext(xks_env: XksEnv) -> None:
    status, enc = await xks_env.encrypt(b"x")
    assert status == 200
    await xks_env.core.keys.update(xks_env.system, xks_env.kek_id, enabled=False)
    status, err = await xks_env.decrypt(dict(enc, ciphertextMetadata=b64(b"not-a-version")))
    assert status == 400 and err["errorName"] == "InvalidStateException"
