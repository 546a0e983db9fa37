"""Tests for xkslab_shared.sigv4: requests signed by botocore (as KMS signs them), tampering, clock skew, malformed
Authorization headers, and the AWS documentation's signing-key vector."""

import hashlib
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import urlsplit

import botocore.auth
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import given, settings
from hypothesis import strategies as st

from xkslab_shared import sigv4
from xkslab_shared.sigv4 import (
    SignedRequest,
    SigV4Error,
    header_names_to_forward,
    parse_authorization,
    verify,
)

APP = "0b7c5a8e-3f1d-4c2a-9e6b-5d4f3a2b1c0d"
URL = f"https://xks.example.com/crypto/v1/apps/{APP}/aws/kms/xks/v1/keys/k1/encrypt"
BODY = b'{"requestMetadata":{"kmsOperation":"Encrypt"},"plaintext":"SGVsbG8gV29ybGQh"}'
AKID = "AKIAI2SFODNN7EXAMPLEAB"
SECRET = "FYtE5EFA5FT0mCc3DrGUe2sti527BitkQ0Zr9MO9fvE"
OLD_AKID = "MUBSXM6K3KMXHN6RRCXI7TWQ"
OLD_SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEYabcdefg"
CREDS = [(AKID, SECRET), (OLD_AKID, OLD_SECRET)]
SIGNED_AT = datetime(2024, 5, 1, 12, 30, 45, tzinfo=UTC)
GOOD_SIG = "0" * 64


