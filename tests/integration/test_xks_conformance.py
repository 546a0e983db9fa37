"""Conformance of the XKS proxy to the XKS Proxy API spec (v1.0.3), end to end over HTTP: a real proxy and a
real DSM on loopback ports, requests signed by botocore as KMS signs them (and by curl, an independent
SigV4 implementation). Every row of the spec's error table is provoked for real, and every error answer is
checked for its status, errorName, Content-Type and the single-line JSON body the spec asks for."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import gc
import io
import json
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from aiohttp import web_app
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from multidict import CIMultiDict, CIMultiDictProxy

from dsm_emulator.keys import KeySpec
from dsm_emulator.xks import cdiv, gcm_aad
from tests.xks_harness import (
    ALL_OPS,
    KEY_ARN,
    PRINCIPAL_ARN,
    XksEnv,
    b64,
    close_env,
    make_env,
    metadata,
    sign,
    start_runner,
    xks_env,
    xks_template,
)
from xks_frontend.app import create_app as create_xks_app
from xkslab_shared.config import XKS_MAX_PLAINTEXT_CAP as MAX_PLAINTEXT_CAP
from xkslab_shared.config import ConfigError, load_settings

__all__ = ["xks_env", "xks_template"]  # fixtures used by name

OPERATIONS = ("health", "metadata", "encrypt", "decrypt")
CURL = "/usr/bin/curl"
SPEC_AAD = b"project=nile,department=marketing"
SPEC_METADATA = b"key_version=1"


# --- plumbing ---------------------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


def unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def raw_bytes(body: Mapping[str, Any] | bytes) -> bytes:
    return body if isinstance(body, bytes) else json.dumps(body).encode()


async def send(
    env: XksEnv,
    url: str,
    body: Mapping[str, Any] | bytes,
    *,
    method: str = "POST",
    akid: str | None = None,
    secret: str | None = None,
    service: str = "kms-xks-proxy",
    signed_body: bytes | None = None,
    signed_at: datetime | None = None,
    unsigned: bool = False,
    drop_headers: tuple[str, ...] = (),
) -> Reply:
    """One request through the proxy, signed by botocore (optionally over another body, at another time,
    for another service), and the raw answer."""
    raw = raw_bytes(body)
    if unsigned:
        headers = {"Content-Type": "application/json"}
    else:
        # botocore reads the clock through get_current_datetime() (naive UTC), as test_sigv4.py pins it.
        clock = (
            contextlib.nullcontext()
            if signed_at is None
            else mock.patch("botocore.auth.get_current_datetime", return_value=signed_at.replace(tzinfo=None))
        )
        with clock:
            to_sign = raw if signed_body is None else signed_body
            headers = sign(url, to_sign, akid or env.akid, secret or env.secret, service=service)
    headers = {k: v for k, v in headers.items() if k.lower() not in drop_headers}
    # aiohttp warns that a large bytes body could block the loop; a file-like body streams.
    data: bytes | io.BytesIO = io.BytesIO(raw) if len(raw) > 1 << 20 else raw
    async with env.http.request(method, url, data=data, headers=headers) as response:
        return Reply(response.status, response.headers, await response.text())


def assert_json_content_type(reply: Reply) -> None:
    assert reply.headers.get("Content-Type", "").split(";")[0].strip() == "application/json", reply.headers


def assert_error(reply: Reply, status: int, error_name: str) -> dict[str, Any]:
    """The spec's error body: status, Content-Type: application/json, ONE line of JSON with exactly
    errorName and errorMessage, the message printable ASCII and under 512 characters."""
    assert reply.status == status, reply.text
    assert_json_content_type(reply)
    assert reply.text and len(reply.text.splitlines()) == 1, reply.text
    data = reply.json()
    assert isinstance(data, dict) and set(data) == {"errorName", "errorMessage"}, data
    assert data["errorName"] == error_name, data
    message = data["errorMessage"]
    assert isinstance(message, str) and 0 < len(message) < 512
    assert all(" " <= c <= "~" for c in message), message
    return data


def assert_ok(reply: Reply) -> dict[str, Any]:
    assert reply.status == 200, reply.text
    assert_json_content_type(reply)
    assert len(reply.text.splitlines()) == 1, reply.text
    data = reply.json()
    assert isinstance(data, dict)
    return data


def health_body(operation: str = "KmsHealthCheck") -> dict[str, Any]:
    return {
        "requestMetadata": {"kmsRequestId": "4112f4d6-db54-4af4-ae30-c55a22a8dfae", "kmsOperation": operation}
    }


def metadata_body() -> dict[str, Any]:
    """GetKeyMetadata as KMS sends it since v1.0.3: no kmsKeyArn."""
    meta = metadata("CreateKey")
    del meta["kmsKeyArn"]
    return {"requestMetadata": meta}


def encrypt_body(plaintext: bytes = b"Hello World!", **fields: Any) -> dict[str, Any]:
    body = {
        "requestMetadata": metadata("Encrypt"),
        "plaintext": b64(plaintext),
        "encryptionAlgorithm": "AES_GCM",
    }
    body.update(fields)
    return body


def decrypt_body(encrypted: Mapping[str, Any], **fields: Any) -> dict[str, Any]:
    body = {
        "requestMetadata": metadata("Decrypt"),
        "encryptionAlgorithm": "AES_GCM",
        "ciphertext": encrypted["ciphertext"],
        "initializationVector": encrypted["initializationVector"],
        "authenticationTag": encrypted["authenticationTag"],
    }
    if "ciphertextMetadata" in encrypted:
        body["ciphertextMetadata"] = encrypted["ciphertextMetadata"]
    body.update(fields)
    return body


async def encrypted(
    env: XksEnv, plaintext: bytes = b"Hello World!", key_id: str | None = None, **fields: Any
) -> dict[str, Any]:
    return assert_ok(await send(env, env.url("encrypt", key_id), encrypt_body(plaintext, **fields)))


async def valid_body(env: XksEnv, op: str) -> dict[str, Any]:
    """A body the proxy accepts for ``op`` on the env's KEK (for decrypt, a real ciphertext of it)."""
    if op == "health":
        return health_body()
    if op == "metadata":
        return metadata_body()
    if op == "encrypt":
        return encrypt_body(additionalAuthenticatedData=b64(SPEC_AAD))
    return decrypt_body(
        await encrypted(env, additionalAuthenticatedData=b64(SPEC_AAD)),
        additionalAuthenticatedData=b64(SPEC_AAD),
    )


