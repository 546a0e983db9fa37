"""xkslab_shared.sigv4_sign, the KMS emulator's SigV4 signer for XKS proxy calls: byte for byte what
botocore's SigV4Auth produces for the same request (botocore is the oracle here, and only here), and
accepted by the project's verifier, on the spec's own sample requests and on generated ones."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from unittest import mock

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import given, settings
from hypothesis import strategies as st

from kms_emulator.xks_client import XksProxyConfig
from xkslab_shared import sigv4
from xkslab_shared.sigv4_sign import amz_date, sign

# The console configuration file's credential and path, verbatim from the spec (reference §1.9).
SPEC_AKID = "AKIAI2SFODNN7EXAMPLE"
SPEC_SECRET = "FYtE5EFA5FT0mCc3DrGUe2sti527BitkQ0Zr9MO9fvE"
SPEC_PATH = "/keystores/4a0d79d6-1d1b-49fd-9dbe-799cb9c0fb3f/kms/xks/v1"
# Appendix D's curl sample (reference §1.14): a minimal Encrypt and a health check, us-east-1.
SPEC_ENCRYPT = {
    "requestMetadata": {
        "awsPrincipalArn": "arn:aws:iam::123456789012:user/Alice",
        "kmsKeyArn": "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        "kmsOperation": "GenerateDataKey",
        "kmsRequestId": "4112f4d6-db54-4af4-ae30-c55a22a8dfae",
    },
    "plaintext": "SGVsbG8gV29ybGQh",
    "encryptionAlgorithm": "AES_GCM",
}
SPEC_HEALTH = {
    "requestMetadata": {
        "kmsOperation": "KmsHealthCheck",
        "kmsRequestId": "4112f4d6-db54-4af4-ae30-c55a22a8dfae",
    }
}
# KMS's form of the header (reference §1.9), the signed-header list left open.
SPEC_FORM = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<akid>[A-Za-z0-9]+)/(?P<date>[0-9]{8})/(?P<region>[a-z0-9-]+)"
    r"/kms-xks-proxy/aws4_request, SignedHeaders=(?P<signed>[a-z0-9;-]+), Signature=[0-9a-f]{64}"
)
CONTENT_TYPE = {"Content-Type": "application/json"}


def botocore_headers(
    *,
    url: str,
    headers: dict[str, str],
    body: bytes,
    akid: str,
    secret: str,
    region: str,
    service: str,
    when: datetime,
) -> dict[str, str]:
    """What botocore's SigV4Auth adds to the same request, its clock pinned to ``when``."""
    request = AWSRequest(method="POST", url=url, data=body, headers=dict(headers))
    with mock.patch("botocore.auth.get_current_datetime", return_value=when.replace(tzinfo=None)):
        SigV4Auth(Credentials(akid, secret), service, region).add_auth(request)
    return dict(request.headers.items())


def ours(
    cfg: XksProxyConfig, tail: str, headers: dict[str, str], body: bytes, service: str, when: datetime
) -> dict[str, str]:
    return sign(
        method="POST",
        host=cfg.host,
        path=cfg.path(tail),
        headers=headers,
        body=body,
        access_key_id=cfg.access_key_id,
        secret=cfg.secret,
        region=cfg.region,
        service=service,
        when=amz_date(when.timestamp()),
    )


