"""The real ``sdkms`` SDK's multipart methods in the per-key URL style (``encrypt_init(kid, …)``, which
sdkms-cli never calls) against a real listening DSM, GCM and CTR, checked against ``cryptography``; and a
state replayed through the SDK is refused with Fortanix's ``{"message"}`` 400."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tests.integration import test_dsm_api
from tests.integration.test_sdkms_sdk import login_admin, login_app

sqlite_dir = test_dsm_api.sqlite_dir
server_url = test_dsm_api.server_url
KEY, IV = os.urandom(32), os.urandom(16)


def flow(url: str) -> dict[str, Any]:
    import sdkms.v1 as sdk
    from sdkms.v1.rest import ApiException

    admin = login_admin(sdk, url)
    group = sdk.GroupsApi(api_client=admin).create_group(sdk.GroupRequest(name="mp-group"))
    apps = sdk.AppsApi(api_client=admin)
    app = apps.create_app(
        sdk.AppRequest(
            name="mp-app", default_group=group.group_id, add_groups={group.group_id: ["ENCRYPT", "DECRYPT"]}
        )
    )
    secret = apps.get_credential(app.app_id).credential.secret
    client, _ = login_app(sdk, url, base64.b64encode(f"{app.app_id}:{secret}".encode()).decode())
    key = sdk.SecurityObjectsApi(api_client=admin).import_security_object(
        sdk.SobjectRequest(
            name="mp-key",
            obj_type="AES",
            value=bytearray(KEY),
            group_id=group.group_id,
            key_ops=["ENCRYPT", "DECRYPT"],
        )
    )
    crypto = sdk.EncryptionAndDecryptionApi(api_client=client)
    plain, ad = os.urandom(100_000), bytearray(b"tenant=42")
    out: dict[str, Any] = {"plain": plain, "ad": bytes(ad)}

    init = crypto.encrypt_init(
        key.kid, sdk.EncryptInitRequest(alg="AES", mode="GCM", iv=bytearray(IV[:12]), ad=ad)
    )
    state, cipher = init.state, b""
    for at in range(0, len(plain), 30_001):
        step = crypto.encrypt_update(
            key.kid, sdk.EncryptUpdateRequest(plain=bytearray(plain[at : at + 30_001]), state=state)
        )
        cipher, state = cipher + bytes(step.cipher), step.state
    last = crypto.encrypt_final(key.kid, sdk.EncryptFinalRequest(state=state, tag_len=128))
    out["gcm"] = cipher + bytes(last.cipher), bytes(last.tag)

    init = crypto.decrypt_init(
        key.kid, sdk.DecryptInitRequest(alg="AES", mode="GCM", iv=bytearray(IV[:12]), ad=ad)
    )
    step = crypto.decrypt_update(
        key.kid, sdk.DecryptUpdateRequest(cipher=bytearray(out["gcm"][0]), state=init.state)
    )
    last = crypto.decrypt_final(
        key.kid, sdk.DecryptFinalRequest(state=step.state, tag=bytearray(out["gcm"][1]))
    )
    out["gcm_back"] = bytes(step.plain) + bytes(last.plain)

    init = crypto.encrypt_init(key.kid, sdk.EncryptInitRequest(alg="AES", mode="CTR", iv=bytearray(IV)))
    step = crypto.encrypt_update(
        key.kid, sdk.EncryptUpdateRequest(plain=bytearray(plain[:77]), state=init.state)
    )
    out["ctr"] = bytes(step.cipher)
    try:
        crypto.encrypt_update(key.kid, sdk.EncryptUpdateRequest(plain=bytearray(b"again"), state=init.state))
        out["replay"] = None
    except ApiException as exc:
        out["replay"] = exc.status, json.loads(exc.body)
    return out


async def test_sdk_multipart_per_key_style(server_url: str) -> None:
    r = await asyncio.to_thread(flow, server_url)
    expected = AESGCM(KEY).encrypt(IV[:12], r["plain"], r["ad"])
    assert r["gcm"][0] + r["gcm"][1] == expected
    assert r["gcm_back"] == r["plain"]
    ctx = Cipher(algorithms.AES(KEY), modes.CTR(IV)).encryptor()
    assert r["ctr"] == ctx.update(r["plain"][:77])
    status, body = r["replay"]
    assert status == 400 and body["message"].startswith("multipart state is not valid")
