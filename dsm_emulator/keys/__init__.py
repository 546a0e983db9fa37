"""Security objects: their lifecycle (generate, import, update, activate, revoke, destroy, delete, rekey)
and every use of their material (encrypt, decrypt, wrap, unwrap, export).

This package owns the security-object queries. Material is unsealed through the keyring only after the
row has been read and checked (authorisation, key_ops, enabled flag, state), and is cached per kid: a
kid's material never changes, and a destroyed or deleted object is refused by its row before the cache is
consulted. Mutations commit together with their audit row (``AuditLog.apply``); crypto operations answer
only after their audit row is committed (``AuditLog.record``); refusals are audited the same way.

KeyService is assembled here from one mixin per concern: ``lifecycle`` (rows that change) on ``history``
(what a reversible change records, reverts, and the sweep that erases it when its window closes),
``reads`` (rows read, and their compliance with their groups' policies), ``crypto_ops`` (uses of stored
material), ``signing`` (RSA and EC signatures), ``derivation`` (keys derived or agreed from stored ones, and
KCVs), ``pairs`` (what a new key is checked against),
``multipart`` (encrypt and decrypt in pieces, their sealed state), ``components`` (export and import
split between key custodians), ``transient`` (keys that live only in their token), all on ``base`` (the
shared core). Everything other code imports from ``dsm_emulator.keys`` is re-exported from here.
"""

from __future__ import annotations

from dsm_emulator.keys.base import (
    DELETED,
    MAX_NAME_LENGTH,
    REVOCATION_CODES,
    STATES,
    KeyServiceBase,
    KeySpec,
    effective_state,
    material_context,
    now,
)
from dsm_emulator.keys.components import Component, ComponentsMixin
from dsm_emulator.keys.crypto_ops import CryptoMixin
from dsm_emulator.keys.derivation import DerivationMixin, Made
from dsm_emulator.keys.history import UNDO_WINDOW_MAX_S, UNDO_WINDOW_MIN_S, undo_window
from dsm_emulator.keys.lifecycle import LifecycleMixin
from dsm_emulator.keys.multipart import INVALID_STATE, KeyRef, MultipartMixin
from dsm_emulator.keys.object_types import OBJECT_TYPES, ObjectTypeRule
from dsm_emulator.keys.reads import ReadsMixin
from dsm_emulator.keys.signing import SigningMixin
from dsm_emulator.keys.transient import (
    INVALID_TRANSIENT,
    TRANSIENT_LIFETIME,
    TRANSIENT_TYPES,
    TransientKey,
    TransientMixin,
    transient_context,
)

__all__ = [
    "DELETED",
    "INVALID_STATE",
    "INVALID_TRANSIENT",
    "MAX_NAME_LENGTH",
    "OBJECT_TYPES",
    "REVOCATION_CODES",
    "STATES",
    "TRANSIENT_LIFETIME",
    "TRANSIENT_TYPES",
    "UNDO_WINDOW_MAX_S",
    "UNDO_WINDOW_MIN_S",
    "Component",
    "KeyRef",
    "KeyService",
    "KeySpec",
    "Made",
    "ObjectTypeRule",
    "TransientKey",
    "effective_state",
    "material_context",
    "now",
    "transient_context",
    "undo_window",
]


class KeyService(
    LifecycleMixin,
    ReadsMixin,
    SigningMixin,
    CryptoMixin,
    DerivationMixin,
    MultipartMixin,
    ComponentsMixin,
    TransientMixin,
    KeyServiceBase,
):
    """The security-object service the DSM core holds: lifecycle, crypto and transient keys on one
    shared core (sessions, keyring, audit log, material cache)."""
