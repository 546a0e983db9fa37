"""What a new object is checked against before it is stored: the key pair an RSA or EC SobjectRequest
generates or imports (checked against the request's type-specific options), or the public key of an
imported certificate, and the key_ops a new key gets under its group's policies."""

from __future__ import annotations

from dsm_emulator import asymmetric, certificates, crypto
from dsm_emulator.errors import BadRequest
from dsm_emulator.keys.base import KeySpec
from dsm_emulator.policies import GroupPolicies, KeyFacts


def key_pair(spec: KeySpec, value: bytes | None) -> asymmetric.KeyPair | None:
    """The RSA or EC key pair a spec generates or imports, or what a certificate holds (None for other
    types)."""
    if spec.obj_type == certificates.CERTIFICATE and value is not None:
        if spec.elliptic_curve is not None or spec.pub_exponent is not None:
            raise BadRequest("elliptic_curve and pub_exponent are the certificate's own: omit them")
        try:
            return certificates.load(value)
        except crypto.CryptoError as exc:
            raise BadRequest(str(exc)) from None
    if spec.obj_type not in asymmetric.ASYMMETRIC_TYPES:
        if spec.elliptic_curve is not None or spec.pub_exponent is not None:
            raise BadRequest(f"elliptic_curve and pub_exponent are not options of {spec.obj_type} objects")
        return None
    if spec.obj_type == "RSA" and spec.elliptic_curve is not None:
        raise BadRequest("elliptic_curve is not an option of RSA keys")
    if spec.obj_type == "EC" and spec.pub_exponent is not None:
        raise BadRequest("pub_exponent is not an option of EC keys")
    if value is not None and spec.pub_exponent is not None:
        raise BadRequest("pub_exponent is for generated keys; an imported key has its own")
    try:
        if value is not None:
            return asymmetric.load(spec.obj_type, value, curve=spec.elliptic_curve)
        size = None if spec.obj_type == "EC" else spec.key_size
        return asymmetric.generate(
            spec.obj_type, key_size=size, curve=spec.elliptic_curve, exponent=spec.pub_exponent
        )
    except crypto.CryptoError as exc:
        raise BadRequest(str(exc)) from None


def checked_ops(
    policies: GroupPolicies, spec: KeySpec, size: int, ops: frozenset[str], curve: str | None = None
) -> frozenset[str]:
    """The key_ops a new key gets under its group's policies (defaults narrowed to them when the spec
    names none), once the spec has been checked against them."""
    if spec.key_ops is None:
        ops = policies.default_key_ops(ops)
    policies.check_key(
        KeyFacts(
            obj_type=spec.obj_type,
            key_size=size,
            key_ops=ops,
            description=spec.description,
            custom_metadata=spec.custom_metadata or {},
            activation_date=spec.activation_date,
            deactivation_date=spec.deactivation_date,
            elliptic_curve=curve,
        )
    )
    return ops
