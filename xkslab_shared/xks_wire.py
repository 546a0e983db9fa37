"""XKS Proxy API v1 request bodies: the one parser and validator, shared by the proxy and the key manager.

Pure (bytes in, frozen dataclasses out, no I/O) so that both sides agree on exactly what a body means.
All format checks run before any size check, so an invalid body is always a ValidationException even
when it is also too large. Error messages name the offending field but never echo its value: they end
up in KMS callers' CloudWatch Logs and in our own logs, and a value may be plaintext.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from typing import Any

from xkslab_shared import json_body

OPERATIONS = ("health", "metadata", "encrypt", "decrypt")
MIN_PLAINTEXT_BYTES = 4300  # spec minimums: a proxy must accept at least these
MIN_AAD_BYTES = 8192
MAX_CIPHERTEXT_METADATA_BYTES = 20
ARN_MAX_CHARS = 2048
MAX_AAD_WIRE_BYTES = 65535  # the AAD length is a uint16 in the spec's GCM AAD construction
ALGORITHM = "AES_GCM"
CDIV_ALGORITHM = "SHA_256"
IV_BYTES = (12, 16)
TAG_BYTES = 16

# Strict RFC 4648 section 4 Base64: standard alphabet, padding required, and canonical (unused bits of
# the last character zero), so one byte string has exactly one accepted encoding.
_B64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?")
# Lone surrogates are legal JSON escapes but not text; they would break UTF-8 logs and databases.
_SURROGATE = re.compile("[\ud800-\udfff]")

# (JSON key, attribute) of every requestMetadata field we model; anything else is ignored.
_META_FIELDS = (
    ("kmsRequestId", "kms_request_id"),
    ("kmsOperation", "kms_operation"),
    ("awsPrincipalArn", "aws_principal_arn"),
    ("kmsKeyArn", "kms_key_arn"),
    ("kmsViaService", "kms_via_service"),
    ("awsSourceVpc", "aws_source_vpc"),
    ("awsSourceVpce", "aws_source_vpce"),
)
_ARN_KEYS = frozenset({"awsPrincipalArn", "kmsKeyArn"})
_BASE = ("kmsRequestId", "kmsOperation")
_REQUIRED = {
    "health": _BASE,
    "metadata": (*_BASE, "awsPrincipalArn"),  # kmsKeyArn was dropped for GetKeyMetadata in v1.0.3
    "encrypt": (*_BASE, "awsPrincipalArn", "kmsKeyArn"),
    "decrypt": (*_BASE, "awsPrincipalArn", "kmsKeyArn"),
}


# The four operation URIs under any URI path prefix (the proxy routes by it; the key manager checks that
# the path a request was signed for names the operation and key it is asked to run).
# The prefix's segments are taken whole (possessive ``++``: a part of a segment can never be followed by
# "/kms/...") and as few as will do (``*?``): the same matches and groups as the greedy form, since the
# operation's segments after the prefix are fixed in number, for 0.6 us where the greedy form's
# backtracking through the key's segments took 4-9 us (matched once in the proxy, once in the DSM).
URI_PATH = re.compile(
    r"(?P<prefix>(?:/[A-Za-z0-9_-]++)*?)/kms/xks/v1/"
    r"(?:(?P<health>health)|keys/(?P<key>[A-Za-z0-9._-]{1,128})/(?P<op>metadata|encrypt|decrypt))"
)


def path_operation(match: re.Match[str]) -> str:
    return "health" if match["health"] else match["op"]


# The spec's errorName -> HTTP status table (section 1.8), for the proxy that answers and the client
# (the KMS emulator) that checks an answer.
ERROR_STATUS: dict[str, int] = {
    "ValidationException": 400,
    "InvalidStateException": 400,
    "InvalidCiphertextException": 400,
    "InvalidKeyUsageException": 400,
    "AuthenticationFailedException": 401,
    "AccessDeniedException": 403,
    "KeyNotFoundException": 404,
    "InvalidUriPathException": 404,
    "ThrottlingException": 429,
    "InternalException": 500,
    "UnsupportedOperationException": 501,
    "DependencyTimeoutException": 503,
}


class XksRequestError(Exception):
    """A request body the proxy must refuse; the message names the field, never its value."""

    error_name = "ValidationException"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class XksValidationError(XksRequestError):
    """HTTP 400: the body is malformed or breaks a spec rule."""

    error_name = "ValidationException"


class XksTooLargeError(XksRequestError):
    """HTTP 501: well-formed, but a parameter is larger than this proxy is configured to support."""

    error_name = "UnsupportedOperationException"


@dataclass(frozen=True)
class Limits:
    """Configured maxima. Values below the spec minimums, or AAD above 65535, are ignored by the
    parser: the spec allows a 501 only beyond its minimums, and the AAD length is a uint16."""

    max_plaintext_bytes: int = MIN_PLAINTEXT_BYTES  # also the ciphertext limit
    max_aad_bytes: int = MIN_AAD_BYTES


@dataclass(frozen=True)
class RequestMetadata:
    """KMS's requestMetadata: only for logging and secondary authorization, so values are opaque."""

    kms_request_id: str
    kms_operation: str
    aws_principal_arn: str | None = None
    kms_key_arn: str | None = None
    kms_via_service: str | None = None
    aws_source_vpc: str | None = None
    aws_source_vpce: str | None = None

    def as_dict(self) -> dict[str, str]:
        """The spec's camelCase names of the fields that are set, as policy rules and logs use them."""
        return {key: value for key, attr in _META_FIELDS if (value := getattr(self, attr)) is not None}


