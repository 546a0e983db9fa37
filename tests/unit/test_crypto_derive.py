"""The byte-level primitives behind AES CFB, OFB and CCM, DES and DES3, key derivation and agreement,
checked against published vectors (NIST SP 800-38A F.3.13-F.4.6, SP 800-38C Appendix C, RFC 5869) and,
where no vector is published for the lab's exact use, against ``cryptography`` driven independently."""

from __future__ import annotations

import pytest
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from dsm_emulator import crypto, crypto_des, derivation, symmetric
from dsm_emulator.crypto import CryptoError, IntegrityError

H = bytes.fromhex

# NIST SP 800-38A, Appendix F: the four-block plaintext and the IV every mode's example uses.
SP38A_PLAIN = H(
    "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51"
    "30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710"
)
SP38A_IV = H("000102030405060708090a0b0c0d0e0f")
AES128 = H("2b7e151628aed2a6abf7158809cf4f3c")
AES256 = H("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
SP38A = [  # (mode, key, ciphertext): F.3.13 CFB128-AES128, F.3.17 CFB128-AES256, F.4.1 OFB, F.4.5 OFB
    (
        "CFB",
        AES128,
        "3b3fd92eb72dad20333449f8e83cfb4ac8a64537a0b3a93fcde3cdad9f1ce58b"
        "26751f67a3cbb140b1808cf187a4f4dfc04b05357c5d1c0eeac4c66f9ff7f2e6",
    ),
    (
        "CFB",
        AES256,
        "dc7e84bfda79164b7ecd8486985d386039ffed143b28b1c832113c6331e5407b"
        "df10132415e54b92a13ed0a8267ae2f975a385741ab9cef82031623d55b1e471",
    ),
    (
        "OFB",
        AES128,
        "3b3fd92eb72dad20333449f8e83cfb4a7789508d16918f03f53c52dac54ed825"
        "9740051e9c5fecf64344f7a82260edcc304c6528f659c77866a510d9c1d6ae5e",
    ),
    (
        "OFB",
        AES256,
        "dc7e84bfda79164b7ecd8486985d38604febdc6740d20b3ac88f6ad82a4fb08d"
        "71ab47a086e86eedf39d1c5bba97c4080126141d67f37be8538f5a8be740e484",
    ),
]


@pytest.mark.parametrize(("mode", "key", "cipher"), SP38A)
def test_cfb_and_ofb_match_sp_800_38a(mode: str, key: bytes, cipher: str) -> None:
    out = crypto.encrypt(mode, key, SP38A_PLAIN, iv=SP38A_IV)
    assert out.cipher == H(cipher) and out.iv == SP38A_IV and out.tag is None
    assert crypto.decrypt(mode, key, H(cipher), iv=SP38A_IV) == SP38A_PLAIN
    # Stream modes: any length, no padding; a prefix encrypts to a prefix.
    assert crypto.encrypt(mode, key, SP38A_PLAIN[:21], iv=SP38A_IV).cipher == H(cipher)[:21]


# NIST SP 800-38C, Appendix C, Examples 1-3: (nonce, associated data, payload, ciphertext, tag).
SP38C_KEY = H("404142434445464748494a4b4c4d4e4f")
SP38C = [
    ("10111213141516", "0001020304050607", "20212223", "7162015b", "4dac255d"),
    (
        "1011121314151617",
        "000102030405060708090a0b0c0d0e0f",
        "202122232425262728292a2b2c2d2e2f",
        "d2a1f0e051ea5f62081a7792073d593d",
        "1fc64fbfaccd",
    ),
    (
        "101112131415161718191a1b",
        "000102030405060708090a0b0c0d0e0f10111213",
        "202122232425262728292a2b2c2d2e2f3031323334353637",
        "e3b201a9f5b71a7a9b1ceaeccd97e70b6176aad9a4428aa5",
        "484392fbc1b09951",
    ),
]


@pytest.mark.parametrize(("nonce", "ad", "plain", "cipher", "tag"), SP38C)
def test_ccm_matches_sp_800_38c(nonce: str, ad: str, plain: str, cipher: str, tag: str) -> None:
    out = crypto.encrypt("CCM", SP38C_KEY, H(plain), iv=H(nonce), aad=H(ad), tag_len_bits=len(tag) * 4)
    assert (out.cipher, out.tag, out.iv) == (H(cipher), H(tag), H(nonce))
    assert crypto.decrypt("CCM", SP38C_KEY, H(cipher), iv=H(nonce), aad=H(ad), tag=H(tag)) == H(plain)
    forged = bytes([H(tag)[0] ^ 1]) + H(tag)[1:]
    with pytest.raises(IntegrityError, match="tag mismatch"):
        crypto.decrypt("CCM", SP38C_KEY, H(cipher), iv=H(nonce), aad=H(ad), tag=forged)


def test_ccm_parameters_are_checked() -> None:
    key = bytes(16)
    out = crypto.encrypt("CCM", key, b"no nonce given")
    assert out.iv is not None and len(out.iv) == 12 and out.tag is not None and len(out.tag) == 16
    for bits in (0, 16, 40, 100, 136):
        with pytest.raises(CryptoError, match="CCM tag length"):
            crypto.encrypt("CCM", key, b"x", tag_len_bits=bits)
    with pytest.raises(CryptoError, match="requires a tag"):
        crypto.decrypt("CCM", key, b"x", iv=bytes(12))
    with pytest.raises(CryptoError, match="4 to 16 bytes"):
        crypto.decrypt("CCM", key, b"x", iv=bytes(12), tag=bytes(5))
    with pytest.raises(CryptoError, match="too long"):  # a 13-byte nonce leaves 2 bytes of length
        crypto.encrypt("CCM", key, bytes(65536), iv=bytes(13))


def _tdes(key: bytes, mode: modes.CBC | modes.ECB, data: bytes, encrypt: bool = True) -> bytes:
    full = {8: key * 3, 16: key + key[:8]}.get(len(key), key)  # K1 K1 K1, K1 K2 K1, K1 K2 K3
    cipher = Cipher(TripleDES(full), mode)
    ctx = cipher.encryptor() if encrypt else cipher.decryptor()
    return ctx.update(data) + ctx.finalize()


@pytest.mark.parametrize(("obj_type", "size"), [("DES3", 168), ("DES3", 112), ("DES", 56)])
def test_des_and_des3_match_cryptography(obj_type: str, size: int) -> None:
    key = crypto_des.generate(obj_type, size)
    assert len(key) == {168: 24, 112: 16, 56: 8}[size]
    assert all(bin(b).count("1") % 2 == 1 for b in key)  # odd parity, as DES keys carry it
    assert symmetric.key_size_of(obj_type, key) == size
    plain, iv = b"sixteen bytes!!!" + b"and more", bytes(range(8))
    padder = padding.PKCS7(64).padder()
    padded = padder.update(plain) + padder.finalize()
    cbc = crypto_des.encrypt(obj_type, "CBC", key, plain, iv=iv)
    assert cbc.cipher == _tdes(key, modes.CBC(iv), padded) and cbc.iv == iv
    assert crypto_des.decrypt(obj_type, "CBC", key, cbc.cipher, iv=iv) == plain
    ecb = crypto_des.encrypt(obj_type, "ECB", key, padded)
    assert ecb.cipher == _tdes(key, modes.ECB(), padded) and ecb.iv is None
    assert crypto_des.decrypt(obj_type, "CBCNOPAD", key, _tdes(key, modes.CBC(iv), padded), iv=iv) == padded
    kcv = _tdes(key, modes.ECB(), bytes(8))[:3].hex().upper()
    assert crypto_des.kcv(obj_type, key) == kcv == symmetric.kcv(obj_type, key)


def test_des_refusals_name_what_is_wrong() -> None:
    key = crypto_des.generate("DES3", 168)
    for mode in ("GCM", "CTR", "CFB", "KW"):
        with pytest.raises(CryptoError, match=f"mode {mode} is not available for DES"):
            crypto_des.encrypt("DES3", mode, key, bytes(8))
    with pytest.raises(CryptoError, match="IV of a DES or DES3 key must be 8 bytes"):
        crypto_des.encrypt("DES3", "CBC", key, b"x", iv=bytes(16))
    with pytest.raises(CryptoError, match="multiple of 8"):
        crypto_des.encrypt("DES3", "ECB", key, bytes(12))
    with pytest.raises(CryptoError, match="DES3 key must be 16 or 24 bytes"):
        crypto_des.encrypt("DES3", "ECB", bytes(8), bytes(8))
    with pytest.raises(IntegrityError, match="padding"):
        crypto_des.decrypt("DES3", "CBC", key, bytes(16), iv=bytes(8))
    with pytest.raises(CryptoError, match="additional authenticated data"):
        crypto_des.encrypt("DES3", "CBC", key, b"x", aad=b"ad")
    assert symmetric.key_size_of("DES3", bytes(20)) is None


def test_aes_kcv_is_the_first_three_bytes_of_a_zero_block() -> None:
    key = H("000102030405060708090a0b0c0d0e0f")
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    assert symmetric.kcv("AES", key) == (enc.update(bytes(16)) + enc.finalize())[:3].hex().upper()
    # AES-128 under the zero key of the zero block is 66e94bd4ef8a2c3b884cfa59ca342b2e (the well-known value).
    assert symmetric.kcv("AES", bytes(16)) == "66E94B"
    assert symmetric.kcv("HMAC", key) is None


# RFC 5869 Appendix A: test cases 1 (SHA-256), 3 (SHA-256, no salt or info) and 4 (SHA-1).
RFC5869 = [
    (
        "SHA256",
        "0b" * 22,
        "000102030405060708090a0b0c",
        "f0f1f2f3f4f5f6f7f8f9",
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
    ),
    (
        "SHA256",
        "0b" * 22,
        "",
        "",
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8",
    ),
    (
        "SHA1",
        "0b" * 11,
        "000102030405060708090a0b0c",
        "f0f1f2f3f4f5f6f7f8f9",
        "085a01ea1b10f36933068b56efa5ad81a4f14b822f5b091568a9cdd4f155fda2c22e422478d305f3f896",
    ),
]


@pytest.mark.parametrize(("hash_alg", "ikm", "salt", "info", "okm"), RFC5869)
def test_hkdf_matches_rfc_5869(hash_alg: str, ikm: str, salt: str, info: str, okm: str) -> None:
    mechanism = derivation.Hkdf(hash_alg, H(salt) or None, H(info) or None)
    assert derivation.derive(mechanism, "SECRET", H(ikm), "SECRET", 42) == H(okm)
    assert derivation.derive(mechanism, "SECRET", H(ikm), "SECRET", 16) == H(okm)[:16]


def test_hkdf_refusals() -> None:
    with pytest.raises(CryptoError, match=r"hkdf\.hash_alg must be one of"):
        derivation.derive(derivation.Hkdf("MD5"), "SECRET", bytes(16), "AES", 16)
    with pytest.raises(CryptoError, match="at most 8160 bytes"):
        derivation.derive(derivation.Hkdf("SHA256"), "SECRET", bytes(16), "SECRET", 8161)
    with pytest.raises(CryptoError, match="not DES3"):
        derivation.derive(derivation.Hkdf("SHA256"), "DES3", bytes(24), "AES", 16)


def test_encrypt_data_is_the_ciphertext_under_the_base_key() -> None:
    base = H("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
    data = bytes(range(32))
    ecb = Cipher(algorithms.AES(base), modes.ECB()).encryptor()
    expected = ecb.update(data) + ecb.finalize()
    mechanism = derivation.EncryptData("AES", "ECB", data)
    assert derivation.derive(mechanism, "AES", base, "AES", 32) == expected
    assert derivation.derive(mechanism, "AES", base, "HMAC", 20) == expected[:20]  # the leftmost bytes
    with pytest.raises(CryptoError, match="gives 32 bytes; the new key needs 48"):
        derivation.derive(mechanism, "AES", base, "SECRET", 48)
    with pytest.raises(CryptoError, match=r"encrypt_data\.iv is required for CBCNOPAD"):
        derivation.derive(derivation.EncryptData("AES", "CBCNOPAD", data), "AES", base, "AES", 32)
    with pytest.raises(CryptoError, match="does not match the key's type AES"):
        derivation.derive(derivation.EncryptData("DES3", "ECB", data), "AES", base, "AES", 32)
    des3 = derivation.derive(mechanism, "AES", base, "DES3", 24)
    assert des3 != expected[:24] and crypto_des.with_odd_parity(expected[:24]) == des3


def test_ecdh_is_the_shared_x_coordinate() -> None:
    alice, bob = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    pkcs8 = alice.private_bytes(ser.Encoding.DER, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    spki = bob.public_key().public_bytes(ser.Encoding.DER, ser.PublicFormat.SubjectPublicKeyInfo)
    shared = bob.exchange(ec.ECDH(), alice.public_key())  # computed from the other side
    assert derivation.ecdh(pkcs8, spki, "SECRET", 48) == shared
    assert derivation.ecdh(pkcs8, spki, "AES", 32) == shared[:32]
    with pytest.raises(CryptoError, match="gives 48 bytes; the new key needs 64"):
        derivation.ecdh(pkcs8, spki, "SECRET", 64)
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(CryptoError, match="different curves"):
        derivation.ecdh(
            pkcs8, other.public_bytes(ser.Encoding.DER, ser.PublicFormat.SubjectPublicKeyInfo), "SECRET", 16
        )
