"""The XKS proxy at its edges, end to end on loopback ports: HTTPS and mTLS (spec 1.10), secondary
authorization from the policy file (1.11), a key manager that goes away and comes back, several DSM
nodes, URI path prefixes added and removed at run time, and the ``xkslab xks`` command line in real
processes."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from dsm_emulator.api.app import create_app as create_dsm_app
from dsm_emulator.api.context import CORE_KEY
from dsm_emulator.api.link import serve_link
from dsm_emulator.authz import system_principal
from dsm_emulator.core import DsmCore
from dsm_emulator.errors import BadRequest, Conflict
from tests import deadlines
from tests.cli_runner import run_cli
from tests.net import port_of, wait_ready
from tests.xks_harness import (
    KEY_ARN,
    PRINCIPAL_ARN,
    XksEnv,
    b64,
    metadata,
    sign,
    start_runner,
    xks_env,
    xks_template,
)
from xks_frontend.app import create_app as create_xks_app
from xkslab_shared import certs, logs, serve, tls
from xkslab_shared.config import load_settings

__all__ = ["xks_env", "xks_template"]  # fixtures used by name

REPO = Path(__file__).resolve().parents[2]
CLIENT_SUBJECT = "cks.kms.eu-west-1.amazonaws.com"
UNREACHABLE_MODEL = "xkslab DSM emulator (unreachable)"


def unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def health_body(request_id: str = "health-1") -> dict[str, Any]:
    return {"requestMetadata": {"kmsRequestId": request_id, "kmsOperation": "KmsHealthCheck"}}


def encrypt_body(
    plaintext: bytes = b"edge plaintext", operation: str = "Encrypt", **meta: str
) -> dict[str, Any]:
    return {
        "requestMetadata": metadata(operation, **meta),
        "plaintext": b64(plaintext),
        "encryptionAlgorithm": "AES_GCM",
    }


def decrypt_body(encrypted: dict[str, Any], **meta: str) -> dict[str, Any]:
    return {
        "requestMetadata": metadata("Decrypt", **meta),
        "encryptionAlgorithm": "AES_GCM",
        **{
            k: encrypted[k]
            for k in ("ciphertext", "initializationVector", "authenticationTag", "ciphertextMetadata")
        },
    }


def xks_url(base: str, prefix: str, op: str, key_id: str | None = None) -> str:
    root = f"{base}{prefix}/kms/xks/v1"
    return f"{root}/health" if op == "health" else f"{root}/keys/{key_id}/{op}"


# Far above any answer or start on a loaded machine: only turns a hang into a failure.
HANG_S = 120.0

# Loopback only: never through an HTTP proxy from the environment.
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


async def start_proxy(
    env: XksEnv, overrides: dict[str, Any] | None = None, ssl_context: ssl.SSLContext | None = None
) -> tuple[web.AppRunner, int]:
    """Another proxy on the env's data directory and DSM, with its own settings; cleaned up with the env."""
    settings = load_settings(
        env.data_dir,
        overrides={
            "xks.dsm_urls": env.dsm_url,
            "xks.prefix_cache_s": 0.0,
            "xks.dsm_timeout_ms": 5000,
            **(overrides or {}),
        },
        environ={},
    )
    runner, port = await start_runner(create_xks_app(settings), ssl_context)
    env.runners.append(runner)
    return runner, port


async def signed_post(
    env: XksEnv,
    url: str,
    body: dict[str, Any],
    *,
    ssl_context: ssl.SSLContext | None = None,
    akid: str | None = None,
    secret: str | None = None,
) -> tuple[int, Any]:
    """POST a SigV4-signed body, over TLS with ``ssl_context``; returns (status, JSON answer)."""
    raw = json.dumps(body).encode()
    headers = sign(url, raw, akid or env.akid, secret or env.secret)
    kwargs: dict[str, Any] = {} if ssl_context is None else {"ssl": ssl_context}
    async with env.http.post(url, data=raw, headers=headers, **kwargs) as response:
        text = await response.text()
        return response.status, json.loads(text) if text else None


async def handshake(port: int, ssl_context: ssl.SSLContext) -> tuple[str, str, int]:
    """A bare TLS handshake with the server on ``port``; returns the negotiated (suite, version, bits)."""
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ssl_context)
    try:
        return writer.get_extra_info("cipher")
    finally:
        writer.close()
        await writer.wait_closed()


