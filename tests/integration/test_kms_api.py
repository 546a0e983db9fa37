"""The KMS emulator end to end with the real clients: boto3 (and botocore's error classes), the AWS CLI,
and raw AWS JSON 1.1 over HTTP; then external key stores against a real XKS proxy and DSM (the double
envelope), and against a scripted proxy for what a real one cannot be made to do on demand."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.kms_harness import (
    ACCOUNT_ID,
    CALLER_ARN,
    REGION,
    KmsEnv,
    aws,
    code,
    kms_env,
    kms_template,
    start_kms,
    stop_kms,
)
from tests.xks_harness import XksEnv, close_env, make_env, start_runner, xks_template

__all__ = ["kms_env", "kms_template", "xks_template"]  # fixtures used by name

ARN_PREFIX = f"arn:aws:kms:{REGION}:{ACCOUNT_ID}:"
PROXY_AKID = "BCDEFGHIJKLMNOPQRSTU"  # 20 characters of A-Z and 2-7
PROXY_SECRET = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3I="  # 44 characters


def xks_store_params(name: str, endpoint: str, path: str = "/kms/xks/v1", **overrides: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "CustomKeyStoreName": name,
        "CustomKeyStoreType": "EXTERNAL_KEY_STORE",
        "XksProxyUriEndpoint": endpoint,
        "XksProxyUriPath": path,
        "XksProxyConnectivity": "PUBLIC_ENDPOINT",
        "XksProxyAuthenticationCredential": {"AccessKeyId": PROXY_AKID, "RawSecretAccessKey": PROXY_SECRET},
    }
    params.update(overrides)
    return params


# ------------------------------------------------------------------------------------ AWS_KMS keys


async def test_create_describe_and_list_keys(kms_env: KmsEnv) -> None:
    created = await kms_env.call(
        "create_key", Description="first", Tags=[{"TagKey": "team", "TagValue": "a"}]
    )
    meta = created["KeyMetadata"]
    key_id = meta["KeyId"]
    assert meta["Arn"] == f"{ARN_PREFIX}key/{key_id}"
    assert meta["AWSAccountId"] == ACCOUNT_ID
    assert (meta["KeyState"], meta["Enabled"], meta["Origin"]) == ("Enabled", True, "AWS_KMS")
    assert (meta["KeySpec"], meta["KeyUsage"]) == ("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT")
    assert meta["EncryptionAlgorithms"] == ["SYMMETRIC_DEFAULT"]
    assert abs(meta["CreationDate"] - datetime.now(UTC)) < timedelta(minutes=1)
    assert "CustomKeyStoreId" not in meta and "DeletionDate" not in meta

    by_arn = (await kms_env.call("describe_key", KeyId=meta["Arn"]))["KeyMetadata"]
    assert by_arn["KeyId"] == key_id and by_arn["Description"] == "first"

    second = (await kms_env.call("create_key"))["KeyMetadata"]["KeyId"]
    listed = await kms_env.call("list_keys")
    assert {k["KeyId"] for k in listed["Keys"]} == {key_id, second}
    assert all(k["KeyArn"] == f"{ARN_PREFIX}key/{k['KeyId']}" for k in listed["Keys"])
    first_page = await kms_env.call("list_keys", Limit=1)
    assert first_page["Truncated"] is True and len(first_page["Keys"]) == 1
    rest = await kms_env.call("list_keys", Limit=1, Marker=first_page["NextMarker"])
    assert rest["Truncated"] is False
    assert {first_page["Keys"][0]["KeyId"], rest["Keys"][0]["KeyId"]} == {key_id, second}

    missing = await kms_env.error("describe_key", KeyId=str(uuid.uuid4()))
    assert isinstance(missing, kms_env.kms.exceptions.NotFoundException)
    assert code(await kms_env.error("describe_key", KeyId="not-a-key-id")) == "NotFoundException"
    other_account = f"arn:aws:kms:{REGION}:999999999999:key/{key_id}"
    assert code(await kms_env.error("describe_key", KeyId=other_account)) == "NotFoundException"


async def test_encrypt_decrypt_binds_the_encryption_context(kms_env: KmsEnv) -> None:
    key_id = (await kms_env.call("create_key"))["KeyMetadata"]["KeyId"]
    context = {"purpose": "test", "dept": "nile"}
    encrypted = await kms_env.call(
        "encrypt", KeyId=key_id, Plaintext=b"attack at dawn", EncryptionContext=context
    )
    assert encrypted["KeyId"] == f"{ARN_PREFIX}key/{key_id}"
    assert encrypted["EncryptionAlgorithm"] == "SYMMETRIC_DEFAULT"
    blob = encrypted["CiphertextBlob"]
    assert b"attack at dawn" not in blob and blob[0] == 1  # layout version 1

    # No KeyId needed, and the context's key order does not matter.
    reordered = dict(reversed(list(context.items())))
    decrypted = await kms_env.call("decrypt", CiphertextBlob=blob, EncryptionContext=reordered)
    assert decrypted["Plaintext"] == b"attack at dawn"
    assert decrypted["KeyId"] == encrypted["KeyId"]

    for wrong in ({"purpose": "test"}, {**context, "dept": "amazon"}, None):
        params: dict[str, Any] = {"CiphertextBlob": blob}
        if wrong is not None:
            params["EncryptionContext"] = wrong
        error = await kms_env.error("decrypt", **params)
        assert isinstance(error, kms_env.kms.exceptions.InvalidCiphertextException)

    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    future_version = bytes([9]) + blob[1:]
    for bad in (tampered, future_version, b"garbage", blob + b"\x00"):
        error = await kms_env.error("decrypt", CiphertextBlob=bad, EncryptionContext=context)
        assert code(error) == "InvalidCiphertextException"

    # No context at all is the same as an empty one, both ways.
    plain = await kms_env.call("encrypt", KeyId=key_id, Plaintext=b"x")
    assert (await kms_env.call("decrypt", CiphertextBlob=plain["CiphertextBlob"], EncryptionContext={}))[
        "Plaintext"
    ] == b"x"


async def test_every_response_has_a_fresh_request_id(kms_env: KmsEnv) -> None:
    first = await kms_env.call("list_keys")
    second = await kms_env.call("list_keys")
    ids = [r["ResponseMetadata"]["RequestId"] for r in (first, second)]
    assert all(str(uuid.UUID(i)) == i for i in ids) and ids[0] != ids[1]
    assert first["ResponseMetadata"]["HTTPHeaders"]["x-amzn-requestid"] == ids[0]


async def test_decrypt_with_a_different_key_id_is_incorrect_key(kms_env: KmsEnv) -> None:
    first = (await kms_env.call("create_key"))["KeyMetadata"]
    second = (await kms_env.call("create_key"))["KeyMetadata"]
    blob = (await kms_env.call("encrypt", KeyId=first["KeyId"], Plaintext=b"data"))["CiphertextBlob"]
    error = await kms_env.error("decrypt", CiphertextBlob=blob, KeyId=second["KeyId"])
    assert isinstance(error, kms_env.kms.exceptions.IncorrectKeyException)
    ok = await kms_env.call("decrypt", CiphertextBlob=blob, KeyId=first["Arn"])
    assert ok["Plaintext"] == b"data"


async def test_re_encrypt_between_two_keys(kms_env: KmsEnv) -> None:
    source = (await kms_env.call("create_key"))["KeyMetadata"]
    destination = (await kms_env.call("create_key"))["KeyMetadata"]
    blob = (
        await kms_env.call(
            "encrypt", KeyId=source["KeyId"], Plaintext=b"moving", EncryptionContext={"a": "1"}
        )
    )["CiphertextBlob"]
    moved = await kms_env.call(
        "re_encrypt",
        CiphertextBlob=blob,
        SourceEncryptionContext={"a": "1"},
        DestinationKeyId=destination["KeyId"],
        DestinationEncryptionContext={"b": "2"},
    )
    assert moved["SourceKeyId"] == source["Arn"] and moved["KeyId"] == destination["Arn"]
    decrypted = await kms_env.call(
        "decrypt", CiphertextBlob=moved["CiphertextBlob"], EncryptionContext={"b": "2"}
    )
    assert decrypted["Plaintext"] == b"moving" and decrypted["KeyId"] == destination["Arn"]
    wrong_source_context = await kms_env.error(
        "re_encrypt",
        CiphertextBlob=blob,
        SourceEncryptionContext={"a": "2"},
        DestinationKeyId=destination["KeyId"],
    )
    assert code(wrong_source_context) == "InvalidCiphertextException"
    wrong_source_key = await kms_env.error(
        "re_encrypt",
        CiphertextBlob=blob,
        SourceKeyId=destination["KeyId"],
        SourceEncryptionContext={"a": "1"},
        DestinationKeyId=destination["KeyId"],
    )
    assert code(wrong_source_key) == "IncorrectKeyException"


async def test_generate_data_key_sizes(kms_env: KmsEnv) -> None:
    key_id = (await kms_env.call("create_key"))["KeyMetadata"]["KeyId"]
    for params, size in (
        ({"KeySpec": "AES_256"}, 32),
        ({"KeySpec": "AES_128"}, 16),
        ({"NumberOfBytes": 1}, 1),
    ):
        generated = await kms_env.call(
            "generate_data_key", KeyId=key_id, EncryptionContext={"f": "x"}, **params
        )
        assert len(generated["Plaintext"]) == size
        opened = await kms_env.call(
            "decrypt", CiphertextBlob=generated["CiphertextBlob"], EncryptionContext={"f": "x"}
        )
        assert opened["Plaintext"] == generated["Plaintext"]
    largest = await kms_env.call("generate_data_key", KeyId=key_id, NumberOfBytes=1024)
    assert len(largest["Plaintext"]) == 1024

    without = await kms_env.call("generate_data_key_without_plaintext", KeyId=key_id, NumberOfBytes=64)
    assert "Plaintext" not in without and without["KeyId"] == f"{ARN_PREFIX}key/{key_id}"
    assert len((await kms_env.call("decrypt", CiphertextBlob=without["CiphertextBlob"]))["Plaintext"]) == 64

    both = await kms_env.error("generate_data_key", KeyId=key_id, KeySpec="AES_256", NumberOfBytes=32)
    neither = await kms_env.error("generate_data_key", KeyId=key_id)
    too_many = await kms_env.error("generate_data_key", KeyId=key_id, NumberOfBytes=1025)
    assert {code(both), code(neither), code(too_many)} == {"ValidationException"}


async def test_generate_random(kms_env: KmsEnv) -> None:
    one = await kms_env.call("generate_random", NumberOfBytes=1)
    assert len(one["Plaintext"]) == 1
    first = await kms_env.call("generate_random", NumberOfBytes=1024)
    second = await kms_env.call("generate_random", NumberOfBytes=1024)
    assert len(first["Plaintext"]) == 1024 and first["Plaintext"] != second["Plaintext"]
    assert code(await kms_env.error("generate_random", NumberOfBytes=1025)) == "ValidationException"
    unknown = await kms_env.error(
        "generate_random", NumberOfBytes=8, CustomKeyStoreId="cks-0123456789abcdef0"
    )
    assert code(unknown) == "CustomKeyStoreNotFoundException"


async def test_disabled_keys_refuse_cryptography(kms_env: KmsEnv) -> None:
    key_id = (await kms_env.call("create_key"))["KeyMetadata"]["KeyId"]
    blob = (await kms_env.call("encrypt", KeyId=key_id, Plaintext=b"p"))["CiphertextBlob"]
    await kms_env.call("disable_key", KeyId=key_id)
    meta = (await kms_env.call("describe_key", KeyId=key_id))["KeyMetadata"]
    assert (meta["KeyState"], meta["Enabled"]) == ("Disabled", False)
    for method, params in (
        ("encrypt", {"KeyId": key_id, "Plaintext": b"p"}),
        ("decrypt", {"CiphertextBlob": blob}),
        ("generate_data_key", {"KeyId": key_id, "KeySpec": "AES_256"}),
    ):
        error = await kms_env.error(method, **params)
        assert isinstance(error, kms_env.kms.exceptions.DisabledException), method
    await kms_env.call("enable_key", KeyId=key_id)
    assert (await kms_env.call("decrypt", CiphertextBlob=blob))["Plaintext"] == b"p"


async def test_schedule_and_cancel_key_deletion(kms_env: KmsEnv) -> None:
    key_id = (await kms_env.call("create_key"))["KeyMetadata"]["KeyId"]
    too_short = await kms_env.error("schedule_key_deletion", KeyId=key_id, PendingWindowInDays=6)
    assert code(too_short) == "ValidationException"
    scheduled = await kms_env.call("schedule_key_deletion", KeyId=key_id)
    assert scheduled["KeyState"] == "PendingDeletion" and scheduled["PendingWindowInDays"] == 30
    assert abs(scheduled["DeletionDate"] - (datetime.now(UTC) + timedelta(days=30))) < timedelta(minutes=1)
    meta = (await kms_env.call("describe_key", KeyId=key_id))["KeyMetadata"]
    assert meta["KeyState"] == "PendingDeletion" and meta["DeletionDate"] == scheduled["DeletionDate"]
    assert meta["PendingDeletionWindowInDays"] == 30
    invalid_state = kms_env.kms.exceptions.KMSInvalidStateException
    assert isinstance(await kms_env.error("encrypt", KeyId=key_id, Plaintext=b"p"), invalid_state)
    assert isinstance(await kms_env.error("enable_key", KeyId=key_id), invalid_state)
    assert isinstance(await kms_env.error("schedule_key_deletion", KeyId=key_id), invalid_state)

    cancelled = await kms_env.call("cancel_key_deletion", KeyId=key_id)
    assert cancelled["KeyId"] == f"{ARN_PREFIX}key/{key_id}"
    meta = (await kms_env.call("describe_key", KeyId=key_id))["KeyMetadata"]
    assert meta["KeyState"] == "Disabled" and "DeletionDate" not in meta
    assert isinstance(await kms_env.error("cancel_key_deletion", KeyId=key_id), invalid_state)
    await kms_env.call("enable_key", KeyId=key_id)
    week = await kms_env.call("schedule_key_deletion", KeyId=key_id, PendingWindowInDays=7)
    assert week["PendingWindowInDays"] == 7


async def test_aliases(kms_env: KmsEnv) -> None:
    first = (await kms_env.call("create_key"))["KeyMetadata"]
    second = (await kms_env.call("create_key"))["KeyMetadata"]
    await kms_env.call("create_alias", AliasName="alias/app", TargetKeyId=first["KeyId"])
    by_name = await kms_env.call("encrypt", KeyId="alias/app", Plaintext=b"p")
    by_arn = await kms_env.call("encrypt", KeyId=f"{ARN_PREFIX}alias/app", Plaintext=b"p")
    assert by_name["KeyId"] == by_arn["KeyId"] == first["Arn"]
    assert (await kms_env.call("describe_key", KeyId="alias/app"))["KeyMetadata"]["KeyId"] == first["KeyId"]

    listed = (await kms_env.call("list_aliases"))["Aliases"]
    assert [(a["AliasName"], a["TargetKeyId"], a["AliasArn"]) for a in listed] == [
        ("alias/app", first["KeyId"], f"{ARN_PREFIX}alias/app")
    ]
    assert (await kms_env.call("list_aliases", KeyId=second["KeyId"]))["Aliases"] == []

    duplicate = await kms_env.error("create_alias", AliasName="alias/app", TargetKeyId=second["KeyId"])
    assert isinstance(duplicate, kms_env.kms.exceptions.AlreadyExistsException)
    for bad in ("alias/aws/mine", "noprefix"):
        error = await kms_env.error("create_alias", AliasName=bad, TargetKeyId=second["KeyId"])
        assert isinstance(error, kms_env.kms.exceptions.InvalidAliasNameException), bad
    # Only key ids and key ARNs are valid where the model says so.
    assert code(await kms_env.error("enable_key", KeyId="alias/app")) == "NotFoundException"

    await kms_env.call("update_alias", AliasName="alias/app", TargetKeyId=second["Arn"])
    assert (await kms_env.call("encrypt", KeyId="alias/app", Plaintext=b"p"))["KeyId"] == second["Arn"]
    await kms_env.call("delete_alias", AliasName="alias/app")
    assert code(await kms_env.error("encrypt", KeyId="alias/app", Plaintext=b"p")) == "NotFoundException"
    assert code(await kms_env.error("delete_alias", AliasName="alias/app")) == "NotFoundException"


async def test_tags(kms_env: KmsEnv) -> None:
    key_id = (await kms_env.call("create_key", Tags=[{"TagKey": "a", "TagValue": "1"}]))["KeyMetadata"][
        "KeyId"
    ]
    await kms_env.call("tag_resource", KeyId=key_id, Tags=[{"TagKey": "b", "TagValue": "2"}])
    await kms_env.call("tag_resource", KeyId=key_id, Tags=[{"TagKey": "a", "TagValue": "changed"}])
    tags = (await kms_env.call("list_resource_tags", KeyId=key_id))["Tags"]
    assert tags == [{"TagKey": "a", "TagValue": "changed"}, {"TagKey": "b", "TagValue": "2"}]
    await kms_env.call("untag_resource", KeyId=key_id, TagKeys=["a"])
    assert (await kms_env.call("list_resource_tags", KeyId=key_id))["Tags"] == [
        {"TagKey": "b", "TagValue": "2"}
    ]
    reserved = await kms_env.error("tag_resource", KeyId=key_id, Tags=[{"TagKey": "aws:x", "TagValue": "v"}])
    assert isinstance(reserved, kms_env.kms.exceptions.TagException)


async def test_description_and_rotation_status(kms_env: KmsEnv) -> None:
    key_id = (await kms_env.call("create_key", Description="old"))["KeyMetadata"]["KeyId"]
    await kms_env.call("update_key_description", KeyId=key_id, Description="new")
    assert (await kms_env.call("describe_key", KeyId=key_id))["KeyMetadata"]["Description"] == "new"
    assert (await kms_env.call("get_key_rotation_status", KeyId=key_id))["KeyRotationEnabled"] is False


# ------------------------------------------------------------------------------------ the wire


async def test_unknown_operations_are_unsupported(kms_env: KmsEnv) -> None:
    status, body, headers = await kms_env.raw("TrentService.MadeUpOperation", b"{}")
    assert status == 400 and body["__type"] == "UnsupportedOperationException" and body["message"]
    assert headers["Content-Type"] == "application/x-amz-json-1.1" and headers["x-amzn-RequestId"]
    status, body, _ = await kms_env.raw("OtherService.Encrypt", b"{}")
    assert status == 400 and body["__type"] == "UnsupportedOperationException"
    # A real KMS operation this emulator does not serve, through botocore's own error parsing.
    error = await kms_env.error("get_public_key", KeyId=str(uuid.uuid4()))
    assert isinstance(error, kms_env.kms.exceptions.UnsupportedOperationException)


async def test_malformed_requests_get_aws_shaped_400s(kms_env: KmsEnv) -> None:
    for body in (b"{not json", b"[1, 2]", b"\xff\xfe", json.dumps({"KeyId": 5}).encode()):
        status, answer, headers = await kms_env.raw("TrentService.DescribeKey", body)
        assert status == 400, body
        assert answer["__type"] == "SerializationException" and answer["message"], body
        assert headers["x-amzn-RequestId"]
    status, answer, _ = await kms_env.raw("TrentService.Encrypt", json.dumps({"KeyId": "alias/x"}).encode())
    assert status == 400 and answer["__type"] == "ValidationException"
    assert "plaintext" in answer["message"]
    status, answer, _ = await kms_env.raw(None, b"", method="GET")
    assert status == 400 and answer["__type"] == "UnsupportedOperationException"
    status, answer, _ = await kms_env.raw("TrentService.DescribeKey", b"[" * 200_000)  # too deep to parse
    assert status == 400 and answer["__type"] == "SerializationException"


async def test_look_alike_digits_are_refused_not_crashed_on(kms_env: KmsEnv) -> None:
    """Unicode digits pass str.isdigit() and \\d; AWS's patterns mean ASCII."""
    key_id = (await kms_env.call("create_key"))["KeyMetadata"]["KeyId"]
    bad_marker = await kms_env.error("list_resource_tags", KeyId=key_id, Marker="\u00b2")
    assert code(bad_marker) == "InvalidMarkerException"
    bad_path = await kms_env.error(
        "create_custom_key_store",
        **xks_store_params("digits", "http://127.0.0.1:9", "/kms/xks/v\u0661"),
    )
    assert code(bad_path) == "ValidationException"