def flip(text: str, index: int = 0) -> str:
    """The Base64 of the decoded bytes with one bit of byte ``index`` flipped."""
    data = bytearray(unb64(text))
    data[index] ^= 0x01
    return b64(bytes(data))


@pytest.fixture(autouse=True)
def no_gc_pauses_mid_request() -> Iterator[None]:
    """The DSM and the proxy share this process, so a full GC pause (0.1-0.6 s on a busy 2-CPU runner)
    landing while the proxy awaits the DSM trips its 200 ms DSM timeout: a spurious 503. The collector is
    therefore paused during each test (reference counting still frees almost everything) and runs between
    tests. aiohttp's module-level LRU cache of middleware chains, keyed by application, would also keep
    every finished test's DSM and proxy alive and the heap growing: it is emptied after each test."""
    gc.disable()
    try:
        yield
    finally:
        web_app._cached_build_middleware.cache_clear()
        gc.enable()


@pytest.fixture
async def raised_env(xks_template: tuple[Path, dict[str, Any]], tmp_path: Path) -> AsyncIterator[XksEnv]:
    env = await make_env(
        xks_template, tmp_path, overrides={"xks.max_plaintext_bytes": 8000, "xks.max_aad_bytes": 16000}
    )
    try:
        yield env
    finally:
        await close_env(env)


@pytest.fixture
async def throttled_env(xks_template: tuple[Path, dict[str, Any]], tmp_path: Path) -> AsyncIterator[XksEnv]:
    env = await make_env(
        xks_template, tmp_path, overrides={"xks.rate_limit_rps": 1, "xks.rate_limit_burst": 2}
    )
    try:
        yield env
    finally:
        await close_env(env)


async def second_app(env: XksEnv, name: str, permissions: frozenset[str]) -> tuple[str, str, str]:
    """Another awsxks app in the env's group: (its URI path prefix, access key id, secret)."""
    app, _ = await env.core.admin.create_app(
        env.system, name, groups={env.group_id: permissions}, credential_kind="awsxks"
    )
    credential = (await env.core.admin.get_credential(env.system, app.app_id))["awsxks"]
    return f"/crypto/v1/apps/{app.app_id}/aws", credential["access_key_id"], credential["secret_key"]


# --- 200: the spec's baseline, and what a proxy must accept ------------------------------------------------


@pytest.mark.parametrize("op", OPERATIONS)
async def test_the_baseline_bodies_are_accepted(xks_env: XksEnv, op: str) -> None:
    """The bodies the ValidationException cases below break are themselves valid."""
    data = assert_ok(await send(xks_env, xks_env.url(op), await valid_body(xks_env, op)))
    expected = {
        "health": {"xksProxyFleetSize", "xksProxyVendor", "xksProxyModel", "ekmVendor", "ekmFleetDetails"},
        "metadata": {"keySpec", "keyUsage", "keyStatus"},
        "encrypt": {"ciphertext", "initializationVector", "authenticationTag", "ciphertextMetadata"},
        "decrypt": {"plaintext"},
    }[op]
    assert set(data) == expected
    if op == "decrypt":
        assert unb64(data["plaintext"]) == b"Hello World!"


@pytest.mark.parametrize("op", OPERATIONS)
async def test_unknown_fields_and_unknown_kms_operations_are_accepted(xks_env: XksEnv, op: str) -> None:
    body = await valid_body(xks_env, op)
    body["requestMetadata"].update(
        kmsOperation="SomeFutureKmsApi",
        kmsRecipientAttestationImageSha384="a" * 96,
        kmsRecipientAttestationPCR0="b" * 96,
        awsSourceVpc="vpc-0123456789abcdef0",
        awsSourceVpce="vpce-0123456789abcdef0",
        sourceIdentity="Alice",
        tags={"nested": ["values", 1, None]},
    )
    body["someFutureField"] = {"with": ["any", "shape"]}
    assert_ok(await send(xks_env, xks_env.url(op), body))


@pytest.mark.parametrize("op", OPERATIONS)
async def test_empty_string_metadata_values_are_accepted(xks_env: XksEnv, op: str) -> None:
    body = await valid_body(xks_env, op)
    body["requestMetadata"] = {key: "" for key in body["requestMetadata"]}
    assert body["requestMetadata"]["kmsRequestId"] == ""
    assert_ok(await send(xks_env, xks_env.url(op), body))


@pytest.mark.parametrize(
    "meta",
    [
        pytest.param(
            {"awsPrincipalArn": PRINCIPAL_ARN, "kmsOperation": "CreateKey", "kmsRequestId": "r"},
            id="v1.0.3-no-kmsKeyArn",
        ),
        pytest.param(
            metadata("DescribeKey", kmsViaService="ebs"), id="pre-v1.0.3-DescribeKey-with-kmsKeyArn"
        ),
        pytest.param(
            {"awsPrincipalArn": "AWS Internal", "kmsOperation": "CreateKey", "kmsRequestId": "not-a-uuid"},
            id="AWS-Internal-opaque-request-id",
        ),
        pytest.param(
            {
                "awsPrincipalArn": "arn:" + "p" * 2044,
                "kmsKeyArn": "arn:" + "k" * 2044,
                "kmsOperation": "CreateKey",
                "kmsRequestId": "r",
            },
            id="2048-char-ARNs",
        ),
    ],
)
async def test_key_metadata_request_forms_are_accepted(xks_env: XksEnv, meta: dict[str, str]) -> None:
    data = assert_ok(await send(xks_env, xks_env.url("metadata"), {"requestMetadata": meta}))
    assert data == {
        "keySpec": "AES_256",
        "keyUsage": ["ENCRYPT", "DECRYPT", "WRAP", "UNWRAP"],
        "keyStatus": "ENABLED",
    }


# --- 400 ValidationException ------------------------------------------------------------------------------

Mutation = Callable[[dict[str, Any]], dict[str, Any] | bytes]


def raw(data: bytes) -> Mutation:
    return lambda body: data


def without(*path: str) -> Mutation:
    def mutate(body: dict[str, Any]) -> dict[str, Any]:
        body = copy.deepcopy(body)
        target = body
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
        return body

    return mutate


def setting(*path: str, value: Any) -> Mutation:
    def mutate(body: dict[str, Any]) -> dict[str, Any]:
        body = copy.deepcopy(body)
        target = body
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return body

    return mutate