# ------------------------------------------------------------------------------------------ certificates


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client: tuple[Path, Path]  # right CA, right CN
    client_wrong_cn: tuple[Path, Path]  # right CA, another CN
    other_ca: Path
    other_client: tuple[Path, Path]  # another CA, right CN


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    main, other = tmp_path_factory.mktemp("pki-main"), tmp_path_factory.mktemp("pki-other")
    ca, ca_key = certs.make_local_ca(main)
    other_ca, other_ca_key = certs.make_local_ca(other)
    server_cert, server_key = certs.make_server_cert(main, ca, ca_key, "xks", ["localhost"])
    return Pki(
        ca=ca,
        server_cert=server_cert,
        server_key=server_key,
        client=certs.make_client_cert(main, ca, ca_key, "kms", CLIENT_SUBJECT),
        client_wrong_cn=certs.make_client_cert(main, ca, ca_key, "intruder", "cks.kms.evil.example.com"),
        other_ca=other_ca,
        other_client=certs.make_client_cert(other, other_ca, other_ca_key, "kms-other", CLIENT_SUBJECT),
    )


# ------------------------------------------------------------------------------------------ HTTPS / mTLS


async def test_https_proxy_is_trusted_through_its_ca_only(xks_env: XksEnv, pki: Pki) -> None:
    _, port = await start_proxy(xks_env, ssl_context=tls.server_context(pki.server_cert, pki.server_key))
    base = f"https://127.0.0.1:{port}"
    trusting = tls.client_context(pki.ca)
    status, enc = await signed_post(
        xks_env,
        xks_url(base, xks_env.prefix, "encrypt", xks_env.kek_id),
        encrypt_body(b"over TLS"),
        ssl_context=trusting,
    )
    assert status == 200, enc
    status, dec = await signed_post(
        xks_env,
        xks_url(base, xks_env.prefix, "decrypt", xks_env.kek_id),
        decrypt_body(enc),
        ssl_context=trusting,
    )
    assert status == 200 and unb64(dec["plaintext"]) == b"over TLS"

    # The suites are the spec's (1.1): TLS 1.3 with AES-256, and on TLS 1.2 the ECDHE AES-256 suite ...
    suite, version, _ = await handshake(port, tls.client_context(pki.ca))
    assert (suite, version) == ("TLS_AES_256_GCM_SHA384", "TLSv1.3")
    tls12 = tls.client_context(pki.ca)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    suite, version, _ = await handshake(port, tls12)
    assert (suite, version) == ("ECDHE-ECDSA-AES256-GCM-SHA384", "TLSv1.2")
    # ... so a TLS 1.2 client offering only AES-128 is refused in the handshake.
    weak = tls.client_context(pki.ca)
    weak.maximum_version = ssl.TLSVersion.TLSv1_2
    weak.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        await handshake(port, weak)

    # A client that trusts another CA refuses the proxy's certificate.
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await signed_post(
            xks_env,
            xks_url(base, xks_env.prefix, "health"),
            health_body(),
            ssl_context=tls.client_context(pki.other_ca),
        )
    # And a plain-HTTP request to the TLS port gets no XKS answer.
    with pytest.raises(aiohttp.ClientError):
        await signed_post(
            xks_env, xks_url(f"http://127.0.0.1:{port}", xks_env.prefix, "health"), health_body()
        )


async def test_mtls_checks_the_chain_and_the_subject_in_the_handshake(xks_env: XksEnv, pki: Pki) -> None:
    overrides = {"xks.client_ca": str(pki.ca), "xks.client_subject": CLIENT_SUBJECT}
    context = tls.server_context(
        pki.server_cert, pki.server_key, client_ca=pki.ca, client_subject=CLIENT_SUBJECT
    )
    runner, tls_port = await start_proxy(xks_env, overrides, ssl_context=context)
    # The same application on plain HTTP too, as `xkslab xks serve` runs it.
    plain_site = web.TCPSite(runner, "127.0.0.1", 0)
    await plain_site.start()
    plain_port = plain_site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    https, http = f"https://127.0.0.1:{tls_port}", f"http://127.0.0.1:{plain_port}"

    def client(cert: tuple[Path, Path] | None) -> ssl.SSLContext:
        if cert is None:
            return tls.client_context(pki.ca)
        return tls.client_context(pki.ca, cert=cert[0], key=cert[1])

    encrypt_url = xks_url(https, xks_env.prefix, "encrypt", xks_env.kek_id)
    status, enc = await signed_post(
        xks_env, encrypt_url, encrypt_body(b"mtls"), ssl_context=client(pki.client)
    )
    assert status == 200, enc
    status, health = await signed_post(
        xks_env, xks_url(https, xks_env.prefix, "health"), health_body(), ssl_context=client(pki.client)
    )
    assert status == 200 and health["ekmFleetDetails"][0]["healthStatus"] == "ACTIVE"

    # The right CA but another subject, another CA, or no certificate at all: the handshake itself fails,
    # so there is no status (health included).
    for cert in (pki.client_wrong_cn, pki.other_client, None):
        with pytest.raises(aiohttp.ClientConnectionError):
            await signed_post(
                xks_env, xks_url(https, xks_env.prefix, "health"), health_body(), ssl_context=client(cert)
            )
        # TLS 1.3: the client's side of the handshake is over when the server rejects the certificate,
        # so the refusal (an alert, then a reset) surfaces on the request, before any response.
        with pytest.raises(aiohttp.ClientConnectionError):
            await signed_post(
                xks_env, encrypt_url, encrypt_body(kmsRequestId="mtls-no-chain"), ssl_context=client(cert)
            )

    # Plain HTTP cannot satisfy mTLS, even correctly signed; the load balancer's /ping stays open.
    status, err = await signed_post(
        xks_env,
        xks_url(http, xks_env.prefix, "encrypt", xks_env.kek_id),
        encrypt_body(kmsRequestId="mtls-plain"),
    )
    assert status == 403 and err["errorName"] == "AccessDeniedException"
    async with xks_env.http.get(f"{http}/ping") as response:
        assert response.status == 200 and (await response.text()).strip() == "pong"

    # None of the refused requests reached the key manager.
    request_ids = {row["kms_request_id"] for row in await xks_env.audit_rows()}
    assert request_ids.isdisjoint({"mtls-wrong-cn", "mtls-no-chain", "mtls-plain"})


