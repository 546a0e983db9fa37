"""TLS contexts shared by every xkslab service, and the mTLS client-subject check.

The XKS spec (§1.1) requires TLS 1.2 or newer and at least one of TLS_AES_256_GCM_SHA384 or
TLS_CHACHA20_POLY1305_SHA256 (TLS 1.3), or ECDHE-RSA/ECDSA-AES256-GCM-SHA384 (TLS 1.2). Servers therefore
refuse anything below 1.2 and offer only those two suites on 1.2. Python has no API for the TLS 1.3 suite
list, but OpenSSL's default puts TLS_AES_256_GCM_SHA384 first and the server's order wins.

§1.10 (mTLS): the client chain is checked during the handshake against the configured CA only. Python's
``ssl`` has no per-connection verify callback, so the subject is checked after the handshake with
:func:`subject_matches` on ``transport.get_extra_info("peercert")``, and the connection is then refused.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: The TLS 1.2 suites the XKS spec names (OpenSSL names); one of them is used with an EC or RSA key.
XKS_TLS12_CIPHERS = "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384"
MIN_VERSION = ssl.TLSVersion.TLSv1_2


def server_context(cert: Path, key: Path, *, client_ca: Path | None = None) -> ssl.SSLContext:
    """A TLS >= 1.2 server context that offers only the spec's suites on TLS 1.2.

    With ``client_ca`` it is mTLS: a client certificate is required and must chain to that CA alone (the
    system store is not loaded), so a certificate from any other CA, or none, fails the handshake. The
    subject is not checked here; see :func:`subject_matches`.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = MIN_VERSION
    ctx.set_ciphers(XKS_TLS12_CIPHERS)
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE  # so our order (AES-256 first) picks the TLS 1.3 suite
    ctx.load_cert_chain(cert, key)
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.verify_flags |= ssl.VERIFY_X509_STRICT
        ctx.load_verify_locations(cafile=client_ca)
    return ctx


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