VALIDATION_CASES = [
    # GetHealthStatus: the spec's table excludes it, but compliance clients expect these (reference 1.8 note).
    ("health", raw(b"{}"), "empty-object"),
    ("health", setting("requestMetadata", value={}), "empty-requestMetadata"),
    ("health", raw(b"not json"), "non-JSON"),
    ("health", without("requestMetadata", "kmsRequestId"), "no-kmsRequestId"),
    ("health", setting("requestMetadata", "kmsOperation", value=7), "kmsOperation-not-a-string"),
    # GetKeyMetadata
    ("metadata", raw(b"{not json"), "non-JSON"),
    ("metadata", raw(b"[]"), "JSON-array"),
    ("metadata", without("requestMetadata"), "no-requestMetadata"),
    ("metadata", setting("requestMetadata", value="Alice"), "requestMetadata-not-an-object"),
    ("metadata", without("requestMetadata", "awsPrincipalArn"), "no-awsPrincipalArn"),
    ("metadata", setting("requestMetadata", "kmsRequestId", value=42), "kmsRequestId-not-a-string"),
    # Encrypt
    ("encrypt", raw(b"not json"), "non-JSON"),
    ("encrypt", raw(b"\xff\xfe{}"), "not-UTF-8"),
    ("encrypt", without("requestMetadata"), "no-requestMetadata"),
    ("encrypt", without("requestMetadata", "kmsKeyArn"), "no-kmsKeyArn"),
    ("encrypt", without("requestMetadata", "awsPrincipalArn"), "no-awsPrincipalArn"),
    ("encrypt", without("plaintext"), "no-plaintext"),
    ("encrypt", without("encryptionAlgorithm"), "no-algorithm"),
    ("encrypt", setting("encryptionAlgorithm", value="AES_CBC"), "bad-algorithm"),
    ("encrypt", setting("encryptionAlgorithm", value="aes_gcm"), "lower-case-algorithm"),
    ("encrypt", setting("plaintext", value="SGVsbG8gV29ybGQh!"), "bad-base64"),
    ("encrypt", setting("plaintext", value="SGVsbG8gV29ybGQ"), "unpadded-base64"),
    ("encrypt", setting("plaintext", value="-_-_"), "url-safe-base64"),
    ("encrypt", setting("additionalAuthenticatedData", value="%%%%"), "bad-base64-aad"),
    ("encrypt", setting("ciphertextDataIntegrityValueAlgorithm", value="SHA_512"), "bad-cdiv-algorithm"),
    # Decrypt
    ("decrypt", raw(b"not json"), "non-JSON"),
    ("decrypt", without("requestMetadata"), "no-requestMetadata"),
    ("decrypt", without("requestMetadata", "kmsKeyArn"), "no-kmsKeyArn"),
    ("decrypt", setting("encryptionAlgorithm", value="AES_GCM_SIV"), "bad-algorithm"),
    ("decrypt", without("ciphertext"), "no-ciphertext"),
    ("decrypt", setting("ciphertext", value="not base64"), "bad-base64-ciphertext"),
    ("decrypt", without("initializationVector"), "no-iv"),
    ("decrypt", setting("initializationVector", value=b64(bytes(11))), "iv-11-bytes"),
    ("decrypt", setting("initializationVector", value=b64(bytes(13))), "iv-13-bytes"),
    ("decrypt", without("authenticationTag"), "no-tag"),
    ("decrypt", setting("authenticationTag", value=b64(bytes(15))), "tag-15-bytes"),
    ("decrypt", setting("ciphertextMetadata", value=b64(bytes(21))), "metadata-21-bytes"),
    ("decrypt", setting("ciphertextMetadata", value="a2V5X3ZlcnNpb249MQ"), "unpadded-metadata"),
]


@pytest.mark.parametrize(
    ("op", "mutate"), [pytest.param(op, m, id=f"{op}-{name}") for op, m, name in VALIDATION_CASES]
)
async def test_invalid_bodies_are_validation_exceptions(xks_env: XksEnv, op: str, mutate: Mutation) -> None:
    body = mutate(await valid_body(xks_env, op))
    assert_error(await send(xks_env, xks_env.url(op), body), 400, "ValidationException")


# --- 400 InvalidStateException ----------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["encrypt", "decrypt"])
async def test_a_disabled_key_is_invalid_state(xks_env: XksEnv, op: str) -> None:
    kid = await xks_env.create_key("disabled-key", enabled=False)
    body = await valid_body(xks_env, op)  # a ciphertext of the KEK: the state check comes first
    assert_error(await send(xks_env, xks_env.url(op, kid), body), 400, "InvalidStateException")
    # GetKeyMetadata still answers, with keyStatus DISABLED, which is what KMS CreateKey checks.
    data = assert_ok(await send(xks_env, xks_env.url("metadata", kid), metadata_body()))
    assert data["keyStatus"] == "DISABLED"


async def test_a_deactivated_key_refuses_encrypt_but_still_decrypts_old_ciphertexts(xks_env: XksEnv) -> None:
    kid = await xks_env.create_key("soon-deactivated")
    old = await encrypted(xks_env, b"written while active", kid)
    revoked = await xks_env.core.keys.revoke(xks_env.system, kid, "CessationOfOperation", "retired")
    assert revoked.state == "Deactivated"
    assert_error(
        await send(xks_env, xks_env.url("encrypt", kid), encrypt_body()), 400, "InvalidStateException"
    )
    data = assert_ok(await send(xks_env, xks_env.url("decrypt", kid), decrypt_body(old)))
    assert unb64(data["plaintext"]) == b"written while active"
    data = assert_ok(await send(xks_env, xks_env.url("metadata", kid), metadata_body()))
    assert data["keyStatus"] == "DISABLED"


async def test_a_key_past_its_deactivation_date_refuses_encrypt(xks_env: XksEnv) -> None:
    kid = await xks_env.create_key("dated-key")
    old = await encrypted(xks_env, b"before the date", kid)
    await xks_env.core.keys.update(
        xks_env.system, kid, deactivation_date=datetime.now(UTC) - timedelta(seconds=1)
    )
    assert_error(
        await send(xks_env, xks_env.url("encrypt", kid), encrypt_body()), 400, "InvalidStateException"
    )
    data = assert_ok(await send(xks_env, xks_env.url("decrypt", kid), decrypt_body(old)))
    assert unb64(data["plaintext"]) == b"before the date"