@dataclass(frozen=True)
class HealthRequest:
    metadata: RequestMetadata


@dataclass(frozen=True)
class MetadataRequest:
    metadata: RequestMetadata


@dataclass(frozen=True)
class EncryptRequest:
    metadata: RequestMetadata
    plaintext: bytes = field(repr=False)  # never in logs or tracebacks
    aad: bytes | None
    cdiv_algorithm: str | None


@dataclass(frozen=True)
class DecryptRequest:
    metadata: RequestMetadata
    ciphertext: bytes
    ciphertext_metadata: bytes | None
    aad: bytes | None
    iv: bytes
    tag: bytes


XksRequest = HealthRequest | MetadataRequest | EncryptRequest | DecryptRequest


def parse_request(operation: str, body: bytes, limits: Limits = Limits()) -> XksRequest:
    """Validate a body for one of OPERATIONS; raises XksValidationError, then (only for an otherwise
    valid body) XksTooLargeError."""
    if operation not in _REQUIRED:
        raise ValueError("unknown XKS operation")  # a routing bug, not a bad request
    data = _load(body)
    raw_meta = data.get("requestMetadata")
    if not isinstance(raw_meta, dict):
        raise XksValidationError("requestMetadata is required and must be a JSON object")
    metadata = _metadata(raw_meta, _REQUIRED[operation])
    if operation == "health":
        return HealthRequest(metadata)
    if operation == "metadata":
        return MetadataRequest(metadata)
    text_limit = max(limits.max_plaintext_bytes, MIN_PLAINTEXT_BYTES)
    aad_limit = min(max(limits.max_aad_bytes, MIN_AAD_BYTES), MAX_AAD_WIRE_BYTES)
    if operation == "encrypt":
        plaintext = _b64_required(data, "plaintext")
        _algorithm(data)
        aad = _b64_field(data, "additionalAuthenticatedData")
        cdiv = data.get("ciphertextDataIntegrityValueAlgorithm")
        if cdiv is not None and cdiv != CDIV_ALGORITHM:
            raise XksValidationError(f"ciphertextDataIntegrityValueAlgorithm must be {CDIV_ALGORITHM}")
        _check_size("plaintext", plaintext, text_limit)
        _check_size("additionalAuthenticatedData", aad, aad_limit)
        return EncryptRequest(metadata, _decode(plaintext), _decode_opt(aad), cdiv)
    ciphertext = _b64_required(data, "ciphertext")
    _algorithm(data)
    iv = _b64_required(data, "initializationVector")
    if _decoded_len(iv) not in IV_BYTES:
        raise XksValidationError("initializationVector must be 12 or 16 bytes")
    tag = _b64_required(data, "authenticationTag")
    if _decoded_len(tag) != TAG_BYTES:
        raise XksValidationError(f"authenticationTag must be {TAG_BYTES} bytes")
    cmeta = _b64_field(data, "ciphertextMetadata")
    if cmeta is not None and _decoded_len(cmeta) > MAX_CIPHERTEXT_METADATA_BYTES:
        raise XksValidationError(f"ciphertextMetadata must be at most {MAX_CIPHERTEXT_METADATA_BYTES} bytes")
    aad = _b64_field(data, "additionalAuthenticatedData")
    _check_size("ciphertext", ciphertext, text_limit)
    _check_size("additionalAuthenticatedData", aad, aad_limit)
    return DecryptRequest(
        metadata, _decode(ciphertext), _decode_opt(cmeta), _decode_opt(aad), _decode(iv), _decode(tag)
    )


