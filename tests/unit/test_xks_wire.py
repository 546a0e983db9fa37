"""XKS request-body parsing: the spec's own example bodies, one table row per validation rule and operation
(exact exception class, errorName, and a message that names the field but never echoes a value),
validation before size, the size limits and their floors, and a parse_metadata_only that never raises."""

from __future__ import annotations

import base64
import copy
import json
import random
from typing import Any

import pytest

from xkslab_shared import xks_wire
from xkslab_shared.xks_wire import (
    ARN_MAX_CHARS,
    MAX_CIPHERTEXT_METADATA_BYTES,
    MIN_AAD_BYTES,
    MIN_PLAINTEXT_BYTES,
    OPERATIONS,
    DecryptRequest,
    EncryptRequest,
    HealthRequest,
    Limits,
    MetadataRequest,
    RequestMetadata,
    XksRequestError,
    XksTooLargeError,
    XksValidationError,
    parse_metadata_only,
    parse_request,
)

# --- The spec's example request bodies, verbatim (reference doc sections 1.4-1.7) ---------------------

SPEC_METADATA = b"""{
    "requestMetadata": {
        "awsPrincipalArn": "arn:aws:iam::123456789012:user/Alice",
        "kmsOperation": "CreateKey",
        "kmsRequestId": "4112f4d6-db54-4af4-ae30-c55a22a8dfae"
    }
}"""

SPEC_ENCRYPT = b"""{
    "requestMetadata": {
        "awsPrincipalArn": "arn:aws:iam::123456789012:user/Alice",
        "kmsKeyArn": "arn:aws:kms:us-east-2:123456789012:/key/1234abcd-12ab-34cd-56ef-1234567890ab",
        "kmsOperation": "Encrypt",
        "kmsRequestId": "4112f4d6-db54-4af4-ae30-c55a22a8dfae",
        "kmsViaService": "ebs"
    },
    "additionalAuthenticatedData": "cHJvamVjdD1uaWxlLGRlcGFydG1lbnQ9bWFya2V0aW5n",
    "plaintext": "SGVsbG8gV29ybGQh",
    "encryptionAlgorithm": "AES_GCM",
    "ciphertextDataIntegrityValueAlgorithm": "SHA_256"
}"""

SPEC_DECRYPT = b"""{
    "requestMetadata": {
        "awsPrincipalArn": "arn:aws:iam::123456789012:user/Alice",
        "kmsKeyArn": "arn:aws:kms:us-east-2:123456789012:/key/1234abcd-12ab-34cd-56ef-1234567890ab",
        "kmsOperation": "Decrypt",
        "kmsRequestId": "5112f4d6-db54-4af4-ae30-c55a22a8dfae",
        "kmsViaService": "ebs"
    },
    "additionalAuthenticatedData": "cHJvamVjdD1uaWxlLGRlcGFydG1lbnQ9bWFya2V0aW5n",
    "encryptionAlgorithm": "AES_GCM",
    "ciphertext": "ghxkK1txeDNn3q8Y",
    "ciphertextMetadata": "a2V5X3ZlcnNpb249MQ==",
    "initializationVector": "HMrlRw85cAJUd5Ax",
    "authenticationTag": "vBxN2ncH1oEkR8WVXpmyYQ=="
}"""

SPEC_HEALTH = (
    b'{ "requestMetadata": { "kmsRequestId": "4112f4d6-db54-4af4-ae30-c55a22a8dfae", '
    b'"kmsOperation": "CreateCustomKeyStore" } }'
)

SPEC_BODIES = {
    "health": SPEC_HEALTH,
    "metadata": SPEC_METADATA,
    "encrypt": SPEC_ENCRYPT,
    "decrypt": SPEC_DECRYPT,
}
AAD = b"project=nile,department=marketing"
ALICE = "arn:aws:iam::123456789012:user/Alice"
KEY_ARN = "arn:aws:kms:us-east-2:123456789012:/key/1234abcd-12ab-34cd-56ef-1234567890ab"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def valid(op: str) -> dict[str, Any]:
    return json.loads(SPEC_BODIES[op])


def encode(data: Any) -> bytes:
    return json.dumps(data).encode()


MISSING = object()