# ------------------------------------------------------------------------------------ key store input


async def test_create_custom_key_store_validates_its_input(kms_env: KmsEnv) -> None:
    with socket.socket() as dead:  # bound, never listening: nothing answers there, and nobody else takes it
        dead.bind(("127.0.0.1", 0))
        await create_custom_key_store_refuses_bad_input(kms_env, f"http://127.0.0.1:{dead.getsockname()[1]}")


async def create_custom_key_store_refuses_bad_input(kms_env: KmsEnv, endpoint: str) -> None:
    credential = xks_store_params("x", endpoint)["XksProxyAuthenticationCredential"]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"XksProxyUriEndpoint": "ftp://proxy.example"}, "ValidationException"),
        ({"XksProxyUriEndpoint": "https://proxy.example/path"}, "ValidationException"),
        ({"XksProxyUriEndpoint": "http://127.0.0.1:99999"}, "ValidationException"),
        ({"XksProxyUriPath": "/not/the/xks/path"}, "ValidationException"),
        ({"XksProxyUriPath": "/kms/xks/v1/extra"}, "ValidationException"),
        (
            {"XksProxyAuthenticationCredential": {**credential, "AccessKeyId": "lowercase-is-not-base32"}},
            "ValidationException",
        ),
        (
            {"XksProxyAuthenticationCredential": {**credential, "RawSecretAccessKey": "!" * 43}},
            "ValidationException",
        ),
        ({"XksProxyConnectivity": None}, "ValidationException"),
        ({"CustomKeyStoreType": "AWS_CLOUDHSM"}, "UnsupportedOperationException"),
        (
            {
                "XksProxyConnectivity": "VPC_ENDPOINT_SERVICE",
                "XksProxyVpcEndpointServiceName": "com.amazonaws.vpce.us-east-1.vpce-svc-0123456789abcdef0",
            },
            "XksProxyVpcEndpointServiceNotFoundException",
        ),
        # Well formed, but nothing listens there: the health check fails as unreachable.
        ({}, "XksProxyUriUnreachableException"),
    ]
    for overrides, expected in cases:
        params = xks_store_params("store", endpoint, **overrides)
        params = {k: v for k, v in params.items() if v is not None}
        error = await kms_env.error("create_custom_key_store", **params)
        assert code(error) == expected, overrides
        assert PROXY_SECRET not in str(error.response) and "!" * 43 not in str(error.response)
    assert (await kms_env.call("describe_custom_key_stores"))["CustomKeyStores"] == []