# --- 400 InvalidCiphertextException -----------------------------------------------------------------------


def tamper_ciphertext(enc: dict[str, Any], aad: bytes) -> dict[str, Any]:
    return decrypt_body(enc, ciphertext=flip(enc["ciphertext"], 3), additionalAuthenticatedData=b64(aad))


def tamper_tag(enc: dict[str, Any], aad: bytes) -> dict[str, Any]:
    return decrypt_body(
        enc, authenticationTag=flip(enc["authenticationTag"], 15), additionalAuthenticatedData=b64(aad)
    )


def tamper_iv(enc: dict[str, Any], aad: bytes) -> dict[str, Any]:
    return decrypt_body(
        enc, initializationVector=flip(enc["initializationVector"], 0), additionalAuthenticatedData=b64(aad)
    )


def wrong_aad(enc: dict[str, Any], aad: bytes) -> dict[str, Any]:
    return decrypt_body(enc, additionalAuthenticatedData=b64(aad[:-1] + b"X"))


def missing_aad(enc: dict[str, Any], aad: bytes) -> dict[str, Any]:
    return decrypt_body(enc)


def empty_aad(enc: dict[str, Any], aad: bytes) -> dict[str, Any]:
    return decrypt_body(enc, additionalAuthenticatedData="")


def metadata_byte_changed(enc: dict[str, Any], aad: bytes) -> dict[str, Any]:
    changed = unb64(enc["ciphertextMetadata"]).replace(b"key_", b"kex_")
    return decrypt_body(enc, ciphertextMetadata=b64(changed), additionalAuthenticatedData=b64(aad))


def metadata_version_changed(enc: dict[str, Any], aad: bytes) -> dict[str, Any]:
    changed = unb64(enc["ciphertextMetadata"]).replace(b"=1", b"=2")
    return decrypt_body(enc, ciphertextMetadata=b64(changed), additionalAuthenticatedData=b64(aad))


def metadata_missing(enc: dict[str, Any], aad: bytes) -> dict[str, Any]:
    body = decrypt_body(enc, additionalAuthenticatedData=b64(aad))
    del body["ciphertextMetadata"]
    return body


def metadata_moved_into_aad(enc: dict[str, Any], aad: bytes) -> dict[str, Any]:
    """The spec's attack: without length prefixes, aad||metadata in the AAD field would still decrypt."""
    body = decrypt_body(enc, additionalAuthenticatedData=b64(aad + unb64(enc["ciphertextMetadata"])))
    del body["ciphertextMetadata"]
    return body


@pytest.mark.parametrize(
    "tamper",
    [
        tamper_ciphertext,
        tamper_tag,
        tamper_iv,
        wrong_aad,
        missing_aad,
        empty_aad,
        metadata_byte_changed,
        metadata_version_changed,
        metadata_missing,
        metadata_moved_into_aad,
    ],
)
async def test_tampering_is_an_invalid_ciphertext(
    xks_env: XksEnv, tamper: Callable[[dict[str, Any], bytes], dict[str, Any]]
) -> None:
    enc = await encrypted(xks_env, additionalAuthenticatedData=b64(SPEC_AAD))
    untouched = decrypt_body(enc, additionalAuthenticatedData=b64(SPEC_AAD))
    assert (
        unb64(assert_ok(await send(xks_env, xks_env.url("decrypt"), untouched))["plaintext"])
        == b"Hello World!"
    )
    reply = await send(xks_env, xks_env.url("decrypt"), tamper(enc, SPEC_AAD))
    assert_error(reply, 400, "InvalidCiphertextException")


# --- 400 InvalidKeyUsageException -------------------------------------------------------------------------


async def test_decrypt_with_an_encrypt_only_key_is_invalid_key_usage(xks_env: XksEnv) -> None:
    kid = await xks_env.create_key("encrypt-only", key_ops=["ENCRYPT"])
    enc = await encrypted(xks_env, b"under the encrypt-only key", kid)
    # The usage check comes before the tag check: even the key's own ciphertext is refused.
    reply = await send(xks_env, xks_env.url("decrypt", kid), decrypt_body(enc))
    assert_error(reply, 400, "InvalidKeyUsageException")


async def test_encrypt_with_a_decrypt_only_key_is_invalid_key_usage(xks_env: XksEnv) -> None:
    kid = await xks_env.create_key("decrypt-only", key_ops=["DECRYPT"])
    assert_error(
        await send(xks_env, xks_env.url("encrypt", kid), encrypt_body()), 400, "InvalidKeyUsageException"
    )


async def test_cdiv_on_an_encrypt_only_key_is_invalid_key_usage(xks_env: XksEnv) -> None:
    """The CDIV needs a verification decrypt, which an encrypt-only key does not permit (reference 1.5)."""
    kid = await xks_env.create_key("encrypt-only-cdiv", key_ops=["ENCRYPT"])
    data = assert_ok(await send(xks_env, xks_env.url("encrypt", kid), encrypt_body()))
    assert "ciphertextDataIntegrityValue" not in data
    reply = await send(
        xks_env, xks_env.url("encrypt", kid), encrypt_body(ciphertextDataIntegrityValueAlgorithm="SHA_256")
    )
    assert_error(reply, 400, "InvalidKeyUsageException")
    # The same request on a key with both usages carries the CDIV of the spec's formula.
    data = assert_ok(
        await send(
            xks_env, xks_env.url("encrypt"), encrypt_body(ciphertextDataIntegrityValueAlgorithm="SHA_256")
        )
    )
    parts = [
        unb64(data[k])
        for k in ("ciphertextMetadata", "initializationVector", "ciphertext", "authenticationTag")
    ]
    assert data["ciphertextDataIntegrityValue"] == cdiv(None, *parts)


# --- 401 AuthenticationFailedException --------------------------------------------------------------------


def _now_minus(minutes: float) -> datetime:
    return datetime.now(UTC) - timedelta(minutes=minutes)