def mutated(op: str, path: str, value: Any) -> bytes:
    """The spec body of op with one (dotted) key set to value, or removed when value is MISSING."""
    data = valid(op)
    *parents, last = path.split(".")
    target = data
    for part in parents:
        target = target[part]
    if value is MISSING:
        target.pop(last, None)
    else:
        target[last] = value
    return encode(data)


def printable_short(message: str) -> bool:
    return len(message) < 512 and all(" " <= c <= "~" for c in message)


# --- The spec examples parse into the right values -------------------------------------------------


def test_spec_encrypt_example() -> None:
    request = parse_request("encrypt", SPEC_ENCRYPT)
    assert isinstance(request, EncryptRequest)
    assert request.plaintext == b"Hello World!"
    assert request.aad == AAD
    assert request.cdiv_algorithm == "SHA_256"
    assert request.metadata == RequestMetadata(
        kms_request_id="4112f4d6-db54-4af4-ae30-c55a22a8dfae",
        kms_operation="Encrypt",
        aws_principal_arn=ALICE,
        kms_key_arn=KEY_ARN,
        kms_via_service="ebs",
    )


def test_spec_decrypt_example_matches_the_cdiv_vector() -> None:
    request = parse_request("decrypt", SPEC_DECRYPT)
    assert isinstance(request, DecryptRequest)
    # The section 1.14 hex values of the same fields.
    assert request.iv == bytes.fromhex("1ccae5470f39700254779031")
    assert request.ciphertext == bytes.fromhex("821c642b5b71783367deaf18")
    assert request.tag == bytes.fromhex("bc1c4dda7707d6812447c5955e99b261")
    assert (len(request.iv), len(request.tag), len(request.ciphertext)) == (12, 16, 12)
    assert request.ciphertext_metadata == b"key_version=1"
    assert request.aad == AAD
    assert request.metadata.kms_request_id == "5112f4d6-db54-4af4-ae30-c55a22a8dfae"
    assert request.metadata.kms_operation == "Decrypt"


def test_spec_metadata_and_health_examples() -> None:
    meta = parse_request("metadata", SPEC_METADATA)
    assert meta == MetadataRequest(
        RequestMetadata("4112f4d6-db54-4af4-ae30-c55a22a8dfae", "CreateKey", ALICE)
    )
    assert meta.metadata.kms_key_arn is None  # v1.0.3: not sent for GetKeyMetadata
    health = parse_request("health", SPEC_HEALTH)
    assert health == HealthRequest(
        RequestMetadata("4112f4d6-db54-4af4-ae30-c55a22a8dfae", "CreateCustomKeyStore")
    )


def test_appendix_d_minimal_encrypt_without_aad() -> None:
    body = {
        "requestMetadata": {
            "awsPrincipalArn": ALICE,
            "kmsKeyArn": KEY_ARN,
            "kmsOperation": "GenerateDataKey",
            "kmsRequestId": "r-1",
        },
        "plaintext": "SGVsbG8gV29ybGQh",
        "encryptionAlgorithm": "AES_GCM",
    }
    request = parse_request("encrypt", encode(body))
    assert isinstance(request, EncryptRequest)
    assert (request.aad, request.cdiv_algorithm, request.metadata.kms_via_service) == (None, None, None)
    assert request.plaintext == b"Hello World!"


def test_operations_constant_defaults_and_unknown_operation() -> None:
    assert OPERATIONS == ("health", "metadata", "encrypt", "decrypt")
    assert Limits() == Limits(max_plaintext_bytes=4300, max_aad_bytes=8192)
    for op in OPERATIONS:
        assert parse_request(op, SPEC_BODIES[op]).metadata.kms_request_id
    with pytest.raises(ValueError, match="unknown XKS operation"):
        parse_request("sign", SPEC_ENCRYPT)


# --- One row per validation rule and operation -------------------------------------------------------

