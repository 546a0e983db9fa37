"""Local TLS material for the lab: a private CA, server certificates for the DSM and XKS endpoints, and
client certificates for mTLS. Everything is EC P-256; private keys are written mode 0600.

``xkslab certs`` (xkslab/cli/certs.py) writes ``ca.crt``/``ca.key``,
``dsm.crt``/``dsm.key``, ``xks.crt``/``xks.key`` and the client certificate KMS presents to proxies,
``kms-client.crt``/``kms-client.key``, under ``<data-dir>/tls`` (or ``--out``), reusing an existing CA so
certificates already trusted stay valid. ``xkslab certs rotate`` reissues the three leaves (:func:`rotate`)
under the same CA; the running services pick them up from their next handshake.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_NAME = "xkslab local CA"
CA_DAYS = 3650
LEAF_DAYS = 825  # the longest validity Apple platforms accept for a TLS server certificate
DEFAULT_HOSTS = ("localhost",)
SERVER_NAMES = ("dsm", "xks")
KMS_CLIENT_NAME = "kms-client"
LOOPBACK_IPS = ("127.0.0.1", "::1")


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, pem)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _load_ca(ca_cert: Path, ca_key: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    key = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{ca_key} is not an EC private key")
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise ValueError(f"{ca_key} does not belong to {ca_cert}")
    return cert, key


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def make_local_ca(directory: Path) -> tuple[Path, Path]:
    """``directory/ca.crt`` and ``directory/ca.key`` (0600); an existing pair is reused as it is."""
    directory = Path(directory)
    cert_path, key_path = directory / "ca.crt", directory / "ca.key"
    if cert_path.exists() and key_path.exists():
        _load_ca(cert_path, key_path)  # a broken pair is an error, not something to overwrite silently
        os.chmod(key_path, 0o600)
        return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(key_path, key)
    _write_cert(cert_path, cert)
    return cert_path, key_path


def _leaf(
    directory: Path,
    ca_cert: Path,
    ca_key: Path,
    name: str,
    common_name: str,
    usage: x509.ObjectIdentifier,
    san: list[x509.GeneralName] | None,
    validity: tuple[dt.datetime, dt.datetime] | None = None,
    days: int = LEAF_DAYS,
) -> tuple[Path, Path]:
    issuer, issuer_key = _load_ca(Path(ca_cert), Path(ca_key))
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    not_before, not_after = validity or (
        now - dt.timedelta(minutes=5),
        min(now + dt.timedelta(days=days), issuer.not_valid_after_utc),
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    directory = Path(directory)
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    _write_key(key_path, key)
    _write_cert(cert_path, cert)
    return cert_path, key_path


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return x509.DNSName(host)


def make_server_cert(
    directory: Path, ca_cert: Path, ca_key: Path, name: str, hosts: list[str], *, days: int = LEAF_DAYS
) -> tuple[Path, Path]:
    """``directory/<name>.crt`` and ``.key`` for a TLS server: SANs DNS localhost, the given ``hosts``
    (DNS names or IP addresses) and IP 127.0.0.1 and ::1; serverAuth only; 825 days by default."""
    san: list[x509.GeneralName] = []
    for host in [*DEFAULT_HOSTS, *hosts, *LOOPBACK_IPS]:
        host = host.strip()
        if host and (entry := _general_name(host)) not in san:
            san.append(entry)
    common_name = next((h.strip() for h in hosts if h.strip()), "localhost")
    usage = ExtendedKeyUsageOID.SERVER_AUTH
    return _leaf(directory, ca_cert, ca_key, name, common_name[:64], usage, san, days=days)


def make_faulty_server_cert(
    directory: Path,
    ca_cert: Path,
    ca_key: Path,
    name: str,
    hosts: list[str],
    validity: tuple[dt.datetime, dt.datetime] | None = None,
) -> tuple[Path, Path]:
    """``directory/<name>.crt`` and ``.key``: a server certificate from the CA that names exactly ``hosts``
    (nothing added, unlike :func:`make_server_cert`), valid from ``validity[0]`` to ``validity[1]`` (by
    default as long as any leaf). For the proxy's TLS faults: a certificate for another host, or one whose
    notAfter has passed."""
    san = [_general_name(host.strip()) for host in hosts if host.strip()]
    if not san:
        raise ValueError("a server certificate names at least one host")
    common_name = hosts[0].strip()[:64]
    usage = ExtendedKeyUsageOID.SERVER_AUTH
    return _leaf(directory, ca_cert, ca_key, name, common_name, usage, san, validity)


def server_names(cert: Path) -> list[str]:
    """The DNS names and IP addresses a PEM certificate's subjectAltName lists, in order."""
    loaded = x509.load_pem_x509_certificate(Path(cert).read_bytes())
    try:
        san = loaded.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*san.get_values_for_type(x509.DNSName), *map(str, san.get_values_for_type(x509.IPAddress))]


