"""External key stores end to end, with every cause provoked for real: the DSM rotates the proxy's credential,
drops a URI path alias, disables or rekeys the external key; the real XKS proxy is stopped and started again
on its port, served over HTTPS with a CA the KMS does not trust, refuses a client without mTLS, or sits behind
a forwarder that answers late; a small server answers garbage. Then the same double envelope through the AWS
CLI and the AWS Encryption SDK, whose own boto3 clients reach this KMS through AWS_ENDPOINT_URL_KMS."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import aws_encryption_sdk
import botocore.session
import pytest
from aiohttp import web
from aws_encryption_sdk.exceptions import DecryptKeyError
from aws_encryption_sdk.identifiers import CommitmentPolicy
from botocore.exceptions import ClientError
from cryptography.exceptions import InvalidTag
from yarl import URL

from dsm_emulator.api.app import create_app as create_dsm_app
from dsm_emulator.api.link import serve_link
from tests.integration.test_kms_api import (
    PROXY_AKID,
    PROXY_SECRET,
    connected_store_and_key,
    describe_store,
    lab,
    proxy_store_params,
    xks_store_params,
)
from tests.kms_harness import CALLER_ARN, REGION, KmsEnv, aws, code, start_kms, stop_kms
from tests.xks_harness import XksEnv, start_runner, xks_template
from xks_frontend.app import create_app as create_xks_app
from xkslab_shared import certs, tls
from xkslab_shared.config import Settings, load_settings

__all__ = ["lab", "xks_template"]  # fixtures used by name

Lab = tuple[XksEnv, KmsEnv]
UNREACHABLE = "XksProxyUriUnreachableException"


# ------------------------------------------------------------------------------------ helpers


@pytest.fixture
async def stack() -> AsyncIterator[contextlib.AsyncExitStack]:
    """Servers, clients and extra KMS instances a test starts; closed before the lab (requested after it)."""
    async with contextlib.AsyncExitStack() as opened:
        yield opened


def proxy_settings(xks: XksEnv, **overrides: Any) -> Settings:
    """The settings the lab's own proxy runs with (generous DSM timeout, no prefix cache), plus changes."""
    return load_settings(
        xks.data_dir,
        overrides={
            "xks.dsm_urls": xks.dsm_url,
            "xks.prefix_cache_s": 0.0,
            "xks.dsm_timeout_ms": 5000,
            **overrides,
        },
        environ={},
    )


def proxy_port(xks: XksEnv) -> int:
    return int(xks.proxy_url.rsplit(":", 1)[1])


async def stop_proxy(xks: XksEnv) -> None:
    """The lab's proxy goes away (its runner is the first of the env's, as in the lifecycle test)."""
    runner = xks.runners.pop(0)
    await runner.cleanup()


async def start_proxy_on(xks: XksEnv, port: int, **overrides: Any) -> None:
    """A new real proxy on a given port; close_env cleans it up like the original."""
    runner = web.AppRunner(create_xks_app(proxy_settings(xks, **overrides)), access_log=None)
    await runner.setup()
    xks.runners.insert(0, runner)
    await web.TCPSite(runner, "127.0.0.1", port).start()


async def extra_kms(stack: contextlib.AsyncExitStack, xks: XksEnv, overrides: Mapping[str, Any]) -> KmsEnv:
    """Another KMS on the lab's data directory: it sees the same key stores and keys."""
    env = await start_kms(xks.data_dir, overrides)
    stack.push_async_callback(stop_kms, env)
    return env


async def serve(stack: contextlib.AsyncExitStack, app: web.Application) -> str:
    runner, port = await start_runner(app)
    stack.push_async_callback(runner.cleanup)
    return f"http://127.0.0.1:{port}"


async def state(kms: KmsEnv, store_id: str) -> tuple[str, str | None]:
    entry = await describe_store(kms, store_id)
    return entry["ConnectionState"], entry.get("ConnectionErrorCode")


async def connect(kms: KmsEnv, store_id: str) -> tuple[str, str | None]:
    """ConnectCustomKeyStore (which succeeds as a call whatever the proxy does) and the state it left."""
    assert (await kms.call("connect_custom_key_store", CustomKeyStoreId=store_id))["ResponseMetadata"][
        "HTTPStatusCode"
    ] == 200
    return await state(kms, store_id)


async def disconnect(kms: KmsEnv, store_id: str) -> None:
    await kms.call("disconnect_custom_key_store", CustomKeyStoreId=store_id)
    assert await state(kms, store_id) == ("DISCONNECTED", None)


async def create_store(kms: KmsEnv, **params: Any) -> str:
    return str((await kms.call("create_custom_key_store", **params))["CustomKeyStoreId"])


