"""Key rotation, AWS's quotas (custom key stores per Region, requests per external key store) and the
XksProxyVpcEndpointServiceOwner field, with real boto3 and the AWS CLI against the real KMS emulator (and a
real XKS proxy and DSM for XKS keys), on SQLite and PostgreSQL where storage is involved."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from aiohttp import web
from botocore.config import Config
from botocore.exceptions import ClientError
from sqlalchemy import update

from kms_emulator.models import KmsKey
from tests.kms_harness import (
    REGION,
    KmsEnv,
    aws,
    code,
    kms_db_env,
    kms_env,
    kms_template,
    start_kms,
    stop_kms,
)
from tests.xks_harness import XksEnv, close_env, make_env, start_runner, xks_template
from xkslab_shared import db

__all__ = ["kms_db_env", "kms_env", "kms_template", "xks_template"]  # fixtures used by name

PROXY_AKID = "BCDEFGHIJKLMNOPQRSTU"
PROXY_SECRET = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3I="
NOT_VALID = "origin is EXTERNAL_KEY_STORE which is not valid for this operation."


async def new_key(kms: KmsEnv) -> str:
    return str((await kms.call("create_key"))["KeyMetadata"]["KeyId"])


async def encrypt(kms: KmsEnv, key_id: str, text: bytes) -> bytes:
    blob: bytes = (await kms.call("encrypt", KeyId=key_id, Plaintext=text))["CiphertextBlob"]
    return blob


# ----------------------------------------------------------------------------------------- rotation


async def test_rotation_of_aws_kms_keys(kms_db_env: KmsEnv) -> None:
    kms = kms_db_env
    key_id = await new_key(kms)
    status = await kms.call("get_key_rotation_status", KeyId=key_id)
    assert status["KeyRotationEnabled"] is False and "RotationPeriodInDays" not in status

    await kms.call("enable_key_rotation", KeyId=key_id)
    status = await kms.call("get_key_rotation_status", KeyId=key_id)
    assert (status["KeyRotationEnabled"], status["RotationPeriodInDays"]) == (True, 365)
    assert abs(status["NextRotationDate"] - (datetime.now(UTC) + timedelta(days=365))) < timedelta(minutes=5)
    await kms.call("enable_key_rotation", KeyId=key_id, RotationPeriodInDays=90)
    assert (await kms.call("get_key_rotation_status", KeyId=key_id))["RotationPeriodInDays"] == 90

    blobs = [await encrypt(kms, key_id, b"before")]
    assert (await kms.call("list_key_rotations", KeyId=key_id))["Rotations"] == []
    assert (await kms.call("rotate_key_on_demand", KeyId=key_id))["KeyId"] == key_id
    blobs.append(await encrypt(kms, key_id, b"after one"))
    await kms.call("rotate_key_on_demand", KeyId=key_id)
    blobs.append(await encrypt(kms, key_id, b"after two"))

    rotations = (await kms.call("list_key_rotations", KeyId=key_id))["Rotations"]
    assert [(r["RotationType"], r["KeyMaterialState"]) for r in rotations] == [
        ("ON_DEMAND", "NON_CURRENT"),
        ("ON_DEMAND", "CURRENT"),
    ]
    assert all(len(r["KeyMaterialId"]) == 64 for r in rotations)
    every = (await kms.call("list_key_rotations", KeyId=key_id, IncludeKeyMaterial="ALL_KEY_MATERIAL"))[
        "Rotations"
    ]
    assert (
        len(every) == 3 and every[0]["KeyMaterialState"] == "NON_CURRENT" and "RotationDate" not in every[0]
    )
    page = await kms.call("list_key_rotations", KeyId=key_id, Limit=1)
    assert page["Truncated"] and page["Rotations"] == rotations[:1]
    assert (await kms.call("list_key_rotations", KeyId=key_id, Marker=page["NextMarker"]))["Rotations"] == (
        rotations[1:]
    )

    # Every ciphertext decrypts under the material it was made with; ReEncrypt moves an old one forward.
    for blob, text in zip(blobs, (b"before", b"after one", b"after two"), strict=True):
        assert (await kms.call("decrypt", CiphertextBlob=blob))["Plaintext"] == text
    moved = (await kms.call("re_encrypt", CiphertextBlob=blobs[0], DestinationKeyId=key_id))["CiphertextBlob"]
    assert (await kms.call("decrypt", CiphertextBlob=moved))["Plaintext"] == b"before"

    await kms.call("disable_key_rotation", KeyId=key_id)
    assert (await kms.call("get_key_rotation_status", KeyId=key_id))["KeyRotationEnabled"] is False
    assert len((await kms.call("list_key_rotations", KeyId=key_id))["Rotations"]) == 2


async def test_automatic_rotation_happens_once_due(kms_db_env: KmsEnv, db_url: str) -> None:
    """Periods are 90 days or more: the test moves NextRotationDate into the past in the database."""
    kms = kms_db_env
    key_id = await new_key(kms)
    await kms.call("enable_key_rotation", KeyId=key_id, RotationPeriodInDays=90)
    old = await encrypt(kms, key_id, b"old")
    engine = db.create_engine(db_url)
    try:
        async with engine.begin() as conn:
            past = datetime.now(UTC) - timedelta(minutes=1)
            await conn.execute(update(KmsKey).where(KmsKey.key_id == key_id).values(next_rotation_date=past))
    finally:
        await engine.dispose()
    status = await kms.call("get_key_rotation_status", KeyId=key_id)
    assert abs(status["NextRotationDate"] - (datetime.now(UTC) + timedelta(days=90))) < timedelta(minutes=5)
    rotations = (await kms.call("list_key_rotations", KeyId=key_id))["Rotations"]
    assert [(r["RotationType"], r["KeyMaterialState"]) for r in rotations] == [("AUTOMATIC", "CURRENT")]
    assert (await kms.call("decrypt", CiphertextBlob=old))["Plaintext"] == b"old"
    new = await encrypt(kms, key_id, b"new")
    assert (await kms.call("decrypt", CiphertextBlob=new))["Plaintext"] == b"new"


async def test_rotation_errors(kms_env: KmsEnv) -> None:
    key_id = await new_key(kms_env)
    missing = "11111111-2222-3333-4444-555555555555"
    for method in (
        "enable_key_rotation",
        "disable_key_rotation",
        "rotate_key_on_demand",
        "list_key_rotations",
    ):
        assert code(await kms_env.error(method, KeyId=missing)) == "NotFoundException", method
    for days in (89, 2561):  # botocore checks the range itself: sent raw, as another SDK might
        body = json.dumps({"KeyId": key_id, "RotationPeriodInDays": days}).encode()
        status, answer, _ = await kms_env.raw("TrentService.EnableKeyRotation", body)
        assert (status, answer["__type"]) == (400, "ValidationException")
        assert "rotationPeriodInDays" in answer["message"]
    assert (
        code(await kms_env.error("list_key_rotations", KeyId=key_id, Marker="x")) == "InvalidMarkerException"
    )
    error = await kms_env.error("list_key_rotations", KeyId=key_id, IncludeKeyMaterial="SOME")
    assert code(error) == "ValidationException"

    await kms_env.call("disable_key", KeyId=key_id)
    for method in ("enable_key_rotation", "disable_key_rotation", "rotate_key_on_demand"):
        assert code(await kms_env.error(method, KeyId=key_id)) == "DisabledException", method
    await kms_env.call("enable_key", KeyId=key_id)
    await kms_env.call("enable_key_rotation", KeyId=key_id)
    await kms_env.call("schedule_key_deletion", KeyId=key_id, PendingWindowInDays=7)
    for method in ("enable_key_rotation", "disable_key_rotation", "rotate_key_on_demand"):
        assert code(await kms_env.error(method, KeyId=key_id)) == "KMSInvalidStateException", method
    # Pending deletion reads false; cancelling brings the schedule back, as in AWS.
    assert (await kms_env.call("get_key_rotation_status", KeyId=key_id))["KeyRotationEnabled"] is False
    await kms_env.call("cancel_key_deletion", KeyId=key_id)
    assert (await kms_env.call("get_key_rotation_status", KeyId=key_id))["KeyRotationEnabled"] is True

    await kms_env.call("enable_key", KeyId=key_id)
    for _ in range(25):
        await kms_env.call("rotate_key_on_demand", KeyId=key_id)
    assert code(await kms_env.error("rotate_key_on_demand", KeyId=key_id)) == "LimitExceededException"
    assert len((await kms_env.call("list_key_rotations", KeyId=key_id, Limit=1000))["Rotations"]) == 25


async def test_the_aws_cli_with_rotation(kms_env: KmsEnv, tmp_path: Path) -> None:
    key_id = (await aws(kms_env, tmp_path, "create-key"))["KeyMetadata"]["KeyId"]
    await aws(
        kms_env, tmp_path, "enable-key-rotation", "--key-id", key_id, "--rotation-period-in-days", "180"
    )
    status = await aws(kms_env, tmp_path, "get-key-rotation-status", "--key-id", key_id)
    assert (status["KeyRotationEnabled"], status["RotationPeriodInDays"]) == (True, 180)
    await aws(kms_env, tmp_path, "rotate-key-on-demand", "--key-id", key_id)
    rotations = await aws(kms_env, tmp_path, "list-key-rotations", "--key-id", key_id)
    assert [r["RotationType"] for r in rotations["Rotations"]] == ["ON_DEMAND"]


# ------------------------------------------------------------------------ XKS keys and the store quota


@pytest.fixture
async def quota_lab(
    xks_template: tuple[Path, dict[str, Any]], tmp_path: Path
) -> AsyncIterator[tuple[XksEnv, KmsEnv]]:
    """A DSM, a real XKS proxy and a KMS whose external key store quota is 1 request per second."""
    xks = await make_env(xks_template, tmp_path)
    try:
        kms = await start_kms(xks.data_dir, {"kms.xks_timeout_ms": 3000, "kms.xks_store_rps": 1})
        try:
            yield xks, kms
        finally:
            await stop_kms(kms)
    finally:
        await close_env(xks)


async def test_xks_keys_refuse_rotation_and_share_the_store_quota(quota_lab: tuple[XksEnv, KmsEnv]) -> None:
    xks, kms = quota_lab
    params = store_params("lab", xks.proxy_url, f"/crypto/v1/apps/{xks.app_id}/aws/kms/xks/v1")
    params["XksProxyAuthenticationCredential"] = {"AccessKeyId": xks.akid, "RawSecretAccessKey": xks.secret}
    store_id = (await kms.call("create_custom_key_store", **params))["CustomKeyStoreId"]
    await kms.call("connect_custom_key_store", CustomKeyStoreId=store_id)
    meta = (
        await kms.call(
            "create_key", Origin="EXTERNAL_KEY_STORE", CustomKeyStoreId=store_id, XksKeyId=xks.kek_id
        )
    )["KeyMetadata"]
    key_id = meta["KeyId"]

    for method in (
        "enable_key_rotation",
        "disable_key_rotation",
        "rotate_key_on_demand",
        "list_key_rotations",
    ):
        error = await kms.error(method, KeyId=key_id)
        assert isinstance(error, kms.kms.exceptions.UnsupportedOperationException), method
        assert error.response["Error"]["Message"] == f"{meta['Arn']} {NOT_VALID}"
    assert (await kms.call("get_key_rotation_status", KeyId=key_id))["KeyRotationEnabled"] is False
    # Policies and grants work on XKS keys as on any other.
    assert "Enable IAM User Permissions" in (await kms.call("get_key_policy", KeyId=key_id))["Policy"]
    grant = await kms.call(
        "create_grant", KeyId=key_id, GranteePrincipal="s.example.com", Operations=["Encrypt"]
    )
    assert len(grant["GrantId"]) == 64

    # Without the SDK's retries (they would resend throttled calls), each call is one request.
    once = boto3.client(
        "kms",
        endpoint_url=kms.url,
        region_name=REGION,
        aws_access_key_id="AKIAEXAMPLE",
        aws_secret_access_key="x",
        config=Config(retries={"total_max_attempts": 1}),
    )

    async def attempt() -> str:
        try:
            await asyncio.to_thread(once.encrypt, KeyId=key_id, Plaintext=b"x")
        except ClientError as exc:
            return code(exc)
        return "ok"

    try:
        outcomes = await asyncio.gather(*(attempt() for _ in range(6)))
    finally:
        once.close()
    throttled = outcomes.count("ThrottlingException")
    assert outcomes.count("ok") >= 1 and throttled >= 1
    assert set(outcomes) <= {"ok", "ThrottlingException"}
    async with kms.http.get(kms.url + "/metrics") as response:
        text = await response.text()
    line = f'kms_external_key_store_throttle_total{{key_store_id="{store_id}",kms_operation="Encrypt"}}'
    counted = [float(row.split()[-1]) for row in text.splitlines() if row.startswith(line)]
    assert counted == [float(throttled)]


# ------------------------------------------------------------------ custom key store count and VPC owner


class HealthyProxy:
    """Only GetHealthStatus, under any URI path prefix: enough for CreateCustomKeyStore, which a real
    proxy cannot be made to pass for eleven different paths."""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{prefix}/kms/xks/v1/health", self.health)
        return app

    async def health(self, request: web.Request) -> web.Response:
        node = {"id": "n1", "model": "healthy", "healthStatus": "ACTIVE"}
        body = {"xksProxyFleetSize": 1, "xksProxyVendor": "t", "xksProxyModel": "t", "ekmVendor": "t"}
        return web.json_response({**body, "ekmFleetDetails": [node]})


def store_params(name: str, endpoint: str, path: str, **overrides: Any) -> dict[str, Any]:
    return {
        "CustomKeyStoreName": name,
        "CustomKeyStoreType": "EXTERNAL_KEY_STORE",
        "XksProxyUriEndpoint": endpoint,
        "XksProxyUriPath": path,
        "XksProxyConnectivity": "PUBLIC_ENDPOINT",
        "XksProxyAuthenticationCredential": {"AccessKeyId": PROXY_AKID, "RawSecretAccessKey": PROXY_SECRET},
        **overrides,
    }


@pytest.fixture
async def healthy_proxy() -> AsyncIterator[str]:
    runner, port = await start_runner(HealthyProxy().app())
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_ten_custom_key_stores_per_region(kms_db_env: KmsEnv, healthy_proxy: str) -> None:
    ids = []
    for i in range(10):
        params = store_params(f"s{i}", healthy_proxy, f"/p{i}/kms/xks/v1")
        ids.append((await kms_db_env.call("create_custom_key_store", **params))["CustomKeyStoreId"])
    error = await kms_db_env.error(
        "create_custom_key_store", **store_params("s10", healthy_proxy, "/p10/kms/xks/v1")
    )
    assert isinstance(error, kms_db_env.kms.exceptions.LimitExceededException)
    stores = (await kms_db_env.call("describe_custom_key_stores"))["CustomKeyStores"]
    assert sorted(s["CustomKeyStoreId"] for s in stores) == sorted(ids)
    await kms_db_env.call("delete_custom_key_store", CustomKeyStoreId=ids[0])
    await kms_db_env.call("create_custom_key_store", **store_params("s10", healthy_proxy, "/p10/kms/xks/v1"))


async def test_vpc_endpoint_service_owner(kms_env: KmsEnv, healthy_proxy: str) -> None:
    owner = {"XksProxyVpcEndpointServiceOwner": "123456789012"}
    error = await kms_env.error(
        "create_custom_key_store", **store_params("a", healthy_proxy, "/a/kms/xks/v1", **owner)
    )
    assert code(error) == "ValidationException"
    assert "XksProxyVpcEndpointServiceOwner" in error.response["Error"]["Message"]
    bad = {"XksProxyVpcEndpointServiceOwner": "12345678901a"}
    error = await kms_env.error(
        "create_custom_key_store",
        **store_params(
            "a", healthy_proxy, "/a/kms/xks/v1", XksProxyConnectivity="VPC_ENDPOINT_SERVICE", **bad
        ),
    )
    assert code(error) == "ValidationException" and "xksProxyVpcEndpointServiceOwner" in str(error)
    vpc = {
        "XksProxyConnectivity": "VPC_ENDPOINT_SERVICE",
        "XksProxyVpcEndpointServiceName": "com.amazonaws.vpce.us-east-1.vpce-svc-0123456789abcdef0",
        **owner,
    }
    error = await kms_env.error(
        "create_custom_key_store", **store_params("a", healthy_proxy, "/a/kms/xks/v1", **vpc)
    )
    assert code(error) == "XksProxyVpcEndpointServiceNotFoundException"
    store_id = (
        await kms_env.call("create_custom_key_store", **store_params("a", healthy_proxy, "/a/kms/xks/v1"))
    )["CustomKeyStoreId"]
    error = await kms_env.error("update_custom_key_store", CustomKeyStoreId=store_id, **owner)
    assert code(error) == "ValidationException"
    config = (await kms_env.call("describe_custom_key_stores", CustomKeyStoreId=store_id))["CustomKeyStores"][
        0
    ]
    assert "VpcEndpointServiceOwner" not in config["XksProxyConfiguration"]


async def test_a_deleted_key_takes_its_grants_and_material_with_it(kms_db_env: KmsEnv, db_url: str) -> None:
    kms = kms_db_env
    key_id = await new_key(kms)
    await kms.call("create_grant", KeyId=key_id, GranteePrincipal="s.example.com", Operations=["Encrypt"])
    await kms.call("rotate_key_on_demand", KeyId=key_id)
    await kms.call("schedule_key_deletion", KeyId=key_id, PendingWindowInDays=7)
    engine = db.create_engine(db_url)
    try:
        async with engine.begin() as conn:
            past = datetime.now(UTC) - timedelta(minutes=1)
            await conn.execute(update(KmsKey).where(KmsKey.key_id == key_id).values(deletion_date=past))
        assert (await kms.call("list_keys"))["Keys"] == []  # the listing purges keys past their date
        async with engine.connect() as conn:
            for table in ("kms_keys", "kms_grants", "kms_key_materials"):
                assert (await conn.exec_driver_sql(f"SELECT count(*) FROM {table}")).scalar() == 0, table
    finally:
        await engine.dispose()
