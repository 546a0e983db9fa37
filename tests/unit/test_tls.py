"""``xkslab_shared.tls``: real aiohttp HTTPS servers with the shared contexts (TLS floor, XKS suites, mTLS against
one CA only) and the post-handshake subject check on real ``peercert`` dicts."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import warnings
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from xkslab_shared.certs import make_client_cert, make_local_ca, make_server_cert
from xkslab_shared.tls import client_context, peer_names, server_context, subject_matches

KMS_CN = "cks.kms.eu-west-1.amazonaws.com"
# spec §1.1, written out here rather than imported so the test checks the module against the spec
TLS13_ALLOWED = {"TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}
TLS12_ALLOWED = {"ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384"}
# what a failed handshake looks like from the client (TLS 1.3 reports a refused client cert on first read)
HANDSHAKE_FAILED = (aiohttp.ClientError, ssl.SSLError, ConnectionError)
# a refused handshake (TLS 1.1, no XKS suite): the server's alert, or a reset when the client closes first
SERVER_REFUSED = (ConnectionResetError, ssl.SSLError)


@dataclass(frozen=True)
class Pki:
    ca: Path
    server: tuple[Path, Path]
    client: tuple[Path, Path]  # CN=KMS_CN, from `ca`
    other_ca: Path
    rogue: tuple[Path, Path]  # same CN, from `other_ca`


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    good, other = tmp_path_factory.mktemp("ca"), tmp_path_factory.mktemp("other-ca")
    ca, ca_key = make_local_ca(good)
    other_ca, other_key = make_local_ca(other)
    return Pki(
        ca=ca,
        server=make_server_cert(good, ca, ca_key, "xks", ["localhost", "127.0.0.1"]),
        client=make_client_cert(good, ca, ca_key, "kms", KMS_CN),
        other_ca=other_ca,
        rogue=make_client_cert(other, other_ca, other_key, "rogue", KMS_CN),
    )


@dataclass
class Server:
    url: str
    host: str
    port: int
    peercerts: list[Mapping[str, Any] | None]  # exactly what the handler got from aiohttp


@contextlib.asynccontextmanager
async def serve(ctx: ssl.SSLContext) -> AsyncIterator[Server]:
    peercerts: list[Mapping[str, Any] | None] = []

    async def whoami(request: web.Request) -> web.Response:
        assert request.transport is not None
        peercert = request.transport.get_extra_info("peercert")
        peercerts.append(peercert)
        return web.json_response({"names": list(peer_names(peercert))})

    app = web.Application()
    app.router.add_get("/", whoami)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx).start()
        host, port = runner.addresses[0][:2]
        yield Server(f"https://{host}:{port}/", host, port, peercerts)
    finally:
        await runner.cleanup()


async def get_names(url: str, ctx: ssl.SSLContext) -> list[str]:
    async with aiohttp.ClientSession() as session, session.get(url, ssl=ctx) as resp:
        assert resp.status == 200
        return (await resp.json())["names"]


async def handshake(server: Server, ctx: ssl.SSLContext) -> tuple[tuple[str, str, int], dict[str, Any]]:
    """Raw TLS connection: the negotiated (cipher, protocol, bits) and the server's peercert."""
    _, writer = await asyncio.open_connection(server.host, server.port, ssl=ctx)
    try:
        return writer.get_extra_info("cipher"), writer.get_extra_info("peercert")
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()


# --- server-side TLS --------------------------------------------------------------------------------


async def test_plain_tls_verifies_against_the_ca(pki: Pki) -> None:
    async with serve(server_context(*pki.server)) as server:
        assert await get_names(server.url, client_context(pki.ca)) == []  # no client cert asked for
        assert server.peercerts == [None]
        # the client certificate is not requested, so presenting one changes nothing
        assert (
            await get_names(server.url, client_context(pki.ca, cert=pki.client[0], key=pki.client[1])) == []
        )