# ------------------------------------------------------------------------------------------ policy

POLICY = """
default = "deny"

[[rule]]
name = "deny-mallory"
effect = "deny"
principals = ["arn:aws:iam::*:user/Mallory*"]

[[rule]]
name = "deny-blocked-key"
effect = "deny"
keys = ["blocked-kek"]

[[rule]]
name = "deny-team-b"
effect = "deny"
prefixes = ["/keystores/team-b"]

[[rule]]
name = "allow-ebs-in-vpc"
effect = "allow"
via_services = ["ebs"]
source_vpcs = ["vpc-0a1b*"]
source_vpces = ["vpce-0123*"]

[[rule]]
name = "allow-crypto"
effect = "allow"
operations = ["Encrypt", "Decrypt"]
principals = ["arn:aws:iam::123456789012:*"]
"""


async def policy_proxy(env: XksEnv, text: str) -> str:
    (env.data_dir / "policy.toml").write_text(text)
    _, port = await start_proxy(env, {"xks.policy_file": "policy.toml"})
    return f"http://127.0.0.1:{port}"


async def audit_row(env: XksEnv, request_id: str) -> dict[str, Any]:
    rows = [r for r in await env.audit_rows() if r["kms_request_id"] == request_id]
    assert len(rows) == 1, rows
    return rows[0]


async def test_policy_denies_and_allows_by_the_first_matching_rule(xks_env: XksEnv) -> None:
    base = await policy_proxy(xks_env, POLICY)
    encrypt_url = xks_url(base, xks_env.prefix, "encrypt", xks_env.kek_id)

    # A principal matching the deny glob (the allow rule after it would have matched too).
    body = encrypt_body(kmsRequestId="pol-mallory", awsPrincipalArn="arn:aws:iam::123456789012:user/Mallory2")
    status, err = await xks_env.post(encrypt_url, body)
    assert status == 403 and err["errorName"] == "AccessDeniedException", err
    assert "deny-mallory" in err["errorMessage"]
    row = await audit_row(xks_env, "pol-mallory")
    assert row["outcome"] == "refused" and "deny-mallory" in row["message"]
    assert row["object_id"] == xks_env.kek_id  # the key was found before the verdict applied

    # Alice's Encrypt and Decrypt are allowed by the allow rule, and the audit row says by which.
    status, enc = await xks_env.post(encrypt_url, encrypt_body(b"allowed", kmsRequestId="pol-alice"))
    assert status == 200, enc
    row = await audit_row(xks_env, "pol-alice")
    assert row["outcome"] == "success" and "allowed by policy rule allow-crypto" in row["message"]
    assert row["aws_principal_arn"] == PRINCIPAL_ARN and row["kms_key_arn"] == KEY_ARN
    status, dec = await xks_env.post(
        xks_url(base, xks_env.prefix, "decrypt", xks_env.kek_id), decrypt_body(enc, kmsRequestId="pol-dec")
    )
    assert status == 200 and unb64(dec["plaintext"]) == b"allowed"

    # An operation no rule allows falls to the default (deny).
    status, err = await xks_env.post(
        xks_url(base, xks_env.prefix, "metadata", xks_env.kek_id),
        {"requestMetadata": metadata("CreateKey", kmsRequestId="pol-default")},
    )
    assert status == 403 and err["errorName"] == "AccessDeniedException"
    assert "denied by policy rule default" in (await audit_row(xks_env, "pol-default"))["message"]
    # Another account's principal is not covered by the allow rule either.
    body = encrypt_body(kmsRequestId="pol-other-acct", awsPrincipalArn="arn:aws:iam::999999999999:user/Alice")
    status, err = await xks_env.post(encrypt_url, body)
    assert status == 403


