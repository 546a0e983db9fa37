"""Ed25519 and SecP256K1 keys, signatures over ``data``, and certificate objects through the real Fortanix
``sdkms`` SDK, unchanged, against a listening DSM on SQLite and PostgreSQL. Oracles: ``cryptography``
verifies the Ed25519 signatures with the ``pub_key`` the lab returned, and the OpenSSL command line the
SecP256K1 one; the lab verifies signatures made outside it, with a certificate object among others."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import subprocess
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric import padding as rsa_padding
from cryptography.x509.oid import NameOID

from tests.integration.test_sdkms_sdk import login_admin

MESSAGE = b"xkslab signs this message with new curves"


def _certificate(private: rsa.RSAPrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sdk.example")])
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    builder = x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(private.public_key())
    builder = (
        builder.serial_number(7).not_valid_before(start).not_valid_after(start + datetime.timedelta(days=30))
    )
    return builder.sign(private, hashes.SHA256())


def flow(url: str) -> dict[str, Any]:
    import sdkms.v1 as sdk
    from sdkms.v1.rest import ApiException

    admin = login_admin(sdk, url)
    keys = sdk.SecurityObjectsApi(api_client=admin)
    signer = sdk.SignAndVerifyApi(api_client=admin)
    r: dict[str, Any] = {}

    ops = ["SIGN", "VERIFY", "EXPORT", "APPMANAGEABLE"]
    ed = keys.generate_security_object(
        sdk.SobjectRequest(name="sdk-ed", obj_type="EC", elliptic_curve="Ed25519", key_ops=ops)
    )
    k1 = keys.generate_security_object(
        sdk.SobjectRequest(name="sdk-k1", obj_type="EC", elliptic_curve="SecP256K1")
    )
    r["curves"] = (ed.elliptic_curve.value, k1.elliptic_curve.value, ed.obj_type.value)
    r["ed_pub"], r["k1_pub"] = bytes(ed.pub_key), bytes(k1.pub_key)
    r["ed_sig"] = bytes(signer.sign(ed.kid, sdk.SignRequest(data=bytearray(MESSAGE))).signature)
    r["ed_verified"] = signer.verify(
        ed.kid, sdk.VerifyRequest(data=bytearray(MESSAGE), signature=bytearray(r["ed_sig"]))
    ).result
    r["ed_export"] = bytes(keys.get_security_object_value(ed.kid).value)
    try:
        signer.sign(
            ed.kid, sdk.SignRequest(hash_alg="SHA512", hash=bytearray(hashlib.sha512(MESSAGE).digest()))
        )
        r["ed_ph"] = (200, "")
    except ApiException as exc:
        r["ed_ph"] = (exc.status, str(exc.body))
    ex = sdk.SignRequestEx(key=sdk.SobjectDescriptor(kid=k1.kid), hash_alg="SHA256", data=bytearray(MESSAGE))
    r["k1_sig"] = bytes(signer.sign_ex(ex).signature)

    # An Ed25519 key imported as PKCS#8, and its public half alone (SPKI), which verifies.
    outside = ed25519.Ed25519PrivateKey.generate()
    pkcs8 = outside.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    spki = outside.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    imported = keys.import_security_object(
        sdk.SobjectRequest(name="sdk-ed-in", obj_type="EC", value=bytearray(pkcs8))
    )
    public = keys.import_security_object(
        sdk.SobjectRequest(name="sdk-ed-pub", obj_type="EC", value=bytearray(spki))
    )
    r["imported"] = (imported.elliptic_curve.value, bytes(imported.pub_key) == spki)
    r["outside_verified"] = signer.verify(
        public.kid, sdk.VerifyRequest(data=bytearray(MESSAGE), signature=bytearray(outside.sign(MESSAGE)))
    ).result

    # Certificates: DER and PEM imports; the object reads back with its value and verifies.
    cert_key = rsa.generate_private_key(65537, 2048)
    cert = _certificate(cert_key)
    der = cert.public_bytes(serialization.Encoding.DER)
    made = keys.import_security_object(
        sdk.SobjectRequest(name="sdk-cert", obj_type="CERTIFICATE", value=bytearray(der))
    )
    pem = keys.import_security_object(
        sdk.SobjectRequest(
            name="sdk-cert-pem",
            obj_type="CERTIFICATE",
            value=bytearray(cert.public_bytes(serialization.Encoding.PEM)),
        )
    )
    got = keys.get_security_object(made.kid)
    r["cert"] = (got.obj_type.value, bytes(got.value), bytes(got.pub_key), got.key_size)
    r["cert_pem_value"] = bytes(keys.get_security_object(pem.kid).value)
    signature = cert_key.sign(MESSAGE, rsa_padding.PKCS1v15(), hashes.SHA256())
    digest = bytearray(hashlib.sha256(MESSAGE).digest())
    r["cert_verified"] = signer.verify(
        made.kid, sdk.VerifyRequest(hash_alg="SHA256", hash=digest, signature=bytearray(signature))
    ).result
    r["cert_wrong"] = signer.verify(
        made.kid, sdk.VerifyRequest(hash_alg="SHA256", hash=digest, signature=bytearray(256))
    ).result
    return r


async def test_new_curves_data_signatures_and_certificates_through_the_sdk(
    dsm_on_a_port: tuple[str, Path], tmp_path: Path
) -> None:
    url, _ = dsm_on_a_port
    r = await asyncio.to_thread(flow, url)
    assert r["curves"] == ("Ed25519", "SecP256K1", "EC")

    ed_public = serialization.load_der_public_key(r["ed_pub"])
    assert isinstance(ed_public, ed25519.Ed25519PublicKey)
    ed_public.verify(r["ed_sig"], MESSAGE)  # raises if the lab's pure Ed25519 signature is wrong
    assert r["ed_verified"] is True
    exported = serialization.load_der_private_key(r["ed_export"], password=None)
    assert isinstance(exported, ed25519.Ed25519PrivateKey) and exported.public_key() == ed_public
    assert r["ed_ph"][0] == 400 and "Ed25519ph" in r["ed_ph"][1]

    k1_public = serialization.load_der_public_key(r["k1_pub"])
    assert isinstance(k1_public, ec.EllipticCurvePublicKey) and k1_public.curve.name == "secp256k1"
    (tmp_path / "k1.der").write_bytes(r["k1_pub"])
    (tmp_path / "k1.sig").write_bytes(r["k1_sig"])
    (tmp_path / "message").write_bytes(MESSAGE)
    openssl = [
        "openssl",
        "dgst",
        "-sha256",
        "-keyform",
        "DER",
        "-verify",
        "k1.der",
        "-signature",
        "k1.sig",
        "message",
    ]
    proc = await asyncio.to_thread(
        subprocess.run, openssl, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and "Verified OK" in proc.stdout, proc.stdout + proc.stderr

    assert r["imported"] == ("Ed25519", True) and r["outside_verified"] is True

    obj_type, value, pub_key, key_size = r["cert"]
    cert = x509.load_der_x509_certificate(value)
    assert obj_type == "CERTIFICATE" and key_size == 2048 and r["cert_pem_value"] == value
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert pub_key == spki
    assert r["cert_verified"] is True and r["cert_wrong"] is False