async def test_strict_endpoints_apply_the_aws_pattern(kms_template: Path, tmp_path: Path) -> None:
    import shutil

    shutil.copytree(kms_template, tmp_path / "data")
    env = await start_kms(tmp_path / "data", {"kms.strict_endpoints": True})
    try:
        loopback = await env.error(
            "create_custom_key_store", **xks_store_params("s", "http://127.0.0.1:8600")
        )
        assert code(loopback) == "ValidationException" and "^https://[a-zA-Z0-9.-]+$" in str(loopback)
        # A name that passes AWS's pattern goes on to the health check (and fails there: no DNS here).
        public = await env.error("create_custom_key_store", **xks_store_params("s", "https://proxy.invalid"))
        assert code(public) == "XksProxyUriUnreachableException"
    finally:
        await stop_kms(env)


async def test_unknown_key_stores(kms_env: KmsEnv) -> None:
    unknown = "cks-0123456789abcdef0"
    not_found = kms_env.kms.exceptions.CustomKeyStoreNotFoundException
    assert isinstance(await kms_env.error("describe_custom_key_stores", CustomKeyStoreId=unknown), not_found)
    assert isinstance(await kms_env.error("connect_custom_key_store", CustomKeyStoreId=unknown), not_found)
    assert isinstance(await kms_env.error("delete_custom_key_store", CustomKeyStoreId=unknown), not_found)
    create = await kms_env.error(
        "create_key", Origin="EXTERNAL_KEY_STORE", CustomKeyStoreId=unknown, XksKeyId="some-key"
    )
    assert isinstance(create, not_found)
    assert code(await kms_env.error("create_key", XksKeyId="some-key")) == "ValidationException"