REQUIRED = {
    "health": ["kmsRequestId", "kmsOperation"],
    "metadata": ["kmsRequestId", "kmsOperation", "awsPrincipalArn"],
    "encrypt": ["kmsRequestId", "kmsOperation", "awsPrincipalArn", "kmsKeyArn"],
    "decrypt": ["kmsRequestId", "kmsOperation", "awsPrincipalArn", "kmsKeyArn"],
}
OPTIONAL_META = ["kmsKeyArn", "kmsViaService", "awsSourceVpc", "awsSourceVpce"]
RAW_BODIES = [
    (b"not json", "body"),
    (b"", "body"),
    (b'{"requestMetadata": ', "body"),
    (b"\xff\xfe{}", "body"),  # invalid UTF-8
    ('{"requestMetadata": {}}'.encode("utf-16"), "body"),  # JSON, but not UTF-8
    (b"\xef\xbb\xbf{}", "body"),  # UTF-8 BOM
    (b"[]", "body"),
    (b'"requestMetadata"', "body"),
    (b"null", "body"),
    (b'{"requestMetadata": NaN}', "body"),
    (b'{"x": Infinity, "requestMetadata": {}}', "body"),
    (b'{"x": -Infinity}', "body"),
    (b"[" * 100_000, "body"),  # nesting deep enough for a RecursionError
    (b"{}", "requestMetadata"),
    (b'{"requestMetadata": "kmsRequestId"}', "requestMetadata"),
    (b'{"requestMetadata": null}', "requestMetadata"),
    (b'{"requestMetadata": []}', "requestMetadata"),
    (b'{"requestMetadata": {}}', "requestMetadata.kmsRequestId"),
]
LONG_ARN = "arn:aws:iam::123456789012:role/" + "r" * (ARN_MAX_CHARS + 1 - 31)
assert len(LONG_ARN) == ARN_MAX_CHARS + 1


def invalid_rows() -> list[Any]:
    rows: list[Any] = []
    for op in OPERATIONS:
        rows += [
            pytest.param(op, raw, field, id=f"{op}-raw-{i}") for i, (raw, field) in enumerate(RAW_BODIES)
        ]
        for key in REQUIRED[op]:
            for label, value in [
                ("missing", MISSING),
                ("number", 5),
                ("null", None),
                ("bool", True),
                ("list", []),
            ]:
                body = mutated(op, f"requestMetadata.{key}", value)
                rows.append(pytest.param(op, body, f"requestMetadata.{key}", id=f"{op}-{key}-{label}"))
        for key in OPTIONAL_META:
            body = mutated(op, f"requestMetadata.{key}", 7)
            rows.append(pytest.param(op, body, f"requestMetadata.{key}", id=f"{op}-{key}-number"))
        body = mutated(op, "requestMetadata.kmsRequestId", "id-\ud800")
        rows.append(pytest.param(op, body, "requestMetadata.kmsRequestId", id=f"{op}-lone-surrogate"))
        for key in ["awsPrincipalArn", "kmsKeyArn"]:
            body = mutated(op, f"requestMetadata.{key}", LONG_ARN)
            rows.append(pytest.param(op, body, f"requestMetadata.{key}", id=f"{op}-{key}-2049"))
    bad_b64 = [
        ("not-base64", "!!!!"),
        ("url-safe", "-_8="),
        ("unpadded", "SGVsbG8gV29ybGQ"),
        ("inner-space", "SGVs bG8gV29ybGQh"),
        ("newline", "SGVsbG8gV29ybGQh\n"),
        ("bad-padding", "SGVsbG8gV29ybGQ=="),
        ("data-after-padding", "QQ==QQ=="),
        ("non-canonical", "QR=="),
        ("number", 12),
        ("object", {}),
    ]
    payload = {
        "encrypt": ["plaintext", "additionalAuthenticatedData"],
        "decrypt": ["ciphertext", "additionalAuthenticatedData", "ciphertextMetadata"],
    }
    for op, keys in payload.items():
        for key in keys:
            rows += [pytest.param(op, mutated(op, key, v), key, id=f"{op}-{key}-{lab}") for lab, v in bad_b64]
        for label, value in [
            ("missing", MISSING),
            ("null", None),
            ("cbc", "AES_CBC"),
            ("lower", "aes_gcm"),
            ("num", 1),
        ]:
            body = mutated(op, "encryptionAlgorithm", value)
            rows.append(pytest.param(op, body, "encryptionAlgorithm", id=f"{op}-algorithm-{label}"))
    for key in ["plaintext"]:
        for label, value in [("missing", MISSING), ("null", None)]:
            rows.append(
                pytest.param("encrypt", mutated("encrypt", key, value), key, id=f"encrypt-{key}-{label}")
            )
    for value in ["SHA_512", "sha_256", "", 256, ["SHA_256"]]:
        body = mutated("encrypt", "ciphertextDataIntegrityValueAlgorithm", value)
        rows.append(
            pytest.param("encrypt", body, "ciphertextDataIntegrityValueAlgorithm", id=f"cdiv-{value!r}")
        )
    for key, sizes in [
        ("initializationVector", [0, 11, 13, 15, 17, 24]),
        ("authenticationTag", [0, 12, 15, 17]),
    ]:
        for label, value in [
            ("missing", MISSING),
            ("null", None),
            ("url-safe", "HMrlRw85cAJUd5A_"),
            ("unpadded", "AAAAAAAAAAAAAAAAAAAAAA"),
        ]:
            rows.append(pytest.param("decrypt", mutated("decrypt", key, value), key, id=f"{key}-{label}"))
        for size in sizes:
            body = mutated("decrypt", key, b64(bytes(size)))
            rows.append(pytest.param("decrypt", body, key, id=f"{key}-{size}-bytes"))
    for label, value in [("missing", MISSING), ("null", None)]:
        body = mutated("decrypt", "ciphertext", value)
        rows.append(pytest.param("decrypt", body, "ciphertext", id=f"decrypt-ciphertext-{label}"))
    body = mutated("decrypt", "ciphertextMetadata", b64(bytes(MAX_CIPHERTEXT_METADATA_BYTES + 1)))
    rows.append(pytest.param("decrypt", body, "ciphertextMetadata", id="ciphertextMetadata-21-bytes"))
    return rows


