"""What a KMS emulator accepts from an XKS proxy: each answer checked against the spec's shapes, so a
proxy that answers anything else is XKS_PROXY_INVALID_RESPONSE, as with real KMS. Pure: bytes in."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

IV_BYTES = (12, 16)
TAG_BYTES = 16
MAX_CIPHERTEXT_METADATA_BYTES = 20
MAX_FLEET = 10
MAX_KEY_USAGES = 10
HEALTH_STATES = frozenset({"ACTIVE", "DEGRADED", "UNAVAILABLE"})
KEY_STATES = frozenset({"ENABLED", "DISABLED"})


@dataclass(frozen=True)
class EncryptResult:
    """What the proxy's Encrypt returned, all of which KMS must keep to ask for a Decrypt later."""

    ciphertext: bytes
    iv: bytes
    tag: bytes
    ciphertext_metadata: bytes | None


class Malformed(Exception):
    """A 200 body that breaks the spec; the message names the field, never its value."""


def json_object(raw: bytes) -> dict[str, Any]:
    """orjson: strict UTF-8, no NaN or Infinity, no lone surrogates, integers within 64 bits, at most
    1,024 levels deep; anything else is not JSON this KMS reads (and the standard parser cost ten times
    as much on the XKS path)."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise Malformed("the body is not UTF-8 JSON") from None
    if not isinstance(data, dict):
        raise Malformed("the body is not a JSON object")
    return data


def check_health(data: dict[str, Any]) -> dict[str, Any]:
    size = data.get("xksProxyFleetSize")
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise Malformed("xksProxyFleetSize must be an integer greater than 0")
    _strings(data, "xksProxyVendor", "xksProxyModel", "ekmVendor")
    fleet = data.get("ekmFleetDetails")
    if not isinstance(fleet, list) or not 1 <= len(fleet) <= MAX_FLEET:
        raise Malformed(f"ekmFleetDetails must be a list of 1 to {MAX_FLEET} entries")
    for index, node in enumerate(fleet):
        if not isinstance(node, dict):
            raise Malformed(f"ekmFleetDetails[{index}] must be an object")
        _strings(node, "id", "model", "healthStatus", where=f"ekmFleetDetails[{index}].")
        if node["healthStatus"] not in HEALTH_STATES:
            raise Malformed(f"ekmFleetDetails[{index}].healthStatus must be ACTIVE, DEGRADED or UNAVAILABLE")
    return data


def check_metadata(data: dict[str, Any]) -> dict[str, Any]:
    _strings(data, "keySpec")
    usage = data.get("keyUsage")
    if not isinstance(usage, list) or len(usage) > MAX_KEY_USAGES or not all(map(_is_str, usage)):
        raise Malformed(f"keyUsage must be a list of at most {MAX_KEY_USAGES} strings")
    if data.get("keyStatus") not in KEY_STATES:
        raise Malformed("keyStatus must be ENABLED or DISABLED")
    return data


def check_encrypt(data: dict[str, Any], plaintext_len: int) -> EncryptResult:
    ciphertext = _unb64(data, "ciphertext")
    iv = _unb64(data, "initializationVector")
    tag = _unb64(data, "authenticationTag")
    ciphertext_metadata = _unb64_optional(data, "ciphertextMetadata")
    if len(iv) not in IV_BYTES:
        raise Malformed("initializationVector must be 12 or 16 bytes")
    if len(tag) != TAG_BYTES:
        raise Malformed(f"authenticationTag must be {TAG_BYTES} bytes")
    if ciphertext_metadata is not None and len(ciphertext_metadata) > MAX_CIPHERTEXT_METADATA_BYTES:
        raise Malformed(f"ciphertextMetadata must be at most {MAX_CIPHERTEXT_METADATA_BYTES} bytes")
    if len(ciphertext) != plaintext_len:
        raise Malformed("ciphertext must be as long as the plaintext")
    return EncryptResult(ciphertext, iv, tag, ciphertext_metadata)


def check_decrypt(data: dict[str, Any], ciphertext_len: int) -> bytes:
    plaintext = _unb64(data, "plaintext")
    if len(plaintext) != ciphertext_len:
        raise Malformed("plaintext must be as long as the ciphertext")
    return plaintext


def _is_str(value: object) -> bool:
    return isinstance(value, str)


def _strings(data: Mapping[str, Any], *keys: str, where: str = "") -> None:
    for key in keys:
        if not isinstance(data.get(key), str):
            raise Malformed(f"{where}{key} must be a string")


def _unb64(data: Mapping[str, Any], key: str) -> bytes:
    value = _unb64_optional(data, key)
    if value is None:
        raise Malformed(f"{key} is required")
    return value


def _unb64_optional(data: Mapping[str, Any], key: str) -> bytes | None:
    """Standard, padded, canonical Base64 (RFC 4648 §4): one byte string has one accepted text."""
    value = data.get(key)
    if value is None:  # null counts as absent, as on the proxy side
        return None
    if not isinstance(value, str):
        raise Malformed(f"{key} must be a Base64 string")
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise Malformed(f"{key} is not standard Base64") from None
    if base64.b64encode(decoded).decode("ascii") != value:
        raise Malformed(f"{key} is not canonical padded Base64")
    return decoded