async def refused_create(kms: KmsEnv, **params: Any) -> str:
    """The exception CreateCustomKeyStore raises; and no store of that name was made."""
    error = await kms.error("create_custom_key_store", **params)
    names = [
        s["CustomKeyStoreName"] for s in (await kms.call("describe_custom_key_stores"))["CustomKeyStores"]
    ]
    assert params["CustomKeyStoreName"] not in names
    return code(error)


# ------------------------------------------------------------------------------------ ConnectionErrorCode


async def test_invalid_credentials_after_the_dsm_rotates_the_credential(lab: Lab) -> None:
    xks, kms = lab
    store_id = await create_store(kms, **proxy_store_params(xks))
    old = {"AccessKeyId": xks.akid, "RawSecretAccessKey": xks.secret}

    _, new_secret = await xks.core.admin.reset_secret(xks.system, xks.app_id)
    rotated = await xks.core.admin.get_credential(xks.system, xks.app_id)
    new = {"AccessKeyId": rotated["awsxks"]["access_key_id"], "RawSecretAccessKey": new_secret}
    assert rotated["awsxks"]["secret_key"] == new_secret and new["AccessKeyId"] != xks.akid
    assert rotated["previous"]["awsxks"]["access_key_id"] == xks.akid
    # During the grace period the old pair still works.
    assert await connect(kms, store_id) == ("CONNECTED", None)
    await disconnect(kms, store_id)

    await xks.core.admin.remove_previous_credential(xks.system, xks.app_id)
    assert "previous" not in await xks.core.admin.get_credential(xks.system, xks.app_id)
    assert await connect(kms, store_id) == ("FAILED", "INVALID_CREDENTIALS")
    # A FAILED store is not DISCONNECTED: it cannot be updated until it is disconnected.
    busy = await kms.error(
        "update_custom_key_store", CustomKeyStoreId=store_id, XksProxyAuthenticationCredential=new
    )
    assert isinstance(busy, kms.kms.exceptions.CustomKeyStoreInvalidStateException)

    # A new store with the old credential is refused (on another path of the same app, so the URI is free).
    await xks.core.xks.add_alias(xks.system, xks.app_id, "/keystores/creds")
    other = proxy_store_params(
        xks,
        "old-credential",
        XksProxyUriPath="/keystores/creds/kms/xks/v1",
        XksProxyAuthenticationCredential=old,
    )
    assert await refused_create(kms, **other) == "XksProxyIncorrectAuthenticationCredentialException"

    await disconnect(kms, store_id)
    stale = await kms.error(
        "update_custom_key_store", CustomKeyStoreId=store_id, XksProxyAuthenticationCredential=old
    )
    assert code(stale) == "XksProxyIncorrectAuthenticationCredentialException"
    await kms.call("update_custom_key_store", CustomKeyStoreId=store_id, XksProxyAuthenticationCredential=new)
    entry = await describe_store(kms, store_id)
    assert entry["XksProxyConfiguration"]["AccessKeyId"] == new["AccessKeyId"]
    assert new_secret not in json.dumps(entry, default=str)
    assert await connect(kms, store_id) == ("CONNECTED", None)
    key = await kms.call(
        "create_key", Origin="EXTERNAL_KEY_STORE", CustomKeyStoreId=store_id, XksKeyId=xks.kek_id
    )
    blob = (await kms.call("encrypt", KeyId=key["KeyMetadata"]["KeyId"], Plaintext=b"new pair"))[
        "CiphertextBlob"
    ]
    assert (await kms.call("decrypt", CiphertextBlob=blob))["Plaintext"] == b"new pair"


async def test_invalid_configuration_when_the_uri_path_alias_is_removed(lab: Lab) -> None:
    xks, kms = lab
    await xks.core.xks.add_alias(xks.system, xks.app_id, "/keystores/a")
    store_id = await create_store(kms, **proxy_store_params(xks, XksProxyUriPath="/keystores/a/kms/xks/v1"))
    assert await connect(kms, store_id) == ("CONNECTED", None)
    await disconnect(kms, store_id)

    await xks.core.xks.remove_alias(xks.system, "/keystores/a")
    assert await connect(kms, store_id) == ("FAILED", "XKS_PROXY_INVALID_CONFIGURATION")
    unknown_path = proxy_store_params(xks, "no-alias", XksProxyUriPath="/keystores/b/kms/xks/v1")
    assert await refused_create(kms, **unknown_path) == "XksProxyInvalidConfigurationException"

    await xks.core.xks.add_alias(xks.system, xks.app_id, "/keystores/a")
    await disconnect(kms, store_id)
    assert await connect(kms, store_id) == ("CONNECTED", None)