@pytest.mark.parametrize(("op", "body", "field"), invalid_rows())
def test_invalid_bodies_are_validation_errors(op: str, body: bytes, field: str) -> None:
    with pytest.raises(XksRequestError) as caught:
        parse_request(op, body)
    exc = caught.value
    assert type(exc) is XksValidationError
    assert exc.error_name == "ValidationException"
    assert field in exc.message
    assert str(exc) == exc.message
    assert printable_short(exc.message)
    metadata = parse_metadata_only(body)  # must not raise either
    assert metadata is None or isinstance(metadata, RequestMetadata)


def valid_rows() -> list[Any]:
    rows = []
    for size in (12, 16):
        body = mutated("decrypt", "initializationVector", b64(bytes(range(size))))
        rows.append(pytest.param("decrypt", body, "iv", bytes(range(size)), id=f"iv-{size}-bytes"))
    rows.append(
        pytest.param(
            "decrypt", mutated("decrypt", "authenticationTag", b64(b"t" * 16)), "tag", b"t" * 16, id="tag-16"
        )
    )
    for size in (0, 1, 2, MAX_CIPHERTEXT_METADATA_BYTES):
        body = mutated("decrypt", "ciphertextMetadata", b64(b"m" * size))
        rows.append(pytest.param("decrypt", body, "ciphertext_metadata", b"m" * size, id=f"cm-{size}-bytes"))
    for attr, key in [("ciphertext_metadata", "ciphertextMetadata"), ("aad", "additionalAuthenticatedData")]:
        for label, value in [("absent", MISSING), ("null", None)]:
            rows.append(
                pytest.param("decrypt", mutated("decrypt", key, value), attr, None, id=f"{key}-{label}")
            )
    for label, value in [("absent", MISSING), ("null", None)]:
        body = mutated("encrypt", "ciphertextDataIntegrityValueAlgorithm", value)
        rows.append(pytest.param("encrypt", body, "cdiv_algorithm", None, id=f"cdiv-{label}"))
        body = mutated("encrypt", "additionalAuthenticatedData", value)
        rows.append(pytest.param("encrypt", body, "aad", None, id=f"encrypt-aad-{label}"))
    rows.append(
        pytest.param("encrypt", mutated("encrypt", "plaintext", ""), "plaintext", b"", id="empty-plaintext")
    )
    rows.append(
        pytest.param(
            "decrypt", mutated("decrypt", "ciphertext", ""), "ciphertext", b"", id="empty-ciphertext"
        )
    )
    rows.append(
        pytest.param(
            "encrypt", mutated("encrypt", "additionalAuthenticatedData", ""), "aad", b"", id="empty-aad"
        )
    )
    for n in (1, 2, 3, 4, 5):  # every padding form
        body = mutated("encrypt", "plaintext", b64(b"\xfb" * n))
        rows.append(pytest.param("encrypt", body, "plaintext", b"\xfb" * n, id=f"plaintext-{n}-bytes"))
    return rows


