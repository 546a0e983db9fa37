"""Key policies and grants through real boto3 (and the AWS CLI) against the real KMS emulator, on SQLite
and PostgreSQL: what AWS stores and returns, and each operation's refusals in AWS's exception names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.kms_harness import (
    ACCOUNT_ID,
    CALLER_ARN,
    REGION,
    KmsEnv,
    aws,
    code,
    kms_db_env,
    kms_env,
    kms_template,
)

__all__ = ["kms_db_env", "kms_env", "kms_template"]  # fixtures used by name

ROOT = f"arn:aws:iam::{ACCOUNT_ID}:root"
ARN_PREFIX = f"arn:aws:kms:{REGION}:{ACCOUNT_ID}:"


def policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def allow(principal: Any = None, action: Any = "kms:*", **extra: Any) -> dict[str, Any]:
    return {
        "Effect": "Allow",
        "Principal": {"AWS": ROOT} if principal is None else principal,
        "Action": action,
        "Resource": "*",
        **extra,
    }


async def new_key(kms: KmsEnv, **params: Any) -> str:
    return str((await kms.call("create_key", **params))["KeyMetadata"]["KeyId"])


# ------------------------------------------------------------------------------------- key policies


async def test_the_default_key_policy_is_the_account_root_statement(kms_db_env: KmsEnv) -> None:
    key_id = await new_key(kms_db_env)
    got = await kms_db_env.call("get_key_policy", KeyId=key_id, PolicyName="default")
    assert got["PolicyName"] == "default"
    document = json.loads(got["Policy"])
    assert document["Version"] == "2012-10-17" and document["Id"] == "key-default-1"
    assert document["Statement"] == [
        {
            "Sid": "Enable IAM User Permissions",
            "Effect": "Allow",
            "Principal": {"AWS": ROOT},
            "Action": "kms:*",
            "Resource": "*",
        }
    ]
    # PolicyName is optional and defaults to "default"; a key ARN works as well as a key id.
    by_arn = await kms_db_env.call("get_key_policy", KeyId=f"{ARN_PREFIX}key/{key_id}")
    assert by_arn["Policy"] == got["Policy"]
    listed = await kms_db_env.call("list_key_policies", KeyId=key_id)
    assert (listed["PolicyNames"], listed["Truncated"]) == (["default"], False)


async def test_a_policy_is_stored_and_returned_exactly(kms_db_env: KmsEnv) -> None:
    text = policy(allow(), allow({"AWS": CALLER_ARN}, ["kms:Encrypt", "kms:Decrypt"], Sid="app"))
    key_id = await new_key(kms_db_env, Policy=text)
    assert (await kms_db_env.call("get_key_policy", KeyId=key_id))["Policy"] == text

    replaced = policy(allow({"AWS": CALLER_ARN}, "kms:PutKeyPolicy"))
    await kms_db_env.call("put_key_policy", KeyId=key_id, PolicyName="default", Policy=replaced)
    assert (await kms_db_env.call("get_key_policy", KeyId=key_id))["Policy"] == replaced


async def test_malformed_policies_are_refused(kms_db_env: KmsEnv) -> None:
    key_id = await new_key(kms_db_env)
    malformed = {
        "not JSON": "{not json",
        "not an object": "[1]",
        "no statement": json.dumps({"Version": "2012-10-17"}),
        "bad version": json.dumps({"Version": "2020-01-01", "Statement": [allow()]}),
        "bad effect": policy({**allow(), "Effect": "Maybe"}),
        "no action": policy({k: v for k, v in allow().items() if k != "Action"}),
        "resource not *": policy({**allow(), "Resource": "arn:aws:kms:*"}),
        "unknown element": policy({**allow(), "Extra": 1}),
        "invalid principal": policy(allow({"AWS": "not-a-principal"})),
        "duplicate sid": policy(allow(Sid="a"), allow(Sid="a")),
        "over 32 KiB": policy(allow(Sid="x" * 33000)),
    }
    for why, text in malformed.items():
        for method, params in (("put_key_policy", {"KeyId": key_id}), ("create_key", {})):
            error = await kms_db_env.error(method, Policy=text, **params)
            assert code(error) == "MalformedPolicyDocumentException", (why, method)
    # Nothing stored was lost: the default policy is still there.
    assert "Enable IAM User Permissions" in (await kms_db_env.call("get_key_policy", KeyId=key_id))["Policy"]


async def test_the_lockout_safety_check_and_its_bypass(kms_db_env: KmsEnv) -> None:
    key_id = await new_key(kms_db_env)
    someone_else = policy(allow({"AWS": f"arn:aws:iam::{ACCOUNT_ID}:user/other"}))
    no_put = policy(allow(action=["kms:Encrypt", "kms:Decrypt"]))
    denied = policy(allow(), {**allow(action="kms:PutKeyPolicy"), "Effect": "Deny"})
    for text in (someone_else, no_put, denied):
        error = await kms_db_env.error("put_key_policy", KeyId=key_id, Policy=text)
        assert code(error) == "MalformedPolicyDocumentException"
        assert "will not allow you to update the key policy" in error.response["Error"]["Message"]
        await kms_db_env.call(
            "put_key_policy", KeyId=key_id, Policy=text, BypassPolicyLockoutSafetyCheck=True
        )
        assert (await kms_db_env.call("get_key_policy", KeyId=key_id))["Policy"] == text
    error = await kms_db_env.error("create_key", Policy=no_put)
    assert code(error) == "MalformedPolicyDocumentException"
    made = await new_key(kms_db_env, Policy=no_put, BypassPolicyLockoutSafetyCheck=True)
    assert (await kms_db_env.call("get_key_policy", KeyId=made))["Policy"] == no_put


async def test_key_policy_errors(kms_env: KmsEnv) -> None:
    key_id = await new_key(kms_env)
    missing = "11111111-2222-3333-4444-555555555555"
    for method, params in (
        ("get_key_policy", {}),
        ("put_key_policy", {"Policy": policy(allow())}),
        ("list_key_policies", {}),
    ):
        assert code(await kms_env.error(method, KeyId=missing, **params)) == "NotFoundException"
        assert code(await kms_env.error(method, KeyId="alias/nope", **params)) == "NotFoundException"
    assert (
        code(await kms_env.error("get_key_policy", KeyId=key_id, PolicyName="other")) == "NotFoundException"
    )
    error = await kms_env.error("put_key_policy", KeyId=key_id, PolicyName="other", Policy=policy(allow()))
    assert code(error) == "NotFoundException"
    error = await kms_env.error("get_key_policy", KeyId=key_id, PolicyName="not valid!")
    assert code(error) == "ValidationException"
    error = await kms_env.error("put_key_policy", KeyId=key_id, Policy="bad \u0100 character")
    assert code(error) == "ValidationException"
    await kms_env.call("schedule_key_deletion", KeyId=key_id, PendingWindowInDays=7)
    error = await kms_env.error("put_key_policy", KeyId=key_id, Policy=policy(allow()))
    assert code(error) == "KMSInvalidStateException"
    assert "Enable IAM" in (await kms_env.call("get_key_policy", KeyId=key_id))["Policy"]
    assert (await kms_env.call("list_key_policies", KeyId=key_id, Marker="default"))["PolicyNames"] == []


# ------------------------------------------------------------------------------------------- grants


async def test_grant_lifecycle(kms_db_env: KmsEnv) -> None:
    key_id = await new_key(kms_db_env)
    other_key = await new_key(kms_db_env)
    app = f"arn:aws:iam::{ACCOUNT_ID}:role/app"
    retirer = f"arn:aws:iam::{ACCOUNT_ID}:role/retirer"
    made = await kms_db_env.call(
        "create_grant",
        KeyId=key_id,
        GranteePrincipal=app,
        RetiringPrincipal=retirer,
        Operations=["Encrypt", "Decrypt", "GenerateDataKey"],
        Constraints={"EncryptionContextSubset": {"tenant": "a"}},
        Name="app-grant",
    )
    grant_id, token = made["GrantId"], made["GrantToken"]
    assert len(grant_id) == 64 and int(grant_id, 16) >= 0
    second = await kms_db_env.call(
        "create_grant", KeyId=key_id, GranteePrincipal="service.example.com", Operations=["DescribeKey"],
        GrantTokens=[token],
    )  # fmt: skip
    await kms_db_env.call("create_grant", KeyId=other_key, GranteePrincipal=app, Operations=["Encrypt"])

    grants = (await kms_db_env.call("list_grants", KeyId=key_id))["Grants"]
    assert [g["GrantId"] for g in grants] == [grant_id, second["GrantId"]]
    first = grants[0]
    assert first["KeyId"] == f"{ARN_PREFIX}key/{key_id}"
    assert (first["GranteePrincipal"], first["RetiringPrincipal"], first["Name"]) == (
        app,
        retirer,
        "app-grant",
    )
    assert first["Operations"] == ["Encrypt", "Decrypt", "GenerateDataKey"]
    assert first["Constraints"] == {"EncryptionContextSubset": {"tenant": "a"}}
    assert first["IssuingAccount"] == ROOT
    assert "Name" not in grants[1] and "RetiringPrincipal" not in grants[1]
    by_grantee = await kms_db_env.call("list_grants", KeyId=key_id, GranteePrincipal=app)
    assert [g["GrantId"] for g in by_grantee["Grants"]] == [grant_id]
    by_id = await kms_db_env.call("list_grants", KeyId=key_id, GrantId=second["GrantId"])
    assert [g["GrantId"] for g in by_id["Grants"]] == [second["GrantId"]]
    page = await kms_db_env.call("list_grants", KeyId=key_id, Limit=1)
    assert page["Truncated"] and len(page["Grants"]) == 1
    rest = await kms_db_env.call("list_grants", KeyId=key_id, Marker=page["NextMarker"])
    assert [g["GrantId"] for g in rest["Grants"]] == [second["GrantId"]] and not rest["Truncated"]

    retirable = await kms_db_env.call("list_retirable_grants", RetiringPrincipal=retirer)
    assert [g["GrantId"] for g in retirable["Grants"]] == [grant_id]

    # The same Name and parameters: the same grant (a fresh token); different parameters: a new grant.
    again = await kms_db_env.call(
        "create_grant", KeyId=key_id, GranteePrincipal=app, RetiringPrincipal=retirer,
        Operations=["Encrypt", "Decrypt", "GenerateDataKey"],
        Constraints={"EncryptionContextSubset": {"tenant": "a"}}, Name="app-grant",
    )  # fmt: skip
    assert again["GrantId"] == grant_id and again["GrantToken"] != token
    assert len((await kms_db_env.call("list_grants", KeyId=key_id))["Grants"]) == 2

    await kms_db_env.call("retire_grant", GrantToken=token)
    await kms_db_env.call("revoke_grant", KeyId=key_id, GrantId=second["GrantId"])
    assert (await kms_db_env.call("list_grants", KeyId=key_id))["Grants"] == []
    assert (await kms_db_env.call("list_retirable_grants", RetiringPrincipal=retirer))["Grants"] == []
    third = await kms_db_env.call("create_grant", KeyId=key_id, GranteePrincipal=app, Operations=["Decrypt"])
    await kms_db_env.call("retire_grant", KeyId=key_id, GrantId=third["GrantId"])
    assert (await kms_db_env.call("list_grants", KeyId=key_id))["Grants"] == []
    assert len((await kms_db_env.call("list_grants", KeyId=other_key))["Grants"]) == 1


async def test_grant_errors(kms_env: KmsEnv) -> None:
    key_id = await new_key(kms_env)
    grantee = f"arn:aws:iam::{ACCOUNT_ID}:role/app"
    missing = "11111111-2222-3333-4444-555555555555"

    async def refused(method: str, **params: Any) -> str:
        return code(await kms_env.error(method, **params))

    assert await refused("create_grant", KeyId=key_id, GranteePrincipal=grantee, Operations=["Fly"]) == (
        "ValidationException"
    )
    assert await refused("create_grant", KeyId=key_id, GranteePrincipal=grantee, Operations=["Sign"]) == (
        "ValidationException"
    )
    assert await refused("create_grant", KeyId=key_id, GranteePrincipal=grantee, Operations=[]) == (
        "ValidationException"
    )
    assert await refused("create_grant", KeyId=key_id, Operations=["Encrypt"]) == "ValidationException"
    assert await refused(
        "create_grant", KeyId=key_id, GranteePrincipal="bad principal!", Operations=["Encrypt"]
    ) == ("ValidationException")
    assert (
        await refused(
            "create_grant",
            KeyId=key_id,
            GranteePrincipal=grantee,
            Operations=["Encrypt"],
            Name="no spaces allowed",
        )
        == "ValidationException"
    )
    nine = {f"k{i}": "v" for i in range(9)}
    assert await refused(
        "create_grant", KeyId=key_id, GranteePrincipal=grantee, Operations=["Encrypt"],
        Constraints={"EncryptionContextEquals": nine},
    ) == "ValidationException"  # fmt: skip
    assert (
        await refused(
            "create_grant",
            KeyId=key_id,
            GranteePrincipal=grantee,
            Operations=["Encrypt"],
            GrantTokens=["forged"],
        )
        == "InvalidGrantTokenException"
    )
    assert await refused("create_grant", KeyId=missing, GranteePrincipal=grantee, Operations=["Encrypt"]) == (
        "NotFoundException"
    )
    await kms_env.call("disable_key", KeyId=key_id)
    assert await refused("create_grant", KeyId=key_id, GranteePrincipal=grantee, Operations=["Encrypt"]) == (
        "DisabledException"
    )
    await kms_env.call("enable_key", KeyId=key_id)

    assert await refused("list_grants", KeyId=key_id, GrantId="not-a-grant-id") == "InvalidGrantIdException"
    assert await refused("list_grants", KeyId=key_id, Marker="x") == "InvalidMarkerException"
    assert await refused("list_grants", KeyId=missing) == "NotFoundException"
    assert await refused("list_retirable_grants") == "ValidationException"
    assert await refused("retire_grant") == "ValidationException"
    assert await refused("retire_grant", GrantToken="forged-token") == "InvalidGrantTokenException"
    assert await refused("retire_grant", KeyId=key_id, GrantId="0" * 64) == "NotFoundException"
    assert await refused("revoke_grant", KeyId=key_id, GrantId="0" * 64) == "NotFoundException"
    assert await refused("revoke_grant", KeyId=key_id, GrantId="short") == "InvalidGrantIdException"
    made = await kms_env.call("create_grant", KeyId=key_id, GranteePrincipal=grantee, Operations=["Encrypt"])
    other = await new_key(kms_env)
    assert await refused("revoke_grant", KeyId=other, GrantId=made["GrantId"]) == "NotFoundException"
    assert len((await kms_env.call("list_grants", KeyId=key_id))["Grants"]) == 1


async def test_dry_run_on_grants(kms_env: KmsEnv) -> None:
    """DryRunOperationException when the call would succeed (and nothing changes); the real error when it
    would not."""
    key_id = await new_key(kms_env)
    grantee = f"arn:aws:iam::{ACCOUNT_ID}:role/app"
    error = await kms_env.error(
        "create_grant", KeyId=key_id, GranteePrincipal=grantee, Operations=["Encrypt"], DryRun=True
    )
    assert isinstance(error, kms_env.kms.exceptions.DryRunOperationException)
    assert (await kms_env.call("list_grants", KeyId=key_id))["Grants"] == []
    error = await kms_env.error(
        "create_grant", KeyId=key_id, GranteePrincipal=grantee, Operations=["Sign"], DryRun=True
    )
    assert code(error) == "ValidationException"
    made = await kms_env.call("create_grant", KeyId=key_id, GranteePrincipal=grantee, Operations=["Encrypt"])
    for method, params in (
        ("retire_grant", {"GrantToken": made["GrantToken"]}),
        ("revoke_grant", {"KeyId": key_id, "GrantId": made["GrantId"]}),
    ):
        error = await kms_env.error(method, DryRun=True, **params)
        assert code(error) == "DryRunOperationException", method
    assert len((await kms_env.call("list_grants", KeyId=key_id))["Grants"]) == 1
    error = await kms_env.error("revoke_grant", KeyId=key_id, GrantId="0" * 64, DryRun=True)
    assert code(error) == "NotFoundException"
    error = await kms_env.error("retire_grant", GrantToken="forged", DryRun=True)
    assert code(error) == "InvalidGrantTokenException"


async def test_the_aws_cli_with_key_policies_and_grants(kms_env: KmsEnv, tmp_path: Path) -> None:
    key_id = (await aws(kms_env, tmp_path, "create-key"))["KeyMetadata"]["KeyId"]
    got = await aws(kms_env, tmp_path, "get-key-policy", "--key-id", key_id, "--policy-name", "default")
    assert json.loads(got["Policy"])["Statement"][0]["Principal"] == {"AWS": ROOT}
    text = policy(allow())
    await aws(
        kms_env, tmp_path, "put-key-policy", "--key-id", key_id, "--policy-name", "default", "--policy", text
    )
    assert (await aws(kms_env, tmp_path, "get-key-policy", "--key-id", key_id))["Policy"] == text
    grant = await aws(
        kms_env, tmp_path, "create-grant", "--key-id", key_id, "--grantee-principal",
        f"arn:aws:iam::{ACCOUNT_ID}:role/app", "--operations", "Encrypt", "Decrypt",
    )  # fmt: skip
    listed = await aws(kms_env, tmp_path, "list-grants", "--key-id", key_id)
    assert [g["GrantId"] for g in listed["Grants"]] == [grant["GrantId"]]
    await aws(kms_env, tmp_path, "revoke-grant", "--key-id", key_id, "--grant-id", grant["GrantId"])
    assert (await aws(kms_env, tmp_path, "list-grants", "--key-id", key_id))["Grants"] == []


async def test_dry_run_on_data_operations(kms_env: KmsEnv) -> None:
    key_id = await new_key(kms_env)
    blob = (await kms_env.call("encrypt", KeyId=key_id, Plaintext=b"p"))["CiphertextBlob"]
    calls: list[tuple[str, dict[str, Any]]] = [
        ("encrypt", {"KeyId": key_id, "Plaintext": b"p"}),
        ("decrypt", {"CiphertextBlob": blob}),
        ("re_encrypt", {"CiphertextBlob": blob, "DestinationKeyId": key_id}),
        ("generate_data_key", {"KeyId": key_id, "NumberOfBytes": 32}),
        ("generate_data_key_without_plaintext", {"KeyId": key_id, "KeySpec": "AES_256"}),
    ]
    for method, params in calls:
        assert code(await kms_env.error(method, DryRun=True, **params)) == "DryRunOperationException", method
    await kms_env.call("disable_key", KeyId=key_id)
    for method, params in calls:
        assert code(await kms_env.error(method, DryRun=True, **params)) == "DisabledException", method
    other = await new_key(kms_env)
    error = await kms_env.error("decrypt", CiphertextBlob=blob, KeyId=other, DryRun=True)
    assert code(error) == "IncorrectKeyException"
    error = await kms_env.error("decrypt", CiphertextBlob=b"\x01garbage", DryRun=True)
    assert code(error) == "InvalidCiphertextException"


async def test_grant_tokens_on_the_operations_that_take_them(kms_env: KmsEnv) -> None:
    key_id = await new_key(kms_env)
    token = (
        await kms_env.call(
            "create_grant", KeyId=key_id, GranteePrincipal="s.example.com", Operations=["Encrypt", "Decrypt"]
        )
    )["GrantToken"]
    blob = (await kms_env.call("encrypt", KeyId=key_id, Plaintext=b"p", GrantTokens=[token]))[
        "CiphertextBlob"
    ]
    assert (await kms_env.call("decrypt", CiphertextBlob=blob, GrantTokens=[token]))["Plaintext"] == b"p"
    assert (await kms_env.call("describe_key", KeyId=key_id, GrantTokens=[token]))["KeyMetadata"][
        "KeyId"
    ] == key_id
    for method, params in (
        ("encrypt", {"KeyId": key_id, "Plaintext": b"p"}),
        ("decrypt", {"CiphertextBlob": blob}),
        ("re_encrypt", {"CiphertextBlob": blob, "DestinationKeyId": key_id}),
        ("generate_data_key", {"KeyId": key_id, "NumberOfBytes": 16}),
        ("describe_key", {"KeyId": key_id}),
    ):
        error = await kms_env.error(method, GrantTokens=[token, "not-a-token"], **params)
        assert code(error) == "InvalidGrantTokenException", method
