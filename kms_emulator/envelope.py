"""The CiphertextBlob and the inner envelope layer: pure bytes in, bytes out (no I/O, no database).

Inner layer (every KMS key): AES-256-GCM under the key's own backing key, with the encryption context as
AAD, so a wrong or missing context fails the tag. Outer layer (XKS keys only): the inner bytes become the
plaintext of the XKS proxy's Encrypt, with the key ARN as the proxy's AAD; the proxy's ciphertext, IV, tag
and ciphertextMetadata are what the blob keeps. Decrypt needs no KeyId: the blob names its key.
"""

from __future__ import annotations

import json
import os
import struct
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kms_emulator.errors import InvalidCiphertext

VERSION = 1
KIND_AWS_KMS = 1
KIND_XKS = 2
KIND_AWS_KMS_ROTATED = 3
_KIND_FIELDS = {KIND_AWS_KMS: 1, KIND_XKS: 4, KIND_AWS_KMS_ROTATED: 2}
MATERIAL_ID_LEN = 32
_HEADER = struct.Struct(">BB16s")
_LENGTH = struct.Struct(">H")

BACKING_KEY_LEN = 32
INNER_IV_LEN = 12
INNER_TAG_LEN = 16

_CORRUPT = "The ciphertext is corrupted, truncated or was not produced by this KMS."


@dataclass(frozen=True)
class OuterLayer:
    """What the XKS proxy's Encrypt returned; all of it goes back to the proxy's Decrypt."""

    ciphertext: bytes
    iv: bytes
    tag: bytes
    metadata: bytes | None


@dataclass(frozen=True)
class ParsedBlob:
    key_id: str
    kind: int
    inner: bytes | None  # KIND_AWS_KMS and KIND_AWS_KMS_ROTATED
    outer: OuterLayer | None  # KIND_XKS
    material_id: str | None = None  # KIND_AWS_KMS_ROTATED: the rotated material, 64 hex digits


def build_blob(key_id: str, kind: int, fields: list[bytes]) -> bytes:
    """Serialise a CiphertextBlob, layout version 1::

        0        1        2                      18
        +--------+--------+----------------------+-----------+---------+-----------+---------+--
        | 0x01   | kind   | KMS key id (16 bytes | len (u16  | field 1 | len (u16  | field 2 | ...
        | version| 1 or 2 | UUID, big-endian)    | big-end.) |         | big-end.) |         |
        +--------+--------+----------------------+-----------+---------+-----------+---------+--

        kind 1 AWS_KMS: one field   inner = IV (12) || ciphertext || tag (16)
        kind 2 XKS:     four fields the proxy's ciphertext, IV, tag, ciphertextMetadata
                                    (a zero-length ciphertextMetadata means the proxy sent none)
        kind 3 AWS_KMS, rotated: two fields   material id (32) and inner, under key material that a
                                    rotation made current (kind 1 is the key's first material)

    The blob ends after the last field; trailing bytes, an unknown version or an unknown kind make it
    invalid (InvalidCiphertextException), so a future layout can never be misread as this one.
    """
    if len(fields) != _KIND_FIELDS[kind]:
        raise ValueError(f"kind {kind} takes {_KIND_FIELDS[kind]} fields")
    out = [_HEADER.pack(VERSION, kind, uuid.UUID(key_id).bytes)]
    for value in fields:
        out.append(_LENGTH.pack(len(value)))
        out.append(value)
    return b"".join(out)


def aws_kms_blob(key_id: str, inner: bytes) -> bytes:
    return build_blob(key_id, KIND_AWS_KMS, [inner])


def rotated_blob(key_id: str, material_id: str, inner: bytes) -> bytes:
    return build_blob(key_id, KIND_AWS_KMS_ROTATED, [bytes.fromhex(material_id), inner])


def xks_blob(key_id: str, outer: OuterLayer) -> bytes:
    return build_blob(key_id, KIND_XKS, [outer.ciphertext, outer.iv, outer.tag, outer.metadata or b""])


