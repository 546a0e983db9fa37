"""Group policies as the real Fortanix ``sdkms`` SDK meets them on a listening DSM: a group made with a
cryptographic policy (AES-256 only) and a key metadata policy (an ``owner`` attribute) refuses AES-128 and
an unowned key with an ``ApiException`` 400 whose body is the DSM's ``{"message"}``; the SDK's own
``key_undo_policy`` is kept, and a field the lab does not emulate (``del_hmg``) is refused, naming it; and a key the app just used shows that use in ``lastused_at``."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

from tests.integration import test_dsm_api
from tests.integration.test_sdkms_sdk import login_admin

sqlite_dir = test_dsm_api.sqlite_dir
server_url = test_dsm_api.server_url


def policy_flow(url: str) -> dict[str, Any]:
    import sdkms.v1 as sdk
    from sdkms.v1.rest import ApiException

    admin = login_admin(sdk, url)
    groups = sdk.GroupsApi(api_client=admin)
    keys = sdk.SecurityObjectsApi(api_client=admin)
    out: dict[str, Any] = {}

    def refusal(call: Any) -> tuple[int, str]:
        try:
            call()
        except ApiException as exc:
            return int(exc.status), str(json.loads(exc.body)["message"])
        return 200, ""

    # The 5.6 SDK's GroupRequest has no policy members: its callers pass the body as a dict, as sdkms-cli does.
    group = groups.create_group(
        {
            "name": "governed",
            "description": None,
            "cryptographic_policy": {"aes": {"key_sizes": [256]}},
            "key_metadata_policy": {"base": {"custom_metadata": {"owner": {"required": {}}}}},
        }
    )
    out["group_has_policy"] = "cryptographic_policy" in json.loads(
        groups.get_group(group.group_id, _preload_content=False).data
    )
    owned = {"owner": "payments"}
    out["aes128"] = refusal(
        lambda: keys.generate_security_object(
            sdk.SobjectRequest(
                name="k128", obj_type="AES", key_size=128, group_id=group.group_id, custom_metadata=owned
            )
        )
    )
    out["unowned"] = refusal(
        lambda: keys.generate_security_object(
            sdk.SobjectRequest(name="k-unowned", obj_type="AES", key_size=256, group_id=group.group_id)
        )
    )
    key = keys.generate_security_object(
        sdk.SobjectRequest(
            name="k256",
            obj_type="AES",
            key_size=256,
            group_id=group.group_id,
            custom_metadata=owned,
            key_ops=["ENCRYPT", "DECRYPT"],
        )
    )
    out["undo"] = groups.update_group(
        group.group_id,
        sdk.GroupRequest(name="governed", key_undo_policy=sdk.KeyUndoPolicy(undo_time_window=604800)),
    ).key_undo_policy.undo_time_window
    out["hmg"] = refusal(
        lambda: groups.update_group(
            group.group_id,
            sdk.GroupRequest(name="governed", del_hmg=["4c2f5b0e-1d3a-4e8b-9f6c-7a5d2e1b0c9f"]),
        )
    )
    out["before_use"] = keys.get_security_object(key.kid).lastused_at
    sdk.EncryptionAndDecryptionApi(api_client=admin).encrypt(
        key.kid, sdk.EncryptRequest(alg="AES", plain=bytearray(b"x" * 16), mode="CBC")
    )
    out["after_use"] = keys.get_security_object(key.kid).lastused_at
    return out


async def test_sdkms_sdk_meets_group_policies(server_url: str) -> None:
    started = datetime.now(UTC).replace(microsecond=0)
    r = await asyncio.to_thread(policy_flow, server_url)
    assert r["group_has_policy"]
    status, message = r["aes128"]
    assert status == 400 and "cryptographic_policy" in message and "128" in message
    status, message = r["unowned"]
    assert status == 400 and "key_metadata_policy" in message and "owner" in message
    assert r["undo"] == 604800
    status, message = r["hmg"]
    assert status == 400 and message.startswith("del_hmg is not implemented by xkslab")
    assert r["before_use"] == "19700101T000000Z"
    used = datetime.strptime(r["after_use"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    assert started <= used <= datetime.now(UTC)