async def test_the_access_line_carries_the_policys_decision(
    xks_env: XksEnv, caplog: pytest.LogCaptureFixture
) -> None:
    (xks_env.data_dir / "policy.toml").write_text(POLICY)
    settings = load_settings(
        xks_env.data_dir,
        overrides={
            "xks.dsm_urls": xks_env.dsm_url,
            "xks.policy_file": "policy.toml",
            "xks.dsm_timeout_ms": 5000,
        },
        environ={},
    )
    caplog.set_level(logging.INFO, logger=logs.ACCESS_LOGGER.name)
    listener = serve.Listener("XKS proxy", create_xks_app(settings), "127.0.0.1", 0, service="xks")
    async with contextlib.AsyncExitStack() as stack:
        (base,) = await serve.start(stack, listener, lambda _: None)
        body = encrypt_body(
            kmsRequestId="pol-line", awsPrincipalArn="arn:aws:iam::123456789012:user/Mallory2"
        )
        status, _ = await xks_env.post(xks_url(base, xks_env.prefix, "encrypt", xks_env.kek_id), body)
    assert status == 403
    (line,) = [r.access for r in caplog.records if getattr(r, "access", {}).get("kmsRequestId") == "pol-line"]
    assert line["policy"] == 'denied by rule "deny-mallory"' and line["error"] == "AccessDeniedException"
    assert (
        line["status"] == 403 and line["route"] == "/{uriPathPrefix}/kms/xks/v1/keys/{externalKeyId}/encrypt"
    )


async def test_policy_rules_on_keys_and_prefixes(xks_env: XksEnv) -> None:
    blocked = await xks_env.create_key("blocked-kek")
    await xks_env.core.xks.add_alias(xks_env.system, xks_env.app_id, "/keystores/team-b")
    base = await policy_proxy(xks_env, POLICY)

    # By externalKeyId (the name in the URI) ...
    status, err = await xks_env.post(
        xks_url(base, xks_env.prefix, "encrypt", "blocked-kek"), encrypt_body(kmsRequestId="pol-key")
    )
    assert status == 403 and "deny-blocked-key" in err["errorMessage"]
    row = await audit_row(xks_env, "pol-key")
    assert (
        row["outcome"] == "refused" and row["object_id"] == blocked and "deny-blocked-key" in row["message"]
    )
    # Other keys through the same proxy are not affected.
    status, _ = await xks_env.post(xks_url(base, xks_env.prefix, "encrypt", xks_env.kek_id), encrypt_body())
    assert status == 200
    status, _ = await xks_env.post(xks_url(base, xks_env.prefix, "encrypt", "root-kek-1"), encrypt_body())
    assert status == 200

    # By URI path prefix: the same app and key, refused through the alias only.
    status, err = await xks_env.post(
        xks_url(base, "/keystores/team-b", "encrypt", xks_env.kek_id), encrypt_body(kmsRequestId="pol-prefix")
    )
    assert status == 403 and "deny-team-b" in err["errorMessage"]
    assert "deny-team-b" in (await audit_row(xks_env, "pol-prefix"))["message"]


async def test_policy_conditions_on_via_service_and_vpc(xks_env: XksEnv) -> None:
    base = await policy_proxy(xks_env, POLICY)
    url = xks_url(base, xks_env.prefix, "encrypt", xks_env.kek_id)
    inside = {
        "kmsViaService": "ebs",
        "awsSourceVpc": "vpc-0a1b2c3d",
        "awsSourceVpce": "vpce-0123456789abcdef0",
    }
    # ReEncrypt is not in allow-crypto: only the VPC rule can allow it, and every condition must match.
    status, enc = await xks_env.post(
        url, encrypt_body(operation="ReEncrypt", kmsRequestId="pol-vpc", **inside)
    )
    assert status == 200, enc
    assert "allow-ebs-in-vpc" in (await audit_row(xks_env, "pol-vpc"))["message"]
    for name, value in (
        ("kmsViaService", "s3"),
        ("awsSourceVpc", "vpc-ffff"),
        ("awsSourceVpce", "vpce-9999"),
        ("kmsViaService", None),  # an absent field never matches
    ):
        meta = {k: v for k, v in {**inside, name: value}.items() if v is not None}
        status, err = await xks_env.post(url, encrypt_body(operation="ReEncrypt", **meta))
        assert status == 403 and err["errorName"] == "AccessDeniedException", (name, value)
        assert err["errorMessage"] == "denied by policy rule default"


