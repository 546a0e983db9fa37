"""TLS faults on a real TLS listener: the certificate a handshake gets while a fault is in force, with and
without SNI, what a client's verification says of it, and the book's handshake accounting."""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from xks_frontend.faults import Facts, FaultBook
from xks_frontend.tls_faults import TlsFaults
from xkslab_shared import certs, tls
from xkslab_shared.faults_wire import WRONG_HOST, FaultSpecError, parse_fault

ENCRYPT = Facts("/p", "k1", "Encrypt", "Encrypt")


@pytest.fixture
def lab_tls(tmp_path: Path) -> tuple[Path, Path, Path]:
    ca_crt, ca_key = certs.make_local_ca(tmp_path)
    cert, key = certs.make_server_cert(tmp_path, ca_crt, ca_key, "xks", ["localhost"])
    return ca_crt, cert, key


async def handshake(port: int, ca: Path, host: str) -> str:
    """ "ok" and the names the server's certificate lists, or the client's verification error."""
    context = tls.client_context(ca)
    sni: str | None = host
    if host == "127.0.0.1":  # no SNI for an IP address; the expiry is still checked
        context.check_hostname, sni = False, None
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=sni)
    except ssl.SSLCertVerificationError as exc:
        return str(exc.verify_message)
    names = [value for _, value in writer.get_extra_info("peercert")["subjectAltName"]]
    writer.close()
    return "ok " + ",".join(names)


@contextlib.asynccontextmanager
async def served(context: ssl.SSLContext) -> AsyncIterator[int]:
    async def close(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(close, "127.0.0.1", 0, ssl=context)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
async def test_handshakes_get_the_faulty_certificate_while_in_force(
    lab_tls: tuple[Path, Path, Path], host: str
) -> None:
    ca, cert, key = lab_tls
    book = FaultBook(CollectorRegistry())
    faults = TlsFaults(book, cert, key, None)
    server_tls = tls.ServerTls(cert, key)
    faults.install(server_tls)
    async with served(server_tls.context) as port:
        assert (await handshake(port, ca, host)).startswith("ok localhost")
        expired = [parse_fault({"kind": "tls_expired", "count": 1})]
        faults.prepare(expired)
        book.add(expired)
        assert await handshake(port, ca, host) == "certificate has expired"
        assert (await handshake(port, ca, host)).startswith("ok")  # count=1: one handshake
        wrong = [parse_fault({"kind": "tls_wrong_host"})]
        faults.prepare(wrong)
        book.add(wrong)
        seen = await handshake(port, ca, host)
        if host == "localhost":
            assert seen.startswith("Hostname mismatch")
        else:
            assert seen == f"ok {WRONG_HOST}"  # not checked without a host name, but presented
        assert book.tls_active()
        book.clear()
        assert (await handshake(port, ca, host)).startswith("ok localhost")


def test_prepare_refuses_without_https_or_lab_ca(tmp_path: Path, lab_tls: tuple[Path, Path, Path]) -> None:
    _, cert, key = lab_tls
    fault = [parse_fault({"kind": "tls_wrong_host"})]
    faults = TlsFaults(FaultBook(CollectorRegistry()), cert, key, None)
    with pytest.raises(ValueError, match="HTTPS listener"):
        faults.prepare(fault)
    faults.install(tls.ServerTls(cert, key))
    faults.prepare([parse_fault({"kind": "drop"})])  # nothing to make for other kinds
    (tmp_path / "ca.key").unlink()
    with pytest.raises(ValueError, match="lab CA"):
        faults.prepare(fault)


def test_the_expired_certificate_keeps_the_proxys_names(lab_tls: tuple[Path, Path, Path]) -> None:
    _, cert, key = lab_tls
    faults = TlsFaults(FaultBook(CollectorRegistry()), cert, key, None)
    faults.install(tls.ServerTls(cert, key))
    faults.prepare([parse_fault({"kind": "tls_expired"}), parse_fault({"kind": "tls_wrong_host"})])
    made = cert.parent / "faults"
    assert certs.server_names(made / "tls_expired.crt") == certs.server_names(cert)
    assert certs.server_names(made / "tls_wrong_host.crt") == [WRONG_HOST]


def test_the_book_counts_handshakes_and_never_plans_tls_for_requests() -> None:
    book = FaultBook(CollectorRegistry(), rng=random.Random(3))
    book.add([parse_fault({"kind": "tls_expired", "probability": 0.0})])
    assert [book.handshake() for _ in range(5)] == [None] * 5
    book.clear()
    book.add([parse_fault({"kind": "tls_wrong_host", "count": 2})])
    assert book.plan(ENCRYPT, None) is None and book.tls_active()
    assert [book.handshake() for _ in range(3)] == ["tls_wrong_host", "tls_wrong_host", None]
    assert not book.tls_active() and book.list() == []
    assert book.injected.labels("tls_wrong_host")._value.get() == 2


@pytest.mark.parametrize("field", ["uri_prefix", "key_id", "operation", "kms_operation"])
def test_tls_faults_take_no_filters(field: str) -> None:
    value = "Encrypt" if field == "operation" else "x"
    with pytest.raises(FaultSpecError, match="TLS handshake"):
        parse_fault({"kind": "tls_expired", field: value})
    assert "expired certificate" in parse_fault({"kind": "tls_expired"}).describe()
