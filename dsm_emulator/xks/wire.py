"""The byte formats the XKS spec fixes, as the key manager produces and checks them.

A ciphertext written today must decrypt after any refactoring, and AWS KMS checks the integrity value and
key metadata against the spec, so these encodings (URI prefix, AES-GCM AAD, CDIV, ciphertext metadata,
GetKeyMetadata's answer) are pure functions kept apart from the request path that uses them: they can be
read against the spec, and tested against its vectors, without a database or a service.
"""

from __future__ import annotations

import base64
import hashlib
import re
import struct
from typing import Any

from dsm_emulator.authz import PROTECT_STATES
from dsm_emulator.keys import effective_state
from dsm_emulator.models import SecurityObject

_VERSION_METADATA = re.compile(rb"key_version=([1-9][0-9]{0,7})")
# XKS keyUsage names for the DSM key_ops that have one (at most 10, the spec's limit).
_USAGE = (
    ("ENCRYPT", "ENCRYPT"),
    ("DECRYPT", "DECRYPT"),
    ("WRAPKEY", "WRAP"),
    ("UNWRAPKEY", "UNWRAP"),
    ("SIGN", "SIGN"),
    ("VERIFY", "VERIFY"),
    ("DERIVEKEY", "DERIVE"),
)


def canonical_prefix(app_id: str) -> str:
    """Fortanix's URI path prefix of an awsxks app (its Terraform provider builds the same string)."""
    return f"/crypto/v1/apps/{app_id}/aws"


def gcm_aad(aad: bytes | None, ciphertext_metadata: bytes | None) -> bytes:
    """The AAD given to AES-GCM (XKS spec, Encrypt): lengths always present, so metadata moved into the
    AAD field (or the reverse) no longer authenticates.

        uint16_be(len(aad)) || aad || uint8(len(metadata)) || metadata
    """
    aad, cm = aad or b"", ciphertext_metadata or b""
    return struct.pack(">H", len(aad)) + aad + struct.pack(">B", len(cm)) + cm


def cdiv(aad: bytes | None, metadata: bytes | None, iv: bytes, ciphertext: bytes, tag: bytes) -> str:
    """CiphertextDataIntegrityValue (XKS spec, Appendix C): Base64(SHA-256(aad||metadata||iv||ct||tag))."""
    digest = hashlib.sha256((aad or b"") + (metadata or b"") + iv + ciphertext + tag).digest()
    return base64.b64encode(digest).decode("ascii")


def version_metadata(version: int) -> bytes:
    return b"key_version=%d" % version


def key_metadata(key: SecurityObject) -> dict[str, Any]:
    """GetKeyMetadata's answer: AWS CreateKey needs AES_256, ENCRYPT and DECRYPT, and ENABLED."""
    spec = f"{key.obj_type}_{key.key_size}" if key.key_size else key.obj_type
    usage = [xks for dsm, xks in _USAGE if dsm in key.key_ops]
    usable = key.enabled and effective_state(key) in PROTECT_STATES
    return {"keySpec": spec, "keyUsage": usage, "keyStatus": "ENABLED" if usable else "DISABLED"}
