"""AWS Signature Version 4 (AWS4-HMAC-SHA256) verification of the requests AWS KMS sends to an XKS proxy.

This and sigv4_sign.py (KMS's signing of the same requests) are the project's only SigV4 code. It is a
pure function of its inputs (no I/O, no clock: ``now`` is passed in), so the key manager can verify what
the proxy forwarded and tests can pin the time.
Error messages are short fixed phrases: they never carry a secret, a computed signature or a header value,
because they end up in audit records and HTTP responses.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

SERVICE = "kms-xks-proxy"
MAX_SKEW_S = 300
ALGORITHM = "AWS4-HMAC-SHA256"
TERMINATOR = "aws4_request"
_ALWAYS_FORWARD = frozenset({"authorization", "x-amz-date"})

_AKID = re.compile(r"[A-Za-z0-9]{1,128}")
_DATE = re.compile(r"[0-9]{8}")
_SCOPE_PART = re.compile(r"[a-z0-9-]{1,64}")
_HEADER_NAME = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]{1,128}")
_SIGNATURE = re.compile(r"[0-9a-f]{64}")
_AMZ_DATE = re.compile(r"[0-9]{8}T[0-9]{6}Z")


# What went wrong, for callers that answer each kind differently (AWS KMS: MissingAuthenticationToken,
# IncompleteSignature, UnrecognizedClient, InvalidSignature); the DSM answers them all alike.
MISSING = "missing"  # no Authorization header
MALFORMED = "malformed"  # not a well-formed SigV4 Authorization, or no X-Amz-Date
SCOPE = "scope"  # well formed, but the scope, date or signed headers cannot be right
SKEWED = "skewed"  # outside the allowed clock skew
UNKNOWN_KEY = "unknown-key"  # no credential with this access key id
MISMATCH = "mismatch"  # the signature does not match


class SigV4Error(Exception):
    """Verification failed. str(e) is a short, safe reason (never a secret, never a computed signature);
    ``kind`` is one of the constants above."""

    def __init__(self, message: str, kind: str = MALFORMED) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class SignedRequest:
    """The parts of an HTTP request that SigV4 covers, as the proxy received them."""

    method: str  # "POST"
    path: str  # the raw path exactly as received; not re-encoded
    query: str  # raw query string without "?", usually ""
    headers: Mapping[str, str] = field(repr=False)  # lower-case names; repeated headers joined with ","
    body_sha256: str  # lower-case hex SHA-256 of the exact body bytes


@dataclass(frozen=True)
class Authorization:
    """A parsed ``Authorization: AWS4-HMAC-SHA256 ...`` header."""

    access_key_id: str
    date: str  # yyyymmdd from the credential scope
    region: str
    service: str
    signed_headers: tuple[str, ...]  # lower-case, in the order given
    signature: str  # 64 lower-case hex chars


# The header as AWS's signers write it (the three parts in this order, ", " between them), whose parse
# is one match: every request's header is read in the proxy and again in the key manager.
_AS_SIGNED = re.compile(
    ALGORITHM
    + r" Credential=([A-Za-z0-9]{1,128})/([0-9]{8})/([a-z0-9-]{1,64})/([a-z0-9-]{1,64})/"
    + TERMINATOR
    + r", ?SignedHeaders=([a-z0-9!#$%&'*+.^_`|~;-]+), ?Signature=([0-9a-f]{64})"
)


def parse_authorization(value: str) -> Authorization:
    """Parse a SigV4 Authorization header strictly; anything malformed raises SigV4Error (never another
    exception), so a client sending garbage gets an authentication failure rather than a server error."""
    signed = _AS_SIGNED.fullmatch(value)
    if signed is not None:
        names = tuple(signed[5].split(";"))
        if all(0 < len(n) <= 128 for n in names) and len(set(names)) == len(names):
            return Authorization(signed[1], signed[2], signed[3], signed[4], names, signed[6])
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise SigV4Error("the Authorization header is not AWS4-HMAC-SHA256")
    parts: dict[str, str] = {}
    for component in rest.split(","):
        key, sep, val = component.strip().partition("=")
        if not sep or key not in ("Credential", "SignedHeaders", "Signature") or key in parts:
            raise SigV4Error("the Authorization header is malformed")
        parts[key] = val
    if len(parts) != 3:
        raise SigV4Error("the Authorization header is missing Credential, SignedHeaders or Signature")
    scope = parts["Credential"].split("/")
    if len(scope) != 5 or not _AKID.fullmatch(scope[0]) or not _DATE.fullmatch(scope[1]):
        raise SigV4Error("the Authorization credential is malformed")
    if not (_SCOPE_PART.fullmatch(scope[2]) and _SCOPE_PART.fullmatch(scope[3])) or scope[4] != TERMINATOR:
        raise SigV4Error("the Authorization credential scope is malformed")
    names = tuple(parts["SignedHeaders"].split(";"))
    if not all(_HEADER_NAME.fullmatch(n) for n in names) or len(set(names)) != len(names):
        raise SigV4Error("the Authorization SignedHeaders are malformed")
    if not _SIGNATURE.fullmatch(parts["Signature"]):
        raise SigV4Error("the Authorization signature is malformed")
    return Authorization(scope[0], scope[1], scope[2], scope[3], names, parts["Signature"])


def header_names_to_forward(authorization: str | None) -> frozenset[str]:
    """The lower-case header names a proxy must forward for verification: those SignedHeaders lists plus
    'authorization' and 'x-amz-date'; tolerant: garbage gives just {'authorization', 'x-amz-date', 'host'}."""
    try:
        parsed = parse_authorization(authorization or "")
    except SigV4Error:
        return _ALWAYS_FORWARD | {"host"}
    return _ALWAYS_FORWARD | frozenset(parsed.signed_headers)


@functools.lru_cache(maxsize=256)
def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """The SigV4 signing key: HMAC chain over date, region, service and 'aws4_request' from 'AWS4'+secret.

    Cached, as AWS's SDKs cache it: it changes once a day per credential, and four HMACs per request
    were a visible share of the XKS path. The cache holds only secrets the caller already holds in
    memory (the credentials it verifies against)."""
    key = ("AWS4" + secret).encode("utf-8")
    for part in (date, region, service, TERMINATOR):
        key = hmac.new(key, part.encode("utf-8"), hashlib.sha256).digest()
    return key


def _canonical_query(query: str) -> str:
    """Parameters sorted by name then value, each kept URI-encoded exactly as received."""
    if not query:
        return ""
    pairs = sorted(pair.partition("=")[::2] for pair in query.split("&"))
    return "&".join(f"{name}={val}" for name, val in pairs)


def _canonical_request(request: SignedRequest, signed_headers: tuple[str, ...]) -> str:
    """The standard SigV4 canonical request; headers in the order SignedHeaders lists them."""
    headers = "".join(f"{n}:{' '.join(request.headers[n].split())}\n" for n in signed_headers)
    return "\n".join(
        (
            request.method,
            request.path or "/",
            _canonical_query(request.query),
            headers,
            ";".join(signed_headers),
            request.body_sha256,
        )
    )


def _request_time(request: SignedRequest, auth: Authorization) -> tuple[str, datetime]:
    """The X-Amz-Date header, checked against the credential scope date."""
    amz_date = request.headers.get("x-amz-date")
    if amz_date is None:
        raise SigV4Error("the X-Amz-Date header is missing")
    when = _amz_time(amz_date)
    if when is None:
        raise SigV4Error("the X-Amz-Date header is malformed")
    if amz_date[:8] != auth.date:
        raise SigV4Error("the credential scope date does not match X-Amz-Date", SCOPE)
    return amz_date, when


@functools.lru_cache(maxsize=64)
def _amz_time(amz_date: str) -> datetime | None:
    """The time an X-Amz-Date names, None if it is malformed. Cached: requests signed in the same second
    carry the same one."""
    if not _AMZ_DATE.fullmatch(amz_date):
        return None
    try:  # the pattern fixed the layout; datetime() checks the ranges (strptime is several times slower)
        return datetime(
            int(amz_date[0:4]),
            int(amz_date[4:6]),
            int(amz_date[6:8]),
            int(amz_date[9:11]),
            int(amz_date[11:13]),
            int(amz_date[13:15]),
            tzinfo=UTC,
        )
    except ValueError:
        return None


def verify(
    request: SignedRequest,
    credentials: Sequence[tuple[str, str]],
    *,
    now: datetime,
    service: str = SERVICE,
    region: str | None = None,
    max_skew_s: int = MAX_SKEW_S,
    signed_if_present: frozenset[str] = frozenset(),
) -> str:
    """Return the access key id that signed the request. `credentials` are (access_key_id, secret) pairs,
    e.g. an app's current and previous credential; raise SigV4Error for every failure.

    `signed_if_present` names headers that choose what the request does (KMS's X-Amz-Target): when the
    request carries one, the signature must cover it, or a captured request could be replayed as
    another operation.

    `now` must be timezone-aware (a naive datetime is a caller bug and raises ValueError)."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    value = request.headers.get("authorization")
    if value is None:
        raise SigV4Error("the Authorization header is missing", MISSING)
    auth = parse_authorization(value)
    if auth.service != service:
        raise SigV4Error(f"the credential scope service is not {service}", SCOPE)
    if region is not None and auth.region != region:
        raise SigV4Error("the credential scope region is not the expected region", SCOPE)
    if "host" not in auth.signed_headers:
        raise SigV4Error("the host header is not signed", SCOPE)
    if any(name in request.headers and name not in auth.signed_headers for name in signed_if_present):
        raise SigV4Error("a header that must be signed is not signed", SCOPE)
    amz_date, when = _request_time(request, auth)
    if any(name not in request.headers for name in auth.signed_headers):
        raise SigV4Error("a header listed in SignedHeaders is missing from the request", MISMATCH)
    if abs((now - when).total_seconds()) > max_skew_s:
        raise SigV4Error("the request time is outside the allowed clock skew", SKEWED)
    secrets = [secret for akid, secret in credentials if akid == auth.access_key_id]
    if not secrets:
        raise SigV4Error("the access key id is not known", UNKNOWN_KEY)
    canonical = _canonical_request(request, auth.signed_headers)
    scope = f"{auth.date}/{auth.region}/{auth.service}/{TERMINATOR}"
    try:
        digest = hashlib.sha256(canonical.encode("utf-8", "surrogateescape")).hexdigest()
    except UnicodeEncodeError:
        raise SigV4Error("the request is not encodable", MISMATCH) from None
    to_sign = f"{ALGORITHM}\n{amz_date}\n{scope}\n{digest}".encode()
    for secret in secrets:  # normally one; several only if a misconfiguration reuses an id
        key = signing_key(secret, auth.date, auth.region, auth.service)
        expected = hmac.digest(key, to_sign, "sha256").hex()  # one call: a third of hmac.new's time
        if hmac.compare_digest(expected, auth.signature):
            return auth.access_key_id
    raise SigV4Error("the signature does not match", MISMATCH)