async def test_not_reachable_while_the_proxy_is_stopped(lab: Lab) -> None:
    xks, kms = lab
    store_id, key = await connected_store_and_key(xks, kms)
    blob = (await kms.call("encrypt", KeyId=key["KeyId"], Plaintext=b"before the outage"))["CiphertextBlob"]
    await disconnect(kms, store_id)

    port = proxy_port(xks)
    await stop_proxy(xks)
    assert await connect(kms, store_id) == ("FAILED", "XKS_PROXY_NOT_REACHABLE")
    assert (await kms.call("describe_key", KeyId=key["KeyId"]))["KeyMetadata"]["KeyState"] == "Unavailable"
    refused = proxy_store_params(xks, "while-down", XksProxyUriPath="/other/kms/xks/v1")
    assert await refused_create(kms, **refused) == UNREACHABLE

    await start_proxy_on(xks, port)
    await disconnect(kms, store_id)
    assert await connect(kms, store_id) == ("CONNECTED", None)
    assert (await kms.call("decrypt", CiphertextBlob=blob))["Plaintext"] == b"before the outage"


async def test_access_denied_by_a_proxy_that_requires_mtls(lab: Lab, tmp_path: Path) -> None:
    """A real proxy configured for mTLS refuses a client without a certificate (here: plain HTTP) with 403
    AccessDeniedException, on health too."""
    xks, kms = lab
    store_id = await create_store(kms, **proxy_store_params(xks))
    port = proxy_port(xks)
    client_ca, _ = certs.make_local_ca(tmp_path / "client-ca")
    await stop_proxy(xks)
    await start_proxy_on(xks, port, **{"xks.client_ca": str(client_ca)})

    assert await connect(kms, store_id) == ("FAILED", "XKS_PROXY_ACCESS_DENIED")
    refused = proxy_store_params(xks, "denied", XksProxyUriPath="/other/kms/xks/v1")
    assert (await refused_create(kms, **refused)).startswith("XksProxy")

    await stop_proxy(xks)
    await start_proxy_on(xks, port)
    await disconnect(kms, store_id)
    assert await connect(kms, store_id) == ("CONNECTED", None)


async def test_invalid_tls_configuration_when_kms_trusts_another_ca(
    lab: Lab, stack: contextlib.AsyncExitStack, tmp_path: Path
) -> None:
    xks, _ = lab
    ca_cert, ca_key = certs.make_local_ca(tmp_path / "lab-ca")
    other_ca, _ = certs.make_local_ca(tmp_path / "other-ca")
    cert, key = certs.make_server_cert(tmp_path / "lab-ca", ca_cert, ca_key, "xks", [])
    runner, port = await start_runner(create_xks_app(proxy_settings(xks)), tls.server_context(cert, key))
    stack.push_async_callback(runner.cleanup)
    endpoint = f"https://127.0.0.1:{port}"

    trusting = await extra_kms(stack, xks, {"kms.xks_ca": str(ca_cert), "kms.xks_timeout_ms": 3000})
    distrusting = await extra_kms(stack, xks, {"kms.xks_ca": str(other_ca), "kms.xks_timeout_ms": 3000})
    store_id = await create_store(trusting, **proxy_store_params(xks, XksProxyUriEndpoint=endpoint))

    assert await connect(distrusting, store_id) == ("FAILED", "XKS_PROXY_INVALID_TLS_CONFIGURATION")
    refused = proxy_store_params(
        xks, "untrusted", XksProxyUriEndpoint=endpoint, XksProxyUriPath="/other/kms/xks/v1"
    )
    assert await refused_create(distrusting, **refused) == UNREACHABLE

    await disconnect(distrusting, store_id)
    assert await connect(trusting, store_id) == ("CONNECTED", None)
    created = await trusting.call(
        "create_key", Origin="EXTERNAL_KEY_STORE", CustomKeyStoreId=store_id, XksKeyId=xks.kek_id
    )
    key_id = created["KeyMetadata"]["KeyId"]
    blob = (await trusting.call("encrypt", KeyId=key_id, Plaintext=b"over tls"))["CiphertextBlob"]
    assert (await trusting.call("decrypt", CiphertextBlob=blob))["Plaintext"] == b"over tls"
    # The same key through the KMS that does not trust the proxy: a data-plane failure naming TLS.
    no_tls = await distrusting.error("decrypt", CiphertextBlob=blob)
    assert isinstance(no_tls, distrusting.kms.exceptions.KMSInvalidStateException)
    assert "TLS" in no_tls.response["Error"]["Message"]