def verified_by_the_proxy_side(cfg: XksProxyConfig, tail: str, sent: dict[str, str], body: bytes) -> str:
    """What an XKS proxy of this project checks: the raw path and the headers as they arrive."""
    request = sigv4.SignedRequest(
        method="POST",
        path=cfg.path(tail),
        query="",
        headers={name.lower(): value for name, value in sent.items()},
        body_sha256=hashlib.sha256(body).hexdigest(),
    )
    when = datetime.strptime(sent["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    return sigv4.verify(request, [(cfg.access_key_id, cfg.secret)], now=when, region=cfg.region)


@pytest.mark.parametrize(("tail", "body"), [("keys/k1/encrypt", SPEC_ENCRYPT), ("health", SPEC_HEALTH)])
@pytest.mark.parametrize("endpoint", ["https://xks.example.com", "http://127.0.0.1:8600"])
def test_the_spec_sample_requests_sign_as_botocore_signs_them(
    tail: str, body: dict[str, object], endpoint: str
) -> None:
    cfg = XksProxyConfig(endpoint, SPEC_PATH, SPEC_AKID, SPEC_SECRET, region="us-east-1")
    payload = json.dumps(body, separators=(",", ":")).encode()
    when = datetime(2022, 9, 7, 12, 34, 56, tzinfo=UTC)
    mine = ours(cfg, tail, CONTENT_TYPE, payload, "kms-xks-proxy", when)
    theirs = botocore_headers(
        url=cfg.url(tail),
        headers=CONTENT_TYPE,
        body=payload,
        akid=SPEC_AKID,
        secret=SPEC_SECRET,
        region="us-east-1",
        service="kms-xks-proxy",
        when=when,
    )
    assert mine["Authorization"] == theirs["Authorization"]
    assert mine["X-Amz-Date"] == theirs["X-Amz-Date"] == "20220907T123456Z"
    assert {k: v for k, v in mine.items() if k != "Host"} == theirs
    assert mine["Host"] == endpoint.split("://")[1]
    form = SPEC_FORM.fullmatch(mine["Authorization"])
    assert form is not None
    assert form["akid"] == SPEC_AKID and form["date"] == "20220907" and form["region"] == "us-east-1"
    assert form["signed"] == "content-type;host;x-amz-date"
    assert verified_by_the_proxy_side(cfg, tail, mine, payload) == SPEC_AKID


# Generated requests, in the shapes KMS's calls can take: any endpoint a key store may name, any URI path
# and key id the XKS client accepts (except dot segments and empty segments, which botocore normalizes
# away and a proxy does not: see the next test), any headers botocore signs, any body, credential, region,
# service and moment.
_LABEL = st.from_regex(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,10}[a-zA-Z0-9])?", fullmatch=True)
_HOSTS = st.one_of(
    st.lists(_LABEL, min_size=1, max_size=4).map(".".join),
    st.tuples(*[st.integers(0, 255)] * 4).map(lambda ip: ".".join(map(str, ip))),
    st.sampled_from(["[::1]", "[2001:db8::7]", "[FE80::1]"]),
)
_ENDPOINTS = st.builds(
    lambda scheme, host, port: f"{scheme}://{host}{'' if port is None else f':{port}'}",
    st.sampled_from(["http", "https"]),
    _HOSTS,
    st.one_of(st.none(), st.sampled_from([80, 443]), st.integers(1, 65535)),
)
_SEGMENT = st.from_regex(r"[A-Za-z0-9_-]{1,12}", fullmatch=True)
_URI_PATHS = st.lists(_SEGMENT, min_size=0, max_size=5).map(lambda parts: "/" + "/".join(parts))
_KEY_IDS = st.from_regex(r"[A-Za-z0-9._-]{1,128}", fullmatch=True).filter(lambda k: k not in (".", ".."))
_TAILS = st.one_of(
    st.just("health"),
    st.builds(lambda k, op: f"keys/{k}/{op}", _KEY_IDS, st.sampled_from(["metadata", "encrypt", "decrypt"])),
)
_HEADER_NAMES = st.from_regex(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,20}", fullmatch=True).filter(
    lambda n: (
        n.lower() not in {"host", "x-amz-date", "authorization", "user-agent", "expect", "x-amzn-trace-id"}
    )
)
_HEADER_VALUES = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30)
_HEADERS = st.dictionaries(_HEADER_NAMES, _HEADER_VALUES, max_size=4).filter(
    lambda h: len({n.lower() for n in h}) == len(h)
)
_SECRETS = st.from_regex(r"[a-zA-Z0-9/+=]{43,64}", fullmatch=True)
_AKIDS = st.from_regex(r"[A-Z2-7]{20,30}", fullmatch=True)
_REGIONS = st.from_regex(r"[a-z]{2}(-[a-z]{1,12}){1,2}-[0-9]", fullmatch=True)
_MOMENTS = st.datetimes(datetime(2000, 1, 1), datetime(2099, 12, 31)).map(
    lambda d: d.replace(microsecond=0, tzinfo=UTC)
)