def parse_blob(data: bytes) -> ParsedBlob:
    if len(data) < _HEADER.size:
        raise InvalidCiphertext(_CORRUPT)
    version, kind, raw_id = _HEADER.unpack_from(data)
    if version != VERSION or kind not in _KIND_FIELDS:
        raise InvalidCiphertext(_CORRUPT)
    fields: list[bytes] = []
    offset = _HEADER.size
    for _ in range(_KIND_FIELDS[kind]):
        if offset + _LENGTH.size > len(data):
            raise InvalidCiphertext(_CORRUPT)
        (length,) = _LENGTH.unpack_from(data, offset)
        offset += _LENGTH.size
        if offset + length > len(data):
            raise InvalidCiphertext(_CORRUPT)
        fields.append(data[offset : offset + length])
        offset += length
    if offset != len(data):
        raise InvalidCiphertext(_CORRUPT)
    key_id = str(uuid.UUID(bytes=raw_id))
    if kind == KIND_AWS_KMS:
        if len(fields[0]) < INNER_IV_LEN + INNER_TAG_LEN:
            raise InvalidCiphertext(_CORRUPT)
        return ParsedBlob(key_id, kind, fields[0], None)
    if kind == KIND_AWS_KMS_ROTATED:
        material, inner = fields
        if len(material) != MATERIAL_ID_LEN or len(inner) < INNER_IV_LEN + INNER_TAG_LEN:
            raise InvalidCiphertext(_CORRUPT)
        return ParsedBlob(key_id, kind, inner, None, material.hex())
    ciphertext, iv, tag, metadata = fields
    return ParsedBlob(key_id, kind, None, OuterLayer(ciphertext, iv, tag, metadata or None))


def canonical_context(context: Mapping[str, str] | None) -> bytes:
    """The encryption context as AAD: JSON with sorted keys and no spaces, ASCII-escaped so any string
    encodes; an absent context and an empty one are the same ``{}``, as in AWS."""
    if not context:
        return b"{}"
    # orjson's output is the same bytes whenever it escaped nothing and holds only printable ASCII (no
    # string needed an escape in either encoder: the standard one also escapes DEL; ASCII keys sort
    # alike), at a fifth of the standard encoder's cost.
    fast = orjson.dumps(dict(context), option=orjson.OPT_SORT_KEYS)
    if fast.isascii() and b"\\" not in fast and b"\x7f" not in fast:
        return fast
    return json.dumps(dict(context), sort_keys=True, separators=(",", ":")).encode("ascii")


def new_backing_key() -> bytes:
    return os.urandom(BACKING_KEY_LEN)


def inner_encrypt(backing_key: bytes | AESGCM, plaintext: bytes, context: Mapping[str, str] | None) -> bytes:
    """inner = IV (12) || AES-256-GCM(backing key, plaintext, AAD = canonical context) with its tag. The
    key may come as its AESGCM already (a cached key's: building one is as dear as the encryption)."""
    iv = os.urandom(INNER_IV_LEN)
    return iv + _cipher(backing_key).encrypt(iv, plaintext, canonical_context(context))


def _cipher(backing_key: bytes | AESGCM) -> AESGCM:
    return backing_key if isinstance(backing_key, AESGCM) else AESGCM(backing_key)


def inner_decrypt(backing_key: bytes | AESGCM, inner: bytes, context: Mapping[str, str] | None) -> bytes:
    if len(inner) < INNER_IV_LEN + INNER_TAG_LEN:
        raise InvalidCiphertext(_CORRUPT)
    try:
        return _cipher(backing_key).decrypt(
            inner[:INNER_IV_LEN], inner[INNER_IV_LEN:], canonical_context(context)
        )
    except InvalidTag:
        # AWS does not say which: the context differs, or the blob was changed.
        raise InvalidCiphertext(
            "The ciphertext does not authenticate: the encryption context differs from the one used "
            "to encrypt, or the ciphertext was changed."
        ) from None