# ------------------------------------------------------------------------------------ the AWS CLI


async def test_the_aws_cli(kms_env: KmsEnv, tmp_path: Path) -> None:
    """AWS CLI v1 (the one installed with the test extras) takes a blob argument as raw bytes, which is
    what v2 needs ``--cli-binary-format raw-in-base64-out`` for; v1 rejects that flag."""
    created = await aws(kms_env, tmp_path, "create-key", "--description", "from the cli")
    key_id = created["KeyMetadata"]["KeyId"]
    assert created["KeyMetadata"]["Description"] == "from the cli"
    listed = await aws(kms_env, tmp_path, "list-keys")
    assert key_id in [k["KeyId"] for k in listed["Keys"]]
    encrypted = await aws(
        kms_env,
        tmp_path,
        "encrypt",
        "--key-id",
        key_id,
        "--plaintext",
        "hello from the cli",
        "--encryption-context",
        "app=cli",
    )
    blob_file = tmp_path / "blob.bin"
    blob_file.write_bytes(base64.b64decode(encrypted["CiphertextBlob"]))
    decrypted = await aws(
        kms_env,
        tmp_path,
        "decrypt",
        "--ciphertext-blob",
        f"fileb://{blob_file}",
        "--encryption-context",
        "app=cli",
    )
    assert base64.b64decode(decrypted["Plaintext"]) == b"hello from the cli"
    assert decrypted["KeyId"] == f"{ARN_PREFIX}key/{key_id}"


