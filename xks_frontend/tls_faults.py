"""TLS faults (``tls_expired``, ``tls_wrong_host``): while one is in force, each new TLS handshake on the
proxy's HTTPS listener gets a certificate from the lab CA that has expired, or that names only
``wrong-host.invalid``, instead of the proxy's own.

How: the listener's TLS (``tls.ServerTls``) asks :meth:`TlsFaults._choose` first on every ClientHello
(its ``sni_callback`` runs with or without SNI; a client connecting to 127.0.0.1 sends none). When the
fault book says a TLS fault applies, the handshake moves to a second context that holds the faulty
certificate (and the same client-certificate rules), so nothing shared is changed and a clear takes
effect on the very next handshake.

Connections made before the fault keep the certificate they verified. So that a client soon makes a new
one, a request on such a connection is answered with ``Connection: close`` while a TLS fault is in force
(:meth:`TlsFaults.middleware`): it is served, and its connection is not kept alive. The same holds for a
connection made with a certificate that was reissued since (``xkslab certs rotate``), so that KMS soon
verifies the new one (and its XksProxyCertificateDaysToExpire follows).

The certificates are made when a TLS fault is first set (so a proxy without the lab CA refuses the fault
at once), under ``<tls dir>/faults/``, from ``ca.crt`` and ``ca.key`` beside the proxy's certificate.
"""

from __future__ import annotations

import datetime as dt
import logging
import ssl
from pathlib import Path

from aiohttp import web

from xks_frontend.faults import FaultBook
from xkslab_shared import certs, tls
from xkslab_shared.faults_wire import TLS_KINDS, WRONG_HOST, Fault
from xkslab_shared.serve import Handler

log = logging.getLogger("xks_frontend.tls_faults")

EXPIRED_FOR = dt.timedelta(days=1)  # notAfter one day ago, notBefore 30 days before that
_LIFETIME = dt.timedelta(days=30)


class TlsFaults:
    """The faulty certificates and their contexts, and the hooks that use them."""

    def __init__(
        self, book: FaultBook, cert: Path, key: Path, client_ca: Path | None, client_subject: str = ""
    ) -> None:
        self._book = book
        self._cert = cert
        self._key = key
        self._client_ca = client_ca
        self._client_subject = client_subject
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._server_tls: tls.ServerTls | None = None

    def prepare(self, faults: list[Fault]) -> None:
        """Make the certificates the TLS faults among ``faults`` need; ValueError when they cannot be."""
        for kind in dict.fromkeys(f.kind for f in faults if f.kind in TLS_KINDS):
            if kind in self._contexts:
                continue
            if self._server_tls is None:
                raise ValueError(
                    f"a {kind} fault needs the proxy's HTTPS listener (xks.tls_cert), not running"
                )
            directory = self._cert.parent
            ca_cert, ca_key = directory / "ca.crt", directory / "ca.key"
            if not (ca_cert.is_file() and ca_key.is_file()):
                raise ValueError(f"a {kind} fault needs the lab CA (ca.crt, ca.key) in {directory}")
            try:
                made = self._make(kind, directory / "faults", ca_cert, ca_key)
                self._contexts[kind] = tls.server_context(
                    *made, client_ca=self._client_ca, client_subject=self._client_subject
                )
            except (OSError, ValueError, ssl.SSLError) as exc:
                raise ValueError(f"cannot make the {kind} certificate: {exc}") from None
            log.info("made the certificate for %s faults: %s", kind, made[0])

    def _make(self, kind: str, directory: Path, ca_cert: Path, ca_key: Path) -> tuple[Path, Path]:
        if kind == "tls_wrong_host":
            return certs.make_faulty_server_cert(directory, ca_cert, ca_key, kind, [WRONG_HOST])
        # Everything as the proxy's own certificate has it, but the dates.
        hosts = certs.server_names(self._cert) or ["localhost"]
        not_after = dt.datetime.now(dt.UTC).replace(microsecond=0) - EXPIRED_FOR
        validity = (not_after - _LIFETIME, not_after)
        return certs.make_faulty_server_cert(directory, ca_cert, ca_key, kind, hosts, validity)

    def install(self, server_tls: tls.ServerTls) -> None:
        """Hook the HTTPS listener's TLS (called once it is built)."""
        server_tls.divert(self._choose)
        self._server_tls = server_tls

    def _choose(self) -> ssl.SSLContext | None:
        # Runs inside the handshake (ServerTls catches what escapes, so a handshake never breaks on it).
        kind = self._book.handshake()
        return None if kind is None else self._contexts.get(kind)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if request.secure and (self._book.tls_active() or not self._on_current_certificate(request)):
            response.force_close()  # the next request needs a new connection, and so a new handshake
        return response

    def _on_current_certificate(self, request: web.Request) -> bool:
        if self._server_tls is None or request.transport is None:
            return True
        return self._server_tls.is_current(request.transport.get_extra_info("ssl_object"))
