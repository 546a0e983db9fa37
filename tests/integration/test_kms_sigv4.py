"""kms.verify_sigv4: callers' signatures checked against the access keys of `xkslab kms access-key`, with
real boto3 and the real AWS CLI, on SQLite and PostgreSQL; refusals in AWS KMS's shapes; the setting off
accepts anything; awsPrincipalArn names the access key's user at the XKS proxy."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from tests import deadlines
from tests.cli_runner import run_cli
from tests.integration.test_kms_api import connected_store_and_key, lab
from tests.integration.test_up import kms_client, start_up, stop, wait_for_settings
from tests.kms_harness import REGION, KmsEnv, aws, code, run_aws, start_kms, stop_kms
from tests.xks_harness import XksEnv, xks_template
from xkslab.lab.inprocess import lab_in_thread

__all__ = ["lab", "xks_template"]  # fixtures used by name

REPO = Path(__file__).resolve().parents[2]
ON = {"kms.verify_sigv4": True, "database.cache_poll_ms": 100}


def xkslab(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in this process (tests/cli_runner.py)."""
    proc = run_cli(["--data-dir", str(data_dir), *args])
    assert proc.returncode == 0, proc.stderr
    return proc


def create_access_key(data_dir: Path, user: str) -> tuple[str, str]:
    made = json.loads(xkslab(data_dir, "kms", "access-key", "create", user, "--json").stdout)
    assert made["user_name"] == user and made["access_key_id"].startswith("AKIA")
    assert len(made["access_key_id"]) == 20 and len(made["secret_access_key"]) == 40
    return made["access_key_id"], made["secret_access_key"]


def client(env: KmsEnv, akid: str, secret: str) -> Any:
    return boto3.client(
        "kms", endpoint_url=env.url, region_name=REGION, aws_access_key_id=akid, aws_secret_access_key=secret
    )


async def refused(kms_client: Any, method: str = "list_keys", **params: Any) -> ClientError:
    try:
        await asyncio.to_thread(getattr(kms_client, method), **params)
    except ClientError as exc:
        return exc
    raise AssertionError(f"{method} was not refused")


