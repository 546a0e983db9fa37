"""TLS contexts shared by every xkslab service, and the mTLS client-subject check.

The XKS spec (§1.1) requires TLS 1.2 or newer and at least one of TLS_AES_256_GCM_SHA384 or
TLS_CHACHA20_POLY1305_SHA256 (TLS 1.3), or ECDHE-RSA/ECDSA-AES256-GCM-SHA384 (TLS 1.2). Servers therefore
refuse anything below 1.2 and offer only those two suites on 1.2. Python has no API for the TLS 1.3 suite
list, but OpenSSL's default puts TLS_AES_256_GCM_SHA384 first and the server's order wins.

§1.10 (mTLS): the client chain is checked during the handshake against the configured CA only, and so is
the client's name: Python's ``ssl`` has no verify callback, but a server-side connection wrapped with a
``server_hostname`` while its context has ``check_hostname`` makes OpenSSL check the *client's* certificate
against that name (``X509_VERIFY_PARAM_set1_host``) in the handshake, so a certificate from the right CA
with the wrong name gets a TLS alert (bad certificate) like any other refused certificate. OpenSSL's rule
is a host name's: the DNS SANs, else the subject CN. :func:`subject_matches` (the exact identity rule: no
wildcards, ``CN=name`` for the CN alone) still runs after the handshake for what OpenSSL's rule lets by.

A refused client certificate (none, another CA, expired) must reach the client as a TLS alert, as from
any TLS server. asyncio and uvloop drop the alert OpenSSL wrote: on a failed handshake they close the
socket without sending what is left in the outgoing buffer, so the client saw a bare EOF ("Empty reply
from server"). :class:`_AlertingContext` makes a failed server handshake report "want read" once, which
makes both event loops send the pending bytes (the alert), and fail on the next event on that
connection (the client's EOF once it read the alert, its next record, or the handshake timeout).

Certificates change while services run (``xkslab certs rotate``): :class:`ServerTls` and
:class:`ClientCertificate` reread theirs when the files change, for new connections only.
"""

from __future__ import annotations

import logging
import math
import os
import ssl
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("xkslab_shared.tls")

#: The TLS 1.2 suites the XKS spec names (OpenSSL names); one of them is used with an EC or RSA key.
XKS_TLS12_CIPHERS = "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384"
MIN_VERSION = ssl.TLSVersion.TLSv1_2


def server_context(
    cert: Path, key: Path, *, client_ca: Path | None = None, client_subject: str = ""
) -> ssl.SSLContext:
    """A TLS >= 1.2 server context that offers only the spec's suites on TLS 1.2.

    With ``client_ca`` it is mTLS: a client certificate is required and must chain to that CA alone (the
    system store is not loaded), so a certificate from any other CA, or none, fails the handshake. With
    ``client_subject`` too, a certificate that does not name it fails the handshake as well (see the
    module's docstring; :func:`subject_matches` is the exact check after it).
    """
    ctx = _AlertingContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = MIN_VERSION
    ctx.set_ciphers(XKS_TLS12_CIPHERS)
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE  # so our order (AES-256 first) picks the TLS 1.3 suite
    ctx.load_cert_chain(cert, key)
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.verify_flags |= ssl.VERIFY_X509_STRICT
        ctx.load_verify_locations(cafile=client_ca)
        name = client_subject.strip()
        name = name[3:].strip() if name[:3].upper() == "CN=" else name
        if name:
            ctx.hostname_checks_common_name = True  # KMS's certificate names itself in its CN
            ctx.check_hostname = True
            ctx.client_name = name
    return ctx