HOP_BY_HOP = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})


@dataclass
class Forwarder:
    """A reverse proxy in front of the real XKS proxy: waits ``delay_s``, then sends the request on as it
    came (method, path, headers including Host, body) and returns the real proxy's answer. A caller that
    gave up meanwhile does not stop it: the late answer is still fetched (and recorded)."""

    target: str
    session: aiohttp.ClientSession
    delay_s: float = 0.0
    forwarded: list[tuple[str, int]] = field(default_factory=list)
    in_flight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        self.in_flight += 1
        self.idle.clear()
        try:
            return await self.forward(request)
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self.idle.set()

    async def forward(self, request: web.Request) -> web.Response:
        body = await request.read()
        await asyncio.sleep(self.delay_s)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        async with self.session.request(
            request.method,
            URL(self.target + request.raw_path, encoded=True),
            data=body,
            headers=headers,
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
            allow_redirects=False,
        ) as answer:
            raw = await answer.read()
            self.forwarded.append((request.path, answer.status))
            return web.Response(
                status=answer.status,
                body=raw,
                headers={"Content-Type": answer.headers.get("Content-Type", "application/octet-stream")},
            )

    async def drained(self) -> None:
        if self.in_flight:
            await asyncio.wait_for(self.idle.wait(), timeout=120)  # a hang guard, not a budget


async def test_timed_out_behind_a_slow_forwarder(lab: Lab, stack: contextlib.AsyncExitStack) -> None:
    xks, kms = lab
    session = aiohttp.ClientSession()
    stack.push_async_callback(session.close)
    forwarder = Forwarder(xks.proxy_url, session, delay_s=0.3)
    url = await serve(stack, forwarder.app())
    fast = await extra_kms(stack, xks, {"kms.xks_timeout_ms": 250})

    # With time to wait, the slow path works: the real proxy checks the signature made for the forwarder's
    # Host, so the forwarder changed nothing.
    store_id = await create_store(kms, **proxy_store_params(xks, XksProxyUriEndpoint=url))
    assert forwarder.forwarded == [(f"{xks.prefix}/kms/xks/v1/health", 200)]

    # KMS's own 250 ms budget is shorter than the forwarder's 300 ms wait.
    assert await connect(fast, store_id) == ("FAILED", "XKS_PROXY_TIMED_OUT")
    refused = proxy_store_params(
        xks, "too-slow", XksProxyUriEndpoint=url, XksProxyUriPath="/other/kms/xks/v1"
    )
    assert await refused_create(fast, **refused) == UNREACHABLE

    # The requests KMS gave up on did reach the real proxy, which answered them, only too late.
    await forwarder.drained()
    health = f"{xks.prefix}/kms/xks/v1/health"
    assert forwarder.forwarded[-2:] == [(health, 200), ("/other/kms/xks/v1/health", 404)]

    forwarder.delay_s = 0.0
    seen = len(forwarder.forwarded)
    await disconnect(fast, store_id)
    assert await connect(fast, store_id) == ("CONNECTED", None)
    assert forwarder.forwarded[seen:] == [(health, 200)]


VALID_HEALTH = {
    "xksProxyFleetSize": 1,
    "xksProxyVendor": "t",
    "xksProxyModel": "t",
    "ekmVendor": "t",
    "ekmFleetDetails": [{"id": "n1", "model": "t", "healthStatus": "ACTIVE"}],
}
ANSWERS: dict[str, tuple[bytes, str]] = {
    "valid": (json.dumps(VALID_HEALTH).encode(), "application/json"),
    "not-json": (b"not json", "text/plain"),
    "no-fleet": (
        json.dumps({k: v for k, v in VALID_HEALTH.items() if k != "ekmFleetDetails"}).encode(),
        "application/json",
    ),
}


@dataclass
class GarbageProxy:
    """Answers every request 200 with the body of the current mode."""

    mode: str = "valid"
    seen: list[str] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append(request.path)
        body, content_type = ANSWERS[self.mode]
        return web.Response(status=200, body=body, content_type=content_type)