# ------------------------------------------------------------------------------------ external key stores


@pytest.fixture
async def lab(
    xks_template: tuple[Path, dict[str, Any]], tmp_path: Path
) -> AsyncIterator[tuple[XksEnv, KmsEnv]]:
    """A DSM, an XKS proxy and this KMS on one data directory (generous timeout: CI machines stall)."""
    xks = await make_env(xks_template, tmp_path)
    try:
        kms = await start_kms(xks.data_dir, {"kms.xks_timeout_ms": 3000})
        try:
            yield xks, kms
        finally:
            await stop_kms(kms)
    finally:
        await close_env(xks)


def proxy_store_params(xks: XksEnv, name: str = "lab-store", **overrides: Any) -> dict[str, Any]:
    params = xks_store_params(name, xks.proxy_url, f"{xks.prefix}/kms/xks/v1")
    params["XksProxyAuthenticationCredential"] = {"AccessKeyId": xks.akid, "RawSecretAccessKey": xks.secret}
    params.update(overrides)
    return params


async def describe_store(kms: KmsEnv, store_id: str) -> dict[str, Any]:
    stores = (await kms.call("describe_custom_key_stores", CustomKeyStoreId=store_id))["CustomKeyStores"]
    assert len(stores) == 1
    return dict(stores[0])


