"""End to end, through AWS KMS with the real boto3: the lab's XKS-backed KMS key, whose root key in the
DSM sits in a group with a key history policy, encrypts; the DSM key is revoked and destroyed, and KMS
refuses to decrypt; the destroy is reverted in the DSM and KMS decrypts its old ciphertext again. The key
is then moved out of the XKS app's groups (KMS loses it at once) and the move is reverted."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import aiohttp
import botocore.exceptions
import pytest

from dsm_emulator.keys import UNDO_WINDOW_MIN_S
from tests import deadlines
from xkslab.lab.inprocess import run_lab

PASSWORD = "history lab password"


def kms_error(call: Any, **kwargs: Any) -> str:
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        call(**kwargs)
    return str(caught.value.response["Error"]["Code"])


async def test_a_destroyed_xks_key_reverted_in_the_dsm_decrypts_old_ciphertexts_through_kms(
    tmp_path: Path,
) -> None:
    async with run_lab(tmp_path / "lab", deadlines.GENEROUS, admin_password=PASSWORD) as lab:
        dsm = lab.data["dsm"]
        group, kid = dsm["group_id"], dsm["root_kek_id"]
        basic = base64.b64encode(f"{dsm['admin_email']}:{PASSWORD}".encode()).decode()
        async with aiohttp.ClientSession(dsm["url"]) as http:
            async with http.post("/sys/v1/session/auth", headers={"Authorization": f"Basic {basic}"}) as resp:
                assert resp.status == 200, await resp.text()
                http.headers["Authorization"] = f"Bearer {(await resp.json())['access_token']}"

            async def call(method: str, path: str, body: Any = None) -> Any:
                async with http.request(method, path, json=body) as resp:
                    assert resp.status in (200, 201, 204), (path, resp.status, await resp.text())
                    return None if resp.status == 204 else await resp.json()

            await call(
                "PATCH",
                f"/sys/v1/groups/{group}",
                {"key_history_policy": {"undo_time_window": UNDO_WINDOW_MIN_S}},
            )
            kms = lab.kms_client()
            try:
                blob = (
                    await asyncio.to_thread(kms.encrypt, KeyId=lab.key_id, Plaintext=b"before the destroy")
                )["CiphertextBlob"]
                await call("POST", f"/crypto/v1/keys/{kid}/revoke", {"code": "CessationOfOperation"})
                await call("POST", f"/crypto/v1/keys/{kid}/destroy")
                refused = await asyncio.to_thread(kms_error, kms.decrypt, CiphertextBlob=blob)
                assert refused == "KMSInvalidStateException"

                history = (await call("GET", f"/crypto/v1/keys/{kid}"))["history"]
                before = [item for item in history if item["state"]["state"] == "Active"][-1]
                await call("PUT", f"/crypto/v1/keys/{kid}/revert", {"ids": [before["id"]]})
                plain = (await asyncio.to_thread(kms.decrypt, CiphertextBlob=blob))["Plaintext"]
                assert plain == b"before the destroy"

                # A move out of the XKS app's groups is honoured at once; reverting it brings the key back.
                other = await call("POST", "/sys/v1/groups", {"name": "outside the key store"})
                await call("PATCH", f"/crypto/v1/keys/{kid}", {"group_id": other["group_id"]})
                moved = await asyncio.to_thread(kms_error, kms.decrypt, CiphertextBlob=blob)
                assert moved == "KMSInvalidStateException"
                (item,) = [
                    h
                    for h in (await call("GET", f"/crypto/v1/keys/{kid}"))["history"]
                    if h["state"]["group_id"] == group and h["state"]["state"] == "Active"
                ][-1:]
                await call("PUT", f"/crypto/v1/keys/{kid}/revert", {"ids": [item["id"]]})
                plain = (await asyncio.to_thread(kms.decrypt, CiphertextBlob=blob))["Plaintext"]
                assert plain == b"before the destroy"
            finally:
                kms.close()

            hits = (await call("GET", f"/sys/v1/logs?size=1000&object_id={kid}"))["hits"]
            messages = [hit["_source"]["message"] for hit in hits]
            assert any(m.startswith("Destroyed ") and "revertible until" in m for m in messages), messages
            assert sum(m.startswith("Reverted ") for m in messages) == 2, messages
            assert any(m.startswith("Moved ") for m in messages), messages