@pytest.mark.parametrize("mode", ["not-json", "no-fleet"])
async def test_invalid_response_from_a_proxy_that_answers_garbage(
    lab: Lab, stack: contextlib.AsyncExitStack, mode: str
) -> None:
    _, kms = lab
    garbage = GarbageProxy()
    url = await serve(stack, garbage.app())
    store_id = await create_store(kms, **xks_store_params("garbage", url))

    garbage.mode = mode
    assert await connect(kms, store_id) == ("FAILED", "XKS_PROXY_INVALID_RESPONSE")
    other = xks_store_params("garbage-2", url, "/other/kms/xks/v1")
    assert await refused_create(kms, **other) == "XksProxyInvalidResponseException"
    assert garbage.seen[-2:] == ["/kms/xks/v1/health", "/other/kms/xks/v1/health"]

    garbage.mode = "valid"
    await disconnect(kms, store_id)
    assert await connect(kms, store_id) == ("CONNECTED", None)
    assert (await describe_store(kms, store_id))["XksProxyConfiguration"]["AccessKeyId"] == PROXY_AKID
    assert PROXY_SECRET not in json.dumps(await kms.call("describe_custom_key_stores"), default=str)


# ------------------------------------------------------------------------------------ the external key


async def test_external_key_disabled_enabled_and_rekeyed_in_the_dsm(lab: Lab) -> None:
    xks, kms = lab
    _, key = await connected_store_and_key(xks, kms)
    context = {"app": "ledger"}
    before = (await kms.call("encrypt", KeyId=key["KeyId"], Plaintext=b"first", EncryptionContext=context))[
        "CiphertextBlob"
    ]
    assert before.endswith(b"key_version=1")  # the last field of the layout-1 blob: the proxy's metadata

    await xks.core.keys.update(xks.system, xks.kek_id, enabled=False)
    for method, params in (
        ("encrypt", {"KeyId": key["KeyId"], "Plaintext": b"p"}),
        ("decrypt", {"CiphertextBlob": before, "EncryptionContext": context}),
    ):
        error = await kms.error(method, **params)
        assert isinstance(error, kms.kms.exceptions.KMSInvalidStateException), method
        assert "external key is disabled" in error.response["Error"]["Message"], method
    # The KMS key itself stays Enabled: the refusal is the external key manager's.
    assert (await kms.call("describe_key", KeyId=key["KeyId"]))["KeyMetadata"]["KeyState"] == "Enabled"

    await xks.core.keys.update(xks.system, xks.kek_id, enabled=True)
    assert (await kms.call("decrypt", CiphertextBlob=before, EncryptionContext=context))[
        "Plaintext"
    ] == b"first"
    while_enabled = (await kms.call("encrypt", KeyId=key["KeyId"], Plaintext=b"second"))["CiphertextBlob"]
    assert (await kms.call("decrypt", CiphertextBlob=while_enabled))["Plaintext"] == b"second"

    rotated = await xks.core.keys.rekey(xks.system, kid=xks.kek_id)
    assert rotated.kid != xks.kek_id and rotated.version == 2
    after = (await kms.call("encrypt", KeyId=key["KeyId"], Plaintext=b"third", EncryptionContext=context))[
        "CiphertextBlob"
    ]
    assert after.endswith(b"key_version=2")  # the KMS key's XksKeyId now reaches the newest version
    for blob, plaintext, ctx in (
        (before, b"first", context),
        (while_enabled, b"second", {}),
        (after, b"third", context),
    ):
        opened = await kms.call("decrypt", CiphertextBlob=blob, EncryptionContext=ctx)
        assert (opened["Plaintext"], opened["KeyId"]) == (plaintext, key["Arn"])
    described = (await kms.call("describe_key", KeyId=key["KeyId"]))["KeyMetadata"]
    assert described["XksKeyConfiguration"] == {"Id": xks.kek_id} and described["KeyState"] == "Enabled"


# ------------------------------------------------------------------------------------ clients


