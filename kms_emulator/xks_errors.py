"""What a failed XKS proxy call means to KMS: the ConnectionErrorCode it earns, and the KMS exception name
that key-store and CreateKey calls report for it (spec §1.8). Kept apart from the client (xks_client.py),
which only moves bytes, so the whole taxonomy of proxy failures reads in one place.

Messages are built from field names, HTTP statuses and exception class names only: never a body, a
plaintext or a secret.
"""

from __future__ import annotations

import ssl
from enum import StrEnum

from kms_emulator import xks_answers as answers
from kms_emulator.xks_http import MalformedAnswer
from xkslab_shared import xks_wire

MAX_PROXY_MESSAGE = 511
# The spec's table of XKS errorName -> HTTP status (§1.8). An error body is believed only when its
# status agrees, so a proxy that answers, say, 500 KeyNotFoundException is malformed, not a missing key.
XKS_ERROR_STATUS = xks_wire.ERROR_STATUS


class ConnectionErrorCode(StrEnum):
    """KMS's ConnectionErrorCode values that a proxy call can produce (the VPC ones cannot be local)."""

    INVALID_CREDENTIALS = "INVALID_CREDENTIALS"
    XKS_PROXY_ACCESS_DENIED = "XKS_PROXY_ACCESS_DENIED"
    XKS_PROXY_INVALID_CONFIGURATION = "XKS_PROXY_INVALID_CONFIGURATION"
    XKS_PROXY_INVALID_RESPONSE = "XKS_PROXY_INVALID_RESPONSE"
    XKS_PROXY_INVALID_TLS_CONFIGURATION = "XKS_PROXY_INVALID_TLS_CONFIGURATION"
    XKS_PROXY_NOT_REACHABLE = "XKS_PROXY_NOT_REACHABLE"
    XKS_PROXY_TIMED_OUT = "XKS_PROXY_TIMED_OUT"
    INTERNAL_ERROR = "INTERNAL_ERROR"


Code = ConnectionErrorCode
# A proper XKS error keeps INTERNAL_ERROR unless its status names a configuration problem KMS reports.
_CODE_BY_STATUS = {401: Code.INVALID_CREDENTIALS, 403: Code.XKS_PROXY_ACCESS_DENIED}
_CONNECTIVITY = frozenset(
    {Code.XKS_PROXY_NOT_REACHABLE, Code.XKS_PROXY_TIMED_OUT, Code.XKS_PROXY_INVALID_TLS_CONFIGURATION}
)


class XksProxyError(Exception):
    """A failed proxy call. `error_name` is the proxy's XKS errorName when it answered one (e.g.
    "KeyNotFoundException"), else None; `connection_error_code` is KMS's ConnectionErrorCode for it
    (INVALID_CREDENTIALS, XKS_PROXY_ACCESS_DENIED, XKS_PROXY_INVALID_CONFIGURATION,
    XKS_PROXY_INVALID_RESPONSE, XKS_PROXY_INVALID_TLS_CONFIGURATION, XKS_PROXY_NOT_REACHABLE,
    XKS_PROXY_TIMED_OUT, INTERNAL_ERROR); `message` is safe to show (never the secret or plaintext).

    `http_status` is the proxy's status when it answered at all; `proxy_message` is its errorMessage as
    printable ASCII, kept apart from `message` because those are the proxy's words, not ours (KMS passes
    them only to the caller's CloudWatch Logs).
    """

    def __init__(
        self,
        connection_error_code: str,
        message: str,
        *,
        error_name: str | None = None,
        http_status: int | None = None,
        proxy_message: str | None = None,
    ) -> None:
        super().__init__(message)
        self.error_name = error_name
        self.connection_error_code = connection_error_code
        self.message = message
        self.http_status = http_status
        self.proxy_message = proxy_message


UNREACHABLE = "XksProxyUriUnreachableException"
INVALID_RESPONSE = "XksProxyInvalidResponseException"
_KEY_STORE_BY_CODE: dict[str, str] = {
    Code.INVALID_CREDENTIALS: "XksProxyIncorrectAuthenticationCredentialException",
    Code.XKS_PROXY_INVALID_CONFIGURATION: "XksProxyInvalidConfigurationException",
    **dict.fromkeys(_CONNECTIVITY, UNREACHABLE),
}
_KEY_STORE_BY_NAME = {"DependencyTimeoutException": UNREACHABLE, "ThrottlingException": UNREACHABLE}
_CREATE_KEY_BY_NAME = {
    "KeyNotFoundException": "XksKeyNotFoundException",
    "InvalidStateException": "XksKeyInvalidConfigurationException",
    "InvalidKeyUsageException": "XksKeyInvalidConfigurationException",
    "UnsupportedOperationException": "XksKeyInvalidResponseException",
}


