"""Byte-level key derivation and agreement for the DSM emulator, pure like ``dsm_emulator.crypto`` (bytes
in, bytes out) and checked against published vectors (RFC 5869, NIST SP 800-38A) and ``cryptography``.

Fortanix's DeriveKeyMechanism has ``encrypt_data`` (the new key is the encryption of given data under the
base key), ``hkdf`` (RFC 5869 over the base key's material) and two BIP32 mechanisms the lab does not
emulate. Key agreement (``AgreeKeyMechanism`` ``diffie_hellman``) is ECDH between an EC private key and
an EC public key of the same curve. In both, a new key of N bytes takes the leftmost N bytes of what the
mechanism produced (the PKCS#11 rule for CKM_*_ENCRYPT_DATA and CKM_ECDH1_DERIVE without a KDF); a
mechanism that produces fewer is refused. DES and DES3 keys get their parity bits set.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from dsm_emulator import crypto_des, digests, symmetric
from dsm_emulator.crypto import CryptoError

# What each mechanism derives from, and what may be derived.
ENCRYPT_DATA_BASES = symmetric.SYMMETRIC_TYPES
HKDF_BASES = ("SECRET", "HMAC", "AES")
DERIVED_TYPES = ("AES", "DES", "DES3", "HMAC", "SECRET")
# Modes without an IV: any other mode needs one given, or the derived key would hang on an IV nobody saw.
_NO_IV_MODES = frozenset({"ECB", "KW", "KWP"})


@dataclass(frozen=True)
class EncryptData:
    """``mechanism.encrypt_data``: an EncryptRequest whose ciphertext is the new key."""

    alg: str
    mode: str
    plain: bytes
    iv: bytes | None = None
    ad: bytes | None = None
    tag_len: int | None = None


@dataclass(frozen=True)
class Hkdf:
    """``mechanism.hkdf``: RFC 5869 with ``hash_alg``, an optional salt and info."""

    hash_alg: str
    salt: bytes | None = None
    info: bytes | None = None


Mechanism = EncryptData | Hkdf


def _leftmost(produced: bytes, length: int, what: str) -> bytes:
    if len(produced) < length:
        raise CryptoError(f"{what} gives {len(produced)} bytes; the new key needs {length}")
    return produced[:length]


def _finish(key_type: str, material: bytes) -> bytes:
    return crypto_des.with_odd_parity(material) if key_type in crypto_des.DES_TYPES else material


def derive(mechanism: Mechanism, base_type: str, base: bytes, key_type: str, length: int) -> bytes:
    """``length`` bytes of new key material of ``key_type`` from the base key's material."""
    if isinstance(mechanism, EncryptData):
        if base_type not in ENCRYPT_DATA_BASES:
            raise CryptoError(
                f"encrypt_data derives from {', '.join(ENCRYPT_DATA_BASES)} keys, not {base_type}"
            )
        if mechanism.alg != base_type:
            raise CryptoError(
                f"encrypt_data.alg {mechanism.alg[:40]} does not match the key's type {base_type}"
            )
        if mechanism.iv is None and mechanism.mode not in _NO_IV_MODES:
            raise CryptoError(f"encrypt_data.iv is required for {mechanism.mode[:40]}")
        out = symmetric.encrypt(
            base_type,
            mechanism.mode,
            base,
            mechanism.plain,
            iv=mechanism.iv,
            aad=mechanism.ad,
            tag_len_bits=mechanism.tag_len,
        )
        return _finish(key_type, _leftmost(out.cipher, length, "the encrypted data"))
    if base_type not in HKDF_BASES:
        raise CryptoError(f"hkdf derives from {', '.join(HKDF_BASES)} keys, not {base_type}")
    algorithm = digests.DIGESTS.get(mechanism.hash_alg)
    if algorithm is None:
        raise CryptoError(f"hkdf.hash_alg must be one of {', '.join(digests.DIGESTS)}")
    hash_ = algorithm()
    if length > 255 * hash_.digest_size:
        raise CryptoError(f"hkdf with {mechanism.hash_alg} gives at most {255 * hash_.digest_size} bytes")
    hkdf = HKDF(algorithm=hash_, length=length, salt=mechanism.salt, info=mechanism.info)
    return _finish(key_type, hkdf.derive(base))


def ecdh(private_pkcs8: bytes, public_spki: bytes, key_type: str, length: int) -> bytes:
    """ECDH (the shared secret: the x coordinate of the product point, SEC 1 / SP 800-56A), then the
    leftmost ``length`` bytes as the new key."""
    private = serialization.load_der_private_key(private_pkcs8, password=None)
    public = serialization.load_der_public_key(public_spki)
    if not isinstance(private, ec.EllipticCurvePrivateKey) or not isinstance(
        public, ec.EllipticCurvePublicKey
    ):
        raise CryptoError("key agreement takes an EC private key and an EC public key")
    if private.curve.name != public.curve.name:
        raise CryptoError("the private and public keys are on different curves")
    shared = private.exchange(ec.ECDH(), public)
    return _finish(key_type, _leftmost(shared, length, "the shared secret"))
