"""Pure RSA and EC primitives over DER bytes: generate, import, sign, verify, RSA encrypt and decrypt.

A key pair is stored as its PKCS#8 PrivateKeyInfo DER (sealed like every other material) and its
SubjectPublicKeyInfo DER (``pub_key``, public); a public-only object stores the SPKI as its material.
Inputs are Fortanix's names (``NistP256``, ``SHA256``, ``OAEP_MGF1_SHA256``, ``{"PSS": {...}}``); what the
lab does not implement is a CryptoError naming it, which the key service answers as a 400.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

from dsm_emulator.crypto import CryptoError

ASYMMETRIC_TYPES = ("RSA", "EC")
RSA_KEY_SIZES = (2048, 3072, 4096)
RSA_EXPONENTS = (3, 65537)  # what the crypto library generates; 65537 when none is asked for
CURVES: Mapping[str, ec.EllipticCurve] = {
    "NistP256": ec.SECP256R1(),
    "NistP384": ec.SECP384R1(),
    "NistP521": ec.SECP521R1(),
}
_CURVE_NAMES = {curve.name: name for name, curve in CURVES.items()}
# Fortanix EllipticCurve values the lab knows of but does not implement (named in the refusal).
UNSUPPORTED_CURVES = frozenset(
    {"SecP192K1", "SecP224K1", "SecP256K1", "NistP192", "NistP224", "Gost256A", "Ed25519", "X25519", "X448"}
)
HASHES: Mapping[str, type[hashes.HashAlgorithm]] = {
    "SHA1": hashes.SHA1,
    "SHA256": hashes.SHA256,
    "SHA384": hashes.SHA384,
    "SHA512": hashes.SHA512,
}
# Fortanix DigestAlgorithm values not offered for signatures here.
UNSUPPORTED_HASHES = frozenset(
    {"Blake2b256", "Blake2b384", "Blake2b512", "Blake2s256", "RIPEMD160", "Ssl3", "SHA224", "Streebog256",
     "Streebog512", "Sha3_224", "Sha3_256", "Sha3_384", "Sha3_512"}
)  # fmt: skip
RSA_ENCRYPTION_MODES: Mapping[str, type[hashes.HashAlgorithm] | None] = {
    "PKCS1_V15": None,
    "OAEP_MGF1_SHA1": hashes.SHA1,
    "OAEP_MGF1_SHA256": hashes.SHA256,
    "OAEP_MGF1_SHA384": hashes.SHA384,
    "OAEP_MGF1_SHA512": hashes.SHA512,
}


@dataclass(frozen=True)
class KeyPair:
    """What is stored for an RSA or EC object: ``material`` is sealed, the rest is not secret."""

    material: bytes
    pub_key: bytes
    key_size: int
    elliptic_curve: str | None
    public_only: bool


def _spki(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _pkcs8(key: PrivateKeyTypes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def check_curve(name: str) -> ec.EllipticCurve:
    curve = CURVES.get(name)
    if curve is not None:
        return curve
    if name in UNSUPPORTED_CURVES:
        raise CryptoError(f"elliptic_curve {name} is not supported by xkslab (NistP256, NistP384, NistP521)")
    raise CryptoError(f"elliptic_curve must be one of {', '.join(CURVES)}")


def generate(obj_type: str, *, key_size: int | None, curve: str | None, exponent: int | None) -> KeyPair:
    if obj_type == "RSA":
        if key_size not in RSA_KEY_SIZES:
            raise CryptoError(f"key_size of an RSA key must be one of {', '.join(map(str, RSA_KEY_SIZES))}")
        if exponent is not None and exponent not in RSA_EXPONENTS:
            raise CryptoError("the RSA public exponent must be 3 or 65537")
        private: PrivateKeyTypes = rsa.generate_private_key(exponent or 65537, key_size)
        return KeyPair(_pkcs8(private), _spki(private.public_key()), key_size, None, False)
    if curve is None:
        raise CryptoError("elliptic_curve is required for an EC key")
    private = ec.generate_private_key(check_curve(curve))
    return KeyPair(_pkcs8(private), _spki(private.public_key()), private.curve.key_size, curve, False)


def load(obj_type: str, value: bytes, *, curve: str | None) -> KeyPair:
    """An imported value: a private key (PKCS#8, or PKCS#1/SEC1 DER) or a public one (SPKI DER)."""
    private: PrivateKeyTypes | None = None
    try:
        private = serialization.load_der_private_key(value, password=None)
        public = private.public_key()
    except (ValueError, TypeError):
        try:
            public = serialization.load_der_public_key(value)
        except (ValueError, TypeError):
            raise CryptoError(
                f"value must be a DER {obj_type} private key (PKCS#8) or public key (SubjectPublicKeyInfo)"
            ) from None
    # Stored as PKCS#8 whatever form came in (PKCS#1 and SEC1 too), or as the SPKI when public only.
    material = _spki(public) if private is None else _pkcs8(private)
    if obj_type == "RSA" and isinstance(public, rsa.RSAPublicKey):
        if public.key_size not in RSA_KEY_SIZES:
            sizes = ", ".join(map(str, RSA_KEY_SIZES))
            raise CryptoError(f"RSA keys of {public.key_size} bits are not supported by xkslab ({sizes})")
        return KeyPair(material, _spki(public), public.key_size, None, private is None)
    if obj_type == "EC" and isinstance(public, ec.EllipticCurvePublicKey):
        name = _CURVE_NAMES.get(public.curve.name)
        if name is None:
            raise CryptoError(f"the curve {public.curve.name} is not supported by xkslab")
        if curve is not None and curve != name:
            raise CryptoError(f"elliptic_curve {curve} does not match the key's curve {name}")
        return KeyPair(material, _spki(public), public.curve.key_size, name, private is None)
    raise CryptoError(f"value is not an {obj_type} key")


# ----------------------------------------------------------------------------- signatures


def hash_algorithm(name: str, what: str = "hash_alg") -> hashes.HashAlgorithm:
    algorithm = HASHES.get(name)
    if algorithm is not None:
        return algorithm()
    if name in UNSUPPORTED_HASHES:
        raise CryptoError(f"{what} {name} is not supported by xkslab ({', '.join(HASHES)})")
    raise CryptoError(f"{what} must be one of {', '.join(HASHES)}")


def _rsa_padding(
    mode: Mapping[str, Any] | None, algorithm: hashes.HashAlgorithm
) -> padding.AsymmetricPadding:
    """A Fortanix SignatureMode: ``{"PKCS1_V15": {}}`` (also the default, as sdkms-cli sends none) or
    ``{"PSS": {"mgf": {"mgf1": {"hash": "SHA256"}}}}``, salt as long as the digest (Fortanix's choice)."""
    if mode is None or list(mode) == ["PKCS1_V15"]:
        return padding.PKCS1v15()
    if list(mode) != ["PSS"] or not isinstance(mode["PSS"], dict):
        raise CryptoError('mode must be {"PKCS1_V15": {}} or {"PSS": {"mgf": {"mgf1": {"hash": ...}}}}')
    pss = {k: v for k, v in mode["PSS"].items() if v is not None}
    mgf_hash = algorithm
    if pss:
        mgf = pss.get("mgf")
        if set(pss) != {"mgf"} or not isinstance(mgf, dict) or set(mgf) != {"mgf1"}:
            raise CryptoError('mode.PSS must be {"mgf": {"mgf1": {"hash": ...}}}')
        inner = mgf["mgf1"]
        if not isinstance(inner, dict) or not isinstance(inner.get("hash"), str) or set(inner) != {"hash"}:
            raise CryptoError("mode.PSS.mgf.mgf1.hash must name a digest algorithm")
        mgf_hash = hash_algorithm(inner["hash"], "mode.PSS.mgf.mgf1.hash")
    return padding.PSS(mgf=padding.MGF1(mgf_hash), salt_length=algorithm.digest_size)


def _digest(algorithm: hashes.HashAlgorithm, digest: bytes) -> utils.Prehashed:
    if len(digest) != algorithm.digest_size:
        raise CryptoError(f"hash must be {algorithm.digest_size} bytes for {algorithm.name.upper()}")
    return utils.Prehashed(algorithm)


def sign(material: bytes, hash_alg: str, digest: bytes, mode: Mapping[str, Any] | None) -> bytes:
    """An RSA signature, or an ECDSA one (DER Ecdsa-Sig-Value), over an already computed digest."""
    algorithm = hash_algorithm(hash_alg)
    prehashed = _digest(algorithm, digest)
    key = serialization.load_der_private_key(material, password=None)
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(digest, _rsa_padding(mode, algorithm), prehashed)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if mode is not None:
            raise CryptoError("mode is for RSA keys; an EC key signs with ECDSA")
        return key.sign(digest, ec.ECDSA(prehashed))
    raise CryptoError("this key cannot sign")


def verify(
    pub_key: bytes, hash_alg: str, digest: bytes, signature: bytes, mode: Mapping[str, Any] | None
) -> bool:
    algorithm = hash_algorithm(hash_alg)
    prehashed = _digest(algorithm, digest)
    key = serialization.load_der_public_key(pub_key)
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, digest, _rsa_padding(mode, algorithm), prehashed)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            if mode is not None:
                raise CryptoError("mode is for RSA keys; an EC key verifies with ECDSA")
            key.verify(signature, digest, ec.ECDSA(prehashed))
        else:
            raise CryptoError("this key cannot verify")
    except InvalidSignature:
        return False
    return True