def key_store_exception(error: XksProxyError) -> str:
    """The KMS exception name for a failed health check during Create/Update/ConnectCustomKeyStore:
    401 -> XksProxyIncorrectAuthenticationCredentialException; 404 InvalidUriPath ->
    XksProxyInvalidConfigurationException; Validation/Internal/malformed -> XksProxyInvalidResponseException;
    DependencyTimeout, Throttling, TCP/TLS failure, timeout -> XksProxyUriUnreachableException;
    anything else -> XksProxyInvalidResponseException.

    The spec's mapping (§1.8): what KMS tells the key store's owner is what they must fix."""
    by_code = _KEY_STORE_BY_CODE.get(error.connection_error_code)
    if by_code is not None:
        return by_code
    return _KEY_STORE_BY_NAME.get(error.error_name or "", INVALID_RESPONSE)


def create_key_exception(error: XksProxyError) -> str:
    """For CreateKey's GetKeyMetadata: KeyNotFound -> XksKeyNotFoundException; InvalidState/InvalidKeyUsage
    -> XksKeyInvalidConfigurationException; UnsupportedOperation -> XksKeyInvalidResponseException; a
    connectivity failure -> XksProxyUriUnreachableException; others -> CustomKeyStoreInvalidStateException.

    The spec's CreateKey mapping (§1.8): key-level answers name the key, everything else the store."""
    by_name = _CREATE_KEY_BY_NAME.get(error.error_name or "")
    if by_name is not None:
        return by_name
    if error.connection_error_code in _CONNECTIVITY:
        return UNREACHABLE
    return "CustomKeyStoreInvalidStateException"


def transport_error(exc: BaseException) -> XksProxyError:
    """The transport's exceptions (kms_emulator.xks_http) -> KMS's ConnectionErrorCode; TLS is checked first
    because TLS errors are also OSErrors, and a connection lost to a TLS alert carries it as its cause."""
    kind = type(exc).__name__
    if is_tls_failure(exc):
        # OpenSSL's reason names the alert or the check that failed (TLSV13_ALERT_CERTIFICATE_REQUIRED:
        # the proxy wants a client certificate; CERTIFICATE_VERIFY_FAILED: its own was not trusted).
        reason = _tls_reason(exc)
        return XksProxyError(
            Code.XKS_PROXY_INVALID_TLS_CONFIGURATION,
            f"the TLS handshake with the XKS proxy failed ({kind}{': ' + reason if reason else ''})",
        )
    if isinstance(exc, MalformedAnswer):
        return XksProxyError(Code.XKS_PROXY_INVALID_RESPONSE, f"the XKS proxy's answer is not HTTP ({kind})")
    if isinstance(exc, OSError):
        return XksProxyError(Code.XKS_PROXY_NOT_REACHABLE, f"the XKS proxy is not reachable ({kind})")
    return XksProxyError(Code.INTERNAL_ERROR, f"the call to the XKS proxy failed ({kind})")


def is_tls_failure(exc: BaseException | None) -> bool:
    seen = 0
    while exc is not None and seen < 8:  # the cause chain, bounded against cycles
        if isinstance(exc, ssl.SSLError):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _tls_reason(exc: BaseException | None) -> str | None:
    seen = 0
    while exc is not None and seen < 8:
        reason = getattr(exc, "reason", None) if isinstance(exc, ssl.SSLError) else None
        if isinstance(reason, str) and reason.isprintable():
            return reason[:80]
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def error_answer(operation: str, status: int, raw: bytes) -> XksProxyError:
    """A non-200: believed as an XKS error only if the body is one and its status is the spec's for it."""
    try:
        data = answers.json_object(raw)
    except answers.Malformed:
        data = {}
    name, message = data.get("errorName"), data.get("errorMessage")
    if (
        not isinstance(name, str)
        or XKS_ERROR_STATUS.get(name) != status
        or not (message is None or isinstance(message, str))
    ):
        return XksProxyError(
            Code.XKS_PROXY_INVALID_RESPONSE,
            f"the XKS proxy answered {operation} with HTTP {status} and no valid XKS error",
            http_status=status,
        )
    if status == 404 and name == "InvalidUriPathException":
        code = Code.XKS_PROXY_INVALID_CONFIGURATION
    else:
        code = _CODE_BY_STATUS.get(status, Code.INTERNAL_ERROR)
    return XksProxyError(
        code,
        f"the XKS proxy answered {operation} with HTTP {status} {name}",
        error_name=name,
        http_status=status,
        proxy_message=None if message is None else _printable(message),
    )


def _printable(text: str) -> str:
    clean = "".join(c if " " <= c <= "~" else "?" for c in text)
    return clean if len(clean) <= MAX_PROXY_MESSAGE else clean[: MAX_PROXY_MESSAGE - 3] + "..."