async def test_the_aws_cli_with_an_external_key_store(lab: Lab, tmp_path: Path) -> None:
    xks, kms = lab
    path = f"{xks.prefix}/kms/xks/v1"
    created = await aws(
        kms,
        tmp_path,
        "create-custom-key-store",
        "--custom-key-store-name",
        "cli-store",
        "--custom-key-store-type",
        "EXTERNAL_KEY_STORE",
        "--xks-proxy-uri-endpoint",
        xks.proxy_url,
        "--xks-proxy-uri-path",
        path,
        "--xks-proxy-authentication-credential",
        f"AccessKeyId={xks.akid},RawSecretAccessKey={xks.secret}",
        "--xks-proxy-connectivity",
        "PUBLIC_ENDPOINT",
    )
    store_id = created["CustomKeyStoreId"]
    assert store_id.startswith("cks-")

    async def describe() -> dict[str, Any]:
        out = await aws(kms, tmp_path, "describe-custom-key-stores", "--custom-key-store-id", store_id)
        assert len(out["CustomKeyStores"]) == 1
        return dict(out["CustomKeyStores"][0])

    entry = await describe()
    assert (entry["CustomKeyStoreName"], entry["CustomKeyStoreType"], entry["ConnectionState"]) == (
        "cli-store",
        "EXTERNAL_KEY_STORE",
        "DISCONNECTED",
    )
    assert entry["XksProxyConfiguration"] == {
        "Connectivity": "PUBLIC_ENDPOINT",
        "AccessKeyId": xks.akid,
        "UriEndpoint": xks.proxy_url,
        "UriPath": path,
    }
    assert await aws(kms, tmp_path, "connect-custom-key-store", "--custom-key-store-id", store_id) in (
        None,
        {},
    )
    assert (await describe())["ConnectionState"] == "CONNECTED"

    key = (
        await aws(
            kms,
            tmp_path,
            "create-key",
            "--origin",
            "EXTERNAL_KEY_STORE",
            "--custom-key-store-id",
            store_id,
            "--xks-key-id",
            xks.kek_id,
        )
    )["KeyMetadata"]
    assert (key["Origin"], key["CustomKeyStoreId"], key["XksKeyConfiguration"]) == (
        "EXTERNAL_KEY_STORE",
        store_id,
        {"Id": xks.kek_id},
    )
    described = (await aws(kms, tmp_path, "describe-key", "--key-id", key["KeyId"]))["KeyMetadata"]
    assert (described["Arn"], described["KeyState"], described["KeySpec"]) == (
        key["Arn"],
        "Enabled",
        "SYMMETRIC_DEFAULT",
    )

    encrypted = await aws(
        kms,
        tmp_path,
        "encrypt",
        "--key-id",
        key["KeyId"],
        "--plaintext",
        "through the cli and the proxy",
        "--encryption-context",
        "app=cli",
    )
    assert encrypted["KeyId"] == key["Arn"]
    blob = base64.b64decode(encrypted["CiphertextBlob"])
    assert blob[:2] == bytes([1, 2])  # layout version 1, kind XKS
    blob_file = tmp_path / "xks-blob.bin"
    blob_file.write_bytes(blob)
    decrypted = await aws(
        kms,
        tmp_path,
        "decrypt",
        "--ciphertext-blob",
        f"fileb://{blob_file}",
        "--encryption-context",
        "app=cli",
    )
    assert base64.b64decode(decrypted["Plaintext"]) == b"through the cli and the proxy"
    assert decrypted["KeyId"] == key["Arn"]
    # Both went through the proxy to the DSM, for this key.
    rows = [r for r in await xks.audit_rows() if r["kms_key_arn"] == key["Arn"]]
    assert [(r["operation"], r["kms_operation"], r["outcome"]) for r in rows] == [
        ("xks.encrypt", "Encrypt", "success"),
        ("xks.decrypt", "Decrypt", "success"),
    ]

    assert await aws(kms, tmp_path, "disconnect-custom-key-store", "--custom-key-store-id", store_id) in (
        None,
        {},
    )
    assert (await describe())["ConnectionState"] == "DISCONNECTED"
    after = (await aws(kms, tmp_path, "describe-key", "--key-id", key["KeyId"]))["KeyMetadata"]
    assert after["KeyState"] == "Unavailable"