# ------------------------------------------------------------------------------ RSA encryption


def _rsa_encryption_padding(mode: str) -> padding.AsymmetricPadding:
    if mode not in RSA_ENCRYPTION_MODES:
        raise CryptoError(f"mode for RSA must be one of {', '.join(RSA_ENCRYPTION_MODES)}")
    algorithm = RSA_ENCRYPTION_MODES[mode]
    if algorithm is None:
        return padding.PKCS1v15()
    return padding.OAEP(mgf=padding.MGF1(algorithm()), algorithm=algorithm(), label=None)


def rsa_encrypt(pub_key: bytes, mode: str, plain: bytes) -> bytes:
    key = serialization.load_der_public_key(pub_key)
    if not isinstance(key, rsa.RSAPublicKey):
        raise CryptoError("only RSA keys encrypt")
    pad = _rsa_encryption_padding(mode)
    try:
        return key.encrypt(plain, pad)
    except ValueError:
        raise CryptoError(f"plain is too long for this RSA key with {mode}") from None


def rsa_decrypt(material: bytes, mode: str, cipher: bytes) -> bytes:
    key = serialization.load_der_private_key(material, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise CryptoError("only RSA keys decrypt")
    pad = _rsa_encryption_padding(mode)
    try:
        return key.decrypt(cipher, pad)
    except ValueError:
        # One message for every failure: a padding oracle learns nothing from it.
        raise CryptoError("decryption failed") from None