@pytest.mark.parametrize(("op", "body", "attr", "expected"), valid_rows())
def test_valid_field_values(op: str, body: bytes, attr: str, expected: bytes | None) -> None:
    assert getattr(parse_request(op, body), attr) == expected


@pytest.mark.parametrize("op", OPERATIONS)
def test_arn_of_2048_characters_is_accepted(op: str) -> None:
    arn = LONG_ARN[:ARN_MAX_CHARS]
    data = valid(op)
    data["requestMetadata"].update(awsPrincipalArn=arn, kmsKeyArn=arn)
    metadata = parse_request(op, encode(data)).metadata
    assert metadata.aws_principal_arn == arn
    assert metadata.kms_key_arn == arn


@pytest.mark.parametrize("op", OPERATIONS)
def test_unknown_fields_and_operations_and_empty_strings_are_accepted(op: str) -> None:
    data = valid(op)
    data["futureTopLevelField"] = {"nested": [1, None, "x"]}
    meta = data["requestMetadata"]
    meta.update(
        SourceIdentity=5, kmsRecipientAttestationPCR0=None, tags={"a": "b"}, kmsOperation="SomeFutureApi"
    )
    assert parse_request(op, encode(data)).metadata.kms_operation == "SomeFutureApi"
    for key in REQUIRED[op] + ["kmsViaService", "awsSourceVpc", "awsSourceVpce"]:
        meta[key] = ""
    metadata = parse_request(op, encode(data)).metadata
    assert metadata.kms_request_id == metadata.kms_operation == metadata.aws_source_vpce == ""
    assert set(metadata.as_dict()) >= set(REQUIRED[op])
    assert all(value == "" for value in metadata.as_dict().values())


@pytest.mark.parametrize("op", OPERATIONS)
def test_null_optional_metadata_is_absent(op: str) -> None:
    data = valid(op)
    data["requestMetadata"].update(kmsViaService=None, awsSourceVpc=None, awsSourceVpce=None)
    if op in ("health", "metadata"):
        data["requestMetadata"]["kmsKeyArn"] = None
    metadata = parse_request(op, encode(data)).metadata
    assert (metadata.kms_via_service, metadata.aws_source_vpc, metadata.aws_source_vpce) == (None, None, None)
    assert "kmsViaService" not in metadata.as_dict()


@pytest.mark.parametrize(
    "body", [b"{}", b'{"requestMetadata": {}}', b'{"requestMetadata": {"kmsOperation": "x"}}']
)
def test_health_with_empty_body_or_metadata_is_a_validation_error(body: bytes) -> None:
    with pytest.raises(XksValidationError) as caught:
        parse_request("health", body)
    assert caught.value.error_name == "ValidationException"


@pytest.mark.parametrize("operation", ["DescribeKey", "CreateKey"])
def test_pre_1_0_3_metadata_request_is_accepted(operation: str) -> None:
    data = valid("metadata")
    data["requestMetadata"].update(kmsKeyArn=KEY_ARN, kmsViaService="ebs", kmsOperation=operation)
    request = parse_request("metadata", encode(data))
    assert isinstance(request, MetadataRequest)
    assert (request.metadata.kms_key_arn, request.metadata.kms_via_service) == (KEY_ARN, "ebs")
    assert request.metadata.kms_operation == operation


def test_as_dict_uses_camel_case_and_only_set_fields() -> None:
    full = RequestMetadata("id", "Encrypt", "p", "k", "ebs", "vpc-1", "vpce-2")
    assert full.as_dict() == {
        "kmsRequestId": "id",
        "kmsOperation": "Encrypt",
        "awsPrincipalArn": "p",
        "kmsKeyArn": "k",
        "kmsViaService": "ebs",
        "awsSourceVpc": "vpc-1",
        "awsSourceVpce": "vpce-2",
    }
    assert RequestMetadata("id", "").as_dict() == {"kmsRequestId": "id", "kmsOperation": ""}


# --- Sizes: only after validation; limits and their floors -------------------------------------------


def encrypt_body(plaintext: bytes | str, aad: bytes | None = None, **extra: Any) -> bytes:
    data = valid("encrypt")
    data["plaintext"] = plaintext if isinstance(plaintext, str) else b64(plaintext)
    data.pop("additionalAuthenticatedData")
    if aad is not None:
        data["additionalAuthenticatedData"] = b64(aad)
    data.update(extra)
    return encode(data)