class _AlertSendingObject(ssl.SSLObject):
    """A server-side SSLObject whose failed handshake first lets the event loop send the alert."""

    _outgoing: ssl.MemoryBIO | None = None
    _failure: ssl.SSLError | None = None

    def do_handshake(self) -> None:
        if self._failure is not None:
            raise self._failure
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except ssl.SSLError as exc:
            if self._outgoing is None or not self._outgoing.pending:
                raise
            # asyncio's and uvloop's SSL protocols flush the outgoing buffer on "want read" and not on
            # an error; the failure is raised on the next call, once the alert is on the wire.
            self._failure = exc
            raise ssl.SSLWantReadError("the handshake failed; its alert is being sent") from None


class _AlertingContext(ssl.SSLContext):
    """A server context whose refused handshakes send their TLS alert on asyncio and uvloop alike."""

    sslobject_class = _AlertSendingObject
    # The name a client certificate must carry, checked by OpenSSL in the handshake (mTLS).
    client_name: str | None = None

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        if server_side and self.client_name is not None:
            server_hostname = self.client_name
        obj = super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)
        if isinstance(obj, _AlertSendingObject) and server_side:
            obj._outgoing = outgoing
        return obj


def _stamp(*paths: Path) -> tuple[tuple[int, int, int], ...] | None:
    """What says a file was replaced (inode, size, mtime), for each path; None while one is missing."""
    try:
        stats = [os.stat(path) for path in paths]
    except OSError:
        return None
    return tuple((st.st_ino, st.st_size, st.st_mtime_ns) for st in stats)


class ServerTls:
    """A listener's TLS: ``context`` is what it listens with (its client-certificate rules are fixed);
    the certificate each handshake presents is reread when ``cert`` or ``key`` changes on disk, so a
    reissued certificate (``xkslab certs rotate``) is served from the next handshake on, without a
    restart. Connections already open keep the certificate they were made with.

    How: the context's ``sni_callback`` runs on every ClientHello (with or without SNI) and moves the
    handshake to the newest context; a pair that does not load (the key replaced, the certificate not
    yet) keeps the previous one and is tried again on the next handshake. ``divert`` lets the proxy's
    TLS faults pick another context for a handshake first."""

    def __init__(
        self, cert: Path, key: Path, *, client_ca: Path | None = None, client_subject: str = ""
    ) -> None:
        self._cert, self._key, self._client_ca = cert, key, client_ca
        self._client_subject = client_subject
        self._stamp = _stamp(cert, key)
        self.context = server_context(cert, key, client_ca=client_ca, client_subject=client_subject)
        self._current = self.context
        self._divert: Callable[[], ssl.SSLContext | None] | None = None
        self.context.sni_callback = self._on_hello

    def divert(self, choose: Callable[[], ssl.SSLContext | None]) -> None:
        """``choose()`` runs first on every handshake; a context it returns is used instead."""
        self._divert = choose

    def current(self) -> ssl.SSLContext:
        """The context holding the certificate on disk now (reloaded when its files changed)."""
        stamp = _stamp(self._cert, self._key)
        if stamp is not None and stamp != self._stamp:
            try:
                fresh = server_context(
                    self._cert, self._key, client_ca=self._client_ca, client_subject=self._client_subject
                )
            except (OSError, ValueError, ssl.SSLError) as exc:
                log.warning(
                    "%s does not load yet (%s); still serving the previous certificate", self._cert, exc
                )
                return self._current
            self._current, self._stamp = fresh, stamp
            log.info("serving the new certificate %s", self._cert)
        return self._current

    def is_current(self, ssl_object: object) -> bool:
        """Whether a connection (its ``ssl_object``) was made with the newest certificate. It stats the
        files (a few microseconds), so a busy keep-alive connection learns of a rotation without waiting
        for some other client's handshake."""
        return getattr(ssl_object, "context", None) is self.current()

    def _on_hello(
        self, conn: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
    ) -> None:
        # Runs inside the handshake: an exception here would fail it with an alert, so none escapes.
        try:
            chosen = self._divert() if self._divert is not None else None
            chosen = chosen if chosen is not None else self.current()
            if chosen is not conn.context:
                conn.context = chosen
        except Exception:  # never break a handshake over the bookkeeping of certificates
            log.exception("certificate selection failed; the listener's own certificate is used")


