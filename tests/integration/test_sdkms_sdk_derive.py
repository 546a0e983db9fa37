"""Derivation, agreement, KCVs, DES3 keys and the AES CFB, OFB and CCM modes through the real Fortanix
``sdkms`` SDK, unchanged, against a listening DSM on SQLite and PostgreSQL. Independent oracles: every
derived, agreed or encrypted value is recomputed with ``cryptography`` from material the test chose (or
exported), and ECDH from the other party's side."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.decrepit.ciphers.modes import CFB, OFB
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESCCM

from tests.integration.test_sdkms_sdk import login_admin

BASE = bytes(range(32))
DATA, IV = bytes(range(100, 132)), bytes(range(16))
CCM_NONCE, CCM_AD = bytes(range(13)), b"associated"


def _pkcs8(key: ec.EllipticCurvePrivateKey) -> bytearray:
    return bytearray(key.private_bytes(ser.Encoding.DER, ser.PrivateFormat.PKCS8, ser.NoEncryption()))


def derive_flow(url: str, alice: ec.EllipticCurvePrivateKey, bob_public: bytes) -> dict[str, Any]:
    import sdkms.v1 as sdk
    from sdkms.v1.rest import ApiException

    admin = login_admin(sdk, url)
    keys = sdk.SecurityObjectsApi(api_client=admin)
    crypt = sdk.EncryptionAndDecryptionApi(api_client=admin)
    r: dict[str, Any] = {"errors": {}}

    def status(call: Any) -> tuple[int, str]:
        try:
            call()
        except ApiException as exc:
            return exc.status, str(exc.body)
        return 200, ""

    def value(kid: str) -> bytes:
        return bytes(keys.get_security_object_value(kid).value)

    base = keys.import_security_object(
        sdk.SobjectRequest(
            name="base", obj_type="AES", value=bytearray(BASE), key_ops=["DERIVEKEY", "ENCRYPT"]
        )
    )
    mechanism = sdk.DeriveKeyMechanism(
        encrypt_data=sdk.EncryptRequest(alg="AES", mode="CBCNOPAD", plain=bytearray(DATA), iv=bytearray(IV))
    )
    derived = keys.derive_key(
        base.kid,
        sdk.DeriveKeyRequest(
            name="derived", key_type="AES", key_size=256, mechanism=mechanism, key_ops=["ENCRYPT", "EXPORT"]
        ),
    )
    r["derived"] = (
        derived.obj_type.value,
        derived.key_size,
        derived.origin.value,
        value(derived.kid),
        derived.kcv,
    )
    ecb = sdk.DeriveKeyMechanism(
        encrypt_data=sdk.EncryptRequest(alg="AES", mode="ECB", plain=bytearray(DATA))
    )
    ex = keys.derive_key_ex(
        sdk.DeriveKeyRequestEx(
            key=sdk.SobjectDescriptor(name="base"),
            name="derived-ex",
            key_type="HMAC",
            key_size=160,
            mechanism=ecb,
            key_ops=["MACGENERATE", "EXPORT"],
        )
    )
    r["derived_ex"] = (ex.obj_type.value, ex.key_size, value(ex.kid))
    transient = keys.derive_key_ex(
        sdk.DeriveKeyRequestEx(
            key=sdk.SobjectDescriptor(kid=base.kid),
            name="t",
            key_type="AES",
            key_size=128,
            mechanism=ecb,
            transient=True,
            key_ops=["EXPORT"],
        )
    )
    r["transient"] = (
        transient.kid,
        bytes(
            keys.get_security_object_value_ex(
                sdk.SobjectDescriptor(transient_key=transient.transient_key)
            ).value
        ),
    )

    # Agreement: our private key and the other party's public key, both imported.
    ours = keys.import_security_object(
        sdk.SobjectRequest(name="ours", obj_type="EC", value=_pkcs8(alice), key_ops=["AGREEKEY", "SIGN"])
    )
    theirs = keys.import_security_object(
        sdk.SobjectRequest(name="theirs", obj_type="EC", value=bytearray(bob_public), key_ops=["AGREEKEY"])
    )
    agreed = keys.agree_key(
        sdk.AgreeKeyRequest(
            private_key=sdk.SobjectDescriptor(kid=ours.kid),
            public_key=sdk.SobjectDescriptor(kid=theirs.kid),
            name="agreed",
            key_size=256,
            key_type="SECRET",
            mechanism="diffie_hellman",
            key_ops=["EXPORT", "DERIVEKEY"],
        )
    )
    r["agreed"] = (agreed.obj_type.value, value(agreed.kid))

    # KCVs: the route's bytes, the KeyObject's hex, and verify_kcv both ways.
    shown = keys.get_security_object(base.kid)
    r["kcv"] = (bytes(keys.get_security_object_kcv(sdk.SobjectDescriptor(kid=base.kid)).kcv), shown.kcv)
    b64_base = base64.b64encode(BASE).decode()
    r["verify_kcv"] = [
        keys.verify_kcv(sdk.VerifyKcvRequest(kcv=kcv, value=b64_base, obj_type="AES")).verified
        for kcv in (shown.kcv, "000000")
    ]

    # DES3 keys, and the AES modes CFB, OFB and CCM.
    des3 = keys.generate_security_object(
        sdk.SobjectRequest(
            name="des3", obj_type="DES3", key_size=168, key_ops=["ENCRYPT", "DECRYPT", "EXPORT"]
        )
    )
    out = crypt.encrypt(
        des3.kid, sdk.EncryptRequest(alg="DES3", mode="CBC", plain=bytearray(b"triple DES data"))
    )
    back = crypt.decrypt(des3.kid, sdk.DecryptRequest(alg="DES3", mode="CBC", cipher=out.cipher, iv=out.iv))
    r["des3"] = (
        des3.key_size,
        des3.kcv,
        value(des3.kid),
        bytes(out.cipher),
        bytes(out.iv),
        bytes(back.plain),
    )
    aes = keys.import_security_object(
        sdk.SobjectRequest(name="aes", obj_type="AES", value=bytearray(BASE), key_ops=["ENCRYPT", "DECRYPT"])
    )
    for mode in ("CFB", "OFB"):
        out = crypt.encrypt_ex(
            sdk.EncryptRequestEx(
                key=sdk.SobjectDescriptor(kid=aes.kid),
                alg="AES",
                mode=mode,
                plain=bytearray(b"stream mode, odd length"),
            )
        )
        r[mode] = (bytes(out.cipher), bytes(out.iv))
    ccm = crypt.encrypt(
        aes.kid,
        sdk.EncryptRequest(
            alg="AES",
            mode="CCM",
            plain=bytearray(b"ccm"),
            iv=bytearray(CCM_NONCE),
            ad=bytearray(CCM_AD),
            tag_len=96,
        ),
    )
    opened = crypt.decrypt(
        aes.kid,
        sdk.DecryptRequest(
            alg="AES", mode="CCM", cipher=ccm.cipher, iv=ccm.iv, ad=bytearray(CCM_AD), tag=ccm.tag
        ),
    )
    r["CCM"] = (bytes(ccm.cipher), bytes(ccm.tag), bytes(opened.plain))

    e = r["errors"]
    e["no DERIVEKEY"] = status(
        lambda: keys.derive_key(
            aes.kid, sdk.DeriveKeyRequest(name="x", key_type="AES", key_size=256, mechanism=ecb)
        )
    )
    e["agree AES"] = status(
        lambda: keys.agree_key(
            sdk.AgreeKeyRequest(
                private_key=sdk.SobjectDescriptor(kid=ours.kid),
                public_key=sdk.SobjectDescriptor(kid=base.kid),
                name="y",
                key_size=256,
                key_type="SECRET",
                mechanism="diffie_hellman",
            )
        )
    )
    e["DES3 GCM"] = status(
        lambda: crypt.encrypt(des3.kid, sdk.EncryptRequest(alg="DES3", mode="GCM", plain=bytearray(b"x")))
    )
    e["kcv of EC"] = status(lambda: keys.get_security_object_kcv(sdk.SobjectDescriptor(kid=ours.kid)))
    raw = sdk.LogsApi(api_client=admin).get_audit_logs(size=1000, _preload_content=False)
    r["audit"] = [hit["_source"]["message"] for hit in json.loads(raw.data)["hits"]]
    return r


async def test_derive_agree_kcv_des3_and_modes_through_the_sdkms_sdk(
    dsm_on_a_port: tuple[str, Path], db_backend: str
) -> None:
    url, _data_dir = dsm_on_a_port
    alice, bob = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    bob_public = bob.public_key().public_bytes(ser.Encoding.DER, ser.PublicFormat.SubjectPublicKeyInfo)
    r = await asyncio.to_thread(derive_flow, url, alice, bob_public)

    cbc = Cipher(algorithms.AES(BASE), modes.CBC(IV)).encryptor()
    expected = cbc.update(DATA) + cbc.finalize()
    ecb = Cipher(algorithms.AES(BASE), modes.ECB()).encryptor()
    ecb_out = ecb.update(DATA) + ecb.finalize()
    kind, size, origin, material, kcv = r["derived"]
    assert (kind, size, origin, material) == ("AES", 256, "FortanixHSM", expected)
    zero = Cipher(algorithms.AES(expected), modes.ECB()).encryptor()
    assert kcv == (zero.update(bytes(16)) + zero.finalize())[:3].hex().upper()
    assert r["derived_ex"] == ("HMAC", 160, ecb_out[:20])
    assert r["transient"] == (None, ecb_out[:16])
    assert r["agreed"] == ("SECRET", bob.exchange(ec.ECDH(), alice.public_key()))

    kcv_bytes, kcv_hex = r["kcv"]
    base_zero = Cipher(algorithms.AES(BASE), modes.ECB()).encryptor()
    assert kcv_bytes == base_zero.update(bytes(16))[:3] and kcv_hex == kcv_bytes.hex().upper()
    assert r["verify_kcv"] == [True, False]

    size, des3_kcv, des3_key, cipher, iv, plain = r["des3"]
    assert size == 168 and len(des3_key) == 24 and plain == b"triple DES data"
    dec = Cipher(TripleDES(des3_key), modes.CBC(iv)).decryptor()
    unpadder = padding.PKCS7(64).unpadder()
    padded = dec.update(cipher) + dec.finalize()
    assert unpadder.update(padded) + unpadder.finalize() == b"triple DES data"
    check = Cipher(TripleDES(des3_key), modes.ECB()).encryptor()
    assert des3_kcv == check.update(bytes(8))[:3].hex().upper()
    for mode, cls in (("CFB", CFB), ("OFB", OFB)):
        cipher, iv = r[mode]
        dec = Cipher(algorithms.AES(BASE), cls(iv)).decryptor()
        assert dec.update(cipher) + dec.finalize() == b"stream mode, odd length"
    cipher, tag, plain = r["CCM"]
    assert len(tag) == 12 and plain == b"ccm"
    assert AESCCM(BASE, tag_length=12).decrypt(CCM_NONCE, cipher + tag, CCM_AD) == b"ccm"

    e = r["errors"]
    assert e["no DERIVEKEY"][0] == 400 and "operation DERIVEKEY is not allowed" in e["no DERIVEKEY"][1]
    assert e["agree AES"][0] == 400 and "AGREEKEY" in e["agree AES"][1]
    assert e["DES3 GCM"][0] == 400 and "mode GCM is not available for DES and DES3" in e["DES3 GCM"][1]
    assert e["kcv of EC"][0] == 400 and "not EC" in e["kcv of EC"][1]
    audit = "\n".join(r["audit"])
    assert "Derived a new AES key from key" in audit and "Derived AES key derived" in audit
    assert "Agreed a new SECRET key from keys" in audit and "Read the KCV of key" in audit
    assert base64.b64encode(expected).decode() not in audit