def make_client_cert(
    directory: Path, ca_cert: Path, ca_key: Path, name: str, common_name: str, *, days: int = LEAF_DAYS
) -> tuple[Path, Path]:
    """``directory/<name>.crt`` and ``.key`` for a TLS client (mTLS): subject CN ``common_name``,
    clientAuth only; 825 days by default."""
    usage = ExtendedKeyUsageOID.CLIENT_AUTH
    return _leaf(directory, ca_cert, ca_key, name, common_name, usage, None, days=days)


def common_name(cert: Path) -> str | None:
    """The subject CN of a PEM certificate (None without one)."""
    loaded = x509.load_pem_x509_certificate(Path(cert).read_bytes())
    names = loaded.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


def not_after(cert: Path) -> dt.datetime:
    """A PEM certificate's notAfter (UTC)."""
    return x509.load_pem_x509_certificate(Path(cert).read_bytes()).not_valid_after_utc


def ensure_kms_client_cert(directory: Path, ca_cert: Path, ca_key: Path, subject: str) -> tuple[Path, Path]:
    """``directory/kms-client.crt`` and ``.key``, the certificate KMS presents to XKS proxies, for
    ``subject`` (``cks.kms.<region>.amazonaws.com``): kept when it exists and names that subject, made
    otherwise (a changed region gets a certificate for its own name)."""
    cert, key = directory / f"{KMS_CLIENT_NAME}.crt", directory / f"{KMS_CLIENT_NAME}.key"
    if cert.is_file() and key.is_file() and common_name(cert) == subject:
        return cert, key
    return make_client_cert(directory, ca_cert, ca_key, KMS_CLIENT_NAME, subject)


def rotate(directory: Path, kms_subject: str, *, days: int = LEAF_DAYS) -> dict[str, tuple[Path, Path]]:
    """Reissue the lab's leaves under its existing CA (``ca.crt``/``ca.key`` in ``directory``): the DSM's
    and the proxy's server certificates with the names they had (``localhost`` and loopback for one
    that is missing), and KMS's client certificate for ``kms_subject``, each with a new key, valid for
    ``days``. Each key is written before its certificate, each file replaced atomically: a service that
    reads the pair between the two writes finds them unmatched and keeps its previous pair until the
    next handshake (xkslab_shared.tls)."""
    directory = Path(directory)
    ca_cert, ca_key = directory / "ca.crt", directory / "ca.key"
    if not (ca_cert.is_file() and ca_key.is_file()):
        raise ValueError(f"no local CA in {directory} (ca.crt, ca.key): run `xkslab certs` first")
    made: dict[str, tuple[Path, Path]] = {}
    for name in SERVER_NAMES:
        old = directory / f"{name}.crt"
        hosts = [*filter(None, [common_name(old)]), *server_names(old)] if old.is_file() else []
        made[name] = make_server_cert(directory, ca_cert, ca_key, name, hosts, days=days)
    made[KMS_CLIENT_NAME] = make_client_cert(
        directory, ca_cert, ca_key, KMS_CLIENT_NAME, kms_subject, days=days
    )
    return made