class ClientCertificate:
    """The certificate a client context presents (mTLS), reloaded into that same context when its files
    change: OpenSSL copies a context's certificate into each new connection, so new connections present
    the new certificate and open ones keep theirs. Missing files: nothing is presented (yet)."""

    def __init__(self, context: ssl.SSLContext, cert: Path, key: Path) -> None:
        self._context, self._cert, self._key = context, cert, key
        self._stamp: tuple[tuple[int, int, int], ...] | None = None
        self._checked = -math.inf
        self.refresh()

    def refresh(self, *, at_most_every_s: float = 0.0) -> None:
        """Reload when the files changed since the last load (a stat of each). ``at_most_every_s``: look
        at the files only that long after the last look (a caller on a request path: two stats per
        request were 1-13 % of the KMS's CPU per XKS call, as much as the machine's file system lets)."""
        now = time.monotonic()
        if now - self._checked < at_most_every_s:
            return
        self._checked = now
        stamp = _stamp(self._cert, self._key)
        if stamp is None or stamp == self._stamp:
            return
        try:
            self._context.load_cert_chain(self._cert, self._key)
        except (OSError, ValueError, ssl.SSLError) as exc:
            log.warning("client certificate %s does not load yet: %s", self._cert, exc)
            return
        self._stamp = stamp
        log.info("presenting the client certificate %s", self._cert)


def client_context(
    ca: Path | None = None, *, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """A TLS >= 1.2 client context for xkslab's own clients (proxy → DSM, KMS emulator → proxy).

    It checks the server's chain and host name against ``ca``, or against the system store when ``ca`` is
    None, so pinning the lab CA never silently falls back to public CAs. With ``cert`` it also presents
    that client certificate for mTLS (``key`` may be omitted when the key is in the ``cert`` file). The
    suite list is left at OpenSSL's default because the DSM side is not bound by the XKS list.
    """
    if key is not None and cert is None:
        raise ValueError("a client key was given without a client certificate")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname by default
    ctx.minimum_version = MIN_VERSION
    if ca is None:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        ctx.load_verify_locations(cafile=ca)
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


def _common_names(peercert: Mapping[str, Any]) -> list[str]:
    # "subject" is a tuple of RDNs, each a tuple of (attribute, value) pairs
    return [value for rdn in peercert.get("subject", ()) for attr, value in rdn if attr == "commonName"]


def _dns_names(peercert: Mapping[str, Any]) -> list[str]:
    return [value for kind, value in peercert.get("subjectAltName", ()) if kind == "DNS"]


def peer_names(peercert: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The subject CN(s), then the DNS SANs, without repeats, of a certificate dict as returned by
    ``SSLSocket.getpeercert()`` or ``transport.get_extra_info("peercert")``; ``()`` for None (what a
    server without ``client_ca`` sees) or ``{}`` (a certificate that was not verified)."""
    if not peercert:
        return ()
    return tuple(dict.fromkeys([*_common_names(peercert), *_dns_names(peercert)]))


def subject_matches(peercert: Mapping[str, Any] | None, expected: str) -> bool:
    """Whether the verified peer is the configured subject (§1.10), checked after the handshake.

    ``expected`` is compared exactly with the subject CN, or case-insensitively (DNS names are, RFC 4343)
    with a DNS SAN. Written as ``CN=name`` it names the subject attribute and matches the CN only. There is
    no wildcard matching: the subject is an identity, not a host pattern. None or ``{}`` never matches.
    """
    if not peercert:
        return False
    name = expected.strip()
    cn_only = name[:3].upper() == "CN="
    if cn_only:
        name = name[3:].strip()
    if not name:
        return False
    if name in _common_names(peercert):
        return True
    return not cn_only and name.casefold() in (dns.casefold() for dns in _dns_names(peercert))
