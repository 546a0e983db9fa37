"""What a client sees when an mTLS server refuses its certificate (a TLS alert, on asyncio's loop and on
uvloop, which the services run on), and certificates reissued under running servers and clients
(``ServerTls``, ``ClientCertificate``): new connections get the new ones, without a restart."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvloop
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from xkslab_shared import certs, tls

KMS_CN = "cks.kms.us-east-1.amazonaws.com"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}
TLS12, TLS13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3
# OpenSSL's alert for each refusal, as the client reports it (TLS 1.3, TLS 1.2). A missing certificate
# is "certificate required" in TLS 1.3 and "handshake failure" before it.
ALERTS = {
    "none": ("TLSV13_ALERT_CERTIFICATE_REQUIRED", "SSLV3_ALERT_HANDSHAKE_FAILURE"),
    "other-ca": ("TLSV1_ALERT_UNKNOWN_CA", "TLSV1_ALERT_UNKNOWN_CA"),
    "expired": ("SSLV3_ALERT_CERTIFICATE_EXPIRED", "SSLV3_ALERT_CERTIFICATE_EXPIRED"),
    # The lab's own CA, but not KMS's name: refused in the handshake too (OpenSSL's name check).
    "other-subject": ("SSLV3_ALERT_BAD_CERTIFICATE", "SSLV3_ALERT_BAD_CERTIFICATE"),
}


@dataclass(frozen=True)
class Pki:
    dir: Path
    ca: Path
    ca_key: Path
    server: tuple[Path, Path]
    clients: dict[str, tuple[Path, Path] | None]  # "good", and the refused ones of ALERTS


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    good, other = tmp_path_factory.mktemp("lab-ca"), tmp_path_factory.mktemp("other-ca")
    ca, ca_key = certs.make_local_ca(good)
    other_ca, other_key = certs.make_local_ca(other)
    now = dt.datetime.now(dt.UTC)
    expired = certs._leaf(
        good,
        ca,
        ca_key,
        "expired",
        KMS_CN,
        ExtendedKeyUsageOID.CLIENT_AUTH,
        None,
        (now - dt.timedelta(days=30), now - dt.timedelta(days=1)),
    )
    return Pki(
        good,
        ca,
        ca_key,
        certs.make_server_cert(good, ca, ca_key, "xks", ["localhost"]),
        {
            "good": certs.make_client_cert(good, ca, ca_key, "kms", KMS_CN),
            "none": None,
            "other-ca": certs.make_client_cert(other, other_ca, other_key, "rogue", KMS_CN),
            "expired": expired,
            "other-subject": certs.make_client_cert(good, ca, ca_key, "impostor", "cks.kms.example.com"),
        },
    )


class _Ok(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport  # uvloop's transports are not asyncio.Transport instances

    def data_received(self, data: bytes) -> None:
        self.transport.write(OK)
        self.transport.close()


@contextlib.contextmanager
def threaded_server(context: ssl.SSLContext, loop: str) -> Iterator[int]:
    """A TLS server on its own event loop (asyncio's or uvloop) in a thread; yields its port."""
    event_loop = LOOPS[loop]()
    started: list[asyncio.AbstractServer] = []
    ready = threading.Event()

    async def main() -> None:
        started.append(await asyncio.get_running_loop().create_server(_Ok, "127.0.0.1", 0, ssl=context))
        ready.set()

    thread = threading.Thread(target=event_loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(main(), event_loop).result(30)
    try:
        yield int(started[0].sockets[0].getsockname()[1])
    finally:

        async def stop() -> None:
            started[0].close()

        asyncio.run_coroutine_threadsafe(stop(), event_loop).result(30)
        event_loop.call_soon_threadsafe(event_loop.stop)
        thread.join(30)
        event_loop.close()


def request(port: int, context: ssl.SSLContext) -> bytes:
    """A blocking HTTPS request as any client makes it: handshake, send, read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as conn:
            conn.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            return conn.recv(1024)


def client(pki: Pki, name: str, version: ssl.TLSVersion) -> ssl.SSLContext:
    files = pki.clients[name]
    context = tls.client_context(pki.ca, cert=files[0] if files else None, key=files[1] if files else None)
    context.maximum_version = version
    return context


@pytest.mark.parametrize("loop", sorted(LOOPS))
@pytest.mark.parametrize("version", [TLS13, TLS12], ids=["tls1.3", "tls1.2"])
@pytest.mark.parametrize("refused", sorted(ALERTS))
def test_a_refused_client_certificate_gets_a_tls_alert(
    pki: Pki, loop: str, version: ssl.TLSVersion, refused: str
) -> None:
    """Not a bare EOF (the old SSLEOFError "UNEXPECTED_EOF_WHILE_READING", curl's "Empty reply from
    server"): the alert. In TLS 1.3 the client's half of the handshake is over before the server checks
    the certificate, so the alert arrives on the first read; in TLS 1.2 it ends the handshake."""
    context = tls.server_context(*pki.server, client_ca=pki.ca, client_subject=KMS_CN)
    with threaded_server(context, loop) as port:
        assert request(port, client(pki, "good", version)).endswith(b"ok")
        with pytest.raises(ssl.SSLError) as caught:
            request(port, client(pki, refused, version))
        assert not isinstance(caught.value, ssl.SSLEOFError)
        assert caught.value.reason == ALERTS[refused][0 if version == TLS13 else 1]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_reports_the_alert_not_an_empty_reply(pki: Pki) -> None:
    with threaded_server(tls.server_context(*pki.server, client_ca=pki.ca), "uvloop") as port:
        url = f"https://localhost:{port}/"
        base = ["curl", "-sS", "--cacert", str(pki.ca), "--resolve", f"localhost:{port}:127.0.0.1"]
        good = pki.clients["good"]
        assert good is not None
        ok = subprocess.run([*base, "--cert", str(good[0]), "--key", str(good[1]), url], capture_output=True)
        assert ok.returncode == 0 and ok.stdout == b"ok", ok.stderr
        refused = subprocess.run([*base, url], capture_output=True, text=True)
        assert refused.returncode != 0
        assert "alert certificate required" in refused.stderr, refused.stderr
        assert "Empty reply" not in refused.stderr


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize("subject", [KMS_CN, f"CN={KMS_CN}"])
def test_curl_sees_a_wrong_subject_refused_in_the_handshake(pki: Pki, subject: str) -> None:
    """A client certificate from the right CA that does not name cks.kms.<region>.amazonaws.com: a TLS
    alert, never an HTTP answer."""
    context = tls.server_context(*pki.server, client_ca=pki.ca, client_subject=subject)
    with threaded_server(context, "uvloop") as port:
        url = f"https://localhost:{port}/"
        base = ["curl", "-sS", "--cacert", str(pki.ca), "--resolve", f"localhost:{port}:127.0.0.1"]
        for name in ("good", "other-subject"):
            files = pki.clients[name]
            assert files is not None
            run = subprocess.run(
                [*base, "--cert", str(files[0]), "--key", str(files[1]), url], capture_output=True, text=True
            )
            if name == "good":
                assert run.returncode == 0 and run.stdout == "ok", run.stderr
            else:
                assert run.returncode != 0 and run.stdout == ""
                assert "alert bad certificate" in run.stderr, run.stderr


# --- certificates reissued under running servers and clients ------------------------------------------


def served_serial(port: int, ca: Path, context: ssl.SSLContext | None = None) -> int:
    """The serial number of the certificate the server presents on a new connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        with (context or tls.client_context(ca)).wrap_socket(raw, server_hostname="localhost") as conn:
            der = conn.getpeercert(binary_form=True)
    assert der is not None
    return _serial(der)


def _serial(der: bytes) -> int:
    return int(x509.load_der_x509_certificate(der).serial_number)


def file_serial(cert: Path) -> int:
    return int(x509.load_pem_x509_certificate(cert.read_bytes()).serial_number)


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_a_reissued_server_certificate_is_served_from_the_next_handshake(
    pki: Pki, tmp_path: Path, loop: str
) -> None:
    for name in ("ca.crt", "ca.key", "xks.crt", "xks.key"):
        shutil.copy2(pki.dir / name, tmp_path / name)
    cert, key = tmp_path / "xks.crt", tmp_path / "xks.key"
    server_tls = tls.ServerTls(cert, key, client_ca=pki.ca)
    good = client(pki, "good", TLS13)
    with threaded_server(server_tls.context, loop) as port:
        first = file_serial(cert)
        assert served_serial(port, pki.ca, good) == first
        # Half a rotation (the key replaced, the certificate not yet): the previous pair stays in use.
        old_cert = cert.read_bytes()
        certs.make_server_cert(tmp_path, tmp_path / "ca.crt", tmp_path / "ca.key", "xks", ["localhost"])
        new_cert = cert.read_bytes()
        cert.write_bytes(old_cert)
        assert served_serial(port, pki.ca, good) == first
        cert.write_bytes(new_cert)
        os.utime(cert)
        second = file_serial(cert)
        assert second != first
        assert served_serial(port, pki.ca, good) == second
        # The client-certificate rules stay those of the listening context.
        with pytest.raises(ssl.SSLError, match="CERTIFICATE_REQUIRED"):
            request(port, client(pki, "none", TLS13))
    assert server_tls.context.verify_mode == ssl.CERT_REQUIRED
    assert server_tls.is_current(_ObjectOn(server_tls.current()))
    assert not server_tls.is_current(_ObjectOn(server_tls.context))


@dataclass
class _ObjectOn:
    context: ssl.SSLContext


SEEN: list[int] = []  # the serials of the client certificates _Recorder verified, in order


class _Recorder(asyncio.Protocol):
    """Answers once, recording the serial of the client certificate it verified."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport
        der = transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
        SEEN.append(_serial(der))

    def data_received(self, data: bytes) -> None:
        self.transport.write(OK)
        self.transport.close()


async def test_a_reissued_client_certificate_goes_out_on_the_next_connection(
    pki: Pki, tmp_path: Path
) -> None:
    for name in ("ca.crt", "ca.key"):
        shutil.copy2(pki.dir / name, tmp_path / name)
    cert, key = tmp_path / "kms-client.crt", tmp_path / "kms-client.key"
    context = tls.client_context(pki.ca)
    presented = tls.ClientCertificate(context, cert, key)  # no files yet: nothing presented
    server = await asyncio.get_running_loop().create_server(
        _Recorder, "127.0.0.1", 0, ssl=tls.server_context(*pki.server, client_ca=pki.ca)
    )
    port = int(server.sockets[0].getsockname()[1])
    SEEN.clear()

    async def call() -> None:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname="localhost"
        )
        writer.write(b"GET / HTTP/1.1\r\n\r\n")
        assert (await reader.read()).endswith(b"ok")
        writer.close()

    try:
        with pytest.raises(ssl.SSLError, match="CERTIFICATE_REQUIRED"):
            await call()
        certs.ensure_kms_client_cert(tmp_path, tmp_path / "ca.crt", tmp_path / "ca.key", KMS_CN)
        presented.refresh()
        await call()
        certs.rotate(tmp_path, KMS_CN, days=30)
        await call()  # not refreshed yet: the certificate loaded before
        presented.refresh(at_most_every_s=3600)  # the files were looked at just now: not again yet
        await call()
        presented.refresh()
        await call()
    finally:
        server.close()
    first, second = SEEN[0], SEEN[-1]
    assert SEEN == [first, first, first, second] and second == file_serial(cert) != first
