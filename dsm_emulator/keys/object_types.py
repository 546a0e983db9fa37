"""What each object type of the key manager is: the key sizes it takes, its default key_ops when
generated and when imported, and whether it can be generated at all. One table, so that creation,
import, rekey and derivation agree on it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from dsm_emulator import asymmetric, crypto

__all__ = ["OBJECT_TYPES", "ObjectTypeRule"]


@dataclass(frozen=True)
class ObjectTypeRule:
    sizes: Callable[[int], bool]
    generated_ops: frozenset[str]  # default key_ops when generated (Fortanix: everything but EXPORT)
    imported_ops: frozenset[str]  # default key_ops when imported (everything implemented)
    can_generate: bool = True


_SYMMETRIC_OPS = frozenset({"ENCRYPT", "DECRYPT", "WRAPKEY", "UNWRAPKEY", "DERIVEKEY", "APPMANAGEABLE"})
OBJECT_TYPES: Mapping[str, ObjectTypeRule] = {
    "AES": ObjectTypeRule(
        lambda bits: bits in crypto.AES_KEY_SIZES, _SYMMETRIC_OPS, _SYMMETRIC_OPS | {"EXPORT"}
    ),
    # Fortanix: DES3 is 168 bits, or 112 for two-key triple DES; DES is 56 bits (parity not counted).
    "DES3": ObjectTypeRule(lambda bits: bits in (112, 168), _SYMMETRIC_OPS, _SYMMETRIC_OPS | {"EXPORT"}),
    "DES": ObjectTypeRule(lambda bits: bits == 56, _SYMMETRIC_OPS, _SYMMETRIC_OPS | {"EXPORT"}),
    "HMAC": ObjectTypeRule(
        lambda bits: 112 <= bits <= 8192 and bits % 8 == 0,
        frozenset({"MACGENERATE", "MACVERIFY", "APPMANAGEABLE"}),
        frozenset({"MACGENERATE", "MACVERIFY", "EXPORT", "APPMANAGEABLE"}),
    ),
    "SECRET": ObjectTypeRule(
        lambda bits: 8 <= bits <= 65536 and bits % 8 == 0,
        frozenset({"DERIVEKEY", "APPMANAGEABLE"}),
        frozenset({"DERIVEKEY", "EXPORT", "APPMANAGEABLE"}),
    ),
    "RSA": ObjectTypeRule(
        lambda bits: bits in asymmetric.RSA_KEY_SIZES,
        frozenset({"SIGN", "VERIFY", "ENCRYPT", "DECRYPT", "APPMANAGEABLE"}),
        frozenset({"SIGN", "VERIFY", "ENCRYPT", "DECRYPT", "EXPORT", "APPMANAGEABLE"}),
    ),
    "EC": ObjectTypeRule(
        lambda bits: bits in (256, 384, 521),  # Ed25519 and SecP256K1 keys are 256 bits
        frozenset({"SIGN", "VERIFY", "APPMANAGEABLE"}),
        frozenset({"SIGN", "VERIFY", "EXPORT", "APPMANAGEABLE"}),
    ),
    "OPAQUE": ObjectTypeRule(
        lambda bits: 0 < bits <= 8 * 65536 and bits % 8 == 0,
        frozenset({"EXPORT", "APPMANAGEABLE"}),
        frozenset({"EXPORT", "APPMANAGEABLE"}),
        can_generate=False,
    ),
    # An X.509 certificate (imported only): it verifies with its subject's public key and always exports.
    "CERTIFICATE": ObjectTypeRule(
        lambda bits: bits > 0,
        frozenset({"VERIFY", "APPMANAGEABLE"}),
        frozenset({"VERIFY", "EXPORT", "APPMANAGEABLE"}),
        can_generate=False,
    ),
}