def decrypt_body(ciphertext: bytes, aad: bytes | None = None, **extra: Any) -> bytes:
    data = valid("decrypt")
    data["ciphertext"] = b64(ciphertext)
    data.pop("additionalAuthenticatedData")
    if aad is not None:
        data["additionalAuthenticatedData"] = b64(aad)
    data.update(extra)
    return encode(data)


DEFAULT_LIMITS = Limits()


def too_large(body: bytes, op: str, field: str, limits: Limits = DEFAULT_LIMITS) -> None:
    with pytest.raises(XksRequestError) as caught:
        parse_request(op, body, limits)
    assert type(caught.value) is XksTooLargeError
    assert caught.value.error_name == "UnsupportedOperationException"
    assert field in caught.value.message
    assert printable_short(caught.value.message)


def test_spec_minimum_sizes_are_accepted_and_one_more_byte_is_too_large() -> None:
    req = parse_request("encrypt", encrypt_body(b"p" * MIN_PLAINTEXT_BYTES, b"a" * MIN_AAD_BYTES))
    assert isinstance(req, EncryptRequest)
    assert (len(req.plaintext), len(req.aad or b"")) == (4300, 8192)
    req = parse_request("decrypt", decrypt_body(b"c" * MIN_PLAINTEXT_BYTES, b"a" * MIN_AAD_BYTES))
    assert isinstance(req, DecryptRequest)
    assert (len(req.ciphertext), len(req.aad or b"")) == (4300, 8192)
    too_large(encrypt_body(b"p" * 4301), "encrypt", "plaintext")
    too_large(encrypt_body(b"p", b"a" * 8193), "encrypt", "additionalAuthenticatedData")
    too_large(decrypt_body(b"c" * 4301), "decrypt", "ciphertext")
    too_large(decrypt_body(b"c", b"a" * 8193), "decrypt", "additionalAuthenticatedData")


def test_raised_limits_accept_more() -> None:
    limits = Limits(max_plaintext_bytes=10_000, max_aad_bytes=20_000)
    req = parse_request("encrypt", encrypt_body(b"p" * 10_000, b"a" * 20_000), limits)
    assert isinstance(req, EncryptRequest)
    assert len(req.plaintext) == 10_000
    assert (
        len(parse_request("decrypt", decrypt_body(b"c" * 10_000, b"a" * 20_000), limits).ciphertext) == 10_000
    )
    too_large(encrypt_body(b"p" * 10_001), "encrypt", "plaintext", limits)
    too_large(decrypt_body(b"c", b"a" * 20_001), "decrypt", "additionalAuthenticatedData", limits)


def test_limits_below_the_spec_minimums_still_accept_the_minimums() -> None:
    tiny = Limits(max_plaintext_bytes=1, max_aad_bytes=1)
    req = parse_request("encrypt", encrypt_body(b"p" * 4300, b"a" * 8192), tiny)
    assert isinstance(req, EncryptRequest)
    assert len(req.plaintext) == 4300
    too_large(encrypt_body(b"p" * 4301), "encrypt", "plaintext", tiny)


def test_aad_over_65535_bytes_is_always_too_large() -> None:
    huge = Limits(max_plaintext_bytes=100_000, max_aad_bytes=1_000_000)
    assert parse_request("encrypt", encrypt_body(b"p", b"a" * 65535), huge).aad == b"a" * 65535
    too_large(encrypt_body(b"p", b"a" * 65536), "encrypt", "additionalAuthenticatedData", huge)
    too_large(decrypt_body(b"c", b"a" * 65536), "decrypt", "additionalAuthenticatedData", huge)


