"""Local TLS material (``xkslab_shared.certs``): a CA and certificates that a real HTTPS server presents."""

from __future__ import annotations

import ipaddress
import ssl
import stat
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from xkslab.cli.certs import certs_command
from xkslab_shared.certs import make_client_cert, make_local_ca, make_server_cert
from xkslab_shared.config import Settings


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_ca_and_leaf_certificates(tmp_path: Path) -> None:
    ca_crt, ca_key = make_local_ca(tmp_path)
    ca = load(ca_crt)
    assert mode(ca_key) == 0o600
    assert ca.subject.rfc4514_string() == "CN=xkslab local CA" and ca.issuer == ca.subject
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert ca.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert 3640 <= (ca.not_valid_after_utc - ca.not_valid_before_utc).days <= 3660

    # reused, not regenerated
    again = make_local_ca(tmp_path)
    assert again == (ca_crt, ca_key) and load(ca_crt).serial_number == ca.serial_number

    crt, key = make_server_cert(tmp_path, ca_crt, ca_key, "dsm", ["dsm.example", "10.1.2.3"])
    assert mode(key) == 0o600 and crt.name == "dsm.crt"
    leaf = load(crt)
    assert leaf.issuer == ca.subject
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "dsm.example"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
        ipaddress.ip_address("10.1.2.3"),
    }
    assert list(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH
    ]
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert 820 <= (leaf.not_valid_after_utc - leaf.not_valid_before_utc).days <= 830

    ccrt, ckey = make_client_cert(tmp_path, ca_crt, ca_key, "client", "my-app")
    client = load(ccrt)
    assert mode(ckey) == 0o600
    assert client.subject.rfc4514_string() == "CN=my-app"
    assert list(client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]


async def _serve(crt: Path, key: Path, client_ca: Path | None = None) -> tuple[web.AppRunner, int]:
    async def hello(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        return web.Response(text="ok" if peer is None else "ok " + str(dict(x[0] for x in peer["subject"])))

    app = web.Application()
    app.router.add_get("/", hello)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(crt, key)
    if client_ca is not None:
        ctx.load_verify_locations(client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, port


async def test_https_server_trusted_only_through_the_ca(tmp_path: Path) -> None:
    ca_crt, ca_key = make_local_ca(tmp_path)
    crt, key = make_server_cert(tmp_path, ca_crt, ca_key, "dsm", [])
    runner, port = await _serve(crt, key)
    try:
        trusting = ssl.create_default_context(cafile=str(ca_crt))
        async with aiohttp.ClientSession() as session:
            for host in ("127.0.0.1", "localhost"):
                async with session.get(f"https://{host}:{port}/", ssl=trusting) as resp:
                    assert resp.status == 200 and await resp.text() == "ok"
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                async with session.get(f"https://127.0.0.1:{port}/", ssl=ssl.create_default_context()):
                    pass
    finally:
        await runner.cleanup()


async def test_mutual_tls_with_a_client_certificate(tmp_path: Path) -> None:
    ca_crt, ca_key = make_local_ca(tmp_path)
    crt, key = make_server_cert(tmp_path, ca_crt, ca_key, "xks", [])
    ccrt, ckey = make_client_cert(tmp_path, ca_crt, ca_key, "client", "my-app")
    runner, port = await _serve(crt, key, client_ca=ca_crt)
    try:
        ctx = ssl.create_default_context(cafile=str(ca_crt))
        ctx.load_cert_chain(ccrt, ckey)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"https://127.0.0.1:{port}/", ssl=ctx) as resp:
                assert resp.status == 200 and await resp.text() == "ok {'commonName': 'my-app'}"
            no_cert = ssl.create_default_context(cafile=str(ca_crt))
            with pytest.raises(aiohttp.ClientError):
                async with session.get(f"https://127.0.0.1:{port}/", ssl=no_cert) as resp:
                    await resp.read()
    finally:
        await runner.cleanup()


def test_certs_command(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    result = CliRunner().invoke(certs_command, ["--hosts", "dsm.test, 192.0.2.1"], obj=settings)
    assert result.exit_code == 0, result.output
    out = tmp_path / "data" / "tls"
    for name in ("ca", "dsm", "xks"):
        assert (out / f"{name}.crt").is_file() and mode(out / f"{name}.key") == 0o600
        assert str(out / f"{name}.crt") in result.output
    assert "SSL_CERT_FILE" in result.output and "REQUESTS_CA_BUNDLE" in result.output
    assert "--ssl-ca-cert" in result.output
    san = load(out / "xks.crt").extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "dsm.test" in san.get_values_for_type(x509.DNSName)
    ca_serial = load(out / "ca.crt").serial_number

    other = tmp_path / "elsewhere"
    result = CliRunner().invoke(certs_command, ["--out", str(other)], obj=settings)
    assert result.exit_code == 0, result.output
    assert (other / "dsm.crt").is_file() and load(out / "ca.crt").serial_number == ca_serial
    # running again reuses the CA
    assert CliRunner().invoke(certs_command, [], obj=settings).exit_code == 0
    assert load(out / "ca.crt").serial_number == ca_serial


def test_certs_makes_kms_client_certificate_and_rotate_reissues_the_leaves(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    out = tmp_path / "data" / "tls"
    refused = CliRunner().invoke(certs_command, ["rotate"], obj=settings)
    assert refused.exit_code == 1 and "no local CA" in refused.output

    made = CliRunner().invoke(certs_command, ["--hosts", "proxy.test"], obj=settings)
    assert made.exit_code == 0, made.output
    client = load(out / "kms-client.crt")
    assert client.subject.rfc4514_string() == "CN=cks.kms.us-east-1.amazonaws.com"
    assert mode(out / "kms-client.key") == 0o600 and str(out / "kms-client.crt") in made.output
    before = {name: load(out / f"{name}.crt") for name in ("ca", "dsm", "xks", "kms-client")}

    rotated = CliRunner().invoke(certs_command, ["rotate", "--days", "30", "--json"], obj=settings)
    assert rotated.exit_code == 0, rotated.output
    after = {name: load(out / f"{name}.crt") for name in before}
    assert after["ca"] == before["ca"]  # the CA stays: everything it signed stays trusted
    for name in ("dsm", "xks", "kms-client"):
        assert after[name].serial_number != before[name].serial_number
        assert after[name].public_key() != before[name].public_key()  # a new key, too
        assert after[name].subject == before[name].subject and after[name].issuer == before["ca"].subject
        assert 29 <= (after[name].not_valid_after_utc - after[name].not_valid_before_utc).days <= 30
        assert mode(out / f"{name}.key") == 0o600
    names = after["xks"].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "proxy.test" in names.get_values_for_type(x509.DNSName)  # the names it had are kept
    too_long = CliRunner().invoke(certs_command, ["rotate", "--days", "900"], obj=settings)
    assert too_long.exit_code == 2