AUTH_CASES: dict[str, Callable[[XksEnv], dict[str, Any]]] = {
    "wrong-secret": lambda env: {"secret": secrets.token_urlsafe(32)},
    "unknown-access-key-id": lambda env: {"akid": "A" * 20},
    "lower-case-access-key-id": lambda env: {"akid": env.akid.lower()},
    "40-char-access-key-id": lambda env: {"akid": "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567ABCDEFGH"},
    "access-key-id-with-punctuation": lambda env: {"akid": env.akid[:-1] + "-"},
    "service-kms": lambda env: {"service": "kms"},
    "body-changed-after-signing": lambda env: {"signed_body": b'{"requestMetadata":{}}'},
    "x-amz-date-6-minutes-old": lambda env: {"signed_at": _now_minus(6)},
    "x-amz-date-6-minutes-ahead": lambda env: {"signed_at": _now_minus(-6)},
    "no-authorization-header": lambda env: {"unsigned": True},
    "no-x-amz-date-header": lambda env: {"drop_headers": ("x-amz-date",)},
}


@pytest.mark.parametrize("op", OPERATIONS)
@pytest.mark.parametrize("case", AUTH_CASES)
async def test_bad_signatures_are_authentication_failures(xks_env: XksEnv, case: str, op: str) -> None:
    body = await valid_body(xks_env, op)
    reply = await send(xks_env, xks_env.url(op), body, **AUTH_CASES[case](xks_env))
    assert_error(reply, 401, "AuthenticationFailedException")


async def test_the_clock_skew_window_is_five_minutes(xks_env: XksEnv) -> None:
    body = metadata_body()
    for minutes in (4, -4):
        assert_ok(await send(xks_env, xks_env.url("metadata"), body, signed_at=_now_minus(minutes)))
    reply = await send(xks_env, xks_env.url("metadata"), body, signed_at=_now_minus(5.5))
    assert_error(reply, 401, "AuthenticationFailedException")


@pytest.mark.parametrize(
    "how",
    [
        pytest.param({"secret": "W" * 44}, id="wrong-secret"),
        pytest.param({"unsigned": True}, id="unsigned"),
        pytest.param({"signed_at": _now_minus(10)}, id="stale"),
    ],
)
@pytest.mark.parametrize(
    "body", [b"not json", b'{"requestMetadata": {}}'], ids=["non-JSON", "empty-metadata"]
)
async def test_authentication_is_checked_before_the_body(
    xks_env: XksEnv, how: dict[str, Any], body: bytes
) -> None:
    for op in OPERATIONS:
        assert_error(await send(xks_env, xks_env.url(op), body), 400, "ValidationException")
        assert_error(await send(xks_env, xks_env.url(op), body, **how), 401, "AuthenticationFailedException")


# --- 403 AccessDeniedException ----------------------------------------------------------------------------


async def test_an_app_without_decrypt_permission_is_access_denied(xks_env: XksEnv) -> None:
    prefix, akid, secret = await second_app(xks_env, "enc-only-app", frozenset({"ENCRYPT"}))
    enc = assert_ok(
        await send(
            xks_env, xks_env.url("encrypt", prefix=prefix), encrypt_body(b"mine"), akid=akid, secret=secret
        )
    )
    reply = await send(
        xks_env, xks_env.url("decrypt", prefix=prefix), decrypt_body(enc), akid=akid, secret=secret
    )
    assert_error(reply, 403, "AccessDeniedException")
    # The same ciphertext decrypts through the app that has the permission.
    data = assert_ok(await send(xks_env, xks_env.url("decrypt"), decrypt_body(enc)))
    assert unb64(data["plaintext"]) == b"mine"


async def test_an_app_without_encrypt_permission_is_access_denied(xks_env: XksEnv) -> None:
    prefix, akid, secret = await second_app(xks_env, "dec-only-app", frozenset({"DECRYPT"}))
    enc = await encrypted(xks_env, b"theirs")
    reply = await send(
        xks_env, xks_env.url("encrypt", prefix=prefix), encrypt_body(), akid=akid, secret=secret
    )
    assert_error(reply, 403, "AccessDeniedException")
    data = assert_ok(
        await send(
            xks_env, xks_env.url("decrypt", prefix=prefix), decrypt_body(enc), akid=akid, secret=secret
        )
    )
    assert unb64(data["plaintext"]) == b"theirs"


# --- 404 KeyNotFoundException -----------------------------------------------------------------------------


async def _key_in_another_group(env: XksEnv) -> str:
    group = await env.core.admin.create_group(env.system, "other")
    spec = KeySpec(name="elsewhere", obj_type="AES", key_size=256, group_id=group.group_id, key_ops=ALL_OPS)
    return (await env.core.keys.create(env.system, spec)).kid


async def _missing_key_id(env: XksEnv, case: str) -> str:
    if case == "unknown-uuid":
        return str(uuid.uuid4())
    if case == "unknown-name":
        return "no-such-key-name"
    kid = await _key_in_another_group(env)
    return kid if case == "key-in-a-group-the-app-is-not-in" else "elsewhere"


@pytest.mark.parametrize("op", ["metadata", "encrypt", "decrypt"])
@pytest.mark.parametrize(
    "case",
    ["unknown-uuid", "unknown-name", "key-in-a-group-the-app-is-not-in", "name-of-a-key-in-another-group"],
)
async def test_unknown_or_unreachable_keys_are_key_not_found(xks_env: XksEnv, case: str, op: str) -> None:
    key_id = await _missing_key_id(xks_env, case)
    body = await valid_body(xks_env, op)
    assert_error(await send(xks_env, xks_env.url(op, key_id), body), 404, "KeyNotFoundException")
    # The caller cannot tell the cases apart; the audit log can.
    refusal = (await xks_env.audit_rows(f"xks.{op}"))[-1]
    assert refusal["outcome"] == "refused"
    assert ("hidden from the caller" in refusal["message"]) == case.startswith(("key-in", "name-of"))


# --- 404 InvalidUriPathException --------------------------------------------------------------------------

