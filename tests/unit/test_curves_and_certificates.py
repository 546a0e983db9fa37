"""EC keys on SecP256K1 (ECDSA) and Ed25519 (EdDSA), signatures over ``data`` as well as ``hash``, and
X.509 certificates as objects, at the DSM's handlers on SQLite and PostgreSQL: what is stored (the private
key sealed, the certificate's public key shown), what is exported (Fortanix's Default format), what is
refused (Ed25519ph, both or neither of hash and data, a certificate that signs), every call audited.
Signatures are checked by ``cryptography`` and, for one, by the OpenSSL command line."""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, x25519
from cryptography.x509.oid import NameOID
from sqlalchemy import select

from dsm_emulator.models import AuditRow, SecurityObject
from tests.unit.test_asymmetric_keys import b64, routed
from tests.unit.test_group_policies import call, refused
from tests.unit.test_group_policies import db_env as db_env  # a fixture

KEYS = "/crypto/v1/keys"


def self_signed(private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, cn: str) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=3650))
        .sign(private, hashes.SHA256())
    )


async def audit(env: SimpleNamespace, kid: str) -> list[str]:
    async with env.core.sessions() as session:
        rows = await session.scalars(select(AuditRow).where(AuditRow.object_id == kid))
        return [f"{row.outcome} {row.message}" for row in rows]


async def test_secp256k1_and_ed25519_keys_sign_and_verify(
    db_env: SimpleNamespace, aiohttp_client: Any
) -> None:
    client = await routed(db_env, aiohttp_client)
    k1 = await call(
        client, "POST", KEYS, {"name": "k1", "obj_type": "EC", "elliptic_curve": "SecP256K1"}, 201
    )
    ed = await call(
        client, "POST", KEYS,
        {"name": "ed", "obj_type": "EC", "elliptic_curve": "Ed25519", "key_ops": ["SIGN", "VERIFY", "EXPORT"]},
        201,
    )  # fmt: skip
    assert (k1["elliptic_curve"], ed["elliptic_curve"]) == ("SecP256K1", "Ed25519")
    assert k1["key_size"] is None and set(k1["key_ops"]) == {"SIGN", "VERIFY", "APPMANAGEABLE"}
    k1_public = serialization.load_der_public_key(base64.b64decode(k1["pub_key"]))
    ed_public = serialization.load_der_public_key(base64.b64decode(ed["pub_key"]))
    assert isinstance(k1_public, ec.EllipticCurvePublicKey) and k1_public.curve.name == "secp256k1"
    assert isinstance(ed_public, ed25519.Ed25519PublicKey)

    message = b"pay 10 to bob"
    # ECDSA on secp256k1, over a digest the caller computed and over the data itself.
    by_hash = {"key": {"kid": k1["kid"]}, "hash_alg": "SHA256", "hash": b64(hashlib.sha256(message).digest())}
    by_data = {"key": {"kid": k1["kid"]}, "hash_alg": "SHA256", "data": b64(message)}
    for body in (by_hash, by_data):
        signature = base64.b64decode((await call(client, "POST", "/crypto/v1/sign", body))["signature"])
        k1_public.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        verified = await call(client, "POST", "/crypto/v1/verify", {**body, "signature": b64(signature)})
        assert verified == {"kid": k1["kid"], "result": True}
    wrong = {**by_data, "data": b64(b"pay 1000 to bob"), "signature": b64(signature)}
    assert (await call(client, "POST", "/crypto/v1/verify", wrong))["result"] is False

    # Pure Ed25519 (RFC 8032): the data itself; a hash would ask for Ed25519ph.
    ed_data = {"data": b64(message)}
    signed = await call(client, "POST", f"{KEYS}/{ed['kid']}/sign", ed_data)
    signature = base64.b64decode(signed["signature"])
    assert len(signature) == 64
    ed_public.verify(signature, message)
    same = await call(client, "POST", f"{KEYS}/{ed['kid']}/sign", {**ed_data, "hash_alg": "SHA512"})
    assert same["signature"] == signed["signature"]  # EdDSA is deterministic
    check = {"data": b64(message), "signature": b64(signature)}
    assert (await call(client, "POST", f"{KEYS}/{ed['kid']}/verify", check))["result"] is True
    tampered = {**check, "signature": b64(bytes(64))}
    assert (await call(client, "POST", f"{KEYS}/{ed['kid']}/verify", tampered))["result"] is False
    ed_path = f"{KEYS}/{ed['kid']}/sign"
    prehash = {"hash_alg": "SHA512", "hash": b64(hashlib.sha512(message).digest())}
    await refused(client, "POST", ed_path, prehash, "Ed25519ph", "does not emulate")
    await refused(client, "POST", ed_path, {**ed_data, "hash_alg": "SHA256"}, "hash_alg", "SHA512")
    await refused(client, "POST", ed_path, {**ed_data, "mode": {"PKCS1_V15": {}}}, "mode", "EdDSA")
    await refused(client, "POST", ed_path, {**ed_data, **prehash}, "exactly one of hash and data")
    await refused(client, "POST", ed_path, {"hash_alg": "SHA256"}, "exactly one of hash and data")

    # Export: Ed25519 as PKCS#8 (it has no other form), the private key sealed in its row.
    exported = base64.b64decode((await call(client, "GET", f"{KEYS}/{ed['kid']}/export"))["value"])
    private = serialization.load_der_private_key(exported, password=None)
    assert isinstance(private, ed25519.Ed25519PrivateKey)
    raw = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    async with db_env.core.sessions() as session:
        row = await session.scalar(select(SecurityObject).where(SecurityObject.kid == ed["kid"]))
    assert row is not None and row.sealed_material is not None and raw not in row.sealed_material
    assert row.elliptic_curve == "Ed25519" and row.pub_key == base64.b64decode(ed["pub_key"])

    rows = await audit(db_env, ed["kid"])
    assert any(r.startswith("success Signed data (EdDSA)") for r in rows), rows
    assert any(r.startswith("success Verified a EdDSA signature of data") for r in rows), rows
    assert any(r.startswith("refused") and "Ed25519ph" not in r for r in rows), rows  # refusals audited too
    k1_rows = await audit(db_env, k1["kid"])
    assert any(r.startswith("success Signed data (SHA256)") for r in k1_rows), k1_rows