@settings(max_examples=400, deadline=None)
@given(
    endpoint=_ENDPOINTS,
    uri_path=_URI_PATHS,
    tail=_TAILS,
    headers=st.one_of(st.just(CONTENT_TYPE), _HEADERS),
    body=st.binary(max_size=300),
    akid=_AKIDS,
    secret=_SECRETS,
    region=_REGIONS,
    service=st.sampled_from(["kms-xks-proxy", "kms"]),
    when=_MOMENTS,
)
def test_generated_requests_sign_as_botocore_signs_them(
    endpoint: str,
    uri_path: str,
    tail: str,
    headers: dict[str, str],
    body: bytes,
    akid: str,
    secret: str,
    region: str,
    service: str,
    when: datetime,
) -> None:
    cfg = XksProxyConfig(endpoint, uri_path, akid, secret, region=region)
    mine = ours(cfg, tail, headers, body, service, when)
    theirs = botocore_headers(
        url=cfg.url(tail),
        headers=headers,
        body=body,
        akid=akid,
        secret=secret,
        region=region,
        service=service,
        when=when,
    )
    assert {k: v for k, v in mine.items() if k != "Host"} == theirs
    if service == "kms-xks-proxy":
        assert verified_by_the_proxy_side(cfg, tail, mine, body) == akid


@pytest.mark.parametrize("path", ["/a//b/kms/xks/v1", "/kms/xks/v1"])
@pytest.mark.parametrize("key_id", ["..", ".", "k1"])
def test_the_path_is_signed_as_sent_where_botocore_would_normalize_it(path: str, key_id: str) -> None:
    cfg = XksProxyConfig("https://xks.example.com", path, SPEC_AKID, SPEC_SECRET)
    tail = f"keys/{key_id}/encrypt"
    mine = ours(cfg, tail, CONTENT_TYPE, b"{}", "kms-xks-proxy", datetime(2026, 1, 2, tzinfo=UTC))
    assert verified_by_the_proxy_side(cfg, tail, mine, b"{}") == SPEC_AKID


def test_the_signing_key_is_derived_once_per_day_region_and_service() -> None:
    cfg = XksProxyConfig("https://xks.example.com", SPEC_PATH, SPEC_AKID, "s" * 44, region="eu-west-3")
    when = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
    ours(cfg, "health", CONTENT_TYPE, b"{}", "kms-xks-proxy", when)  # derives it (or finds it)
    misses = sigv4.signing_key.cache_info().misses
    for second in range(5):
        ours(cfg, "health", CONTENT_TYPE, b"{}", "kms-xks-proxy", when.replace(second=second))
    assert sigv4.signing_key.cache_info().misses == misses
    ours(cfg, "health", CONTENT_TYPE, b"{}", "kms-xks-proxy", when.replace(day=7))
    assert sigv4.signing_key.cache_info().misses == misses + 1


def test_amz_date_is_botocores_format_of_now() -> None:
    request = AWSRequest(method="POST", url="https://h/p", data=b"", headers={})
    SigV4Auth(Credentials("AKID", "secret"), "kms-xks-proxy", "us-east-1").add_auth(request)
    theirs = request.headers["X-Amz-Date"]
    mine = amz_date()
    assert re.fullmatch(r"[0-9]{8}T[0-9]{6}Z", mine)
    gap = datetime.strptime(mine, "%Y%m%dT%H%M%SZ") - datetime.strptime(theirs, "%Y%m%dT%H%M%SZ")
    assert 0 <= gap.total_seconds() <= 60


@pytest.mark.parametrize("name", ["Host", "x-amz-date", "Authorization"])
def test_headers_that_the_signer_sets_are_refused_in_its_input(name: str) -> None:
    with pytest.raises(ValueError, match="Host, X-Amz-Date or Authorization"):
        sign(
            method="POST",
            host="h",
            path="/",
            headers={name: "x"},
            body=b"",
            access_key_id=SPEC_AKID,
            secret=SPEC_SECRET,
            region="us-east-1",
        )
