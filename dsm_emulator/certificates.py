"""X.509 certificates as security objects (Fortanix ``obj_type`` ``CERTIFICATE``): what an import keeps of
one. The certificate is public; it is stored whole (DER) as the object's material, its subject public key
as ``pub_key`` (SubjectPublicKeyInfo DER, as for an RSA or EC key), and the key's size or curve beside it,
so a certificate object verifies signatures like a public-only RSA or EC object. Nothing here checks a
chain or a validity period: DSM stores certificates, it is no CA.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from dsm_emulator import asymmetric
from dsm_emulator.crypto import CryptoError

CERTIFICATE = "CERTIFICATE"


def load(value: bytes) -> asymmetric.KeyPair:
    """A certificate as imported: DER (what sdkms-cli import-cert sends once it strips the PEM armour),
    or PEM. It is kept as DER."""
    # Here, not at the top: cryptography.x509 costs every CLI command that opens the key manager ~20 ms.
    from cryptography import x509

    try:
        cert = x509.load_der_x509_certificate(value)
    except ValueError:
        try:
            cert = x509.load_pem_x509_certificate(value)
        except ValueError:
            raise CryptoError("value must be an X.509 certificate (DER, or PEM)") from None
    public = cert.public_key()
    spki = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    der = cert.public_bytes(serialization.Encoding.DER)
    if isinstance(public, rsa.RSAPublicKey):
        return asymmetric.KeyPair(der, spki, public.key_size, None, True)
    if isinstance(public, ed25519.Ed25519PublicKey):
        return asymmetric.KeyPair(der, spki, 256, asymmetric.ED25519, True)
    if isinstance(public, ec.EllipticCurvePublicKey):
        curve = asymmetric.curve_name(public.curve)
        if curve is None:
            raise CryptoError(f"certificates for keys on {public.curve.name} are not supported by xkslab")
        return asymmetric.KeyPair(der, spki, public.curve.key_size, curve, True)
    raise CryptoError("certificates for RSA, EC and Ed25519 keys only are supported by xkslab")