async def connected_store_and_key(xks: XksEnv, kms: KmsEnv) -> tuple[str, dict[str, Any]]:
    store_id = (await kms.call("create_custom_key_store", **proxy_store_params(xks)))["CustomKeyStoreId"]
    await kms.call("connect_custom_key_store", CustomKeyStoreId=store_id)
    created = await kms.call(
        "create_key", Origin="EXTERNAL_KEY_STORE", CustomKeyStoreId=store_id, XksKeyId=xks.kek_id
    )
    return store_id, created["KeyMetadata"]


async def test_external_key_store_lifecycle(lab: tuple[XksEnv, KmsEnv]) -> None:
    xks, kms = lab
    store_id = (await kms.call("create_custom_key_store", **proxy_store_params(xks)))["CustomKeyStoreId"]
    assert store_id.startswith("cks-") and len(store_id) == 21
    described = await kms.call("describe_custom_key_stores")
    assert xks.secret not in json.dumps(described, default=str)
    entry = described["CustomKeyStores"][0]
    assert entry["ConnectionState"] == "DISCONNECTED" and "ConnectionErrorCode" not in entry
    assert entry["CustomKeyStoreType"] == "EXTERNAL_KEY_STORE" and entry["CustomKeyStoreName"] == "lab-store"
    assert entry["XksProxyConfiguration"] == {
        "Connectivity": "PUBLIC_ENDPOINT",
        "AccessKeyId": xks.akid,
        "UriEndpoint": xks.proxy_url,
        "UriPath": f"{xks.prefix}/kms/xks/v1",
    }
    by_name = await kms.call("describe_custom_key_stores", CustomKeyStoreName="lab-store")
    assert by_name["CustomKeyStores"][0]["CustomKeyStoreId"] == store_id

    name_taken = await kms.error("create_custom_key_store", **proxy_store_params(xks))
    assert isinstance(name_taken, kms.kms.exceptions.CustomKeyStoreNameInUseException)
    uri_taken = await kms.error("create_custom_key_store", **proxy_store_params(xks, "other-name"))
    assert isinstance(uri_taken, kms.kms.exceptions.XksProxyUriInUseException)

    not_connected = await kms.error(
        "create_key", Origin="EXTERNAL_KEY_STORE", CustomKeyStoreId=store_id, XksKeyId=xks.kek_id
    )
    assert isinstance(not_connected, kms.kms.exceptions.CustomKeyStoreInvalidStateException)
    invalid_state = kms.kms.exceptions.CustomKeyStoreInvalidStateException
    assert isinstance(
        await kms.error("disconnect_custom_key_store", CustomKeyStoreId=store_id), invalid_state
    )

    # Updates are re-validated through the proxy: a wrong secret or a path it does not serve is refused.
    wrong_secret = {"AccessKeyId": xks.akid, "RawSecretAccessKey": PROXY_SECRET}
    bad_secret = await kms.error(
        "update_custom_key_store", CustomKeyStoreId=store_id, XksProxyAuthenticationCredential=wrong_secret
    )
    assert code(bad_secret) == "XksProxyIncorrectAuthenticationCredentialException"
    bad_path = await kms.error(
        "update_custom_key_store", CustomKeyStoreId=store_id, XksProxyUriPath="/nobody/here/kms/xks/v1"
    )
    assert code(bad_path) == "XksProxyInvalidConfigurationException"
    await kms.call("update_custom_key_store", CustomKeyStoreId=store_id, NewCustomKeyStoreName="renamed")
    assert (await describe_store(kms, store_id))["CustomKeyStoreName"] == "renamed"
    assert (await describe_store(kms, store_id))["XksProxyConfiguration"][
        "UriPath"
    ] == f"{xks.prefix}/kms/xks/v1"

    await kms.call("connect_custom_key_store", CustomKeyStoreId=store_id)
    await kms.call("connect_custom_key_store", CustomKeyStoreId=store_id)  # connecting twice is fine
    assert (await describe_store(kms, store_id))["ConnectionState"] == "CONNECTED"
    # A connected store may be renamed, but its endpoint changes only while disconnected.
    await kms.call("update_custom_key_store", CustomKeyStoreId=store_id, NewCustomKeyStoreName="x")
    assert (await describe_store(kms, store_id))["CustomKeyStoreName"] == "x"
    assert isinstance(
        await kms.error(
            "update_custom_key_store", CustomKeyStoreId=store_id, XksProxyUriEndpoint="https://other.example"
        ),
        invalid_state,
    )
    assert isinstance(await kms.error("delete_custom_key_store", CustomKeyStoreId=store_id), invalid_state)
    key = (
        await kms.call(
            "create_key", Origin="EXTERNAL_KEY_STORE", CustomKeyStoreId=store_id, XksKeyId=xks.kek_id
        )
    )["KeyMetadata"]

    await kms.call("disconnect_custom_key_store", CustomKeyStoreId=store_id)
    assert (await kms.call("describe_key", KeyId=key["KeyId"]))["KeyMetadata"]["KeyState"] == "Unavailable"
    unavailable = await kms.error("encrypt", KeyId=key["KeyId"], Plaintext=b"p")
    assert isinstance(unavailable, kms.kms.exceptions.KMSInvalidStateException)
    has_keys = await kms.error("delete_custom_key_store", CustomKeyStoreId=store_id)
    assert isinstance(has_keys, kms.kms.exceptions.CustomKeyStoreHasCMKsException)

    # The proxy goes away: connecting still succeeds as a call, and the store is FAILED with the cause.
    proxy_runner = xks.runners.pop(0)
    await proxy_runner.cleanup()
    await kms.call("connect_custom_key_store", CustomKeyStoreId=store_id)
    failed = await describe_store(kms, store_id)
    assert (failed["ConnectionState"], failed["ConnectionErrorCode"]) == ("FAILED", "XKS_PROXY_NOT_REACHABLE")
    assert (await kms.call("describe_key", KeyId=key["KeyId"]))["KeyMetadata"]["KeyState"] == "Unavailable"
    await kms.call("disconnect_custom_key_store", CustomKeyStoreId=store_id)
    assert "ConnectionErrorCode" not in await describe_store(kms, store_id)


