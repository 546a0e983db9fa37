"""Export and import by key components through the real Fortanix ``sdkms`` SDK, unchanged, against a
listening DSM on SQLite and PostgreSQL: a group with a custodian policy beside its approval policy; the
direct call refused; an approval request approved by the quorum and both custodians; each custodian
fetching only their own component (read by the SDK's own ExportComponentsResponse model); the key joined
again by an import by components with the same KCV; no component in the audit log or the database file.
(sdkms-cli 5.6 has no command for key components, so the SDK is the real client here.)"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dsm_emulator import crypto
from tests.integration.test_sdkms_sdk import login_admin
from tests.integration.test_sdkms_sdk_approvals import login_user

CUSTODIANS = {"bob@xkslab.local": "bob's password", "carol@xkslab.local": "carol's password"}


@pytest.fixture
def lab(dsm_on_a_port: tuple[str, Path]) -> tuple[str, Path]:
    return dsm_on_a_port


class _Raw:
    """What ApiClient.deserialize reads: the body of a response."""

    def __init__(self, data: Any) -> None:
        self.data = json.dumps(data)


def components_flow(url: str, data_dir: Path) -> dict[str, Any]:
    import sdkms.v1 as sdk
    from sdkms.v1.rest import ApiException

    for email, password in CUSTODIANS.items():
        xkslab = [sys.executable, "-m", "xkslab", "--data-dir", str(data_dir)]
        create = [*xkslab, "user", "create", email, "--password", password]
        subprocess.run(create, check=True, capture_output=True, timeout=120)
    admin = login_admin(sdk, url)
    bob, carol = (login_user(sdk, url, email, pw) for email, pw in CUSTODIANS.items())
    users = {u.user_email: u.user_id for u in sdk.UsersApi(api_client=admin).get_users()}
    b, c = (users[email] for email in CUSTODIANS)
    group = sdk.GroupsApi(api_client=admin).create_group(
        {
            "name": "custody",
            "approval_policy": {"quorum": {"n": 1, "members": [{"user": b}]}},
            "custodian_policy": {"quorum": {"n": 2, "members": [{"user": b}, {"user": c}]}},
        }
    )
    keys = sdk.SecurityObjectsApi(api_client=admin)
    key = keys.generate_security_object(
        sdk.SobjectRequest(
            name="split-me",
            obj_type="AES",
            key_size=256,
            group_id=group.group_id,
            key_ops=["ENCRYPT", "EXPORT"],
        )
    )
    r: dict[str, Any] = {"kcv": key.kcv, "custodians": (b, c)}
    custodians = [sdk.CreatorType(user=b), sdk.CreatorType(user=c)]
    export = sdk.ExportSobjectComponentsRequest(
        key=sdk.SobjectDescriptor(kid=key.kid), custodians=custodians, method="XOR"
    )
    try:
        keys.export_sobject_components(export)
    except ApiException as exc:
        r["direct"] = exc.status
    approvals = sdk.ApprovalRequestsApi(api_client=admin)
    body = admin.sanitize_for_serialization(export)
    made = approvals.create_approval_request(
        sdk.ApprovalRequestRequest(operation="/crypto/v1/keys/components/export", method="POST", body=body)
    )
    sdk.ApprovalRequestsApi(api_client=bob).approve(made.request_id, sdk.ApproveRequest())
    r["after_bob"] = approvals.get_approval_request(made.request_id).status.value
    sdk.ApprovalRequestsApi(api_client=carol).approve(made.request_id, sdk.ApproveRequest())
    r["after_carol"] = approvals.get_approval_request(made.request_id).status.value
    try:
        approvals.get_result(made.request_id)
    except ApiException as exc:
        r["requester_fetch"] = exc.status
    parts = {}
    for who, client in ((b, bob), (c, carol)):
        result = sdk.ApprovalRequestsApi(api_client=client).get_result(made.request_id)
        answer = client.deserialize(_Raw(result.body), "ExportComponentsResponse")
        parts[who] = (result.status, answer)
    try:
        sdk.ApprovalRequestsApi(api_client=bob).get_result(made.request_id)
    except ApiException as exc:
        r["again"] = exc.status
    r["parts"] = {
        who: (status, [(p.custodian.user, bytes(p.component), bytes(p.component_kcv)) for p in a.components])
        for who, (status, a) in parts.items()
    }
    r["key_kcv"] = bytes(parts[b][1].key_kcv)

    wire = [
        {
            "component": base64.b64encode(bytes(p.component)).decode(),
            "component_kcv": bytes(p.component_kcv).hex(),
            "custodian": {"user": who},
        }
        for who, (_s, a) in parts.items()
        for p in a.components
    ]
    imported = {
        "key": {"name": "joined", "obj_type": "AES", "group_id": group.group_id, "key_ops": ["ENCRYPT"]},
        "custodians": [{"user": b}, {"user": c}],
        "components": wire,
    }
    try:
        keys.import_sobject_components(imported)
    except ApiException as exc:
        r["import_direct"] = exc.status
    made = approvals.create_approval_request(
        sdk.ApprovalRequestRequest(
            operation="/crypto/v1/keys/components/import", method="POST", body=imported
        )
    )
    shown = sdk.ApprovalRequestsApi(api_client=bob).get_approval_request(made.request_id)
    r["shown_components"] = [p["component"] for p in shown.body["components"]]
    for client in (bob, carol):
        sdk.ApprovalRequestsApi(api_client=client).approve(made.request_id, sdk.ApproveRequest())
    result = approvals.get_result(made.request_id)
    r["imported"] = (result.status, result.body["name"], result.body["kcv"])
    raw = sdk.LogsApi(api_client=admin).get_audit_logs(size=1000, _preload_content=False)
    r["audit"] = raw.data.decode()
    return r


async def test_components_through_the_sdkms_sdk(lab: tuple[str, Path], db_backend: str) -> None:
    url, data_dir = lab
    r = await asyncio.to_thread(components_flow, url, data_dir)
    assert r["direct"] == 403 and r["import_direct"] == 403
    assert (r["after_bob"], r["after_carol"]) == ("PENDING", "APPROVED")  # every custodian approves
    assert r["requester_fetch"] == 403 and r["again"] == 409
    b, c = r["custodians"]
    (status_b, [(owner_b, part_b, kcv_b)]), (status_c, [(owner_c, part_c, kcv_c)]) = (
        r["parts"][b],
        r["parts"][c],
    )
    assert (status_b, owner_b, status_c, owner_c) == (200, b, 200, c)
    assert len(part_b) == len(part_c) == 32 and part_b != part_c
    assert kcv_b.hex().upper() == crypto.kcv(part_b) and kcv_c.hex().upper() == crypto.kcv(part_c)
    joined = bytes(x ^ y for x, y in zip(part_b, part_c, strict=True))
    assert crypto.kcv(joined) == r["kcv"] == r["key_kcv"].hex().upper()
    assert r["shown_components"] == [None, None]
    assert r["imported"] == (201, "joined", r["kcv"])
    for part in (part_b, part_c):
        assert base64.b64encode(part).decode() not in r["audit"]
        assert part.hex() not in r["audit"].lower()
    if db_backend == "sqlite":
        stored = b"".join(p.read_bytes() for p in data_dir.glob("xkslab.db*"))
        assert part_b not in stored and part_c not in stored and joined not in stored