async def test_health_is_never_subject_to_policy_and_lookup_comes_first(xks_env: XksEnv) -> None:
    base = await policy_proxy(
        xks_env, 'default = "deny"\n\n[[rule]]\nname = "deny-all"\neffect = "deny"\nprincipals = ["*"]\n'
    )
    status, health = await xks_env.post(xks_url(base, xks_env.prefix, "health"), health_body("pol-health"))
    assert status == 200, health
    assert health["ekmFleetDetails"][0]["healthStatus"] == "ACTIVE"
    # An existing key is denied ...
    status, err = await xks_env.post(xks_url(base, xks_env.prefix, "encrypt", xks_env.kek_id), encrypt_body())
    assert status == 403 and err["errorName"] == "AccessDeniedException" and "deny-all" in err["errorMessage"]
    # ... an unknown one is not found: the lookup comes before secondary authorization.
    for op in ("encrypt", "metadata"):
        body = encrypt_body() if op == "encrypt" else {"requestMetadata": metadata("CreateKey")}
        status, err = await xks_env.post(xks_url(base, xks_env.prefix, op, "no-such-key"), body)
        assert status == 404 and err["errorName"] == "KeyNotFoundException", (op, err)
    # A bad signature is still 401, not 403.
    status, err = await xks_env.post(
        xks_url(base, xks_env.prefix, "encrypt", xks_env.kek_id), encrypt_body(), secret="B" * 44
    )
    assert status == 401 and err["errorName"] == "AuthenticationFailedException"


async def test_policy_edits_take_effect_without_restart(
    xks_env: XksEnv, caplog: pytest.LogCaptureFixture
) -> None:
    policy = xks_env.data_dir / "policy.toml"
    base = await policy_proxy(
        xks_env, '[[rule]]\nname = "deny-mallory"\neffect = "deny"\nprincipals = ["*Mallory*"]\n'
    )
    url = xks_url(base, xks_env.prefix, "encrypt", xks_env.kek_id)
    status, _ = await xks_env.post(url, encrypt_body())
    assert status == 200

    def rewrite(text: str) -> None:
        before = policy.stat().st_mtime_ns
        policy.write_text(text)
        bumped = before + 2_000_000_000
        os.utime(policy, ns=(bumped, bumped))

    rewrite('[[rule]]\nname = "deny-alice"\neffect = "deny"\nprincipals = ["*:user/Alice"]\n')
    await asyncio.sleep(1.15)
    status, err = await xks_env.post(url, encrypt_body())
    assert status == 403 and "deny-alice" in err["errorMessage"]

    # A broken edit is reported and ignored: the previous policy stays in force.
    rewrite('[[rule]]\nname = "oops"\neffect = "permit"\n')
    await asyncio.sleep(1.15)
    status, err = await xks_env.post(url, encrypt_body())
    assert status == 403 and "deny-alice" in err["errorMessage"]
    assert any(
        r.name == "xks_frontend.policy"
        and r.levelname == "ERROR"
        and "keeping the previous policy" in r.message
        for r in caplog.records
    )


# ------------------------------------------------------------------------------------------ DSM outages


async def test_dsm_down_and_back_on_the_same_port(xks_env: XksEnv) -> None:
    status, before = await xks_env.encrypt(b"before the outage")
    assert status == 200
    dsm_port = port_of(xks_env.dsm_url)
    await xks_env.runners[1].cleanup()

    # No node can verify the signature, so health is refused like every other operation, never a 200.
    status, err = await xks_env.post(xks_env.url("health"), health_body())
    assert status == 500 and err["errorName"] == "InternalException", err
    status, err = await xks_env.encrypt(b"during the outage")
    assert status == 500 and err["errorName"] == "InternalException", err
    status, err = await xks_env.decrypt(before)
    assert status == 500 and err["errorName"] == "InternalException"

    # A new DSM process (here: application) on the same port and data directory.
    dsm_app = create_dsm_app(load_settings(xks_env.data_dir, environ={}))
    runner = web.AppRunner(dsm_app, access_log=None)
    await runner.setup()
    xks_env.runners[1] = runner  # the env's teardown now cleans up the new DSM
    xks_env.core = dsm_app[CORE_KEY]
    await web.TCPSite(runner, "127.0.0.1", dsm_port).start()
    # and its link on the same socket path, which the proxy reconnects to
    assert await serve_link(dsm_app, load_settings(xks_env.data_dir, environ={})) == xks_env.link_url

    status, health = await xks_env.post(xks_env.url("health"), health_body())
    assert status == 200 and [n["healthStatus"] for n in health["ekmFleetDetails"]] == ["ACTIVE"]
    status, after = await xks_env.encrypt(b"after the outage")
    assert status == 200, after
    status, dec = await xks_env.decrypt(before)
    assert status == 200 and unb64(dec["plaintext"]) == b"before the outage"
    status, dec = await xks_env.decrypt(after)
    assert status == 200 and unb64(dec["plaintext"]) == b"after the outage"


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A port bound but not listening: connecting to it is refused, and nobody else can take it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


