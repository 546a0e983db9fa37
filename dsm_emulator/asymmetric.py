"""Pure RSA and EC primitives over DER bytes: generate, import, sign, verify, RSA encrypt and decrypt.

A key pair is stored as its PKCS#8 PrivateKeyInfo DER (sealed like every other material) and its
SubjectPublicKeyInfo DER (``pub_key``, public); a public-only object stores the SPKI as its material.
Fortanix's EC type covers the Weierstrass curves (ECDSA) and ``Ed25519`` (EdDSA, RFC 8032). Inputs are
Fortanix's names (``NistP256``, ``SHA256``, ``OAEP_MGF1_SHA256``, ``{"PSS": {...}}``); what the lab does
not implement is a CryptoError naming it, which the key service answers as a 400.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa, utils, x448, x25519
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

from dsm_emulator.crypto import CryptoError

ASYMMETRIC_TYPES = ("RSA", "EC")
RSA_KEY_SIZES = (2048, 3072, 4096)
RSA_EXPONENTS = (3, 65537)  # what the crypto library generates; 65537 when none is asked for
CURVES: Mapping[str, ec.EllipticCurve] = {
    "NistP256": ec.SECP256R1(),
    "NistP384": ec.SECP384R1(),
    "NistP521": ec.SECP521R1(),
    "SecP256K1": ec.SECP256K1(),
}
_CURVE_NAMES = {curve.name: name for name, curve in CURVES.items()}
ED25519 = "Ed25519"  # Fortanix: obj_type EC, elliptic_curve Ed25519; signs EdDSA (no mode, no pre-hash)
CURVE_NAMES = (*CURVES, ED25519)
# Fortanix EllipticCurve values the lab knows of but does not implement (named in the refusal).
UNSUPPORTED_CURVES = frozenset(
    {"SecP192K1", "SecP224K1", "NistP192", "NistP224", "Gost256A", "X25519", "X448"}
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


def export_form(material: bytes) -> bytes:
    """A private key as export answers it: Fortanix's ``Default`` KeyFormat (the alternative it names is
    ``Pkcs8``), i.e. PKCS#1 RSAPrivateKey for RSA and SEC1 ECPrivateKey for ECDSA curves, which is what
    sdkms-cli's ``RSA PRIVATE KEY``/``EC PRIVATE KEY`` armour (export-object, export-pfx) says it holds.
    Ed25519 has no such form: PKCS#8. A public key (SPKI) stays as it is."""
    try:
        key = serialization.load_der_private_key(material, password=None)
    except (ValueError, TypeError):
        return material
    if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        return key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    return material


def curve_name(curve: ec.EllipticCurve) -> str | None:
    """Fortanix's name of a Weierstrass curve the lab has (None for others)."""
    return _CURVE_NAMES.get(curve.name)


def check_curve(name: str) -> None:
    if name in CURVE_NAMES:
        return
    if name in UNSUPPORTED_CURVES:
        raise CryptoError(f"elliptic_curve {name} is not supported by xkslab ({', '.join(CURVE_NAMES)})")
    raise CryptoError(f"elliptic_curve must be one of {', '.join(CURVE_NAMES)}")


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
    check_curve(curve)
    if curve == ED25519:
        edwards = ed25519.Ed25519PrivateKey.generate()
        return KeyPair(_pkcs8(edwards), _spki(edwards.public_key()), 256, curve, False)
    private = ec.generate_private_key(CURVES[curve])
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
    if obj_type == "EC" and isinstance(public, ed25519.Ed25519PublicKey):
        if curve is not None and curve != ED25519:
            raise CryptoError(f"elliptic_curve {curve} does not match the key's curve {ED25519}")
        return KeyPair(material, _spki(public), 256, ED25519, private is None)
    if obj_type == "EC" and isinstance(public, ec.EllipticCurvePublicKey):
        name = _CURVE_NAMES.get(public.curve.name)
        if name is None:
            raise CryptoError(f"the curve {public.curve.name} is not supported by xkslab")
        if curve is not None and curve != name:
            raise CryptoError(f"elliptic_curve {curve} does not match the key's curve {name}")
        return KeyPair(material, _spki(public), public.curve.key_size, name, private is None)
    if obj_type == "EC" and isinstance(
        public, x25519.X25519PublicKey | x448.X448PublicKey | ed448.Ed448PublicKey
    ):
        raise CryptoError(f"the key's curve is not supported by xkslab ({', '.join(CURVE_NAMES)})")
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


@dataclass(frozen=True)
class Message:
    """What a SignRequest signs or a VerifyRequest checks: exactly one of a digest the caller computed
    (``hash``, with ``hash_alg``) or the data itself (``data``), which the lab digests with ``hash_alg``;
    an Ed25519 key signs the data itself (pure EdDSA)."""

    hash_alg: str | None
    digest: bytes | None = None
    data: bytes | None = None


def _prehashed(message: Message) -> tuple[bytes, hashes.HashAlgorithm]:
    if message.hash_alg is None:
        raise CryptoError("missing required field hash_alg")
    algorithm = hash_algorithm(message.hash_alg)
    if message.data is not None:
        h = hashes.Hash(algorithm)
        h.update(message.data)
        return h.finalize(), algorithm
    digest = message.digest or b""
    if len(digest) != algorithm.digest_size:
        raise CryptoError(f"hash must be {algorithm.digest_size} bytes for {algorithm.name.upper()}")
    return digest, algorithm


def _eddsa_data(message: Message, mode: Mapping[str, Any] | None) -> bytes:
    """Ed25519 signs the message (RFC 8032 pure Ed25519, whose own hash is SHA-512)."""
    if mode is not None:
        raise CryptoError("mode is for RSA keys; an Ed25519 key signs with EdDSA")
    if message.data is None:
        raise CryptoError(
            "an Ed25519 key signs data (the message itself); a hash asks for Ed25519ph, which xkslab "
            "does not emulate"
        )
    if message.hash_alg not in (None, "SHA512"):
        raise CryptoError("hash_alg of an Ed25519 signature must be SHA512 (EdDSA's own hash) or absent")
    return message.data


def sign(material: bytes, message: Message, mode: Mapping[str, Any] | None) -> bytes:
    """An RSA signature, an ECDSA one (DER Ecdsa-Sig-Value) or an Ed25519 one (64 bytes)."""
    key = serialization.load_der_private_key(material, password=None)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(_eddsa_data(message, mode))
    digest, algorithm = _prehashed(message)
    prehashed = utils.Prehashed(algorithm)
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(digest, _rsa_padding(mode, algorithm), prehashed)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if mode is not None:
            raise CryptoError("mode is for RSA keys; an EC key signs with ECDSA")
        return key.sign(digest, ec.ECDSA(prehashed))
    raise CryptoError("this key cannot sign")


def verify(pub_key: bytes, message: Message, signature: bytes, mode: Mapping[str, Any] | None) -> bool:
    key = serialization.load_der_public_key(pub_key)
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, _eddsa_data(message, mode))
            return True
        digest, algorithm = _prehashed(message)
        prehashed = utils.Prehashed(algorithm)
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