@pytest.mark.parametrize(
    ("op", "body", "field"),
    [
        ("encrypt", encrypt_body(b"p" * 10_000, encryptionAlgorithm="AES_CBC"), "encryptionAlgorithm"),
        (
            "encrypt",
            encrypt_body(b"p" * 10_000, ciphertextDataIntegrityValueAlgorithm="MD5"),
            "ciphertextDataIntegrityValueAlgorithm",
        ),
        (
            "encrypt",
            encrypt_body(b"p" * 10_000, additionalAuthenticatedData="a_b-"),
            "additionalAuthenticatedData",
        ),
        ("encrypt", encrypt_body(b"p", b"a" * 9000, encryptionAlgorithm=None), "encryptionAlgorithm"),
        ("decrypt", decrypt_body(b"c" * 10_000, initializationVector=b64(bytes(11))), "initializationVector"),
        ("decrypt", decrypt_body(b"c" * 10_000, authenticationTag=b64(bytes(15))), "authenticationTag"),
        ("decrypt", decrypt_body(b"c", b"a" * 9000, ciphertextMetadata=b64(bytes(21))), "ciphertextMetadata"),
        (
            "decrypt",
            decrypt_body(b"c" * 10_000, additionalAuthenticatedData="QQ"),
            "additionalAuthenticatedData",
        ),
    ],
)
def test_validation_comes_before_size(op: str, body: bytes, field: str) -> None:
    with pytest.raises(XksRequestError) as caught:
        parse_request(op, body)
    assert type(caught.value) is XksValidationError
    assert field in caught.value.message


def test_oversized_base64_is_rejected_by_length_without_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[int] = []
    real = base64.b64decode

    def spy(text: Any, *args: Any, **kwargs: Any) -> bytes:
        decoded.append(len(text))
        return real(text, *args, **kwargs)

    monkeypatch.setattr(xks_wire.base64, "b64decode", spy)
    too_large(encrypt_body("A" * 4_000_000), "encrypt", "plaintext")
    assert decoded == []
    parse_request("encrypt", SPEC_ENCRYPT)
    assert decoded  # the spy does see decoding of accepted bodies


# --- What never leaks ---------------------------------------------------------------------------------


def test_encrypt_request_repr_hides_the_plaintext() -> None:
    secret = b"TOPSECRET-PLAINTEXT-4242"
    request = parse_request("encrypt", encrypt_body(secret, b"visible-aad"))
    assert isinstance(request, EncryptRequest)
    assert request.plaintext == secret
    text = repr(request)
    assert "TOPSECRET" not in text
    assert b64(secret) not in text
    assert "plaintext" not in text
    assert "visible-aad" in text  # repr still works for the non-secret fields


DISTINCT = "Zq9Distinct"


@pytest.mark.parametrize(
    ("op", "body"),
    [
        ("encrypt", mutated("encrypt", "plaintext", DISTINCT + "!")),
        ("encrypt", mutated("encrypt", "plaintext", DISTINCT * 20000 + "Q==")),
        ("encrypt", mutated("encrypt", "encryptionAlgorithm", DISTINCT)),
        ("encrypt", mutated("encrypt", "ciphertextDataIntegrityValueAlgorithm", DISTINCT)),
        ("encrypt", encrypt_body(b"p" * 5000, DISTINCT.encode())),
        ("decrypt", mutated("decrypt", "initializationVector", b64(DISTINCT.encode()))),
        ("decrypt", mutated("decrypt", "authenticationTag", DISTINCT + "====")),
        ("decrypt", mutated("decrypt", "ciphertextMetadata", b64(DISTINCT.encode() * 3))),
        ("metadata", mutated("metadata", "requestMetadata.awsPrincipalArn", DISTINCT * 300)),
        ("metadata", mutated("metadata", "requestMetadata.kmsOperation", [DISTINCT])),
        ("health", mutated("health", "requestMetadata", DISTINCT)),
        ("health", f'{{"requestMetadata": {DISTINCT}}}'.encode()),
        ("health", f'["{DISTINCT}"]'.encode()),
        ("health", DISTINCT.encode() + b"\xff"),
    ],
)
def test_messages_never_echo_input_values(op: str, body: bytes) -> None:
    with pytest.raises(XksRequestError) as caught:
        parse_request(op, body)
    assert DISTINCT.lower() not in caught.value.message.lower()
    assert printable_short(caught.value.message)


# --- parse_metadata_only ------------------------------------------------------------------------------


@pytest.mark.parametrize("op", OPERATIONS)
def test_parse_metadata_only_returns_the_metadata_of_a_valid_body(op: str) -> None:
    assert parse_metadata_only(SPEC_BODIES[op]) == parse_request(op, SPEC_BODIES[op]).metadata