async def test_imports_of_ed25519_and_secp256k1_and_export_in_default_format(
    db_env: SimpleNamespace, aiohttp_client: Any
) -> None:
    client = await routed(db_env, aiohttp_client)
    ed_private = ed25519.Ed25519PrivateKey.generate()
    pkcs8 = ed_private.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    spki = ed_private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    made = await call(client, "PUT", KEYS, {"name": "ed-in", "obj_type": "EC", "value": b64(pkcs8)}, 201)
    assert made["elliptic_curve"] == "Ed25519" and base64.b64decode(made["pub_key"]) == spki
    public = await call(client, "PUT", KEYS, {"name": "ed-pub", "obj_type": "EC", "value": b64(spki)}, 201)
    assert public["public_only"] is True
    signature = ed_private.sign(b"from outside")
    check = {"data": b64(b"from outside"), "signature": b64(signature)}
    assert (await call(client, "POST", f"{KEYS}/{public['kid']}/verify", check))["result"] is True
    await refused(client, "POST", f"{KEYS}/{public['kid']}/sign", {"data": b64(b"x")}, "only a public key")
    wrong_curve = {"name": "ed-wrong", "obj_type": "EC", "elliptic_curve": "NistP256", "value": b64(pkcs8)}
    await refused(client, "PUT", KEYS, wrong_curve, "NistP256", "Ed25519")
    await refused(client, "POST", KEYS, {"name": "x", "obj_type": "EC", "elliptic_curve": "X25519"}, "X25519")

    x = x25519.X25519PrivateKey.generate().private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    await refused(client, "PUT", KEYS, {"name": "x-in", "obj_type": "EC", "value": b64(x)}, "not supported")

    k1 = ec.generate_private_key(ec.SECP256K1())
    sec1 = k1.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    imported = await call(client, "PUT", KEYS, {"name": "k1-in", "obj_type": "EC", "value": b64(sec1)}, 201)
    assert imported["elliptic_curve"] == "SecP256K1" and "EXPORT" in imported["key_ops"]
    # Export answers the Default format: SEC1 for EC, PKCS#1 for RSA (sdkms-cli's PEM labels say so).
    exported = base64.b64decode((await call(client, "GET", f"{KEYS}/{imported['kid']}/export"))["value"])
    assert exported == sec1
    rsa_key = await call(
        client,
        "POST",
        KEYS,
        {"name": "r", "obj_type": "RSA", "key_size": 2048, "key_ops": ["SIGN", "EXPORT"]},
        201,
    )
    rsa_der = base64.b64decode(
        (await call(client, "POST", f"{KEYS}/export", {"kid": rsa_key["kid"]}))["value"]
    )
    pem = (
        b"-----BEGIN RSA PRIVATE KEY-----\n"
        + base64.encodebytes(rsa_der)
        + b"-----END RSA PRIVATE KEY-----\n"
    )
    assert isinstance(serialization.load_pem_private_key(pem, password=None), rsa.RSAPrivateKey)