def parse_metadata_only(body: bytes) -> RequestMetadata | None:
    """Best effort, never raises: the requestMetadata of a body, or None (used for logging/policy before
    authentication). Fields of the wrong type are left out; without kmsRequestId and kmsOperation
    strings the answer is None."""
    try:
        raw = _load(body).get("requestMetadata")
        if not isinstance(raw, dict):
            return None
        values = {attr: v for key, attr in _META_FIELDS if isinstance(v := raw.get(key), str)}
        values = {attr: v for attr, v in values.items() if not _SURROGATE.search(v)}
        if "kms_request_id" not in values or "kms_operation" not in values:
            return None
        return RequestMetadata(**values)
    except Exception:
        return None


def kms_request_id_only(body: bytes) -> str | None:
    """parse_metadata_only(body)'s kms_request_id, without building the rest (the proxy's access line
    needs only the id: half the time). Best effort, never raises."""
    try:
        raw = _load(body).get("requestMetadata")
        if not isinstance(raw, dict):
            return None
        request_id, operation = raw.get("kmsRequestId"), raw.get("kmsOperation")
        if not (isinstance(request_id, str) and isinstance(operation, str)):
            return None
        if _SURROGATE.search(request_id) or _SURROGATE.search(operation):
            return None
        return request_id
    except Exception:
        return None


def _load(body: bytes) -> dict[str, Any]:
    try:
        data = json_body.loads(body)
    except json_body.JsonBodyError as exc:
        raise XksValidationError(exc.message) from None
    if not isinstance(data, dict):
        raise XksValidationError("the request body must be a JSON object")
    return data


def _metadata(raw: dict[str, Any], required: tuple[str, ...]) -> RequestMetadata:
    values: dict[str, str] = {}
    for key, attr in _META_FIELDS:
        value = raw.get(key)
        if value is None:  # null counts as absent
            if key in required:
                raise XksValidationError(f"requestMetadata.{key} is required")
            continue
        if not isinstance(value, str) or _SURROGATE.search(value):
            raise XksValidationError(f"requestMetadata.{key} must be a string")
        if key in _ARN_KEYS and len(value) > ARN_MAX_CHARS:
            raise XksValidationError(f"requestMetadata.{key} must be at most {ARN_MAX_CHARS} characters")
        values[attr] = value
    return RequestMetadata(**values)


def _algorithm(data: dict[str, Any]) -> None:
    value = data.get("encryptionAlgorithm")
    if value is None:
        raise XksValidationError("encryptionAlgorithm is required")
    if value != ALGORITHM:
        raise XksValidationError(f"encryptionAlgorithm must be {ALGORITHM}")


def _b64_field(data: dict[str, Any], key: str) -> str | None:
    """An optional field's Base64 text, format-checked but not decoded (sizes are checked later)."""
    value = data.get(key)
    if value is not None and (not isinstance(value, str) or _B64.fullmatch(value) is None):
        raise XksValidationError(f"{key} must be a string of standard padded Base64")
    return value


def _b64_required(data: dict[str, Any], key: str) -> str:
    value = _b64_field(data, key)
    if value is None:
        raise XksValidationError(f"{key} is required")
    return value


def _decoded_len(text: str) -> int:
    """The decoded size of already-validated Base64, without decoding it."""
    return len(text) // 4 * 3 - text[-2:].count("=")


def _check_size(key: str, text: str | None, limit: int) -> None:
    if text is not None and _decoded_len(text) > limit:
        raise XksTooLargeError(f"{key} is larger than the {limit} bytes this proxy supports")


def _decode(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def _decode_opt(text: str | None) -> bytes | None:
    return None if text is None else _decode(text)