def test_parse_metadata_only_is_best_effort() -> None:
    # Not a valid request for any operation, but the metadata is still readable.
    body = b'{"requestMetadata": {"kmsRequestId": "r", "kmsOperation": "Encrypt", "kmsKeyArn": 5}}'
    assert parse_metadata_only(body) == RequestMetadata("r", "Encrypt")
    assert parse_metadata_only(b'{"requestMetadata": {"kmsRequestId": "r"}, "plaintext": 1}') is None
    assert (
        parse_metadata_only(b'{"requestMetadata": {"kmsRequestId": "\\ud800", "kmsOperation": "x"}}') is None
    )
    for garbage in [b"", b"null", b"[]", b"{}", b'{"requestMetadata": 1}', b"[" * 100_000, b"\xff", b"NaN"]:
        assert parse_metadata_only(garbage) is None


def test_kms_request_id_only_is_parse_metadata_only_s_id() -> None:
    """The proxy's access line reads the id alone; it must be what the whole metadata would say, on the
    spec's bodies, the best-effort cases above and thousands of mutations of them."""
    bodies = [
        *SPEC_BODIES.values(),
        b'{"requestMetadata": {"kmsRequestId": "r", "kmsOperation": "Encrypt", "kmsKeyArn": 5}}',
        b'{"requestMetadata": {"kmsRequestId": "r"}, "plaintext": 1}',
        b'{"requestMetadata": {"kmsRequestId": "r", "kmsOperation": 1}}',
        b'{"requestMetadata": {"kmsRequestId": "\\ud800", "kmsOperation": "x"}}',
        b'{"requestMetadata": {"kmsRequestId": "r", "kmsOperation": "x\\u0000"}}',
        *[b"", b"null", b"[]", b"{}", b'{"requestMetadata": 1}', b"[" * 100_000, b"\xff", b"NaN"],
    ]
    rng = random.Random(22)
    bodies += [mutations(rng, rng.choice(bodies[:6])) for _ in range(3000)]
    seen = set()
    for body in bodies:
        metadata = parse_metadata_only(body)
        expected = metadata.kms_request_id if metadata else None
        assert xks_wire.kms_request_id_only(body) == expected, body
        seen.add(expected is None)
    assert seen == {True, False}


def mutations(rng: random.Random, body: bytes) -> bytes:
    data = bytearray(body)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(4)
        pos = rng.randrange(len(data) + 1)
        if kind == 0 and data:
            data[min(pos, len(data) - 1)] = rng.randrange(256)
        elif kind == 1:
            data[pos:pos] = bytes([rng.choice(b'{}[]",:\\0aZ\x00\xc3\xff')])
        elif kind == 2:
            del data[pos : pos + rng.randint(1, 8)]
        else:
            data = data[:pos]
    return bytes(data)


def test_fuzz_never_raises_anything_unexpected() -> None:
    rng = random.Random(20240517)
    samples = [rng.randbytes(rng.randint(0, 64)) for _ in range(300)]
    samples += [mutations(rng, rng.choice(list(SPEC_BODIES.values()))) for _ in range(600)]
    seen_metadata = 0
    for body in samples:
        metadata = parse_metadata_only(body)
        assert metadata is None or isinstance(metadata, RequestMetadata)
        seen_metadata += metadata is not None
        for op in OPERATIONS:
            try:
                parse_request(op, body)
            except XksRequestError as exc:
                assert printable_short(exc.message)
    # Some mutations leave the metadata intact, so the fuzzing reached past the JSON parser.
    assert 0 < seen_metadata < len(samples)


def test_fuzz_structured_values_of_the_wrong_type() -> None:
    rng = random.Random(7)
    values: list[Any] = [
        None,
        True,
        0,
        -1.5,
        10**30,
        "",
        "x",
        [],
        {},
        ["AES_GCM"],
        {"k": "v"},
        "QUJD",
        "AES_GCM",
    ]
    for _ in range(300):
        op = rng.choice(OPERATIONS)
        data = copy.deepcopy(valid(op))
        target = data if rng.random() < 0.5 else data["requestMetadata"]
        key = rng.choice(sorted(target))
        target[key] = rng.choice(values)
        body = encode(data)
        metadata = parse_metadata_only(body)
        assert metadata is None or isinstance(metadata, RequestMetadata)
        try:
            parse_request(op, body)
        except XksRequestError as exc:
            assert type(exc) is XksValidationError
            assert printable_short(exc.message)