URI_CASES: dict[str, Callable[[XksEnv], str]] = {
    "unknown-app-uuid-prefix": lambda env: env.url("health", prefix=f"/crypto/v1/apps/{uuid.uuid4()}/aws"),
    "unknown-app-uuid-prefix-key": lambda env: env.url(
        "encrypt", prefix=f"/crypto/v1/apps/{uuid.uuid4()}/aws"
    ),
    "unknown-prefix-nope": lambda env: env.url("health", prefix="/nope"),
    "no-prefix": lambda env: env.url("metadata", prefix=""),
    "no-kms-xks-v1": lambda env: f"{env.proxy_url}{env.prefix}/keys/{env.kek_id}/encrypt",
    "kms-xks-v2": lambda env: f"{env.proxy_url}{env.prefix}/kms/xks/v2/health",
    "key-id-with-bang": lambda env: env.url("encrypt", "bad!key"),
    "key-id-with-percent-escape": lambda env: env.url("encrypt", "bad%20key"),
    "key-id-129-chars": lambda env: env.url("metadata", "k" * 129),
    "empty-key-id": lambda env: f"{env.proxy_url}{env.prefix}/kms/xks/v1/keys//encrypt",
    "unknown-operation": lambda env: env.url("sign"),
    "trailing-slash": lambda env: env.url("health") + "/",
    "root": lambda env: f"{env.proxy_url}/",
}


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
@pytest.mark.parametrize("case", URI_CASES)
async def test_invalid_uri_paths_are_refused_before_authentication(
    xks_env: XksEnv, case: str, signed: bool
) -> None:
    url = URI_CASES[case](xks_env)
    reply = await send(xks_env, url, await valid_body(xks_env, "encrypt"), unsigned=not signed)
    assert_error(reply, 404, "InvalidUriPathException")


async def test_a_key_id_of_128_allowed_characters_is_a_valid_path(xks_env: XksEnv) -> None:
    """The control for the 129-character case: the path is routed (the key just does not exist)."""
    reply = await send(xks_env, xks_env.url("metadata", "a.B_9-" * 21 + "xy"), metadata_body())
    assert_error(reply, 404, "KeyNotFoundException")


# --- 405 Method Not Allowed -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize("op", OPERATIONS)
async def test_other_methods_on_the_operation_uris_are_405(xks_env: XksEnv, op: str, method: str) -> None:
    async with xks_env.http.request(method, xks_env.url(op)) as response:
        assert response.status == 405
        assert response.headers["Allow"] == "POST"


# --- 429 ThrottlingException ------------------------------------------------------------------------------


async def test_a_prefix_over_its_quota_is_throttled_and_other_prefixes_are_not(throttled_env: XksEnv) -> None:
    env = throttled_env
    prefix, akid, secret = await second_app(env, "other-tenant", frozenset({"ENCRYPT", "DECRYPT"}))
    for _ in range(2):  # the burst
        assert_ok(await send(env, env.url("metadata"), metadata_body()))
    assert_error(await send(env, env.url("metadata"), metadata_body()), 429, "ThrottlingException")
    assert_error(await send(env, env.url("encrypt"), encrypt_body()), 429, "ThrottlingException")
    # Another app's prefix has its own quota.
    assert_ok(await send(env, env.url("metadata", prefix=prefix), metadata_body(), akid=akid, secret=secret))
    assert_ok(await send(env, env.url("health", prefix=prefix), health_body(), akid=akid, secret=secret))


# --- 500 InternalException --------------------------------------------------------------------------------


async def test_a_stopped_dsm_is_an_internal_exception_for_every_operation_health_included(
    xks_env: XksEnv,
) -> None:
    enc = await encrypted(xks_env)
    health = assert_ok(await send(xks_env, xks_env.url("health"), health_body()))
    assert [n["healthStatus"] for n in health["ekmFleetDetails"]] == ["ACTIVE"]
    dsm_runner = xks_env.runners.pop(1)  # close_env must not clean it up a second time
    await dsm_runner.cleanup()
    assert_error(await send(xks_env, xks_env.url("encrypt"), encrypt_body()), 500, "InternalException")
    assert_error(await send(xks_env, xks_env.url("decrypt"), decrypt_body(enc)), 500, "InternalException")
    assert_error(await send(xks_env, xks_env.url("metadata"), metadata_body()), 500, "InternalException")
    # Only the DSM can verify the signature: a health check it cannot see is not answered 200.
    assert_error(await send(xks_env, xks_env.url("health"), health_body()), 500, "InternalException")


async def test_a_forged_health_check_is_never_a_success_with_or_without_the_dsm(xks_env: XksEnv) -> None:
    """Issue 11 #12: with the DSM down, a well-formed SigV4 signature made with the wrong secret got 200.
    The proxy holds no secret, so without a DSM it refuses as for any operation it cannot complete."""
    forged = {"secret": "not-the-secret-" + "x" * 40}
    assert_error(
        await send(xks_env, xks_env.url("health"), health_body(), **forged),
        401,
        "AuthenticationFailedException",
    )
    dsm_runner = xks_env.runners.pop(1)
    await dsm_runner.cleanup()
    reply = await send(xks_env, xks_env.url("health"), health_body(), **forged)
    assert_error(reply, 500, "InternalException")


@pytest.mark.parametrize(
    ("body", "how", "status", "error_name"),
    [
        pytest.param(health_body(), {"unsigned": True}, 401, "AuthenticationFailedException", id="unsigned"),
        pytest.param(b"{}", {}, 400, "ValidationException", id="empty-body"),
    ],
)
async def test_a_health_check_is_still_authenticated_and_validated_while_the_dsm_is_down(
    xks_env: XksEnv, body: Any, how: dict[str, Any], status: int, error_name: str
) -> None:
    assert_error(await send(xks_env, xks_env.url("health"), body, **how), status, error_name)  # DSM up
    dsm_runner = xks_env.runners.pop(1)
    await dsm_runner.cleanup()
    assert_error(await send(xks_env, xks_env.url("health"), body, **how), status, error_name)


# --- 501 UnsupportedOperationException --------------------------------------------------------------------


async def test_the_spec_minimum_sizes_round_trip(xks_env: XksEnv) -> None:
    plaintext, aad = os.urandom(4300), os.urandom(8192)
    enc = await encrypted(xks_env, plaintext, additionalAuthenticatedData=b64(aad))
    assert len(unb64(enc["ciphertext"])) == 4300
    data = assert_ok(
        await send(xks_env, xks_env.url("decrypt"), decrypt_body(enc, additionalAuthenticatedData=b64(aad)))
    )
    assert unb64(data["plaintext"]) == plaintext