async def test_client_trusting_another_ca_fails(pki: Pki) -> None:
    async with serve(server_context(*pki.server)) as server:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await get_names(server.url, client_context(pki.other_ca))
        assert server.peercerts == []


async def test_client_checks_the_host_name(pki: Pki) -> None:
    async with serve(server_context(*pki.server)) as server:
        ctx = client_context(pki.ca)
        _, writer = await asyncio.open_connection(server.host, server.port, ssl=ctx)
        writer.close()
        await writer.wait_closed()
        with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
            await asyncio.open_connection(server.host, server.port, ssl=ctx, server_hostname="xks.example")


async def test_tls11_client_is_refused(pki: Pki) -> None:
    ctx = client_context(pki.ca)
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let OpenSSL actually offer TLS 1.1, so the server refuses it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # setting TLSv1_1 at all is deprecated
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    # the client really sends a TLS 1.1 ClientHello (not a local "no protocols available" error), so the
    # failure below is the server's refusal: record type 22, then client_version 3.2 after the headers
    out = ssl.MemoryBIO()
    with pytest.raises(ssl.SSLWantReadError):
        ctx.wrap_bio(ssl.MemoryBIO(), out, server_hostname="localhost").do_handshake()
    hello = out.read()
    assert hello[0] == 22 and hello[9:11] == b"\x03\x02"
    async with serve(server_context(*pki.server)) as server:
        with pytest.raises(SERVER_REFUSED):
            await handshake(server, ctx)
        with pytest.raises(HANDSHAKE_FAILED):
            await get_names(server.url, ctx)
        assert server.peercerts == []


@pytest.mark.parametrize(
    ("version", "allowed"),
    [(ssl.TLSVersion.TLSv1_2, TLS12_ALLOWED), (ssl.TLSVersion.TLSv1_3, TLS13_ALLOWED)],
    ids=["tls1.2", "tls1.3"],
)
async def test_negotiates_an_xks_suite(pki: Pki, version: ssl.TLSVersion, allowed: set[str]) -> None:
    ctx = client_context(pki.ca)
    ctx.minimum_version = ctx.maximum_version = version
    async with serve(server_context(*pki.server)) as server:
        (cipher, protocol, bits), _ = await handshake(server, ctx)
    assert cipher in allowed and bits == 256
    assert protocol == {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]


async def test_tls12_client_without_an_xks_suite_is_refused(pki: Pki) -> None:
    ctx = client_context(pki.ca)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305")
    async with serve(server_context(*pki.server)) as server:
        with pytest.raises(SERVER_REFUSED):
            await handshake(server, ctx)
        # the same client with an XKS suite added is fine
        ctx.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384")
        (cipher, _, _), _ = await handshake(server, ctx)
        assert cipher == "ECDHE-ECDSA-AES256-GCM-SHA384"


# --- mTLS ---------------------------------------------------------------------------------------------


async def test_mtls_accepts_a_client_cert_from_the_ca(pki: Pki) -> None:
    async with serve(server_context(*pki.server, client_ca=pki.ca)) as server:
        ctx = client_context(pki.ca, cert=pki.client[0], key=pki.client[1])
        assert await get_names(server.url, ctx) == [KMS_CN]
        [peercert] = server.peercerts
        assert subject_matches(peercert, KMS_CN) and subject_matches(peercert, f"CN={KMS_CN}")


@pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"]
)
@pytest.mark.parametrize("client", ["none", "other-ca"])
async def test_mtls_refuses_missing_or_foreign_client_cert(
    pki: Pki, client: str, version: ssl.TLSVersion
) -> None:
    ctx = client_context(pki.ca)
    ctx.maximum_version = version
    if client == "other-ca":
        ctx.load_cert_chain(*pki.rogue)  # same CN as the good one: only the chain differs
    async with serve(server_context(*pki.server, client_ca=pki.ca)) as server:
        with pytest.raises(HANDSHAKE_FAILED):
            await get_names(server.url, ctx)
        assert server.peercerts == []  # the handler never ran


