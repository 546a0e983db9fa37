"""A signature held for approval, through the real ``sdkms`` SDK against a listening DSM (SQLite and
PostgreSQL): a group whose approval policy names a reviewer; the direct sign refused; an approval request
for ``POST /crypto/v1/sign`` approved by the reviewer; its result a signature that ``cryptography``
verifies with the key's ``pub_key``; the same result not handed out twice."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import subprocess
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.integration.test_sdkms_sdk import login_admin
from tests.integration.test_sdkms_sdk_approvals import login_user
from tests.integration.test_sdkms_sdk_components import lab

__all__ = ["lab"]  # the fixture

MESSAGE = b"approved before it is signed"


def quorum_sign_flow(url: str, data_dir: Path) -> dict[str, Any]:
    import sdkms.v1 as sdk
    from sdkms.v1.rest import ApiException

    email, password = "reviewer@xkslab.local", "reviewer's password"
    xkslab = [sys.executable, "-m", "xkslab", "--data-dir", str(data_dir)]
    subprocess.run([*xkslab, "user", "create", email, "--password", password], check=True, timeout=120)
    admin = login_admin(sdk, url)
    reviewer = login_user(sdk, url, email, password)
    users = {u.user_email: u.user_id for u in sdk.UsersApi(api_client=admin).get_users()}
    group = sdk.GroupsApi(api_client=admin).create_group(
        {
            "name": "signing",
            "approval_policy": {
                "quorum": {"n": 1, "members": [{"user": users[email]}]},
                "protect_crypto_operations": True,
            },
        }
    )
    key = sdk.SecurityObjectsApi(api_client=admin).generate_security_object(
        sdk.SobjectRequest(name="held", obj_type="EC", elliptic_curve="NistP256", group_id=group.group_id)
    )
    digest = bytearray(hashlib.sha256(MESSAGE).digest())
    request = sdk.SignRequestEx(key=sdk.SobjectDescriptor(kid=key.kid), hash_alg="SHA256", hash=digest)
    r: dict[str, Any] = {"pub_key": bytes(key.pub_key)}
    try:
        sdk.SignAndVerifyApi(api_client=admin).sign_ex(request)
    except ApiException as exc:
        r["direct"] = exc.status
    approvals = sdk.ApprovalRequestsApi(api_client=admin)
    made = approvals.create_approval_request(
        sdk.ApprovalRequestRequest(
            operation="/crypto/v1/sign", method="POST", body=admin.sanitize_for_serialization(request)
        )
    )
    sdk.ApprovalRequestsApi(api_client=reviewer).approve(made.request_id, sdk.ApproveRequest())
    result = approvals.get_result(made.request_id)
    r["result"] = (result.status, result.body)
    try:
        approvals.get_result(made.request_id)
    except ApiException as exc:
        r["again"] = exc.status
    return r


async def test_a_signature_held_for_approval(lab: tuple[str, Path], db_backend: str) -> None:
    url, data_dir = lab
    r = await asyncio.to_thread(quorum_sign_flow, url, data_dir)
    assert r["direct"] == 403
    status, body = r["result"]
    assert status == 200
    public = serialization.load_der_public_key(r["pub_key"])
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(base64.b64decode(body["signature"]), MESSAGE, ec.ECDSA(hashes.SHA256()))
    assert r["again"] == 409
