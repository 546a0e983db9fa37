"""AWS Signature Version 4 signing of the requests KMS sends to an XKS proxy (the verifying side is
sigv4.py, whose canonical form and cached signing key this shares).

It signs exactly what is sent: the path as given (KMS's paths hold only unreserved characters, so there
is nothing to encode), the host as the caller will send it in the Host header, every header it is given
plus ``host`` and ``x-amz-date``, and the SHA-256 of the exact body. On such requests it produces the same
``Authorization`` header as botocore's ``SigV4Auth`` (tests/unit/test_sigv4_sign.py checks it byte for
byte); it is here because botocore's builds an ``AWSRequest``, parses the URL twice and derives the
signing key with four HMACs on every call, about a tenth of the KMS emulator's CPU per XKS request.
Unlike botocore it does not normalize the path (``//``, ``.`` and ``..`` segments): an XKS proxy verifies
the raw path it receives (sigv4.py), so the path is signed as it goes on the wire.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

from xkslab_shared.sigv4 import ALGORITHM, SERVICE, TERMINATOR, signing_key

__all__ = ["SERVICE", "amz_date", "sign"]

_ADDED = frozenset({"host", "x-amz-date", "authorization"})


def amz_date(epoch_s: float | None = None) -> str:
    """X-Amz-Date for a moment (now by default): yyyymmddThhmmssZ in UTC."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(epoch_s))


def sign(
    *,
    method: str,
    host: str,
    path: str,
    headers: Mapping[str, str],
    body: bytes,
    access_key_id: str,
    secret: str,
    region: str,
    service: str = SERVICE,
    when: str | None = None,
) -> dict[str, str]:
    """The headers to send: ``headers`` plus ``Host``, ``X-Amz-Date`` and ``Authorization``.

    ``host`` is the Host header's value (lower case, no default port, IPv6 in brackets); ``path`` the
    request path exactly as it will be sent, already URI-encoded, with no query; ``when`` an X-Amz-Date
    (now by default). ``headers`` must not hold Host, X-Amz-Date or Authorization themselves."""
    stamp = when or amz_date()
    date = stamp[:8]
    signed = {name.lower(): " ".join(value.split()) for name, value in headers.items()}
    if len(signed) != len(headers) or not _ADDED.isdisjoint(signed):
        raise ValueError("headers must not repeat a name or hold Host, X-Amz-Date or Authorization")
    signed["host"] = host
    signed["x-amz-date"] = stamp
    names = sorted(signed)
    listed = ";".join(names)
    canonical = "\n".join(
        (
            method.upper(),
            path,
            "",
            "".join(f"{name}:{signed[name]}\n" for name in names),
            listed,
            hashlib.sha256(body).hexdigest(),
        )
    )
    scope = f"{date}/{region}/{service}/{TERMINATOR}"
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    to_sign = f"{ALGORITHM}\n{stamp}\n{scope}\n{digest}".encode()
    signature = hmac.new(signing_key(secret, date, region, service), to_sign, hashlib.sha256).hexdigest()
    out = dict(headers)
    out["Host"] = host
    out["X-Amz-Date"] = stamp
    out["Authorization"] = (
        f"{ALGORITHM} Credential={access_key_id}/{scope}, SignedHeaders={listed}, Signature={signature}"
    )
    return out