def signed_headers(env: KmsEnv, akid: str, secret: str, when: datetime, body: bytes) -> dict[str, str]:
    """SigV4 as botocore computes it (written out here, independent of xkslab_shared.sigv4), at ``when``."""
    amz, day = when.strftime("%Y%m%dT%H%M%SZ"), when.strftime("%Y%m%d")
    host = env.url.removeprefix("http://")
    headers = {
        "content-type": "application/x-amz-json-1.1",
        "host": host,
        "x-amz-date": amz,
        "x-amz-target": "TrentService.ListKeys",
    }
    names = sorted(headers)
    lines = "".join(f"{n}:{headers[n]}\n" for n in names)
    canonical = "\n".join(("POST", "/", "", lines, ";".join(names), hashlib.sha256(body).hexdigest()))
    scope = f"{day}/{REGION}/kms/aws4_request"
    to_sign = f"AWS4-HMAC-SHA256\n{amz}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    key = ("AWS4" + secret).encode()
    for part in (day, REGION, "kms", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    authorization = (
        f"AWS4-HMAC-SHA256 Credential={akid}/{scope}, SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    return {"Content-Type": headers["content-type"], "X-Amz-Date": amz, "Authorization": authorization}


@pytest.fixture
async def verifying(empty_db_url: str, tmp_path: Path) -> AsyncIterator[tuple[KmsEnv, str, str]]:
    """A KMS with kms.verify_sigv4 on, on a fresh data directory (SQLite or PostgreSQL), and alice's key."""
    data_dir = tmp_path / "data"
    init = ["init", "--database-url", empty_db_url, "--admin-password", "pw"]
    await asyncio.to_thread(xkslab, data_dir, *init)
    akid, secret = await asyncio.to_thread(create_access_key, data_dir, "alice")
    env = await start_kms(data_dir, ON)
    try:
        yield env, akid, secret
    finally:
        await stop_kms(env)


async def test_signatures_are_checked_with_boto3(verifying: tuple[KmsEnv, str, str]) -> None:
    env, akid, secret = verifying
    alice = client(env, akid, secret)
    try:
        key = (await asyncio.to_thread(alice.create_key))["KeyMetadata"]["KeyId"]
        blob = (await asyncio.to_thread(alice.encrypt, KeyId=key, Plaintext=b"signed"))["CiphertextBlob"]
        assert (await asyncio.to_thread(alice.decrypt, CiphertextBlob=blob))["Plaintext"] == b"signed"
    finally:
        alice.close()

    wrong = await refused(client(env, akid, secret[:-1] + ("A" if secret[-1] != "A" else "B")))
    assert code(wrong) == "InvalidSignatureException"
    assert wrong.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert "does not match the signature you provided" in str(wrong)
    unknown = await refused(client(env, "AKIAUNKNOWNUNKNOWN00", secret))
    assert code(unknown) == "UnrecognizedClientException"
    assert unknown.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    wrong_region = await refused(
        boto3.client(
            "kms",
            endpoint_url=env.url,
            region_name="eu-west-1",
            aws_access_key_id=akid,
            aws_secret_access_key=secret,
        )
    )
    assert code(wrong_region) == "InvalidSignatureException" and "valid region" in str(wrong_region)

    status, body, _ = await env.raw("TrentService.ListKeys", b"{}")
    assert (status, body) == (
        400,
        {"__type": "MissingAuthenticationTokenException", "message": "Missing Authentication Token"},
    )
    status, body, _ = await env.raw("TrentService.ListKeys", b"{}", {"Authorization": "Bearer abc"})
    assert status == 400 and body["__type"] == "IncompleteSignatureException"
    assert "requires 'Credential' parameter" in body["message"]
    # Signed right, but 10 minutes ago (and 10 minutes ahead): outside the 5 minutes allowed.
    now = datetime.now(UTC)
    for when, words in (
        (now - timedelta(minutes=10), "Signature expired"),
        (now + timedelta(minutes=10), "not yet current"),
    ):
        status, body, _ = await env.raw(
            "TrentService.ListKeys", b"{}", signed_headers(env, akid, secret, when, b"{}")
        )
        assert status == 400 and body["__type"] == "InvalidSignatureException", body
        assert words in body["message"] and "5 min." in body["message"]
    # The same signer, now: accepted (so the refusals above were about the time, not the signer).
    status, body, _ = await env.raw(
        "TrentService.ListKeys", b"{}", signed_headers(env, akid, secret, now, b"{}")
    )
    assert status == 200 and "Keys" in body


def botocore_signed(env: KmsEnv, akid: str, secret: str, body: bytes, target: str | None) -> dict[str, str]:
    """The headers botocore's own signer sends; with target None, X-Amz-Target is left out of the
    signature (as an attacker who adds it afterwards would have it)."""
    headers = {"Content-Type": "application/x-amz-json-1.1"}
    if target is not None:
        headers["X-Amz-Target"] = target
    request = AWSRequest(method="POST", url=env.url + "/", data=body, headers=headers)
    SigV4Auth(Credentials(akid, secret), "kms", REGION).add_auth(request)
    return dict(request.headers.items())


async def test_the_operation_header_must_be_signed(verifying: tuple[KmsEnv, str, str]) -> None:
    env, akid, secret = verifying
    alice = client(env, akid, secret)
    key = (await asyncio.to_thread(alice.create_key))["KeyMetadata"]["KeyId"]
    alice.close()
    body = json.dumps({"KeyId": key}).encode()
    describe = botocore_signed(env, akid, secret, body, "TrentService.DescribeKey")
    assert "x-amz-target" in describe["Authorization"]
    status, answer, _ = await env.raw(None, body, describe)
    assert status == 200 and answer["KeyMetadata"]["Enabled"], answer
    # The same signed DescribeKey with another operation named: the signature covers the header.
    status, answer, _ = await env.raw("TrentService.DisableKey", body, describe)
    assert status == 400 and answer["__type"] == "InvalidSignatureException", answer
    # Signed without X-Amz-Target, the operation added afterwards: refused, as AWS refuses it.
    unsigned = botocore_signed(env, akid, secret, body, None)
    assert "x-amz-target" not in unsigned["Authorization"]
    for target in ("TrentService.DisableKey", "TrentService.DescribeKey"):
        status, answer, _ = await env.raw(target, body, unsigned)
        assert status == 400, (target, answer)
        assert answer == {
            "__type": "InvalidSignatureException",
            "message": "'X-Amz-Target' must be a 'SignedHeader' in the AWS Authorization.",
        }, answer
    status, answer, _ = await env.raw(None, body, describe)
    assert status == 200 and answer["KeyMetadata"]["Enabled"], "the refused DisableKey disabled the key"


async def test_the_aws_cli_and_deleting_a_key(verifying: tuple[KmsEnv, str, str], tmp_path: Path) -> None:
    env, akid, secret = verifying
    assert "Keys" in await aws(env, tmp_path, "list-keys", credentials=(akid, secret))
    status, _, err = await run_aws(env, tmp_path, "list-keys", credentials=(akid, "x" * 40))
    assert status != 0 and "InvalidSignatureException" in err
    status, _, err = await run_aws(env, tmp_path, "list-keys", credentials=("AKIAUNKNOWNUNKNOWN00", secret))
    assert status != 0 and "UnrecognizedClientException" in err

    listed = json.loads(
        (await asyncio.to_thread(xkslab, env.data_dir, "kms", "access-key", "list", "--json")).stdout
    )
    assert [(k["access_key_id"], k["user_name"]) for k in listed] == [(akid, "alice")]
    assert secret not in json.dumps(listed)
    # In a real process: what this test is about is another process's change reaching this KMS's cache.
    deleted = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "xkslab",
            "--data-dir",
            str(env.data_dir),
            "kms",
            "access-key",
            "delete",
            akid,
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert deleted.returncode == 0, deleted.stderr
    # Deleted in another process: this KMS's cache follows within the poll interval (bounded wait).
    deadline = asyncio.get_running_loop().time() + 10
    alice = client(env, akid, secret)
    try:
        while True:
            try:
                await asyncio.to_thread(alice.list_keys)
            except ClientError as exc:
                assert code(exc) == "UnrecognizedClientException"
                break
            assert asyncio.get_running_loop().time() < deadline, "the deleted key is still accepted"
            await asyncio.sleep(0.05)
    finally:
        alice.close()


@pytest.mark.parametrize("db_backend", ["sqlite"])
async def test_secret_is_sealed_and_the_setting_off_accepts_anything(
    verifying: tuple[KmsEnv, str, str], empty_db_url: str
) -> None:
    env, akid, secret = verifying
    stored = Path(empty_db_url.removeprefix("sqlite+aiosqlite:///"))
    files = [p for p in {stored, Path(f"{stored}-wal"), *env.data_dir.rglob("*")} if p.is_file()]
    everything = b"".join(p.read_bytes() for p in files)
    assert akid.encode() in everything and secret.encode() not in everything
    off = await start_kms(env.data_dir)  # kms.verify_sigv4 off: any pair works, even no signature
    try:
        anyone = client(off, "AKIAANYTHING", "whatever")
        assert "Keys" in await asyncio.to_thread(anyone.list_keys)
        anyone.close()
        status, _, _ = await off.raw("TrentService.ListKeys", b"{}")
        assert status == 200
    finally:
        await stop_kms(off)


async def test_the_xks_proxy_sees_the_access_keys_user(lab: tuple[XksEnv, KmsEnv]) -> None:
    xks, kms = lab
    _, key = await connected_store_and_key(xks, kms)
    akid, secret = await asyncio.to_thread(create_access_key, xks.data_dir, "bob")
    verifying = await start_kms(xks.data_dir, {**ON, "kms.xks_timeout_ms": 3000})
    bob = client(verifying, akid, secret)
    try:
        seen = len(await xks.audit_rows())
        await asyncio.to_thread(bob.generate_data_key, KeyId=key["KeyId"], KeySpec="AES_256")
        rows = (await xks.audit_rows())[seen:]
        assert [(r["kms_operation"], r["aws_principal_arn"]) for r in rows] == [
            ("GenerateDataKey", "arn:aws:iam::111122223333:user/bob")
        ]
    finally:
        bob.close()
        await stop_kms(verifying)


def secret_in(path: Path, secret: str) -> bool:
    return secret.encode() in path.read_bytes()


def test_up_makes_uses_and_renews_its_own_access_key(tmp_path: Path) -> None:
    """`xkslab up` with the check on: an access key of its own (0600 file, in up.json's aws_env), which
    `xkslab demo` and boto3 use; other pairs are refused; a restart after the key was deleted makes a new
    one (the in-process lab, which shares the start-up)."""
    data_dir, log = tmp_path / "lab", tmp_path / "up.log"
    proc = start_up(data_dir, log, extra=["--set", "kms.verify_sigv4=true"])
    try:
        data = wait_for_settings(proc, data_dir / "up.json", log)
        env = data["aws_env"]
        saved_file = data_dir / "kms-access-key.json"
        assert stat.S_IMODE(saved_file.stat().st_mode) == 0o600
        saved = json.loads(saved_file.read_text())
        assert saved == {
            "user_name": "xkslab-lab",
            "access_key_id": env["AWS_ACCESS_KEY_ID"],
            "secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
        }
        assert (
            env["AWS_ACCESS_KEY_ID"].startswith("AKIA") and env["AWS_ACCESS_KEY_ID"] != "AKIAXKSLABEXAMPLE000"
        )
        listed = json.loads(xkslab(data_dir, "kms", "access-key", "list", "--json").stdout)
        assert [(k["access_key_id"], k["user_name"]) for k in listed] == [
            (env["AWS_ACCESS_KEY_ID"], "xkslab-lab")
        ]

        demo = subprocess.run(
            [sys.executable, "-m", "xkslab", "--data-dir", str(data_dir), "demo", "--json"],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=120,
        )
        assert demo.returncode == 0, demo.stderr
        kms = kms_client(data)
        blob = kms.encrypt(KeyId=data["kms"]["alias"], Plaintext=b"signed")["CiphertextBlob"]
        assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"signed"
        kms.close()

        def refusal(akid: str, secret: str) -> str:
            other = boto3.client(
                "kms",
                endpoint_url=env["AWS_ENDPOINT_URL_KMS"],
                region_name=env["AWS_DEFAULT_REGION"],
                aws_access_key_id=akid,
                aws_secret_access_key=secret,
            )
            try:
                other.list_keys()
            except ClientError as exc:
                return code(exc)
            finally:
                other.close()
            raise AssertionError("list_keys was not refused")

        assert refusal(env["AWS_ACCESS_KEY_ID"], "x" * 40) == "InvalidSignatureException"
        assert (
            refusal("AKIAXKSLABEXAMPLE000", "xkslab-local-secret-not-checked")
            == "UnrecognizedClientException"
        )
    finally:
        assert stop(proc) == 0
    # Once stopped (up.json gone), the secret is in the data directory only in its 0600 file: not in the
    # services' logs, nor in the clear in the database.
    holders = [
        p.name for p in data_dir.rglob("*") if p.is_file() and secret_in(p, env["AWS_SECRET_ACCESS_KEY"])
    ]
    assert holders == ["kms-access-key.json"]

    xkslab(data_dir, "kms", "access-key", "delete", env["AWS_ACCESS_KEY_ID"])
    with lab_in_thread(data_dir, {"kms.verify_sigv4": "true", **deadlines.GENEROUS}) as info:
        renewed = info.data["aws_env"]
        assert renewed["AWS_ACCESS_KEY_ID"] != env["AWS_ACCESS_KEY_ID"]
        assert json.loads(saved_file.read_text())["access_key_id"] == renewed["AWS_ACCESS_KEY_ID"]
        client_ = info.kms_client()
        try:
            assert client_.describe_key(KeyId=data["kms"]["alias"])["KeyMetadata"]["Enabled"]
        finally:
            client_.close()