async def test_the_aws_encryption_sdk_with_an_xks_key(
    lab: Lab, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    xks, kms = lab
    _, key = await connected_store_and_key(xks, kms)
    # The SDK makes its own clients from a botocore session: they find this KMS through the environment.
    monkeypatch.setenv("AWS_ENDPOINT_URL_KMS", kms.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)

    provider = await asyncio.to_thread(
        aws_encryption_sdk.StrictAwsKmsMasterKeyProvider,
        key_ids=[key["Arn"]],
        botocore_session=botocore.session.Session(),
    )
    try:
        client = aws_encryption_sdk.EncryptionSDKClient(
            commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT
        )
        context = {"tenant": "acme", "purpose": "esdk"}
        message = b"an ESDK message under an external key " * 20
        seen = len(await xks.audit_rows())

        ciphertext, header = await asyncio.to_thread(
            client.encrypt, source=message, key_provider=provider, encryption_context=context
        )
        assert message not in ciphertext
        assert [edk.key_provider.key_info for edk in header.encrypted_data_keys] == [key["Arn"].encode()]
        (edk,) = header.encrypted_data_keys
        assert edk.encrypted_data_key[:2] == bytes([1, 2])  # the data key is in this KMS's XKS blob
        rows = (await xks.audit_rows())[seen:]
        assert [
            (r["operation"], r["kms_operation"], r["kms_key_arn"], r["aws_principal_arn"]) for r in rows
        ] == [("xks.encrypt", "GenerateDataKey", key["Arn"], CALLER_ARN)]

        plaintext, decrypted_header = await asyncio.to_thread(
            client.decrypt, source=ciphertext, key_provider=provider
        )
        assert plaintext == message
        assert context.items() <= decrypted_header.encryption_context.items()
        rows = (await xks.audit_rows())[seen + 1 :]
        assert [(r["operation"], r["kms_operation"], r["outcome"]) for r in rows] == [
            ("xks.decrypt", "Decrypt", "success")
        ]

        # Tampered in the header's encryption context: KMS binds the context to the data key and refuses it.
        assert ciphertext.count(b"acme") == 1
        with pytest.raises(DecryptKeyError):
            await asyncio.to_thread(
                client.decrypt, source=ciphertext.replace(b"acme", b"acmf"), key_provider=provider
            )
        # Tampered in the framed body: the data key opens, the frame's GCM tag does not (ESDK 4 lets
        # cryptography's InvalidTag through).
        in_body = bytearray(ciphertext)
        in_body[len(ciphertext) // 2 + 100] ^= 0x01
        with pytest.raises(InvalidTag):
            await asyncio.to_thread(client.decrypt, source=bytes(in_body), key_provider=provider)
    finally:
        for regional in list(provider._regional_clients.values()):
            regional.close()


# ------------------------------------------------------------------------------------ the model's rules


async def outcome(kms: KmsEnv, method: str, **params: Any) -> str:
    """ "ok", or the error code the call raised (for assertions that state the expected outcome)."""
    try:
        await kms.call(method, **params)
    except ClientError as exc:
        return code(exc)
    return "ok"


async def test_a_failed_store_must_be_disconnected_before_it_connects_again(lab: Lab) -> None:
    xks, kms = lab
    await xks.core.xks.add_alias(xks.system, xks.app_id, "/keystores/a")
    store_id = await create_store(kms, **proxy_store_params(xks, XksProxyUriPath="/keystores/a/kms/xks/v1"))
    await xks.core.xks.remove_alias(xks.system, "/keystores/a")
    assert await connect(kms, store_id) == ("FAILED", "XKS_PROXY_INVALID_CONFIGURATION")
    await xks.core.xks.add_alias(xks.system, xks.app_id, "/keystores/a")
    # The cause is gone, but a FAILED store is not connected again without a disconnect first.
    again = await outcome(kms, "connect_custom_key_store", CustomKeyStoreId=store_id)
    assert again == "CustomKeyStoreInvalidStateException"
    assert await state(kms, store_id) == ("FAILED", "XKS_PROXY_INVALID_CONFIGURATION")
    await disconnect(kms, store_id)
    assert await connect(kms, store_id) == ("CONNECTED", None)


async def test_name_credential_and_path_can_change_while_connected(lab: Lab) -> None:
    xks, kms = lab
    store_id, key = await connected_store_and_key(xks, kms)
    renamed = await outcome(
        kms, "update_custom_key_store", CustomKeyStoreId=store_id, NewCustomKeyStoreName="r"
    )
    assert renamed == "ok"
    await xks.core.xks.add_alias(xks.system, xks.app_id, "/keystores/moved")
    moved = await outcome(
        kms,
        "update_custom_key_store",
        CustomKeyStoreId=store_id,
        XksProxyUriPath="/keystores/moved/kms/xks/v1",
    )
    assert moved == "ok"
    _, secret = await xks.core.admin.reset_secret(xks.system, xks.app_id)
    akid = (await xks.core.admin.get_credential(xks.system, xks.app_id))["awsxks"]["access_key_id"]
    credential = {"AccessKeyId": akid, "RawSecretAccessKey": secret}
    rotated = await outcome(
        kms, "update_custom_key_store", CustomKeyStoreId=store_id, XksProxyAuthenticationCredential=credential
    )
    assert rotated == "ok"
    # The endpoint is not one of them.
    endpoint = await outcome(
        kms, "update_custom_key_store", CustomKeyStoreId=store_id, XksProxyUriEndpoint="http://127.0.0.1:1"
    )
    assert endpoint == "CustomKeyStoreInvalidStateException"
    entry = await describe_store(kms, store_id)
    assert (entry["CustomKeyStoreName"], entry["ConnectionState"]) == ("r", "CONNECTED")
    assert entry["XksProxyConfiguration"]["UriPath"] == "/keystores/moved/kms/xks/v1"
    assert entry["XksProxyConfiguration"]["AccessKeyId"] == akid
    await xks.core.admin.remove_previous_credential(xks.system, xks.app_id)
    blob = (await kms.call("encrypt", KeyId=key["KeyId"], Plaintext=b"still connected"))["CiphertextBlob"]
    assert (await kms.call("decrypt", CiphertextBlob=blob))["Plaintext"] == b"still connected"


async def test_a_proxy_without_its_key_manager_fails_the_health_check(lab: Lab) -> None:
    """The real proxy with its DSM stopped cannot verify a signature, so it answers health with the
    spec's 500 InternalException ("the key manager failed"), which KMS maps as the spec says."""
    xks, kms = lab
    store_id = await create_store(kms, **proxy_store_params(xks))
    dsm_port = int(xks.dsm_url.rsplit(":", 1)[1])
    dsm = xks.runners.pop(1)
    await dsm.cleanup()
    status, health = await xks.post(
        xks.url("health"), {"requestMetadata": {"kmsOperation": "KmsHealthCheck", "kmsRequestId": "h"}}
    )
    assert status == 500 and health["errorName"] == "InternalException"

    assert await connect(kms, store_id) == ("FAILED", "INTERNAL_ERROR")
    # The same proxy by another name (so the URI is not in use), on the app's own path (an alias path
    # cannot be resolved without the DSM).
    other_name = xks.proxy_url.replace("127.0.0.1", "localhost")
    refused = proxy_store_params(xks, "no-key-manager", XksProxyUriEndpoint=other_name)
    assert await refused_create(kms, **refused) == "XksProxyInvalidResponseException"

    dsm_settings = load_settings(xks.data_dir, environ={})
    dsm_app = create_dsm_app(dsm_settings)
    runner = web.AppRunner(dsm_app, access_log=None)
    await runner.setup()
    xks.runners.append(runner)
    await web.TCPSite(runner, "127.0.0.1", dsm_port).start()
    assert await serve_link(dsm_app, dsm_settings) == xks.link_url  # which the proxy reconnects to
    await disconnect(kms, store_id)
    assert await connect(kms, store_id) == ("CONNECTED", None)


async def test_no_kms_secret_or_plaintext_is_stored_in_the_clear(lab: tuple[XksEnv, KmsEnv]) -> None:
    """The store's SigV4 secret, a data key and a plaintext never reach the database file as bytes."""
    xks, kms = lab
    _store_id, key = await connected_store_and_key(xks, kms)
    plain_key = (await kms.call("create_key"))["KeyMetadata"]
    secret_text = b"PLAINTEXT-MARKER-7f3a9c"
    blobs = [
        (await kms.call("encrypt", KeyId=k["KeyId"], Plaintext=secret_text))["CiphertextBlob"]
        for k in (key, plain_key)
    ]
    data_key = await kms.call("generate_data_key", KeyId=key["KeyId"], NumberOfBytes=32)
    for blob in blobs:
        assert (await kms.call("decrypt", CiphertextBlob=blob))["Plaintext"] == secret_text
    raw = b"".join(path.read_bytes() for path in xks.data_dir.iterdir() if path.name.startswith("xkslab.db"))
    assert raw, "the SQLite database (and its WAL) should be in the data directory"
    for needle in (xks.secret.encode(), secret_text, data_key["Plaintext"], base64.b64encode(secret_text)):
        assert needle not in raw


@pytest.mark.parametrize("db_backend", ["postgres"])
async def test_the_double_envelope_on_postgresql(empty_db_url: str, tmp_path: Path) -> None:
    """The three services on one PostgreSQL database (the shared-database deployment), end to end."""
    import subprocess
    import sys

    from tests.xks_harness import close_env, make_env

    source = tmp_path / "pg-template"
    out = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable, "-m", "xkslab", "--data-dir", str(source), "init",
            "--database-url", empty_db_url, "--admin-password", "pw", "--json",
        ],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    xks = await make_env((source, json.loads(out.stdout)), tmp_path / "lab")
    try:
        assert xks.core.engine.dialect.name == "postgresql"
        kms = await start_kms(xks.data_dir, {"kms.xks_timeout_ms": 3000})
        try:
            _store_id, key = await connected_store_and_key(xks, kms)
            blob = (
                await kms.call(
                    "encrypt", KeyId=key["KeyId"], Plaintext=b"on postgres", EncryptionContext={"a": "b"}
                )
            )["CiphertextBlob"]
            decrypted = await kms.call("decrypt", CiphertextBlob=blob, EncryptionContext={"a": "b"})
            assert decrypted["Plaintext"] == b"on postgres"
            request_id = decrypted["ResponseMetadata"]["RequestId"]
            rows = [r for r in await xks.audit_rows() if r["kms_request_id"] == request_id]
            assert [(r["operation"], r["outcome"]) for r in rows] == [("xks.decrypt", "success")]
        finally:
            await stop_kms(kms)
    finally:
        await close_env(xks)