async def test_mtls_does_not_trust_the_system_store(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    # even if the process-wide default store contains the other CA, only client_ca counts
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.other_ca))
    ctx = server_context(*pki.server, client_ca=pki.ca)
    assert ctx.get_ca_certs(binary_form=True) == [ssl.PEM_cert_to_DER_cert(pki.ca.read_text())]
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.minimum_version == ssl.TLSVersion.TLSv1_2


def test_client_context_defaults(pki: Pki) -> None:
    ctx = client_context()
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert len(client_context(pki.ca).get_ca_certs()) == 1
    with pytest.raises(ValueError, match="without a client certificate"):
        client_context(pki.ca, key=pki.client[1])


# --- subject_matches / peer_names on real peercert dicts ----------------------------------------------


@pytest.fixture
async def peercerts(pki: Pki) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    """(server certificate as the client sees it, client certificate as the aiohttp handler sees it)."""
    async with serve(server_context(*pki.server, client_ca=pki.ca)) as server:
        ctx = client_context(pki.ca, cert=pki.client[0], key=pki.client[1])
        _, server_cert = await handshake(server, ctx)
        await get_names(server.url, ctx)
        [client_cert] = server.peercerts
    assert server_cert and client_cert
    return server_cert, client_cert


async def test_peer_names(peercerts: tuple[Mapping[str, Any], Mapping[str, Any]]) -> None:
    server_cert, client_cert = peercerts
    assert peer_names(client_cert) == (KMS_CN,)
    assert ("IP Address", "127.0.0.1") in server_cert["subjectAltName"]
    assert peer_names(server_cert) == ("localhost",)  # CN and DNS SAN once each; IP SANs left out
    assert peer_names(None) == () and peer_names({}) == ()


async def test_subject_matches(peercerts: tuple[Mapping[str, Any], Mapping[str, Any]]) -> None:
    server_cert, client_cert = peercerts
    # CN match, exact
    assert subject_matches(client_cert, KMS_CN)
    assert subject_matches(client_cert, f" {KMS_CN} ")
    # "CN=" form
    assert subject_matches(client_cert, f"CN={KMS_CN}")
    assert subject_matches(client_cert, f"cn={KMS_CN}")
    # mismatch
    assert not subject_matches(client_cert, "cks.kms.us-east-1.amazonaws.com")
    assert not subject_matches(client_cert, KMS_CN[:-1])
    assert not subject_matches(client_cert, "*.kms.eu-west-1.amazonaws.com")
    assert not subject_matches(client_cert, KMS_CN.upper())  # the CN is compared exactly
    assert not subject_matches(client_cert, "")
    assert not subject_matches(client_cert, "CN=")
    assert not subject_matches(server_cert, "127.0.0.1")  # IP SANs are not subject names
    # SAN DNS match, case-insensitive
    assert subject_matches(server_cert, "localhost")
    assert subject_matches(server_cert, "LocalHost")
    # None / no certificate (a server without client_ca sees None)
    assert not subject_matches(None, KMS_CN)
    assert not subject_matches({}, KMS_CN)


async def test_cn_form_matches_the_cn_only(pki: Pki, tmp_path: Path) -> None:
    # a certificate whose DNS SAN differs from its CN: "CN=" must not match the SAN
    ca_key = pki.ca.with_name("ca.key")
    crt, key = make_server_cert(tmp_path, pki.ca, ca_key, "svc", ["svc.example", "alt.example"])
    async with serve(server_context(crt, key)) as server:
        _, cert = await handshake(server, client_context(pki.ca))
    assert peer_names(cert) == ("svc.example", "localhost", "alt.example")
    assert subject_matches(cert, "alt.example") and subject_matches(cert, "ALT.example")
    assert subject_matches(cert, "CN=svc.example")
    assert not subject_matches(cert, "CN=alt.example")