async def test_two_dsm_nodes_health_lists_both_and_requests_fail_over(
    xks_env: XksEnv, dead_port: int
) -> None:
    # The dead node first, so every request has to fail over to the live one.
    _, port = await start_proxy(xks_env, {"xks.dsm_urls": f"http://127.0.0.1:{dead_port},{xks_env.dsm_url}"})
    base = f"http://127.0.0.1:{port}"
    status, health = await xks_env.post(xks_url(base, xks_env.prefix, "health"), health_body())
    assert status == 200, health
    fleet = health["ekmFleetDetails"]
    assert fleet[0] == {
        "id": "dsm-node-1",  # its place in xks.dsm_urls, not its address
        "model": UNREACHABLE_MODEL,
        "healthStatus": "UNAVAILABLE",
    }
    assert len(fleet) == 2 and fleet[1]["id"] == "dsm-1" and fleet[1]["healthStatus"] == "ACTIVE"
    status, enc = await xks_env.post(
        xks_url(base, xks_env.prefix, "encrypt", xks_env.kek_id), encrypt_body(b"fail-over")
    )
    assert status == 200, enc
    status, dec = await xks_env.post(
        xks_url(base, xks_env.prefix, "decrypt", xks_env.kek_id), decrypt_body(enc)
    )
    assert status == 200 and unb64(dec["plaintext"]) == b"fail-over"


# ------------------------------------------------------------------------------------------ prefixes


async def test_alias_prefix_added_and_removed_at_run_time(xks_env: XksEnv) -> None:
    alias = "/keystores/team-a"
    status, err = await xks_env.post(xks_env.url("encrypt", prefix=alias), encrypt_body())
    assert status == 404 and err["errorName"] == "InvalidUriPathException"

    await xks_env.core.xks.add_alias(xks_env.system, xks_env.app_id, alias)
    assert await xks_env.core.xks.aliases(xks_env.system, xks_env.app_id) == [alias]
    status, via_alias = await xks_env.post(xks_env.url("encrypt", prefix=alias), encrypt_body(b"team a"))
    assert status == 200, via_alias
    status, via_canonical = await xks_env.encrypt(b"canonical")
    assert status == 200
    # The same key store under both paths: each ciphertext decrypts through the other one.
    status, dec = await xks_env.decrypt(via_alias)
    assert status == 200 and unb64(dec["plaintext"]) == b"team a"
    status, dec = await xks_env.post(xks_env.url("decrypt", prefix=alias), decrypt_body(via_canonical))
    assert status == 200 and unb64(dec["plaintext"]) == b"canonical"
    status, dec = await xks_env.post(xks_env.url("decrypt", prefix=alias), decrypt_body(via_alias))
    assert status == 200 and unb64(dec["plaintext"]) == b"team a"
    # The alias is part of what is signed: a signature for the canonical path does not fit it.
    raw = json.dumps(encrypt_body()).encode()
    headers = sign(xks_env.url("encrypt"), raw, xks_env.akid, xks_env.secret)
    async with xks_env.http.post(xks_env.url("encrypt", prefix=alias), data=raw, headers=headers) as response:
        assert response.status == 401

    with pytest.raises(Conflict):
        await xks_env.core.xks.add_alias(xks_env.system, xks_env.app_id, alias)
    await xks_env.core.xks.remove_alias(xks_env.system, alias)
    status, err = await xks_env.post(xks_env.url("encrypt", prefix=alias), encrypt_body())
    assert status == 404 and err["errorName"] == "InvalidUriPathException"
    status, _ = await xks_env.decrypt(via_alias)
    assert status == 200


