"""Who is calling: with ``kms.verify_sigv4`` on, every request's SigV4 signature (service ``kms``, this
KMS's region, at most 5 minutes of clock skew) is checked against the access keys of ``xkslab kms
access-key create`` with the project's one verifier (``xkslab_shared.sigv4``), and refusals come in the
shapes real AWS KMS answers (all HTTP 400):

    no Authorization header                      MissingAuthenticationTokenException
    not a well-formed AWS4-HMAC-SHA256 header     IncompleteSignatureException
    an access key this KMS does not know         UnrecognizedClientException
    wrong scope, wrong signature, expired        InvalidSignatureException
    X-Amz-Target not among the signed headers    InvalidSignatureException

The access keys are read once per cache generation (all of them, unsealed, in memory only), so a check
costs no database read; a key made or deleted in another process is seen within the cache poll interval.
With the setting off (the default, as in moto) nothing is checked and the access key id names the caller.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kms_emulator.access_keys import Caller, load_callers
from kms_emulator.errors import KmsError
from kms_emulator.sealing import KmsSealer
from xkslab_shared import sigv4
from xkslab_shared.config import KmsSettings
from xkslab_shared.generation import GenerationCache

SERVICE = "kms"
_CACHE_KEY = "callers"
_SKEW = timedelta(seconds=sigv4.MAX_SKEW_S)
_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. Check your AWS "
    "Secret Access Key and signing method. Consult the service documentation for details."
)
# The header that names the operation: unsigned, a signed DescribeKey could be resent as DisableKey.
_MUST_SIGN = frozenset({"x-amz-target"})
_UNRECOGNIZED = "The security token included in the request is invalid."


def _amz(when: datetime) -> str:
    return when.strftime("%Y%m%dT%H%M%SZ")


class CallerCheck:
    def __init__(
        self,
        settings: KmsSettings,
        sessions: async_sessionmaker[AsyncSession],
        sealer: KmsSealer,
        cache: GenerationCache[str, dict[str, Caller]],
    ) -> None:
        self._settings = settings
        self._sessions = sessions
        self._sealer = sealer
        self._cache = cache

    async def principal_arn(self, signed: sigv4.SignedRequest, now: datetime) -> str:
        """The IAM user ARN of the access key that signed ``signed``; a KmsError in AWS's shape if none."""
        callers = await self._cache.get(_CACHE_KEY, lambda: load_callers(self._sessions, self._sealer))
        header = signed.headers.get("authorization")
        try:
            access_key_id = sigv4.parse_authorization(header or "").access_key_id
        except sigv4.SigV4Error:
            access_key_id = ""
        caller = callers.get(access_key_id)
        credentials = [(access_key_id, caller.secret)] if caller is not None else []
        try:
            sigv4.verify(
                signed,
                credentials,
                now=now,
                service=SERVICE,
                region=self._settings.region,
                signed_if_present=_MUST_SIGN,
            )
        except sigv4.SigV4Error as exc:
            raise self._refusal(exc, signed.headers, now) from None
        assert caller is not None  # verify() returned, so the access key was among the credentials
        if "x-amz-security-token" in signed.headers:  # a session token with a long-term access key
            raise KmsError(_UNRECOGNIZED, "UnrecognizedClientException")
        return f"arn:aws:iam::{self._settings.account_id}:user/{caller.user_name}"

    def _refusal(self, exc: sigv4.SigV4Error, headers: Mapping[str, str], now: datetime) -> KmsError:
        header = headers.get("authorization", "")
        if exc.kind == sigv4.MISSING:
            return KmsError("Missing Authentication Token", "MissingAuthenticationTokenException")
        if exc.kind == sigv4.MALFORMED:
            return KmsError(_incomplete(header, headers), "IncompleteSignatureException")
        if exc.kind == sigv4.UNKNOWN_KEY:
            return KmsError(_UNRECOGNIZED, "UnrecognizedClientException")
        if exc.kind == sigv4.SKEWED:
            return KmsError(_expired(headers.get("x-amz-date", ""), now), "InvalidSignatureException")
        if exc.kind == sigv4.SCOPE:
            return KmsError(self._scope(header, headers), "InvalidSignatureException")
        return KmsError(_MISMATCH, "InvalidSignatureException")

    def _scope(self, header: str, headers: Mapping[str, str]) -> str:
        """AWS's message for a well-formed header whose scope cannot be right."""
        auth = sigv4.parse_authorization(header)
        if auth.region != self._settings.region:
            return "Credential should be scoped to a valid region."
        if auth.service != SERVICE:
            return f"Credential should be scoped to correct service: '{SERVICE}'."
        if "host" not in auth.signed_headers:
            return "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization."
        if "x-amz-target" in headers and "x-amz-target" not in auth.signed_headers:
            return "'X-Amz-Target' must be a 'SignedHeader' in the AWS Authorization."
        amz_date = headers.get("x-amz-date", "")
        return (
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: "
            f"'{auth.date}' != '{amz_date[:8]}', from '{amz_date}'."
        )


def _incomplete(header: str, headers: Mapping[str, str]) -> str:
    """AWS's IncompleteSignatureException messages (without echoing the header back)."""
    missing = [name for name in ("Credential", "Signature", "SignedHeaders") if f"{name}=" not in header]
    if missing or not header.startswith(sigv4.ALGORITHM + " "):
        names = missing or ["Credential", "Signature", "SignedHeaders"]
        return " ".join(f"Authorization header requires '{name}' parameter." for name in names)
    if "x-amz-date" not in headers:
        return "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."
    return "The Authorization header is not a well-formed AWS4-HMAC-SHA256 signature."


def _expired(amz_date: str, now: datetime) -> str:
    """AWS's words for a request outside the allowed clock skew."""
    stamp = _amz(now)
    if amz_date < stamp:
        return f"Signature expired: {amz_date} is now earlier than {_amz(now - _SKEW)} ({stamp} - 5 min.)"
    return f"Signature not yet current: {amz_date} is still later than {_amz(now + _SKEW)} ({stamp} + 5 min.)"