def _too_large_cases(max_plaintext: int, max_aad: int) -> list[Any]:
    iv, tag = b64(bytes(12)), b64(bytes(16))
    fake = {"ciphertext": b64(bytes(max_plaintext + 1)), "initializationVector": iv, "authenticationTag": tag}
    small = {"ciphertext": b64(bytes(16)), "initializationVector": iv, "authenticationTag": tag}
    return [
        pytest.param("encrypt", encrypt_body(bytes(max_plaintext + 1)), id=f"plaintext-{max_plaintext + 1}"),
        pytest.param(
            "encrypt",
            encrypt_body(additionalAuthenticatedData=b64(bytes(max_aad + 1))),
            id=f"encrypt-aad-{max_aad + 1}",
        ),
        pytest.param("decrypt", decrypt_body(fake), id=f"ciphertext-{max_plaintext + 1}"),
        pytest.param(
            "decrypt",
            decrypt_body(small, additionalAuthenticatedData=b64(bytes(max_aad + 1))),
            id=f"decrypt-aad-{max_aad + 1}",
        ),
    ]


@pytest.mark.parametrize(("op", "body"), _too_large_cases(4300, 8192))
async def test_sizes_over_the_default_maximum_are_unsupported(
    xks_env: XksEnv, op: str, body: dict[str, Any]
) -> None:
    assert_error(await send(xks_env, xks_env.url(op), body), 501, "UnsupportedOperationException")


async def test_raised_limits_accept_larger_sizes(raised_env: XksEnv) -> None:
    plaintext, aad = os.urandom(8000), os.urandom(16000)
    enc = await encrypted(raised_env, plaintext, additionalAuthenticatedData=b64(aad))
    body = decrypt_body(enc, additionalAuthenticatedData=b64(aad))
    assert unb64(assert_ok(await send(raised_env, raised_env.url("decrypt"), body))["plaintext"]) == plaintext


@pytest.mark.parametrize(("op", "body"), _too_large_cases(8000, 16000))
async def test_sizes_over_a_raised_maximum_are_unsupported(
    raised_env: XksEnv, op: str, body: dict[str, Any]
) -> None:
    assert_error(await send(raised_env, raised_env.url(op), body), 501, "UnsupportedOperationException")


@pytest.mark.parametrize("op", ["encrypt", "decrypt"])
async def test_a_2_mb_body_is_unsupported_not_413_or_500(xks_env: XksEnv, op: str) -> None:
    huge = b64(os.urandom(1_500_000))
    body = (
        encrypt_body(additionalAuthenticatedData=huge)
        if op == "encrypt"
        else decrypt_body(
            {"ciphertext": huge, "initializationVector": b64(bytes(12)), "authenticationTag": b64(bytes(16))}
        )
    )
    raw_body = raw_bytes(body)
    assert len(raw_body) > 2_000_000
    assert_error(await send(xks_env, xks_env.url(op), raw_body), 501, "UnsupportedOperationException")