async def test_a_new_app_is_served_at_once_with_its_own_credential(xks_env: XksEnv) -> None:
    core, system = xks_env.core, xks_env.system
    app2, _ = await core.admin.create_app(
        system,
        "xks-app-2",
        groups={xks_env.group_id: frozenset({"ENCRYPT", "DECRYPT"})},
        credential_kind="awsxks",
    )
    cred2 = (await core.admin.get_credential(system, app2.app_id))["awsxks"]
    assert cred2["access_key_id"] != xks_env.akid
    prefix2 = f"/crypto/v1/apps/{app2.app_id}/aws"
    as2 = {"akid": cred2["access_key_id"], "secret": cred2["secret_key"]}

    status, health = await xks_env.post(xks_env.url("health", prefix=prefix2), health_body(), **as2)
    assert status == 200, health
    status, enc = await xks_env.post(xks_env.url("encrypt", prefix=prefix2), encrypt_body(b"app two"), **as2)
    assert status == 200, enc
    status, dec = await xks_env.post(xks_env.url("decrypt", prefix=prefix2), decrypt_body(enc), **as2)
    assert status == 200 and unb64(dec["plaintext"]) == b"app two"
    rows = [r for r in await xks_env.audit_rows() if r["operation"] == "xks.encrypt"]
    assert rows[-1]["actor_id"] == app2.app_id

    # Each credential works on its own prefix only.
    status, err = await xks_env.post(xks_env.url("encrypt", prefix=prefix2), encrypt_body())
    assert status == 401 and err["errorName"] == "AuthenticationFailedException"
    status, err = await xks_env.post(xks_env.url("encrypt"), encrypt_body(), **as2)
    assert status == 401 and err["errorName"] == "AuthenticationFailedException"
    # A well-formed canonical prefix of an app that does not exist is not a path the proxy serves.
    ghost = "/crypto/v1/apps/00000000-0000-4000-8000-000000000000/aws"
    status, err = await xks_env.post(xks_env.url("health", prefix=ghost), health_body())
    assert status == 404 and err["errorName"] == "InvalidUriPathException"


async def test_invalid_alias_prefixes_are_refused(xks_env: XksEnv) -> None:
    core, system, app_id = xks_env.core, xks_env.system, xks_env.app_id
    longest = "/" + "a" * 116  # with /kms/xks/v1: exactly the spec's 128 characters
    for bad in (
        "no-slash",
        "/a b",
        "/crypto/v1/apps/x",
        "/" + "a" * 117,
        "",
        "/",
        "/a/",
        "/a//b",
        "/a.b",
        "/team/kms/xks/v1",
    ):
        with pytest.raises(BadRequest):
            await core.xks.add_alias(system, app_id, bad)
    assert await core.xks.aliases(system, app_id) == []

    await core.xks.add_alias(system, app_id, longest)
    assert len(f"{longest}/kms/xks/v1") == 128
    status, health = await xks_env.post(xks_env.url("health", prefix=longest), health_body())
    assert status == 200, health

    # Only an awsxks app can have a prefix; an API-key app cannot.
    secret_app, _ = await core.admin.create_app(
        system, "plain-app", groups={xks_env.group_id: frozenset({"ENCRYPT"})}, credential_kind="secret"
    )
    with pytest.raises(BadRequest):
        await core.xks.add_alias(system, secret_app.app_id, "/keystores/plain")
    assert "/keystores/plain" not in await core.xks.prefixes()


# ------------------------------------------------------------------------------------------ CLI