async def test_xks_keys_use_the_double_envelope(lab: tuple[XksEnv, KmsEnv]) -> None:
    xks, kms = lab
    store_id, key = await connected_store_and_key(xks, kms)
    assert (key["Origin"], key["CustomKeyStoreId"], key["KeyState"]) == (
        "EXTERNAL_KEY_STORE",
        store_id,
        "Enabled",
    )
    assert key["XksKeyConfiguration"] == {"Id": xks.kek_id}
    assert (await kms.call("get_key_rotation_status", KeyId=key["KeyId"]))["KeyRotationEnabled"] is False

    encrypted = await kms.call(
        "encrypt", KeyId=key["KeyId"], Plaintext=b"two layers", EncryptionContext={"c": "1"}
    )
    assert encrypted["CiphertextBlob"][:2] == bytes([1, 2])  # version 1, kind XKS
    decrypted = await kms.call(
        "decrypt", CiphertextBlob=encrypted["CiphertextBlob"], EncryptionContext={"c": "1"}
    )
    assert decrypted["Plaintext"] == b"two layers" and decrypted["KeyId"] == key["Arn"]
    # The proxy opens the outer layer; the inner one refuses the wrong context.
    wrong = await kms.error(
        "decrypt", CiphertextBlob=encrypted["CiphertextBlob"], EncryptionContext={"c": "2"}
    )
    assert code(wrong) == "InvalidCiphertextException"

    # Each proxy call carried the KMS request's own id, operation, key ARN and caller.
    rows = await xks.audit_rows()
    for response, operation in ((encrypted, "Encrypt"), (decrypted, "Decrypt")):
        request_id = response["ResponseMetadata"]["RequestId"]
        row = next(r for r in rows if r["kms_request_id"] == request_id)
        assert (row["kms_operation"], row["kms_key_arn"], row["aws_principal_arn"]) == (
            operation,
            key["Arn"],
            CALLER_ARN,
        )
        assert row["outcome"] == "success"

    plain_key = (await kms.call("create_key"))["KeyMetadata"]
    to_plain = await kms.call(
        "re_encrypt",
        CiphertextBlob=encrypted["CiphertextBlob"],
        SourceEncryptionContext={"c": "1"},
        DestinationKeyId=plain_key["KeyId"],
    )
    assert to_plain["SourceKeyId"] == key["Arn"] and to_plain["KeyId"] == plain_key["Arn"]
    back = await kms.call(
        "re_encrypt", CiphertextBlob=to_plain["CiphertextBlob"], DestinationKeyId=key["Arn"]
    )
    assert back["CiphertextBlob"][1] == 2
    assert (await kms.call("decrypt", CiphertextBlob=back["CiphertextBlob"]))["Plaintext"] == b"two layers"

    data_key = await kms.call("generate_data_key", KeyId=key["KeyId"], KeySpec="AES_256")
    opened = await kms.call("decrypt", CiphertextBlob=data_key["CiphertextBlob"])
    assert opened["Plaintext"] == data_key["Plaintext"] and len(opened["Plaintext"]) == 32
    without = await kms.call("generate_data_key_without_plaintext", KeyId=key["KeyId"], NumberOfBytes=16)
    assert len((await kms.call("decrypt", CiphertextBlob=without["CiphertextBlob"]))["Plaintext"]) == 16
    unsupported = await kms.error("generate_random", NumberOfBytes=8, CustomKeyStoreId=store_id)
    assert code(unsupported) == "UnsupportedOperationException"

    # The external key disabled in the key manager: the proxy refuses, KMS names the cause.
    await xks.core.keys.update(xks.system, xks.kek_id, enabled=False)
    refused = await kms.error("encrypt", KeyId=key["KeyId"], Plaintext=b"p")
    assert isinstance(refused, kms.kms.exceptions.KMSInvalidStateException)
    assert "external key is disabled" in refused.response["Error"]["Message"]
    assert (
        code(await kms.error("decrypt", CiphertextBlob=encrypted["CiphertextBlob"]))
        == "KMSInvalidStateException"
    )