async def test_certificates_import_show_their_key_and_verify(
    db_env: SimpleNamespace, aiohttp_client: Any, tmp_path: Path
) -> None:
    client = await routed(db_env, aiohttp_client)
    ec_private = ec.generate_private_key(ec.SECP256R1())
    ec_cert = self_signed(ec_private, "ec.example")
    der = ec_cert.public_bytes(serialization.Encoding.DER)
    spki = ec_private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    made = await call(
        client, "PUT", KEYS, {"name": "cert", "obj_type": "CERTIFICATE", "value": b64(der)}, 201
    )
    assert made["obj_type"] == "CERTIFICATE" and base64.b64decode(made["pub_key"]) == spki
    assert made["elliptic_curve"] == "NistP256" and made["public_only"] is True
    assert set(made["key_ops"]) == {"VERIFY", "EXPORT", "APPMANAGEABLE"} and made["origin"] == "External"
    shown = await call(client, "GET", f"{KEYS}/{made['kid']}")
    assert base64.b64decode(shown["value"]) == der  # Fortanix always returns a certificate's value
    info = await call(client, "POST", f"{KEYS}/info", {"name": "cert"})
    assert info["value"] == shown["value"]
    listed = await call(client, "GET", f"{KEYS}?name=cert")
    assert listed[0]["kid"] == made["kid"] and "value" not in listed[0]

    rsa_private = rsa.generate_private_key(65537, 2048)
    pem = self_signed(rsa_private, "rsa.example").public_bytes(serialization.Encoding.PEM)
    rsa_cert = await call(
        client, "PUT", KEYS, {"name": "rsa-cert", "obj_type": "CERTIFICATE", "value": b64(pem), "key_ops": ["VERIFY"]},
        201,
    )  # fmt: skip
    assert rsa_cert["key_size"] == 2048 and "elliptic_curve" not in rsa_cert

    # Verify with the certificate's public key; a certificate never signs.
    message = b"signed outside the lab"
    ec_signature = ec_private.sign(message, ec.ECDSA(hashes.SHA384()))
    check = {
        "key": {"kid": made["kid"]},
        "hash_alg": "SHA384",
        "data": b64(message),
        "signature": b64(ec_signature),
    }
    assert (await call(client, "POST", "/crypto/v1/verify", check))["result"] is True
    rsa_signature = rsa_private.sign(message, padding.PKCS1v15(), hashes.SHA256())
    digest = hashlib.sha256(message).digest()
    rsa_check = {"hash_alg": "SHA256", "hash": b64(digest), "signature": b64(rsa_signature)}
    assert (await call(client, "POST", f"{KEYS}/{rsa_cert['kid']}/verify", rsa_check))["result"] is True
    await refused(
        client,
        "POST",
        f"{KEYS}/{made['kid']}/sign",
        {"hash_alg": "SHA256", "hash": b64(digest)},
        "SIGN",
    )

    # Export answers the DER certificate, whatever key_ops it has (a certificate is public).
    exported = await call(client, "GET", f"{KEYS}/{rsa_cert['kid']}/export")
    assert (
        x509.load_der_x509_certificate(base64.b64decode(exported["value"])).subject.rfc4514_string()
        == "CN=rsa.example"
    )

    await refused(
        client, "PUT", KEYS, {"name": "junk", "obj_type": "CERTIFICATE", "value": b64(b"junk")}, "X.509"
    )
    await refused(
        client, "POST", KEYS, {"name": "gen", "obj_type": "CERTIFICATE", "key_size": 256}, "only be imported"
    )
    await refused(client, "POST", f"{KEYS}/rekey", {"name": "cert"}, "rekey of CERTIFICATE")
    async with db_env.core.sessions() as session:
        row = await session.scalar(select(SecurityObject).where(SecurityObject.kid == made["kid"]))
    assert row is not None and row.pub_key == spki and row.public_only
    rows = await audit(db_env, made["kid"])
    assert any(r.startswith("success Imported CERTIFICATE key cert") for r in rows), rows
    assert any(r.startswith("success Verified a SHA384 signature of data") for r in rows), rows

    # The OpenSSL command line agrees with the lab's ECDSA signature over data.
    key = await call(
        client, "POST", KEYS, {"name": "p256", "obj_type": "EC", "elliptic_curve": "NistP256"}, 201
    )
    body = {"key": {"kid": key["kid"]}, "hash_alg": "SHA256", "data": b64(message)}
    signature = base64.b64decode((await call(client, "POST", "/crypto/v1/sign", body))["signature"])
    (tmp_path / "pub.der").write_bytes(base64.b64decode(key["pub_key"]))
    (tmp_path / "digest").write_bytes(hashlib.sha256(message).digest())
    (tmp_path / "sig").write_bytes(signature)
    openssl = [
        "openssl", "pkeyutl", "-verify", "-pubin", "-keyform", "DER", "-inkey", "pub.der",
        "-in", "digest", "-sigfile", "sig",
    ]  # fmt: skip
    ok = await asyncio.to_thread(
        subprocess.run, openssl, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert ok.returncode == 0 and "Signature Verified Successfully" in ok.stdout, ok.stdout + ok.stderr
    (tmp_path / "digest").write_bytes(hashlib.sha256(b"other").digest())
    bad = await asyncio.to_thread(subprocess.run, openssl, cwd=tmp_path, capture_output=True, timeout=60)
    assert bad.returncode != 0