def xkslab(data_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The CLI in this process (tests/cli_runner.py), without this process's XKSLAB_* variables."""
    unset: dict[str, str | None] = {k: None for k in os.environ if k.startswith("XKSLAB_")}
    proc = run_cli(["--data-dir", str(data_dir), *args], env=unset)
    if check and proc.returncode != 0:
        raise AssertionError(f"xkslab {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc


@dataclass(frozen=True)
class CliLab:
    data_dir: Path
    acct_id: str
    group_id: str
    app_id: str
    akid: str
    secret: str


@pytest.fixture(scope="module")
def cli_lab(tmp_path_factory: pytest.TempPathFactory) -> CliLab:
    data_dir = tmp_path_factory.mktemp("xks-cli") / "data"
    info = json.loads(xkslab(data_dir, "init", "--admin-password", "pw", "--json").stdout)
    group_id = info["default_group_id"]
    created = json.loads(
        xkslab(
            data_dir, "app", "create", "cli-xks", "--group", group_id, "--credential", "awsxks", "--json"
        ).stdout
    )
    assert created["auth_type"] == "AwsXks"
    pair = created["credential"]["awsxks"]
    return CliLab(
        data_dir, info["acct_id"], group_id, created["app_id"], pair["access_key_id"], pair["secret_key"]
    )


async def stored_credential(lab: CliLab) -> dict[str, Any]:
    async with await DsmCore.open(load_settings(lab.data_dir, environ={})) as core:
        return await core.admin.get_credential(system_principal(lab.acct_id), lab.app_id)


def test_cli_keystore_prints_what_create_custom_key_store_needs(cli_lab: CliLab) -> None:
    out = json.loads(
        xkslab(
            cli_lab.data_dir, "--set", "xks.https_port=9443", "xks", "keystore", cli_lab.app_id, "--json"
        ).stdout
    )
    assert out["XksProxyUriPath"] == f"/crypto/v1/apps/{cli_lab.app_id}/aws/kms/xks/v1"
    assert out["XksProxyUriEndpoint"] == "https://127.0.0.1:9443"
    assert out["CustomKeyStoreType"] == "EXTERNAL_KEY_STORE"
    stored = asyncio.run(stored_credential(cli_lab))["awsxks"]
    assert out["XksProxyAuthenticationCredential"] == {
        "AccessKeyId": stored["access_key_id"],
        "RawSecretAccessKey": stored["secret_key"],
    }
    assert stored["access_key_id"] == cli_lab.akid
    # A prefix that is not one of the app's aliases is an error, not a made-up path.
    proc = xkslab(cli_lab.data_dir, "xks", "keystore", cli_lab.app_id, "--prefix", "/nope", check=False)
    assert proc.returncode == 1 and "not an alias prefix" in proc.stderr


def test_cli_alias_add_list_remove_round_trip(cli_lab: CliLab) -> None:
    d, app_id, alias = cli_lab.data_dir, cli_lab.app_id, "/keystores/cli-team"
    assert f"{alias}/kms/xks/v1 -> app {app_id}" in xkslab(d, "xks", "alias", "add", app_id, alias).stdout
    assert json.loads(xkslab(d, "xks", "alias", "list", app_id, "--json").stdout) == [alias]
    out = json.loads(xkslab(d, "xks", "keystore", app_id, "--prefix", alias, "--json").stdout)
    assert out["XksProxyUriPath"] == f"{alias}/kms/xks/v1"
    bad = xkslab(d, "xks", "alias", "add", app_id, "/bad prefix", check=False)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "removed" in xkslab(d, "xks", "alias", "remove", alias).stdout
    assert json.loads(xkslab(d, "xks", "alias", "list", app_id, "--json").stdout) == []
    again = xkslab(d, "xks", "alias", "remove", alias, check=False)
    assert again.returncode == 1 and "no such XKS path prefix" in again.stderr


def test_cli_dsm_and_xks_serve_answer_and_stop_cleanly_on_sigint(cli_lab: CliLab, tmp_path: Path) -> None:
    common = [sys.executable, "-m", "xkslab", "--data-dir", str(cli_lab.data_dir), *deadlines.set_args()]
    env = {k: v for k, v in os.environ.items() if not k.startswith("XKSLAB_")}
    logs = {name: tmp_path / f"{name}.log" for name in ("dsm", "xks")}
    procs: list[subprocess.Popen[bytes]] = []
    urls: dict[str, str] = {}
    try:
        for name, extra in (("dsm", []), ("xks", ["--set", "xks.dsm_urls={dsm}"])):
            ready = tmp_path / f"{name}.ready"
            args = [arg.format(**urls) for arg in extra]
            with logs[name].open("wb") as log:
                procs.append(
                    subprocess.Popen(
                        [*common, *args, name, "serve", "--free-ports", "--ready-file", str(ready)],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=env,
                        cwd=REPO,
                    )
                )
            bound = wait_ready(ready, procs[-1], logs[name], HANG_S)
            urls[name] = next(url for url in bound if url.startswith("http:"))
        dsm_port, xks_port = port_of(urls["dsm"]), port_of(urls["xks"])

        url = xks_url(f"http://127.0.0.1:{xks_port}", f"/crypto/v1/apps/{cli_lab.app_id}/aws", "health")
        raw = json.dumps(health_body("cli-serve")).encode()
        request = urllib.request.Request(
            url, data=raw, headers=sign(url, raw, cli_lab.akid, cli_lab.secret), method="POST"
        )
        with DIRECT.open(request, timeout=HANG_S) as response:
            assert response.status == 200
            health = json.loads(response.read())
        assert [n["healthStatus"] for n in health["ekmFleetDetails"]] == ["ACTIVE"]

        for proc in reversed(procs):  # the proxy first, then the DSM
            proc.send_signal(signal.SIGINT)
        codes = [proc.wait(timeout=HANG_S) for proc in reversed(procs)]
        assert codes == [0, 0], {name: path.read_text() for name, path in logs.items()}
        xks_log, dsm_log = logs["xks"].read_text(), logs["dsm"].read_text()
        assert f"xks: listening on http://127.0.0.1:{xks_port}" in xks_log and "xks: stopped" in xks_log
        assert f"dsm: listening on http://127.0.0.1:{dsm_port}" in dsm_log and "dsm: stopped" in dsm_log
        assert "Traceback" not in xks_log + dsm_log
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
