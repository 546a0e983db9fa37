"""The real Fortanix ``sdkms`` SDK's ``ApprovalRequestsApi``, unchanged, against a listening DSM: its
models read the lab's ApprovalRequest and ApprovableResult, and a request made, approved by a second user
and fetched through it runs the export once."""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.integration import test_dsm_api
from tests.integration.test_sdkms_sdk import login_admin

sqlite_dir = test_dsm_api.sqlite_dir
server_url = test_dsm_api.server_url

BOB, BOB_PW = "bob@xkslab.local", "bob's password"


def login_user(sdk: Any, url: str, email: str, password: str) -> Any:
    cfg = sdk.Configuration()
    cfg.host = url
    cfg.username, cfg.password = email, password
    client = sdk.ApiClient(configuration=cfg)
    auth = sdk.AuthenticationApi(api_client=client).authorize()
    cfg.api_key["Authorization"] = auth.access_token
    cfg.api_key_prefix["Authorization"] = "Bearer"
    return client


def approval_flow(url: str, data_dir: Path) -> dict[str, Any]:
    import sdkms.v1 as sdk
    from sdkms.v1.rest import ApiException

    subprocess.run(
        [
            sys.executable,
            "-m",
            "xkslab",
            "--data-dir",
            str(data_dir),
            "user",
            "create",
            BOB,
            "--password",
            BOB_PW,
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )

    admin = login_admin(sdk, url)
    bob = login_user(sdk, url, BOB, BOB_PW)
    users = {u.user_email: u.user_id for u in sdk.UsersApi(api_client=admin).get_users()}
    policy = {"quorum": {"n": 1, "members": [{"user": users[BOB]}]}}
    group = sdk.GroupsApi(api_client=admin).create_group({"name": "vault", "approval_policy": policy})
    key = sdk.SecurityObjectsApi(api_client=admin).generate_security_object(
        sdk.SobjectRequest(
            name="held", obj_type="AES", key_size=256, group_id=group.group_id, key_ops=["ENCRYPT", "EXPORT"]
        )
    )
    r: dict[str, Any] = {"kid": key.kid}
    try:
        sdk.SecurityObjectsApi(api_client=admin).get_security_object_value(key.kid)
    except ApiException as exc:
        r["direct"] = exc.status
    api = sdk.ApprovalRequestsApi(api_client=admin)
    made = api.create_approval_request(
        sdk.ApprovalRequestRequest(operation="/crypto/v1/keys/export", method="POST", body={"kid": key.kid})
    )
    r["made"] = (made.status.value, made.requester.user, [s.sobject for s in made.subjects])
    r["admin"] = users[test_dsm_api.EMAIL]
    sdk.ApprovalRequestsApi(api_client=bob).approve(made.request_id, sdk.ApproveRequest())
    r["shown"] = api.get_approval_request(made.request_id).status.value
    r["listed"] = [a.request_id == made.request_id for a in api.get_approval_requests(status="APPROVED")]
    result = api.get_result(made.request_id)
    r["result"] = (result.status, result.body["kid"], len(base64.b64decode(result.body["value"])))
    try:
        api.get_result(made.request_id)
    except ApiException as exc:
        r["again"] = exc.status
    return r


async def test_sdkms_sdk_approval_requests(sqlite_dir: Path, server_url: str) -> None:
    r = await asyncio.to_thread(approval_flow, server_url, sqlite_dir)
    assert r["direct"] == 403
    status, requester, subjects = r["made"]
    assert status == "PENDING" and requester == r["admin"] and r["kid"] in subjects
    assert r["shown"] == "APPROVED" and r["listed"] == [True]
    assert r["result"] == (200, r["kid"], 32)
    assert r["again"] == 409