async def test_xks_create_key_checks_the_external_key(lab: tuple[XksEnv, KmsEnv]) -> None:
    xks, kms = lab
    store_id, _key = await connected_store_and_key(xks, kms)

    async def create(xks_key_id: str) -> str:
        error = await kms.error(
            "create_key", Origin="EXTERNAL_KEY_STORE", CustomKeyStoreId=store_id, XksKeyId=xks_key_id
        )
        return code(error)

    assert await create(xks.kek_id) == "XksKeyAlreadyInUseException"
    assert await create(str(uuid.uuid4())) == "XksKeyNotFoundException"
    encrypt_only = await xks.create_key("encrypt-only", key_ops=["ENCRYPT", "APPMANAGEABLE"])
    assert await create(encrypt_only) == "XksKeyInvalidConfigurationException"
    small = await xks.create_key("aes-128", size=128)
    assert await create(small) == "XksKeyInvalidConfigurationException"
    disabled = await xks.create_key("disabled", enabled=False)
    assert await create(disabled) == "XksKeyInvalidConfigurationException"
    assert [k["KeyId"] for k in (await kms.call("list_keys"))["Keys"]] == [_key["KeyId"]]


class ScriptedProxy:
    """A proxy that answers health and metadata at once, and sits on Encrypt until released: the timeout
    a real proxy cannot be made to produce on demand."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.seen: list[dict[str, Any]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/kms/xks/v1/health", self.health)
        app.router.add_post("/kms/xks/v1/keys/{key}/metadata", self.metadata)
        app.router.add_post("/kms/xks/v1/keys/{key}/encrypt", self.encrypt)
        return app

    async def health(self, request: web.Request) -> web.Response:
        node = {"id": "n1", "model": "scripted", "healthStatus": "ACTIVE"}
        body = {"xksProxyFleetSize": 1, "xksProxyVendor": "t", "xksProxyModel": "t", "ekmVendor": "t"}
        return web.json_response({**body, "ekmFleetDetails": [node]})

    async def metadata(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"keySpec": "AES_256", "keyUsage": ["ENCRYPT", "DECRYPT"], "keyStatus": "ENABLED"}
        )

    async def encrypt(self, request: web.Request) -> web.Response:
        self.seen.append(await request.json())
        await self.release.wait()
        return web.json_response({"errorName": "InternalException"}, status=500)


async def test_a_proxy_timeout_on_a_data_operation(kms_env: KmsEnv) -> None:
    scripted = ScriptedProxy()
    runner, port = await start_runner(scripted.app())
    fast = await start_kms(kms_env.data_dir, {"kms.xks_timeout_ms": 200})
    try:
        params = xks_store_params("scripted", f"http://127.0.0.1:{port}")
        store_id = (await fast.call("create_custom_key_store", **params))["CustomKeyStoreId"]
        await fast.call("connect_custom_key_store", CustomKeyStoreId=store_id)
        key = await fast.call(
            "create_key", Origin="EXTERNAL_KEY_STORE", CustomKeyStoreId=store_id, XksKeyId="k1"
        )
        error = await fast.error("encrypt", KeyId=key["KeyMetadata"]["KeyId"], Plaintext=b"p")
        assert isinstance(error, fast.kms.exceptions.KMSInvalidStateException)
        assert "timed out" in error.response["Error"]["Message"]
        metadata = scripted.seen[0]["requestMetadata"]
        assert metadata["kmsRequestId"] == error.response["ResponseMetadata"]["RequestId"]
        assert (metadata["kmsOperation"], metadata["kmsKeyArn"], metadata["awsPrincipalArn"]) == (
            "Encrypt",
            key["KeyMetadata"]["Arn"],
            CALLER_ARN,
        )
    finally:
        scripted.release.set()
        await stop_kms(fast)
        await runner.cleanup()


async def test_a_second_kms_process_sees_changes_within_the_cache_poll(kms_env: KmsEnv) -> None:
    """Two KMS emulators on one database stand for two processes: each caches the keys its data
    operations use. A key disabled or an alias moved through one is honoured by the other once
    database.cache_poll_ms has passed after the change returned; before that it may still serve."""
    other = await start_kms(kms_env.data_dir, {"database.cache_poll_ms": 100})
    try:
        first = (await kms_env.call("create_key"))["KeyMetadata"]["KeyId"]
        second = (await kms_env.call("create_key"))["KeyMetadata"]["KeyId"]
        await kms_env.call("create_alias", AliasName="alias/moving", TargetKeyId=first)
        for _ in range(3):  # cached in `other` from now on
            assert (await other.call("encrypt", KeyId=first, Plaintext=b"p"))["KeyId"].endswith(first)
            assert (await other.call("encrypt", KeyId="alias/moving", Plaintext=b"p"))["KeyId"].endswith(
                first
            )
        await kms_env.call("disable_key", KeyId=first)
        await kms_env.call("update_alias", AliasName="alias/moving", TargetKeyId=second)
        await asyncio.sleep(0.1 + 0.05)
        error = await other.error("encrypt", KeyId=first, Plaintext=b"p")
        assert isinstance(error, other.kms.exceptions.DisabledException)
        moved = await other.call("encrypt", KeyId="alias/moving", Plaintext=b"p")
        assert moved["KeyId"].endswith(second)
    finally:
        await stop_kms(other)
