"""RSA and EC keys through the real Fortanix ``sdkms`` SDK, unchanged, against a listening DSM on SQLite
and PostgreSQL, with independent oracles: every signature the lab makes is checked by ``cryptography``
with the ``pub_key`` the lab returned, and one RSA and one EC signature by the OpenSSL command line; RSA
OAEP and PKCS#1 v1.5 ciphertexts cross between the lab and ``cryptography`` both ways. The data is sent
as a digest (``hash`` + ``hash_alg``), as sdkms-cli sends it after its own digest call."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from tests.integration.test_sdkms_sdk import login_admin

MESSAGE = b"xkslab signs this message"
HASHES = {
    "SHA1": hashes.SHA1(),
    "SHA256": hashes.SHA256(),
    "SHA384": hashes.SHA384(),
    "SHA512": hashes.SHA512(),
}


@pytest.fixture
def lab(dsm_on_a_port: tuple[str, Path]) -> tuple[str, Path]:
    return dsm_on_a_port


def _digest(hash_alg: str, data: bytes = MESSAGE) -> bytearray:
    return bytearray(hashlib.new(hash_alg.lower(), data).digest())  # the SDK's models take bytearrays


def asymmetric_flow(url: str) -> dict[str, Any]:
    import sdkms.v1 as sdk
    from sdkms.v1.rest import ApiException

    admin = login_admin(sdk, url)
    keys = sdk.SecurityObjectsApi(api_client=admin)
    signer = sdk.SignAndVerifyApi(api_client=admin)
    crypt = sdk.EncryptionAndDecryptionApi(api_client=admin)
    r: dict[str, Any] = {"made": {}, "signatures": [], "errors": {}}

    def public_only(kid: str) -> Any:  # sdkms 5.6's KeyObject predates public_only: read the JSON
        return json.loads(keys.get_security_object(kid, _preload_content=False).data)["public_only"]

    def status(call: Any) -> tuple[int, str]:
        try:
            call()
        except ApiException as exc:
            return exc.status, str(exc.body)
        return 200, ""

    ops = ["SIGN", "VERIFY", "ENCRYPT", "DECRYPT", "EXPORT", "APPMANAGEABLE"]
    for size in (2048, 3072, 4096):
        key = keys.generate_security_object(
            sdk.SobjectRequest(name=f"rsa-{size}", obj_type="RSA", key_size=size, key_ops=ops)
        )
        r["made"][f"rsa-{size}"] = (key.kid, key.key_size, bytes(key.pub_key), key.obj_type.value)
    for curve in ("NistP256", "NistP384", "NistP521"):
        key = keys.generate_security_object(
            sdk.SobjectRequest(
                name=f"ec-{curve}", obj_type="EC", elliptic_curve=curve, key_ops=["SIGN", "VERIFY", "EXPORT"]
            )
        )
        r["made"][f"ec-{curve}"] = (key.kid, key.key_size, bytes(key.pub_key), key.elliptic_curve.value)

    pss = sdk.SignatureMode(pss=sdk.RsaSignaturePaddingPSS(mgf=sdk.Mgf(mgf1=sdk.MgfMgf1(hash="SHA256"))))
    for name, (kid, _size, _pub, _kind) in r["made"].items():
        plans = [("SHA256", None), ("SHA384", None), ("SHA1", None), ("SHA512", None)]
        if name.startswith("rsa"):
            plans += [("SHA256", "pss"), ("SHA256", "pkcs1")]
        for hash_alg, mode_name in plans:
            mode = {"pss": pss, "pkcs1": sdk.SignatureMode(pkcs1_v15={}), None: None}[mode_name]
            digest = _digest(hash_alg)
            signature = bytes(
                signer.sign_ex(
                    sdk.SignRequestEx(
                        key=sdk.SobjectDescriptor(kid=kid), hash_alg=hash_alg, hash=digest, mode=mode
                    )
                ).signature
            )
            lab_says = signer.verify_ex(
                sdk.VerifyRequestEx(
                    key=sdk.SobjectDescriptor(kid=kid),
                    hash_alg=hash_alg,
                    hash=digest,
                    signature=bytearray(signature),
                    mode=mode,
                )
            ).result
            tampered = bytes(signature[:-1]) + bytes([signature[-1] ^ 1])
            lab_tampered = signer.verify(
                kid,
                sdk.VerifyRequest(hash_alg=hash_alg, hash=digest, signature=bytearray(tampered), mode=mode),
            ).result
            r["signatures"].append((name, hash_alg, mode_name, signature, lab_says, lab_tampered))
        per_key = signer.sign(kid, sdk.SignRequest(hash_alg="SHA256", hash=_digest("SHA256"))).signature
        r["signatures"].append((name, "SHA256", None, bytes(per_key), True, False))

    rsa_kid = r["made"]["rsa-2048"][0]
    r["rsa_cipher"] = {}
    for mode in ("OAEP_MGF1_SHA1", "OAEP_MGF1_SHA256", "PKCS1_V15"):
        cipher = crypt.encrypt(
            rsa_kid, sdk.EncryptRequest(alg="RSA", mode=mode, plain=bytearray(b"wrapped secret"))
        )
        r["rsa_cipher"][mode] = bytes(cipher.cipher)
    r["exported"] = bytes(keys.get_security_object_value(rsa_kid).value)
    r["decrypt_fn"] = lambda mode, data: bytes(
        crypt.decrypt(rsa_kid, sdk.DecryptRequest(alg="RSA", mode=mode, cipher=bytearray(data))).plain
    )
    r["ec_export"] = bytes(keys.get_security_object_value(r["made"]["ec-NistP256"][0]).value)

    # Imports: a private key as PKCS#8 DER, and a public key alone as SubjectPublicKeyInfo DER.
    local = ec.generate_private_key(ec.SECP384R1())
    pkcs8 = local.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    spki = local.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    imported = keys.import_security_object(
        sdk.SobjectRequest(
            name="imported-ec", obj_type="EC", value=bytearray(pkcs8), key_ops=["SIGN", "VERIFY"]
        )
    )
    r["imported"] = (
        imported.elliptic_curve.value,
        bytes(imported.pub_key),
        public_only(imported.kid),
        imported.kid,
    )
    public = keys.import_security_object(
        sdk.SobjectRequest(name="public-ec", obj_type="EC", value=bytearray(spki))
    )
    r["public"] = (public_only(public.kid), bytes(public.pub_key), public.kid)
    local_sig = local.sign(MESSAGE, ec.ECDSA(hashes.SHA256()))
    r["public_verifies"] = signer.verify_ex(
        sdk.VerifyRequestEx(
            key=sdk.SobjectDescriptor(name="public-ec"),
            hash_alg="SHA256",
            hash=_digest("SHA256"),
            signature=bytearray(local_sig),
        )
    ).result
    r["public_export"] = bytes(keys.get_security_object_value(public.kid).value)
    r["local"] = local
    e = r["errors"]
    e["public_sign"] = status(
        lambda: signer.sign(public.kid, sdk.SignRequest(hash_alg="SHA256", hash=_digest("SHA256")))
    )
    no_sign = keys.generate_security_object(
        sdk.SobjectRequest(name="verify-only", obj_type="EC", elliptic_curve="NistP256", key_ops=["VERIFY"])
    )
    e["no_sign_op"] = status(
        lambda: signer.sign(no_sign.kid, sdk.SignRequest(hash_alg="SHA256", hash=_digest("SHA256")))
    )
    e["no_export_op"] = status(lambda: keys.get_security_object_value(no_sign.kid))
    e["short_hash"] = status(
        lambda: signer.sign(rsa_kid, sdk.SignRequest(hash_alg="SHA256", hash=bytearray(b"short")))
    )
    # The message itself (data), which the lab digests with hash_alg: the same PKCS#1 v1.5 signature.
    r["data_signature"] = bytes(
        signer.sign(rsa_kid, sdk.SignRequest(hash_alg="SHA256", data=bytearray(MESSAGE))).signature
    )
    e["blake"] = status(
        lambda: signer.sign(rsa_kid, sdk.SignRequest(hash_alg="Blake2b256", hash=bytearray(32)))
    )
    e["ec_mode"] = status(
        lambda: signer.sign(
            no_sign.kid,
            sdk.SignRequest(hash_alg="SHA256", hash=_digest("SHA256"), mode=sdk.SignatureMode(pkcs1_v15={})),
        )
    )
    aes = keys.generate_security_object(sdk.SobjectRequest(name="aes", obj_type="AES", key_size=256))
    e["aes_sign"] = status(
        lambda: signer.sign(aes.kid, sdk.SignRequest(hash_alg="SHA256", hash=bytearray(32)))
    )
    e["aes_as_rsa"] = status(
        lambda: crypt.encrypt(
            aes.kid, sdk.EncryptRequest(alg="RSA", mode="OAEP_MGF1_SHA1", plain=bytearray(b"x"))
        )
    )
    e["rsa_iv"] = status(
        lambda: crypt.encrypt(
            rsa_kid, sdk.EncryptRequest(alg="RSA", mode="PKCS1_V15", plain=bytearray(b"x"), iv=bytearray(16))
        )
    )
    e["rsa_gcm"] = status(
        lambda: crypt.encrypt(rsa_kid, sdk.EncryptRequest(alg="RSA", mode="GCM", plain=bytearray(b"x")))
    )
    e["ec_encrypt"] = status(
        lambda: crypt.encrypt(
            no_sign.kid, sdk.EncryptRequest(alg="EC", mode="PKCS1_V15", plain=bytearray(b"x"))
        )
    )
    e["bad_cipher"] = status(
        lambda: crypt.decrypt(
            rsa_kid, sdk.DecryptRequest(alg="RSA", mode="OAEP_MGF1_SHA1", cipher=bytearray(256))
        )
    )
    for curve in ("X25519", "NistP224"):
        e[f"curve {curve}"] = status(
            lambda c=curve: keys.generate_security_object(
                sdk.SobjectRequest(name=f"c-{c}", obj_type="EC", elliptic_curve=c)
            )
        )
    e["rsa 1024"] = status(
        lambda: keys.generate_security_object(sdk.SobjectRequest(name="small", obj_type="RSA", key_size=1024))
    )
    for kind in ("ARIA", "CERTIFICATE", "DSA"):
        e[kind] = status(
            lambda k=kind: keys.generate_security_object(
                sdk.SobjectRequest(name=f"x-{k}", obj_type=k, key_size=168)
            )
        )
    e["rsa policy"] = status(
        lambda: keys.generate_security_object(
            sdk.SobjectRequest(
                name="rsa-pol",
                obj_type="RSA",
                key_size=2048,
                rsa=sdk.RsaOptions(signature_policy=[sdk.RsaSignaturePolicy()]),
            )
        )
    )
    e["garbage import"] = status(
        lambda: keys.import_security_object(
            sdk.SobjectRequest(name="junk", obj_type="RSA", value=bytearray(b"not a key"))
        )
    )
    e["ec as rsa import"] = status(
        lambda: keys.import_security_object(
            sdk.SobjectRequest(name="wrong", obj_type="RSA", value=bytearray(pkcs8))
        )
    )
    e["curve mismatch"] = status(
        lambda: keys.import_security_object(
            sdk.SobjectRequest(
                name="mismatch", obj_type="EC", elliptic_curve="NistP256", value=bytearray(pkcs8)
            )
        )
    )
    e["rekey"] = status(lambda: keys.rotate_security_object(sdk.SobjectRequest(name="rsa-2048")))
    raw = sdk.LogsApi(api_client=admin).get_audit_logs(size=1000, _preload_content=False)
    r["audit"] = raw.data.decode()
    return r


def _oracle_verify(pub_key: bytes, hash_alg: str, mode: str | None, signature: bytes) -> bool:
    key = serialization.load_der_public_key(pub_key)
    algorithm = HASHES[hash_alg]
    try:
        if isinstance(key, rsa.RSAPublicKey):
            pad: padding.AsymmetricPadding = (
                padding.PSS(padding.MGF1(hashes.SHA256()), algorithm.digest_size)
                if mode == "pss"
                else padding.PKCS1v15()
            )
            key.verify(signature, MESSAGE, pad, algorithm)
        else:
            assert isinstance(key, ec.EllipticCurvePublicKey)
            key.verify(signature, MESSAGE, ec.ECDSA(algorithm))
    except InvalidSignature:
        return False
    return True


def _openssl_verify(
    tmp: Path, pub_key: bytes, signature: bytes, name: str
) -> subprocess.CompletedProcess[str]:
    (tmp / f"{name}.pub.der").write_bytes(pub_key)
    (tmp / f"{name}.sig").write_bytes(signature)
    (tmp / "message").write_bytes(MESSAGE)
    return subprocess.run(
        ["openssl", "dgst", "-sha256", "-keyform", "DER", "-verify", str(tmp / f"{name}.pub.der"),
         "-signature", str(tmp / f"{name}.sig"), str(tmp / "message")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


async def test_rsa_and_ec_through_the_sdkms_sdk(
    lab: tuple[str, Path], db_backend: str, tmp_path: Path
) -> None:
    url, data_dir = lab
    r = await asyncio.to_thread(asymmetric_flow, url)
    made = r["made"]
    assert [made[f"rsa-{s}"][1] for s in (2048, 3072, 4096)] == [2048, 3072, 4096]
    assert [made[f"ec-{c}"][1:4:2] for c in ("NistP256", "NistP384", "NistP521")] == [
        (None, "NistP256"),  # Fortanix returns no key_size for an EC key
        (None, "NistP384"),
        (None, "NistP521"),
    ]
    bits = {"NistP256": 256, "NistP384": 384, "NistP521": 521}
    for name, (_kid, size, pub_key, kind) in made.items():
        key = serialization.load_der_public_key(pub_key)  # pub_key: DER SubjectPublicKeyInfo
        if isinstance(key, rsa.RSAPublicKey):
            assert key.key_size == size, name
        else:
            assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.key_size == bits[kind], name

    assert len(r["signatures"]) == 3 * 7 + 3 * 5
    for name, hash_alg, mode, signature, lab_says, lab_tampered in r["signatures"]:
        assert _oracle_verify(made[name][2], hash_alg, mode, signature), (name, hash_alg, mode)
        assert (lab_says, lab_tampered) == (True, False), (name, hash_alg, mode)

    # The OpenSSL command line, for one RSA and one EC signature; a changed message fails there too.
    if shutil.which("openssl") is None:
        pytest.fail("the openssl command is needed as an oracle")
    for name in ("rsa-2048", "ec-NistP384"):
        signature = next(s[3] for s in r["signatures"] if s[0] == name and s[1] == "SHA256" and s[2] is None)
        ok = _openssl_verify(tmp_path, made[name][2], signature, name)
        assert ok.returncode == 0 and "Verified OK" in ok.stdout, ok.stderr
        bad = _openssl_verify(tmp_path, made[name][2], signature[:-2] + bytes(2), name)
        assert bad.returncode != 0

    # RSA encryption: the lab's ciphertexts open with the exported private key, and ours open in the lab.
    private = serialization.load_der_private_key(r["exported"], password=None)  # PKCS#8 DER
    assert isinstance(private, rsa.RSAPrivateKey) and private.key_size == 2048
    oaep = {
        "OAEP_MGF1_SHA1": padding.OAEP(padding.MGF1(hashes.SHA1()), hashes.SHA1(), None),
        "OAEP_MGF1_SHA256": padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None),
        "PKCS1_V15": padding.PKCS1v15(),
    }
    for mode, cipher in r["rsa_cipher"].items():
        assert private.decrypt(cipher, oaep[mode]) == b"wrapped secret", mode
        mine = private.public_key().encrypt(b"the other way " + mode.encode(), oaep[mode])
        assert await asyncio.to_thread(r["decrypt_fn"], mode, mine) == b"the other way " + mode.encode()
    ec_private = serialization.load_der_private_key(r["ec_export"], password=None)
    assert isinstance(ec_private, ec.EllipticCurvePrivateKey)
    assert (
        ec_private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        == made["ec-NistP256"][2]
    )

    local = r["local"]
    spki = local.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert r["imported"][:3] == ("NistP384", spki, False)
    assert r["public"][:2] == (True, spki) and r["public_export"] == spki
    assert r["public_verifies"] is True

    e = r["errors"]
    for what in ("public_sign", "short_hash", "blake", "ec_mode", "aes_sign", "aes_as_rsa", "rsa_iv",
                 "rsa_gcm", "ec_encrypt", "bad_cipher", "curve NistP224", "curve X25519",
                 "rsa 1024", "ARIA", "CERTIFICATE", "DSA", "rsa policy", "garbage import",
                 "ec as rsa import", "curve mismatch", "rekey"):  # fmt: skip
        assert e[what][0] == 400, (what, e[what])
    assert "X25519 is not supported by xkslab" in e["curve X25519"][1]
    assert "ARIA is not supported by xkslab" in e["ARIA"][1]
    assert "rsa.signature_policy is not implemented" in e["rsa policy"][1]
    assert _oracle_verify(made["rsa-2048"][2], "SHA256", None, r["data_signature"])
    assert e["no_sign_op"][0] in (400, 403) and "SIGN" in e["no_sign_op"][1]
    assert e["no_export_op"][0] in (400, 403) and "export" in e["no_export_op"][1].lower()
    assert e["bad_cipher"][1].count("decryption failed") == 1

    audit = r["audit"]
    assert audit.count("Signed a SHA256 hash") >= 6 and "Verified a SHA256 signature" in audit
    assert base64.b64encode(r["exported"]).decode() not in audit
    if db_backend == "sqlite":
        stored = b"".join(p.read_bytes() for p in data_dir.glob("xkslab.db*"))
        assert r["exported"] not in stored and r["ec_export"] not in stored
        assert made["rsa-2048"][2] in stored  # the public key is kept in the clear, as it may be