@pytest.fixture(autouse=True)
def frozen_botocore_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore.auth reads the time through get_current_datetime() (naive UTC); pin it to SIGNED_AT."""
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *a, **k: SIGNED_AT.replace(tzinfo=None))


def sign(
    akid: str = AKID,
    secret: str = SECRET,
    *,
    url: str = URL,
    body: bytes = BODY,
    service: str = "kms-xks-proxy",
    region: str = "us-east-1",
    headers: dict[str, str] | None = None,
) -> SignedRequest:
    """Sign with botocore and convert the prepared request into what the proxy forwards."""
    request = AWSRequest(
        method="POST", url=url, data=body, headers=headers or {"Content-Type": "application/json"}
    )
    SigV4Auth(Credentials(akid, secret), service, region).add_auth(request)
    parts = urlsplit(request.url)
    forwarded = {name.lower(): value for name, value in request.headers.items()}
    forwarded["host"] = parts.netloc  # botocore signs the host from the URL without adding the header
    return SignedRequest(
        method=request.method,
        path=parts.path,
        query=parts.query,
        headers=forwarded,
        body_sha256=hashlib.sha256(body).hexdigest(),
    )


def with_headers(request: SignedRequest, **changes: str | None) -> SignedRequest:
    headers = dict(request.headers)
    for name, value in changes.items():
        name = name.replace("_", "-")
        if value is None:
            del headers[name]
        else:
            headers[name] = value
    return replace(request, headers=headers)


def check(request: SignedRequest, creds: list[tuple[str, str]] = CREDS, **kwargs: object) -> str:
    return verify(request, creds, now=SIGNED_AT, **kwargs)  # type: ignore[arg-type]


# --- valid signatures --------------------------------------------------------------------------------


def test_botocore_signature_verifies_and_returns_akid() -> None:
    request = sign()
    assert request.headers["x-amz-date"] == "20240501T123045Z"  # the pinned clock was used
    assert check(request) == AKID


def test_previous_credential_of_the_pair_verifies() -> None:
    assert check(sign(OLD_AKID, OLD_SECRET)) == OLD_AKID


def test_content_type_is_signed_like_curl_does() -> None:
    request = sign()
    auth = parse_authorization(request.headers["authorization"])
    assert auth.signed_headers == ("content-type", "host", "x-amz-date")
    assert (auth.access_key_id, auth.date, auth.region, auth.service) == (
        AKID,
        "20240501",
        "us-east-1",
        "kms-xks-proxy",
    )
    assert check(request) == AKID


def test_query_string_is_canonicalised_by_sorting() -> None:
    request = sign(url=URL + "?b=2&a=1&a=0")
    assert request.query == "b=2&a=1&a=0"
    assert check(request) == AKID
    with pytest.raises(SigV4Error, match="signature"):
        check(replace(request, query="b=2&a=1&a=9"))


def test_header_inner_whitespace_is_folded() -> None:
    request = sign(headers={"Content-Type": "application/json; charset=utf-8"})
    assert check(with_headers(request, content_type="  application/json;    charset=utf-8  ")) == AKID
    with pytest.raises(SigV4Error, match="signature"):
        check(with_headers(request, content_type="application/json;charset=utf-8"))


def test_signed_headers_order_is_honoured_not_sorted() -> None:
    request = sign()
    reordered = request.headers["authorization"].replace(
        "SignedHeaders=content-type;host;x-amz-date", "SignedHeaders=host;content-type;x-amz-date"
    )
    assert reordered != request.headers["authorization"]
    with pytest.raises(SigV4Error, match="signature"):
        check(with_headers(request, authorization=reordered))


def test_duplicate_access_key_id_tries_each_secret() -> None:
    assert check(sign(), [(AKID, OLD_SECRET), (AKID, SECRET)]) == AKID


# --- tampering and wrong credentials -------------------------------------------------------------------


def test_wrong_secret_fails_without_leaking() -> None:
    request = sign(secret=OLD_SECRET)
    expected = parse_authorization(sign().headers["authorization"]).signature  # what verify computes
    with pytest.raises(SigV4Error, match="signature does not match") as info:
        check(request)
    message = str(info.value)
    for leak in (SECRET, OLD_SECRET, expected, request.headers["authorization"], AKID):
        assert leak not in message


def test_unknown_access_key_id() -> None:
    with pytest.raises(SigV4Error, match="access key id is not known"):
        check(sign("ZZZZZZZZZZZZZZZZZZZZZZZZ", SECRET))


def test_no_credentials_at_all() -> None:
    with pytest.raises(SigV4Error, match="not known"):
        check(sign(), [])


def test_changed_body_fails() -> None:
    request = replace(sign(), body_sha256=hashlib.sha256(BODY + b" ").hexdigest())
    with pytest.raises(SigV4Error, match="signature"):
        check(request)


def test_changed_path_fails() -> None:
    request = sign()
    with pytest.raises(SigV4Error, match="signature"):
        check(replace(request, path=request.path.replace("/k1/", "/k2/")))


def test_changed_method_fails() -> None:
    with pytest.raises(SigV4Error, match="signature"):
        check(replace(sign(), method="PUT"))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("content-type", "application/xml"),
        ("host", "evil.example.com"),
        ("x-amz-date", "20240501T123046Z"),  # one second later: same day, inside the skew
    ],
)
def test_changed_signed_header_value_fails(name: str, value: str) -> None:
    request = sign()
    assert request.headers[name] != value
    with pytest.raises(SigV4Error, match="signature"):
        check(with_headers(request, **{name: value}))


def test_missing_signed_header_fails() -> None:
    with pytest.raises(SigV4Error, match="missing from the request"):
        check(with_headers(sign(), content_type=None))


def test_signed_headers_without_host_fails() -> None:
    request = sign()
    value = request.headers["authorization"].replace(";host;", ";")
    assert "host" not in parse_authorization(value).signed_headers
    with pytest.raises(SigV4Error, match="host header is not signed"):
        check(with_headers(request, authorization=value))


def test_missing_authorization_header() -> None:
    with pytest.raises(SigV4Error, match="Authorization header is missing"):
        check(with_headers(sign(), authorization=None))


# --- scope: service, region, date -------------------------------------------------------------------


def test_service_kms_is_not_kms_xks_proxy() -> None:
    request = sign(service="kms")
    with pytest.raises(SigV4Error, match="service is not kms-xks-proxy"):
        check(request)
    assert check(request, service="kms") == AKID  # the signature itself is fine


def test_region_is_checked_only_when_given() -> None:
    request = sign(region="eu-west-1")
    assert check(request) == AKID
    assert check(request, region="eu-west-1") == AKID
    with pytest.raises(SigV4Error, match="region"):
        check(request, region="us-east-1")


def test_credential_date_must_match_x_amz_date() -> None:
    request = sign()
    value = request.headers["authorization"].replace("/20240501/", "/20240430/")
    assert parse_authorization(value).date == "20240430"
    with pytest.raises(SigV4Error, match="date does not match X-Amz-Date"):
        check(with_headers(request, authorization=value))


@pytest.mark.parametrize(
    ("x_amz_date", "reason"),
    [
        (None, "X-Amz-Date header is missing"),
        ("2024-05-01T12:30:45Z", "X-Amz-Date header is malformed"),
        ("20240501T253045Z", "X-Amz-Date header is malformed"),  # hour 25
        ("20240501T123045", "X-Amz-Date header is malformed"),
        ("\uff12\uff10\uff12\uff140501T123045Z", "X-Amz-Date header is malformed"),  # full-width digits
    ],
)
def test_bad_x_amz_date(x_amz_date: str | None, reason: str) -> None:
    with pytest.raises(SigV4Error, match=reason):
        check(with_headers(sign(), x_amz_date=x_amz_date))


@pytest.mark.parametrize("seconds", [299, -299, 300, -300])
def test_clock_skew_within_limit_passes(seconds: int) -> None:
    assert verify(sign(), CREDS, now=SIGNED_AT + timedelta(seconds=seconds)) == AKID


@pytest.mark.parametrize("seconds", [301, -301, 86400])
def test_clock_skew_beyond_limit_fails(seconds: int) -> None:
    with pytest.raises(SigV4Error, match="clock skew"):
        verify(sign(), CREDS, now=SIGNED_AT + timedelta(seconds=seconds))


def test_max_skew_is_configurable() -> None:
    now = SIGNED_AT + timedelta(seconds=60)
    assert verify(sign(), CREDS, now=now, max_skew_s=60) == AKID
    with pytest.raises(SigV4Error, match="clock skew"):
        verify(sign(), CREDS, now=now, max_skew_s=59)


def test_now_in_another_timezone_is_compared_as_an_instant() -> None:
    now = SIGNED_AT.astimezone(timezone(timedelta(hours=5)))
    assert now.hour == 17
    assert verify(sign(), CREDS, now=now + timedelta(seconds=299)) == AKID
    with pytest.raises(SigV4Error, match="clock skew"):
        verify(sign(), CREDS, now=now + timedelta(seconds=301))


def test_naive_now_is_a_caller_bug() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        verify(sign(), CREDS, now=SIGNED_AT.replace(tzinfo=None))


# --- malformed Authorization values ------------------------------------------------------------------

SCOPE = "20240501/us-east-1/kms-xks-proxy/aws4_request"
MALFORMED = {
    "empty": "",
    "spaces": "   ",
    "algorithm only": "AWS4-HMAC-SHA256",
    "wrong algorithm": f"AWS4-HMAC-SHA512 Credential={AKID}/{SCOPE}, SignedHeaders=host, Signature={GOOD_SIG}",
    "sigv2": f"AWS {AKID}:c2lnbmF0dXJl",
    "no algorithm": f"Credential={AKID}/{SCOPE}, SignedHeaders=host, Signature={GOOD_SIG}",
    "missing signature": f"AWS4-HMAC-SHA256 Credential={AKID}/{SCOPE}, SignedHeaders=host;x-amz-date",
    "missing credential": f"AWS4-HMAC-SHA256 SignedHeaders=host, Signature={GOOD_SIG}",
    "missing signed headers": f"AWS4-HMAC-SHA256 Credential={AKID}/{SCOPE}, Signature={GOOD_SIG}",
    "duplicate component": f"AWS4-HMAC-SHA256 Credential={AKID}/{SCOPE}, Credential={AKID}/{SCOPE}, SignedHeaders=host, Signature={GOOD_SIG}",
    "unknown component": f"AWS4-HMAC-SHA256 Credential={AKID}/{SCOPE}, SignedHeaders=host, Signature={GOOD_SIG}, Extra=1",
    "trailing comma": f"AWS4-HMAC-SHA256 Credential={AKID}/{SCOPE}, SignedHeaders=host, Signature={GOOD_SIG},",
    "non-hex signature": f"AWS4-HMAC-SHA256 Credential={AKID}/{SCOPE}, SignedHeaders=host, Signature={'g' * 64}",
    "short signature": f"AWS4-HMAC-SHA256 Credential={AKID}/{SCOPE}, SignedHeaders=host, Signature={'a' * 63}",
    "upper-case signature": f"AWS4-HMAC-SHA256 Credential={AKID}/{SCOPE}, SignedHeaders=host, Signature={'A' * 64}",
    "signature with newline": f"AWS4-HMAC-SHA256 Credential={AKID}/{SCOPE}, SignedHeaders=host, Signature={GOOD_SIG}\n0",
    "akid with space": f"AWS4-HMAC-SHA256 Credential=AKIA EXAMPLE/{SCOPE}, SignedHeaders=host, Signature={GOOD_SIG}",
    "unicode akid": f"AWS4-HMAC-SHA256 Credential=AKIAÉXAMPLE☃/{SCOPE}, SignedHeaders=host, Signature={GOOD_SIG}",
    "empty akid": f"AWS4-HMAC-SHA256 Credential=/{SCOPE}, SignedHeaders=host, Signature={GOOD_SIG}",
    "akid with slash": f"AWS4-HMAC-SHA256 Credential=AK/IA/{SCOPE}, SignedHeaders=host, Signature={GOOD_SIG}",
    "short scope": f"AWS4-HMAC-SHA256 Credential={AKID}/20240501/us-east-1/aws4_request, SignedHeaders=host, Signature={GOOD_SIG}",
    "bad terminator": f"AWS4-HMAC-SHA256 Credential={AKID}/20240501/us-east-1/kms-xks-proxy/aws4_reques, SignedHeaders=host, Signature={GOOD_SIG}",
    "bad scope date": f"AWS4-HMAC-SHA256 Credential={AKID}/2024-5-1/us-east-1/kms-xks-proxy/aws4_request, SignedHeaders=host, Signature={GOOD_SIG}",
    "empty region": f"AWS4-HMAC-SHA256 Credential={AKID}/20240501//kms-xks-proxy/aws4_request, SignedHeaders=host, Signature={GOOD_SIG}",
    "empty signed headers": f"AWS4-HMAC-SHA256 Credential={AKID}/{SCOPE}, SignedHeaders=, Signature={GOOD_SIG}",
    "empty signed header name": f"AWS4-HMAC-SHA256 Credential={AKID}/{SCOPE}, SignedHeaders=host;;x-amz-date, Signature={GOOD_SIG}",
    "upper-case signed header": f"AWS4-HMAC-SHA256 Credential={AKID}/{SCOPE}, SignedHeaders=Host;x-amz-date, Signature={GOOD_SIG}",
    "duplicate signed header": f"AWS4-HMAC-SHA256 Credential={AKID}/{SCOPE}, SignedHeaders=host;host, Signature={GOOD_SIG}",
    "no separators": f"AWS4-HMAC-SHA256 Credential={AKID}/{SCOPE} SignedHeaders=host Signature={GOOD_SIG}",
}


@pytest.mark.parametrize("value", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_authorization_is_rejected(value: str) -> None:
    with pytest.raises(SigV4Error):
        parse_authorization(value)
    with pytest.raises(SigV4Error) as info:
        check(with_headers(sign(), authorization=value))
    assert value.strip() == "" or value.strip() not in str(info.value)


def test_components_in_any_order_and_spacing_parse() -> None:
    canonical = parse_authorization(
        f"AWS4-HMAC-SHA256 Credential={AKID}/{SCOPE}, SignedHeaders=host;x-amz-date, Signature={GOOD_SIG}"
    )
    shuffled = parse_authorization(
        f"AWS4-HMAC-SHA256 Signature={GOOD_SIG},SignedHeaders=host;x-amz-date ,  Credential={AKID}/{SCOPE}"
    )
    assert shuffled == canonical
    assert canonical == sigv4.Authorization(
        AKID, "20240501", "us-east-1", "kms-xks-proxy", ("host", "x-amz-date"), GOOD_SIG
    )


def test_reordered_components_of_a_real_signature_still_verify() -> None:
    request = sign()
    auth = parse_authorization(request.headers["authorization"])
    value = (
        f"AWS4-HMAC-SHA256 Signature={auth.signature},"
        f"Credential={AKID}/{SCOPE},SignedHeaders={';'.join(auth.signed_headers)}"
    )
    assert check(with_headers(request, authorization=value)) == AKID


# --- header_names_to_forward --------------------------------------------------------------------------


def test_forward_names_follow_signed_headers() -> None:
    assert header_names_to_forward(sign().headers["authorization"]) == {
        "authorization",
        "x-amz-date",
        "content-type",
        "host",
    }


def test_forward_names_for_kms_form() -> None:
    value = f"AWS4-HMAC-SHA256 Credential={AKID}/{SCOPE}, SignedHeaders=host;x-amz-date, Signature={GOOD_SIG}"
    assert header_names_to_forward(value) == {"authorization", "x-amz-date", "host"}
    value = value.replace("host;x-amz-date", "x-custom;host")
    assert header_names_to_forward(value) == {"authorization", "x-amz-date", "host", "x-custom"}


@pytest.mark.parametrize("value", [None, "", "garbage", *MALFORMED.values()])
def test_forward_names_are_tolerant_of_garbage(value: str | None) -> None:
    assert header_names_to_forward(value) == {"authorization", "x-amz-date", "host"}


# --- known vector ------------------------------------------------------------------------------------


def test_signing_key_matches_the_aws_documentation_example() -> None:
    """AWS General Reference, "Examples of how to derive a signing key for Signature Version 4"."""
    key = sigv4.signing_key("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20120215", "us-east-1", "iam")
    assert key.hex() == "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"
    assert (
        sigv4.signing_key("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20120216", "us-east-1", "iam") != key
    )


def test_constants() -> None:
    assert sigv4.SERVICE == "kms-xks-proxy"
    assert sigv4.MAX_SKEW_S == 300


def test_unencodable_header_value_is_a_sigv4_error() -> None:
    with pytest.raises(SigV4Error, match="not encodable"):
        check(with_headers(sign(), content_type="application/\ud800json"))


def _slow_parse(value: str) -> sigv4.Authorization | str:
    """parse_authorization without its one-match path for the header as signers write it."""
    original = sigv4._AS_SIGNED
    sigv4._AS_SIGNED = re.compile(r"(?!)")  # matches nothing
    try:
        return parse_authorization(value)
    except SigV4Error as exc:
        return f"{exc.kind}: {exc}"
    finally:
        sigv4._AS_SIGNED = original


def _both_parses(value: str) -> None:
    try:
        got: sigv4.Authorization | str = parse_authorization(value)
    except SigV4Error as exc:
        got = f"{exc.kind}: {exc}"
    assert got == _slow_parse(value)


_PART = st.text(alphabet="aZ09-_/=;,. \t\u0660é", max_size=6)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(_PART, min_size=8, max_size=8),
    st.sampled_from(["AKIDEXAMPLE", "A" * 128, "A" * 129, "ak-1", ""]),
    st.sampled_from(["20261207", "2026120", "2026120x"]),
    st.sampled_from(
        ["host;x-amz-date", "host;;x", "host;host", "a" * 129, "content-type;host;x-amz-date", ""]
    ),
    st.sampled_from(["a" * 64, "A" * 64, "a" * 63, "0123456789abcdef" * 4]),
)
def test_the_one_match_parse_agrees_with_the_full_one(
    junk: list[str], akid: str, date: str, names: str, signature: str
) -> None:
    canonical = (
        f"{sigv4.ALGORITHM} Credential={akid}/{date}/us-east-1/kms-xks-proxy/aws4_request, "
        f"SignedHeaders={names}, Signature={signature}"
    )
    _both_parses(canonical)
    _both_parses(canonical.replace(", ", ","))
    # Junk spliced in anywhere: the one-match path must either give the full parse's answer or decline.
    for index, piece in enumerate(junk):
        at = (index * 37) % (len(canonical) + 1)
        _both_parses(canonical[:at] + piece + canonical[at:])