async def test_the_largest_configurable_plaintext_is_served(
    xks_template: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """The cap keeps the forwarded call (the body, Base64 inside JSON) under the DSM's 1 MiB body limit."""
    env = await make_env(xks_template, tmp_path, overrides={"xks.max_plaintext_bytes": MAX_PLAINTEXT_CAP})
    try:
        plaintext = os.urandom(MAX_PLAINTEXT_CAP)
        enc = await encrypted(env, plaintext)
        data = assert_ok(await send(env, env.url("decrypt"), decrypt_body(enc)))
        assert unb64(data["plaintext"]) == plaintext
    finally:
        await close_env(env)
    with pytest.raises(ConfigError, match=r"xks\.max_plaintext_bytes"):
        load_settings(
            tmp_path / "data", overrides={"xks.max_plaintext_bytes": MAX_PLAINTEXT_CAP + 1}, environ={}
        )


# --- 503 DependencyTimeoutException -----------------------------------------------------------------------


async def test_a_dsm_that_never_answers_is_a_dependency_timeout(xks_env: XksEnv) -> None:
    connections: list[asyncio.StreamWriter] = []

    async def accept_and_hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        try:
            await reader.read()  # until the proxy gives up and closes the connection
        finally:
            writer.close()

    server = await asyncio.start_server(accept_and_hang, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = load_settings(
        xks_env.data_dir,
        overrides={
            "xks.dsm_urls": f"http://127.0.0.1:{port}",
            "xks.dsm_timeout_ms": 100,
            "xks.prefix_cache_s": 0.0,
        },
        environ={},
    )
    runner, proxy_port = await start_runner(create_xks_app(settings))
    try:
        base = f"http://127.0.0.1:{proxy_port}{xks_env.prefix}/kms/xks/v1"
        started = time.monotonic()
        reply = await send(xks_env, f"{base}/keys/{xks_env.kek_id}/encrypt", encrypt_body())
        assert_error(reply, 503, "DependencyTimeoutException")
        # The DSM never answers, so any answer at all is the proxy giving up; the bound only tells a
        # give-up from the connection's end, far above 100 ms so that a stalled machine cannot fail it.
        assert time.monotonic() - started < 60.0
        assert connections, "the proxy never connected to the hanging DSM"
        health = await send(xks_env, f"{base}/health", health_body())
        assert_error(health, 503, "DependencyTimeoutException")
    finally:
        await runner.cleanup()
        for writer in connections:
            writer.close()
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0)


# --- the spec's vectors: CDIV (Appendix C) and the GCM AAD construction -----------------------------------


def test_the_spec_cdiv_vector() -> None:
    iv = bytes.fromhex("1ccae5470f39700254779031")
    ct = bytes.fromhex("821c642b5b71783367deaf18")
    tag = bytes.fromhex("bc1c4dda7707d6812447c5955e99b261")
    assert len(SPEC_AAD) == 33 and len(SPEC_METADATA) == 13
    assert (b64(iv), b64(ct), b64(tag)) == (
        "HMrlRw85cAJUd5Ax",
        "ghxkK1txeDNn3q8Y",
        "vBxN2ncH1oEkR8WVXpmyYQ==",
    )
    assert cdiv(SPEC_AAD, SPEC_METADATA, iv, ct, tag) == "qHA/ImC9h5HsLRXqCyPmWgYx7tzyoTplzILbP0fPXsc="
    # No lengths: absent fields contribute the empty string, exactly like empty ones.
    assert cdiv(None, None, iv, ct, tag) == cdiv(b"", b"", iv, ct, tag)


@pytest.mark.parametrize(
    ("aad", "cm", "expected"),
    [
        (None, None, b"\x00\x00\x00"),
        (b"", b"", b"\x00\x00\x00"),
        (b"ab", None, b"\x00\x02ab\x00"),
        (None, SPEC_METADATA, b"\x00\x00\x0dkey_version=1"),
        (SPEC_AAD, SPEC_METADATA, b"\x00\x21" + SPEC_AAD + b"\x0d" + SPEC_METADATA),
        (bytes(300), b"x" * 20, b"\x01\x2c" + bytes(300) + b"\x14" + b"x" * 20),
    ],
    ids=["absent", "empty", "aad-only", "metadata-only", "spec-inputs", "aad-over-255"],
)
def test_the_gcm_aad_construction(aad: bytes | None, cm: bytes | None, expected: bytes) -> None:
    assert gcm_aad(aad, cm) == expected


def test_moving_metadata_into_the_aad_changes_the_gcm_aad() -> None:
    assert gcm_aad(SPEC_AAD + SPEC_METADATA, None) != gcm_aad(SPEC_AAD, SPEC_METADATA)
    assert gcm_aad(None, SPEC_AAD) != gcm_aad(SPEC_AAD, None)


# --- decrypt accepts IVs of 12 and 16 bytes ---------------------------------------------------------------


@pytest.mark.parametrize("iv_bytes", [12, 16])
async def test_decrypt_accepts_ivs_of_12_and_16_bytes(xks_env: XksEnv, iv_bytes: int) -> None:
    obj = await xks_env.core.keys.get(xks_env.system, kid=xks_env.kek_id)
    material = await xks_env.core.keys.material(obj)
    iv, aad = os.urandom(iv_bytes), b"context"
    sealed = AESGCM(material).encrypt(iv, b"made outside the proxy", gcm_aad(aad, SPEC_METADATA))
    enc = {
        "ciphertext": b64(sealed[:-16]),
        "authenticationTag": b64(sealed[-16:]),
        "initializationVector": b64(iv),
        "ciphertextMetadata": b64(SPEC_METADATA),
    }
    data = assert_ok(
        await send(xks_env, xks_env.url("decrypt"), decrypt_body(enc, additionalAuthenticatedData=b64(aad)))
    )
    assert unb64(data["plaintext"]) == b"made outside the proxy"
    # ... and the IV is authenticated like the rest.
    tampered = decrypt_body(
        enc,
        initializationVector=flip(enc["initializationVector"], iv_bytes - 1),
        additionalAuthenticatedData=b64(aad),
    )
    assert_error(await send(xks_env, xks_env.url("decrypt"), tampered), 400, "InvalidCiphertextException")


# --- requests signed by curl (Appendix D), an independent SigV4 implementation ---------------------------


@dataclass
class CurlReply:
    status: int
    content_type: str
    text: str
    verbose: str


async def curl(url: str, body: Mapping[str, Any], akid: str, secret: str, tmp_path: Path) -> CurlReply:
    """curl --aws-sigv4, as in the spec's Appendix D; run without blocking the loop the servers share."""
    body_file = tmp_path / f"body-{uuid.uuid4().hex}.json"
    body_file.write_text(json.dumps(body, separators=(",", ":")))
    process = await asyncio.create_subprocess_exec(
        CURL,
        "-q",  # no .curlrc
        "-sS",
        "-v",
        "--noproxy",
        "*",
        "--max-time",
        "10",
        "--aws-sigv4",
        "aws:amz:us-east-1:kms-xks-proxy",
        "--user",
        f"{akid}:{secret}",
        "-H",
        "Content-Type: application/json",
        "--data",
        f"@{body_file}",
        "--write-out",
        "\n%{http_code}\n%{content_type}",
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode(errors="replace")
    text, status, content_type = out.decode().rsplit("\n", 2)
    return CurlReply(int(status), content_type, text, err.decode(errors="replace"))


def _as_reply(reply: CurlReply) -> Reply:
    return Reply(
        reply.status, CIMultiDictProxy(CIMultiDict({"Content-Type": reply.content_type})), reply.text
    )


APPENDIX_D_ENCRYPT = {
    "requestMetadata": {
        "awsPrincipalArn": PRINCIPAL_ARN,
        "kmsKeyArn": KEY_ARN,
        "kmsOperation": "GenerateDataKey",
        "kmsRequestId": "4112f4d6-db54-4af4-ae30-c55a22a8dfae",
    },
    "plaintext": "SGVsbG8gV29ybGQh",
    "encryptionAlgorithm": "AES_GCM",
}
APPENDIX_D_HEALTH = {
    "requestMetadata": {
        "kmsRequestId": "4112f4d6-db54-4af4-ae30-c55a22a8dfae",
        "kmsOperation": "KmsHealthCheck",
    }
}


async def test_curl_signed_appendix_d_requests(xks_env: XksEnv, tmp_path: Path) -> None:
    health = await curl(xks_env.url("health"), APPENDIX_D_HEALTH, xks_env.akid, xks_env.secret, tmp_path)
    # curl signs the content type too: the proxy must honour SignedHeaders rather than assume host;x-amz-date.
    assert "SignedHeaders=content-type;host;x-amz-date" in health.verbose
    data = assert_ok(_as_reply(health))
    assert data["xksProxyFleetSize"] >= 1 and data["ekmFleetDetails"][0]["healthStatus"] == "ACTIVE"

    encrypt = await curl(xks_env.url("encrypt"), APPENDIX_D_ENCRYPT, xks_env.akid, xks_env.secret, tmp_path)
    enc = assert_ok(_as_reply(encrypt))
    assert len(unb64(enc["ciphertext"])) == 12 and len(unb64(enc["authenticationTag"])) == 16
    assert "ciphertextDataIntegrityValue" not in enc

    # curl's encrypt output decrypts, through curl and through botocore-signed requests alike.
    decrypt = await curl(xks_env.url("decrypt"), decrypt_body(enc), xks_env.akid, xks_env.secret, tmp_path)
    assert unb64(assert_ok(_as_reply(decrypt))["plaintext"]) == b"Hello World!"
    data = assert_ok(await send(xks_env, xks_env.url("decrypt"), decrypt_body(enc)))
    assert data["plaintext"] == "SGVsbG8gV29ybGQh"


@pytest.mark.parametrize("op", ["health", "encrypt"])
async def test_curl_with_a_wrong_secret_is_an_authentication_failure(
    xks_env: XksEnv, tmp_path: Path, op: str
) -> None:
    body = APPENDIX_D_HEALTH if op == "health" else APPENDIX_D_ENCRYPT
    reply = await curl(xks_env.url(op), body, xks_env.akid, "W" * 44, tmp_path)
    assert_error(_as_reply(reply), 401, "AuthenticationFailedException")
