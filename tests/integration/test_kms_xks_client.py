"""The KMS emulator's XKS client against the real proxy (and real DSM) on loopback, an HTTPS proxy with lab
certificates, and small real servers that answer late or answer garbage: every ConnectionErrorCode is
provoked for real, and the proxy's own SigV4 check proves the client signs as KMS does."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from kms_emulator.xks_client import (
    EncryptResult,
    XksProxyClient,
    XksProxyConfig,
    XksProxyError,
    create_key_exception,
    key_store_exception,
    request_metadata,
)
from tests.xks_harness import (
    KEY_ARN,
    PRINCIPAL_ARN,
    XksEnv,
    close_env,
    make_env,
    start_runner,
    xks_env,
    xks_template,
)
from xks_frontend.app import create_app as create_xks_app
from xkslab_shared import certs, tls
from xkslab_shared.config import load_settings

__all__ = ["xks_env", "xks_template"]  # fixtures used by name

UNREACHABLE = "XksProxyUriUnreachableException"
INVALID_RESPONSE = "XksProxyInvalidResponseException"


def config(env: XksEnv, **changes: str) -> XksProxyConfig:
    fields = {
        "uri_endpoint": env.proxy_url,
        "uri_path": f"{env.prefix}/kms/xks/v1",
        "access_key_id": env.akid,
        "secret": env.secret,
    }
    return XksProxyConfig(**{**fields, **changes})


def meta(operation: str, request_id: str = "req-1") -> dict[str, str]:
    return request_metadata(
        kms_operation=operation,
        kms_request_id=request_id,
        aws_principal_arn=PRINCIPAL_ARN,
        kms_key_arn=KEY_ARN,
    )


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


async def failure(call: Awaitable[Any]) -> XksProxyError:
    with pytest.raises(XksProxyError) as info:
        await call
    return info.value


@pytest.fixture
async def client() -> AsyncIterator[XksProxyClient]:
    # Generous: shared CI machines stall; the timeout test uses KMS's own 250 ms.
    opened = XksProxyClient(timeout_s=5.0)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


# --- the real proxy: answers -----------------------------------------------------------------------------


async def test_health_answers_the_spec_shape(xks_env: XksEnv, client: XksProxyClient) -> None:
    health = await client.health(config(xks_env), kms_operation="ConnectCustomKeyStore", kms_request_id="h-1")
    assert health["xksProxyFleetSize"] == 1
    assert isinstance(health["xksProxyVendor"], str) and isinstance(health["ekmVendor"], str)
    assert [node["healthStatus"] for node in health["ekmFleetDetails"]] == ["ACTIVE"]


async def test_key_metadata_of_an_enabled_and_a_disabled_key(xks_env: XksEnv, client: XksProxyClient) -> None:
    cfg = config(xks_env)
    answer = await client.key_metadata(cfg, xks_env.kek_id, meta("CreateKey"))
    assert answer == {
        "keySpec": "AES_256",
        "keyUsage": ["ENCRYPT", "DECRYPT", "WRAP", "UNWRAP"],
        "keyStatus": "ENABLED",
    }
    off = await xks_env.create_key("off", enabled=False)
    answer = await client.key_metadata(cfg, off, meta("CreateKey"))
    assert answer["keyStatus"] == "DISABLED"


async def test_encrypt_decrypt_round_trip_with_aad_carries_the_request_metadata(
    xks_env: XksEnv, client: XksProxyClient
) -> None:
    cfg = config(xks_env)
    plaintext, aad = b"inner envelope of a data key", b"kms-aad"
    result = await client.encrypt(cfg, xks_env.kek_id, plaintext, aad, meta("GenerateDataKey", "req-enc-7"))
    assert len(result.iv) == 12 and len(result.tag) == 16 and len(result.ciphertext) == len(plaintext)
    assert result.ciphertext != plaintext and result.ciphertext_metadata == b"key_version=1"
    assert await client.decrypt(cfg, xks_env.kek_id, result, aad, meta("Decrypt", "req-dec-8")) == plaintext
    # The AAD is bound: another AAD, or none, is a proxy-side InvalidCiphertextException.
    for wrong in (b"other-aad", None):
        error = await failure(client.decrypt(cfg, xks_env.kek_id, result, wrong, meta("Decrypt")))
        assert (error.error_name, error.http_status) == ("InvalidCiphertextException", 400)
        assert error.connection_error_code == "INTERNAL_ERROR"
    # The request id and operation reached the key manager through requestMetadata.
    rows = {row["kms_request_id"]: row for row in await xks_env.audit_rows()}
    assert (
        rows["req-enc-7"]["kms_operation"] == "GenerateDataKey"
        and rows["req-enc-7"]["operation"] == "xks.encrypt"
    )
    assert rows["req-dec-8"]["kms_operation"] == "Decrypt" and rows["req-dec-8"]["kms_key_arn"] == KEY_ARN


async def test_key_not_found(xks_env: XksEnv, client: XksProxyClient) -> None:
    error = await failure(client.key_metadata(config(xks_env), "no-such-key", meta("CreateKey")))
    assert (error.error_name, error.http_status, error.connection_error_code) == (
        "KeyNotFoundException",
        404,
        "INTERNAL_ERROR",
    )
    assert create_key_exception(error) == "XksKeyNotFoundException"


async def test_disabled_key_refuses_encrypt_and_decrypt(xks_env: XksEnv, client: XksProxyClient) -> None:
    cfg = config(xks_env)
    off = await xks_env.create_key("off", enabled=False)
    sealed = EncryptResult(ciphertext=b"x" * 5, iv=bytes(12), tag=bytes(16), ciphertext_metadata=None)
    for call in (
        lambda: client.encrypt(cfg, off, b"hello", None, meta("Encrypt")),
        lambda: client.decrypt(cfg, off, sealed, None, meta("Decrypt")),
    ):
        error = await failure(call())
        assert (error.error_name, error.connection_error_code) == ("InvalidStateException", "INTERNAL_ERROR")
        assert create_key_exception(error) == "XksKeyInvalidConfigurationException"


# --- the real proxy: every ConnectionErrorCode it can cause ----------------------------------------------


async def test_wrong_secret_is_invalid_credentials(xks_env: XksEnv, client: XksProxyClient) -> None:
    wrong = "B" * 44
    cfg = config(xks_env, secret=wrong)
    error = await failure(client.health(cfg, kms_operation="CreateCustomKeyStore", kms_request_id="h-2"))
    assert (error.error_name, error.connection_error_code) == (
        "AuthenticationFailedException",
        "INVALID_CREDENTIALS",
    )
    assert key_store_exception(error) == "XksProxyIncorrectAuthenticationCredentialException"
    assert (
        wrong not in error.message and wrong not in repr(cfg) and xks_env.secret not in repr(config(xks_env))
    )


async def test_wrong_uri_path_is_invalid_configuration(xks_env: XksEnv, client: XksProxyClient) -> None:
    cfg = config(xks_env, uri_path="/no/such/prefix/kms/xks/v1")
    error = await failure(client.health(cfg, kms_operation="CreateCustomKeyStore", kms_request_id="h-3"))
    assert (error.error_name, error.connection_error_code) == (
        "InvalidUriPathException",
        "XKS_PROXY_INVALID_CONFIGURATION",
    )
    assert key_store_exception(error) == "XksProxyInvalidConfigurationException"


async def test_nothing_listening_is_not_reachable(xks_env: XksEnv, client: XksProxyClient) -> None:
    with socket.socket() as sock:  # bound, never listening: connections are refused, nobody else takes it
        sock.bind(("127.0.0.1", 0))
        cfg = config(xks_env, uri_endpoint=f"http://127.0.0.1:{sock.getsockname()[1]}")
        error = await failure(client.health(cfg, kms_operation="ConnectCustomKeyStore", kms_request_id="h-4"))
        assert (error.error_name, error.connection_error_code) == (None, "XKS_PROXY_NOT_REACHABLE")
        assert key_store_exception(error) == UNREACHABLE
        error = await failure(client.key_metadata(cfg, "k1", meta("CreateKey")))
        assert create_key_exception(error) == UNREACHABLE


async def test_secondary_authorization_denial_is_access_denied(
    xks_template: tuple[Path, dict[str, Any]], tmp_path: Path, client: XksProxyClient
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('default = "deny"\n')
    env = await make_env(xks_template, tmp_path, {"xks.policy_file": str(policy)})
    try:
        cfg = config(env)
        error = await failure(client.key_metadata(cfg, env.kek_id, meta("CreateKey")))
        assert (error.error_name, error.http_status) == ("AccessDeniedException", 403)
        assert error.connection_error_code == "XKS_PROXY_ACCESS_DENIED"
        assert create_key_exception(error) == "CustomKeyStoreInvalidStateException"
        # Health is never subject to secondary authorization, so the store itself still connects.
        health = await client.health(cfg, kms_operation="KmsHealthCheck", kms_request_id="h-5")
        assert health["xksProxyFleetSize"] == 1
    finally:
        await close_env(env)


# --- the real proxy over HTTPS ---------------------------------------------------------------------------


@dataclass
class TlsProxy:
    port: int  # on 127.0.0.1, which the certificate names
    other_host_port: int  # on 127.0.0.2, which it does not
    ca: Path
    other_ca: Path


@pytest.fixture
async def tls_proxy(xks_env: XksEnv, tmp_path: Path) -> AsyncIterator[TlsProxy]:
    ca_cert, ca_key = certs.make_local_ca(tmp_path / "lab-ca")
    other_ca, _ = certs.make_local_ca(tmp_path / "other-ca")
    cert, key = certs.make_server_cert(tmp_path / "lab-ca", ca_cert, ca_key, "xks", [])
    settings = load_settings(
        xks_env.data_dir,
        overrides={"xks.dsm_urls": xks_env.dsm_url, "xks.prefix_cache_s": 0.0, "xks.dsm_timeout_ms": 5000},
        environ={},
    )
    context = tls.server_context(cert, key)
    runner, port = await start_runner(create_xks_app(settings), context)
    try:
        other = web.TCPSite(runner, "127.0.0.2", 0, ssl_context=context)
        await other.start()
        other_port = other._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        yield TlsProxy(port, other_port, ca_cert, other_ca)
    finally:
        await runner.cleanup()


async def test_https_proxy_with_the_right_ca_works(xks_env: XksEnv, tls_proxy: TlsProxy) -> None:
    cfg = config(xks_env, uri_endpoint=f"https://127.0.0.1:{tls_proxy.port}")
    async with XksProxyClient(ca_file=tls_proxy.ca, timeout_s=5.0) as trusting:
        health = await trusting.health(cfg, kms_operation="ConnectCustomKeyStore", kms_request_id="t-1")
        assert health["ekmFleetDetails"][0]["healthStatus"] == "ACTIVE"
        result = await trusting.encrypt(cfg, xks_env.kek_id, b"over tls", b"aad", meta("Encrypt"))
        assert await trusting.decrypt(cfg, xks_env.kek_id, result, b"aad", meta("Decrypt")) == b"over tls"


@pytest.mark.parametrize("case", ["untrusted-ca", "wrong-host-name", "plain-http-port"])
async def test_tls_failures_are_invalid_tls_configuration(
    xks_env: XksEnv, tls_proxy: TlsProxy, case: str
) -> None:
    endpoint, ca = {
        "untrusted-ca": (f"https://127.0.0.1:{tls_proxy.port}", tls_proxy.other_ca),
        "wrong-host-name": (f"https://127.0.0.2:{tls_proxy.other_host_port}", tls_proxy.ca),
        "plain-http-port": (f"https://{xks_env.proxy_url.removeprefix('http://')}", tls_proxy.ca),
    }[case]
    cfg = config(xks_env, uri_endpoint=endpoint)
    async with XksProxyClient(ca_file=ca, timeout_s=5.0) as client:
        error = await failure(client.health(cfg, kms_operation="CreateCustomKeyStore", kms_request_id="t-2"))
    assert (error.error_name, error.connection_error_code) == (None, "XKS_PROXY_INVALID_TLS_CONFIGURATION")
    assert key_store_exception(error) == UNREACHABLE


# --- small real servers: late answers and garbage --------------------------------------------------------


def valid_health(fleet: int = 1) -> dict[str, Any]:
    return {
        "xksProxyFleetSize": 1,
        "xksProxyVendor": "Acme",
        "xksProxyModel": "Acme AWS XKS Proxy 1.0",
        "ekmVendor": "Acme",
        "ekmFleetDetails": [
            {"id": f"Id-{i}", "model": "Acme HSM 1.0", "healthStatus": "ACTIVE"} for i in range(fleet)
        ],
    }


PLAINTEXT = b"sixteen byte msg"
VALID_ENCRYPT = {
    "ciphertext": b64(b"C" * len(PLAINTEXT)),
    "initializationVector": b64(b"I" * 12),
    "authenticationTag": b64(b"T" * 16),
    "ciphertextMetadata": b64(b"key_version=1"),
}
VALID = {
    "health": valid_health(),
    "metadata": {"keySpec": "AES_256", "keyUsage": ["ENCRYPT", "DECRYPT"], "keyStatus": "ENABLED"},
    "encrypt": VALID_ENCRYPT,
    "decrypt": {"plaintext": b64(PLAINTEXT)},
}


@dataclass
class FakeProxy:
    """A real HTTP server whose answer to each operation the test sets; it records what it received."""

    url: str = ""
    delay_s: float = 0.0
    answers: dict[str, tuple[int, bytes, str]] = field(default_factory=dict)
    received: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)

    def answer(self, op: str, status: int, body: Any, content_type: str = "application/json") -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.answers[op] = (status, raw, content_type)

    split_s: float = 0.0  # > 0: send the answer in two writes this far apart

    async def handle(self, request: web.Request) -> web.StreamResponse:
        op = request.path.rsplit("/", 1)[-1]
        self.received.append((request.path, dict(request.headers), await request.read()))
        await asyncio.sleep(self.delay_s)
        status, raw, content_type = self.answers.get(op) or (
            200,
            json.dumps(VALID[op]).encode(),
            "application/json",
        )
        if not self.split_s:
            return web.Response(status=status, body=raw, content_type=content_type)
        response = web.StreamResponse(status=status)
        response.content_type = content_type
        response.content_length = len(raw)
        await response.prepare(request)
        await response.write(raw[: len(raw) // 2])
        await asyncio.sleep(self.split_s)
        await response.write(raw[len(raw) // 2 :])
        await response.write_eof()
        return response


@pytest.fixture
async def fake() -> AsyncIterator[FakeProxy]:
    proxy = FakeProxy()
    app = web.Application()
    app.router.add_post("/{tail:.*}", proxy.handle)
    runner, port = await start_runner(app)
    proxy.url = f"http://127.0.0.1:{port}"
    try:
        yield proxy
    finally:
        await runner.cleanup()


def fake_config(fake: FakeProxy) -> XksProxyConfig:
    return XksProxyConfig(
        uri_endpoint=fake.url,
        uri_path="/tenant-1/kms/xks/v1",
        access_key_id="AKIAI2SFODNN7EXAMPLE",
        secret="FYtE5EFA5FT0mCc3DrGUe2sti527BitkQ0Zr9MO9fvE",
    )


def call_for(client: XksProxyClient, cfg: XksProxyConfig, op: str) -> Any:
    """The client call that exercises one operation, with inputs that fit the VALID answers."""
    sealed = EncryptResult(b"C" * len(PLAINTEXT), b"I" * 12, b"T" * 16, None)
    return {
        "health": lambda: client.health(cfg, kms_operation="KmsHealthCheck", kms_request_id="f-1"),
        "metadata": lambda: client.key_metadata(cfg, "key-1", meta("CreateKey")),
        "encrypt": lambda: client.encrypt(cfg, "key-1", PLAINTEXT, b"aad", meta("Encrypt")),
        "decrypt": lambda: client.decrypt(cfg, "key-1", sealed, None, meta("Decrypt")),
    }[op]()


async def test_valid_answers_at_the_spec_limits_pass_and_requests_are_signed_as_kms_signs(
    fake: FakeProxy, client: XksProxyClient
) -> None:
    cfg = fake_config(fake)
    fake.answer("health", 200, valid_health(fleet=10))
    fake.answer("metadata", 200, {**VALID["metadata"], "keyUsage": ["ENCRYPT"] * 10})
    fake.answer(
        "encrypt",
        200,
        {**VALID_ENCRYPT, "initializationVector": b64(b"I" * 16), "ciphertextMetadata": b64(b"m" * 20)},
    )
    assert len((await call_for(client, cfg, "health"))["ekmFleetDetails"]) == 10
    assert (await call_for(client, cfg, "metadata"))["keyStatus"] == "ENABLED"
    result = await call_for(client, cfg, "encrypt")
    assert (len(result.iv), result.ciphertext_metadata) == (16, b"m" * 20)
    assert await call_for(client, cfg, "decrypt") == PLAINTEXT
    paths = [path for path, _, _ in fake.received]
    assert paths == [
        "/tenant-1/kms/xks/v1/health",
        "/tenant-1/kms/xks/v1/keys/key-1/metadata",
        "/tenant-1/kms/xks/v1/keys/key-1/encrypt",
        "/tenant-1/kms/xks/v1/keys/key-1/decrypt",
    ]
    _, headers, body = fake.received[2]
    auth = headers["Authorization"]
    assert auth.startswith("AWS4-HMAC-SHA256 Credential=AKIAI2SFODNN7EXAMPLE/")
    assert "/us-east-1/kms-xks-proxy/aws4_request" in auth
    signed = auth.split("SignedHeaders=")[1].split(",")[0].split(";")
    assert {"host", "x-amz-date"} <= set(signed) and "X-Amz-Date" in headers
    sent = json.loads(body)
    assert sent["requestMetadata"] == meta("Encrypt")
    assert (sent["plaintext"], sent["additionalAuthenticatedData"], sent["encryptionAlgorithm"]) == (
        b64(PLAINTEXT),
        b64(b"aad"),
        "AES_GCM",
    )
    health_body = json.loads(fake.received[0][2])
    assert health_body == {"requestMetadata": {"kmsOperation": "KmsHealthCheck", "kmsRequestId": "f-1"}}


async def test_an_answer_after_the_budget_is_timed_out(fake: FakeProxy) -> None:
    cfg = fake_config(fake)
    async with XksProxyClient() as kms_budget:  # KMS's own 250 ms
        fake.delay_s = 0.3
        # A valid answer comes after 300 ms: the failure itself shows the client gave up at 250 ms.
        error = await failure(call_for(kms_budget, cfg, "health"))
        assert (error.error_name, error.connection_error_code) == (None, "XKS_PROXY_TIMED_OUT")
        assert key_store_exception(error) == UNREACHABLE
        assert create_key_exception(await failure(call_for(kms_budget, cfg, "metadata"))) == UNREACHABLE
        fake.delay_s = 0.0
        assert (await call_for(kms_budget, cfg, "health"))["xksProxyFleetSize"] == 1


def with_(op: str, **changes: Any) -> dict[str, Any]:
    return {**VALID[op], **changes}


def without(op: str, key: str) -> dict[str, Any]:
    return {k: v for k, v in VALID[op].items() if k != key}


FLEET_ENTRY = {"id": "a", "model": "m", "healthStatus": "ACTIVE"}
GARBAGE: dict[str, tuple[str, int, Any]] = {
    "health-not-json": ("health", 200, b"not json"),
    "health-json-array": ("health", 200, [valid_health()]),
    "health-missing-fields": ("health", 200, {"xksProxyFleetSize": 1}),
    "health-fleet-size-zero": ("health", 200, with_("health", xksProxyFleetSize=0)),
    "health-fleet-size-bool": ("health", 200, with_("health", xksProxyFleetSize=True)),
    "health-vendor-not-string": ("health", 200, with_("health", ekmVendor=7)),
    "health-fleet-empty": ("health", 200, with_("health", ekmFleetDetails=[])),
    "health-fleet-11": ("health", 200, valid_health(fleet=11)),
    "health-bad-status": (
        "health",
        200,
        with_("health", ekmFleetDetails=[{**FLEET_ENTRY, "healthStatus": "UNHEALTHY"}]),
    ),
    "health-entry-no-id": (
        "health",
        200,
        with_("health", ekmFleetDetails=[{"model": "m", "healthStatus": "ACTIVE"}]),
    ),
    "health-500-html": ("health", 500, b"<html><body>Internal Server Error</body></html>"),
    "health-200-xks-error": ("health", 200, {"errorName": "InternalException"}),
    "health-403-unknown-error": ("health", 403, {"errorName": "ForbiddenException"}),
    "health-status-disagrees": ("health", 500, {"errorName": "KeyNotFoundException"}),
    "health-302-redirect": ("health", 302, b""),
    "metadata-missing-key-spec": ("metadata", 200, without("metadata", "keySpec")),
    "metadata-11-usages": ("metadata", 200, with_("metadata", keyUsage=["ENCRYPT"] * 11)),
    "metadata-usage-not-list": ("metadata", 200, with_("metadata", keyUsage="ENCRYPT")),
    "metadata-bad-status": ("metadata", 200, with_("metadata", keyStatus="PENDING")),
    "encrypt-missing-tag": ("encrypt", 200, without("encrypt", "authenticationTag")),
    "encrypt-bad-base64": ("encrypt", 200, with_("encrypt", ciphertext="!!not base64!!")),
    "encrypt-unpadded-base64": (
        "encrypt",
        200,
        with_("encrypt", authenticationTag=b64(b"T" * 16).rstrip("=")),
    ),
    "encrypt-non-canonical-base64": ("encrypt", 200, with_("encrypt", ciphertextMetadata="QR==")),
    "encrypt-iv-8-bytes": ("encrypt", 200, with_("encrypt", initializationVector=b64(b"I" * 8))),
    "encrypt-tag-12-bytes": ("encrypt", 200, with_("encrypt", authenticationTag=b64(b"T" * 12))),
    "encrypt-metadata-21-bytes": ("encrypt", 200, with_("encrypt", ciphertextMetadata=b64(b"m" * 21))),
    "encrypt-ciphertext-too-long": (
        "encrypt",
        200,
        with_("encrypt", ciphertext=b64(b"C" * (len(PLAINTEXT) + 16))),
    ),
    "decrypt-missing-plaintext": ("decrypt", 200, {}),
    "decrypt-plaintext-too-short": ("decrypt", 200, {"plaintext": b64(PLAINTEXT[:-1])}),
}


@pytest.mark.parametrize("case", GARBAGE)
async def test_garbage_is_an_invalid_response(fake: FakeProxy, client: XksProxyClient, case: str) -> None:
    op, status, body = GARBAGE[case]
    fake.answer(op, status, body, "text/html" if isinstance(body, bytes) else "application/json")
    error = await failure(call_for(client, fake_config(fake), op))
    assert (error.error_name, error.connection_error_code) == (None, "XKS_PROXY_INVALID_RESPONSE")
    assert key_store_exception(error) == INVALID_RESPONSE
    assert create_key_exception(error) == "CustomKeyStoreInvalidStateException"


PROPER_ERRORS = [
    # op, status, errorName, key-store exception, CreateKey exception
    # The proxy answered, so for CreateKey these are not connectivity failures of KMS's own.
    ("metadata", 503, "DependencyTimeoutException", UNREACHABLE, "CustomKeyStoreInvalidStateException"),
    ("health", 429, "ThrottlingException", UNREACHABLE, "CustomKeyStoreInvalidStateException"),
    ("health", 500, "InternalException", INVALID_RESPONSE, "CustomKeyStoreInvalidStateException"),
    ("health", 400, "ValidationException", INVALID_RESPONSE, "CustomKeyStoreInvalidStateException"),
    ("metadata", 501, "UnsupportedOperationException", INVALID_RESPONSE, "XksKeyInvalidResponseException"),
    ("metadata", 400, "InvalidKeyUsageException", INVALID_RESPONSE, "XksKeyInvalidConfigurationException"),
]


@pytest.mark.parametrize(("op", "status", "name", "store_exc", "create_exc"), PROPER_ERRORS)
async def test_proper_xks_errors_keep_their_name(
    fake: FakeProxy, client: XksProxyClient, op: str, status: int, name: str, store_exc: str, create_exc: str
) -> None:
    fake.answer(op, status, {"errorName": name, "errorMessage": "from the proxy\x00"})
    error = await failure(call_for(client, fake_config(fake), op))
    assert (error.error_name, error.http_status, error.connection_error_code) == (
        name,
        status,
        "INTERNAL_ERROR",
    )
    assert error.proxy_message == "from the proxy?"  # printable ASCII only, kept apart from our message
    assert key_store_exception(error) == store_exc
    assert create_key_exception(error) == create_exc


# --- what the client never reveals, and what it refuses to send ------------------------------------------


async def test_logs_carry_the_request_id_but_never_plaintext_or_secret(
    xks_env: XksEnv, client: XksProxyClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    plaintext = b"PLAINTEXT-NEVER-LOGGED-91c2"
    cfg = config(xks_env)
    result = await client.encrypt(cfg, xks_env.kek_id, plaintext, None, meta("Encrypt", "req-log-1"))
    assert await client.decrypt(cfg, xks_env.kek_id, result, None, meta("Decrypt", "req-log-2")) == plaintext
    await failure(
        client.key_metadata(config(xks_env, secret="C" * 44), xks_env.kek_id, meta("CreateKey", "req-log-3"))
    )
    calls = [json.loads(r.getMessage()) for r in caplog.records if r.name == "kms_emulator.xks_client"]
    assert [(c["kmsRequestId"], c["outcome"]) for c in calls] == [
        ("req-log-1", "success"),
        ("req-log-2", "success"),
        ("req-log-3", "INVALID_CREDENTIALS/AuthenticationFailedException"),
    ]
    for secret_text in (plaintext.decode(), b64(plaintext), xks_env.secret, "C" * 44):
        assert secret_text not in caplog.text


@pytest.mark.parametrize(
    "build",
    [
        lambda: XksProxyConfig("ftp://127.0.0.1:21", "/kms/xks/v1", "AKID", "s"),
        lambda: XksProxyConfig("https://host/extra/path", "/kms/xks/v1", "AKID", "s"),
        lambda: XksProxyConfig("https://host", "/kms/xks/v1?x=1", "AKID", "s"),
        lambda: XksProxyConfig("https://host", "kms/xks/v1", "AKID", "s"),
        lambda: XksProxyConfig("http://127.0.0.1:99999", "/kms/xks/v1", "AKID", "s"),
    ],
)
def test_unusable_configs_fail_when_built(build: Callable[[], XksProxyConfig]) -> None:
    with pytest.raises(ValueError):
        build()


async def test_bad_key_ids_and_missing_metadata_are_caller_bugs(
    fake: FakeProxy, client: XksProxyClient
) -> None:
    cfg = fake_config(fake)
    with pytest.raises(ValueError, match="XKS key id"):
        await client.key_metadata(cfg, "../health", meta("CreateKey"))
    with pytest.raises(ValueError, match="kmsKeyArn"):
        await client.encrypt(
            cfg, "key-1", b"x", None, request_metadata(kms_operation="Encrypt", kms_request_id="r")
        )
    assert fake.received == []  # nothing was sent
    unopened = XksProxyClient()
    with pytest.raises(RuntimeError, match="open"):
        await unopened.health(cfg, kms_operation="KmsHealthCheck", kms_request_id="r")


async def test_an_answer_in_several_segments_is_read_whole(fake: FakeProxy, client: XksProxyClient) -> None:
    fake.split_s = 0.05
    cfg = fake_config(fake)
    assert (await call_for(client, cfg, "health"))["xksProxyFleetSize"] == 1
    assert (await call_for(client, cfg, "metadata"))["keySpec"] == "AES_256"
