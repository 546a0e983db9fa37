"""XKS errors on the wire: the one table of errorName -> HTTP status, the one mapping from the key
manager's error codes, and the single-line JSON body the spec asks for."""

from __future__ import annotations

from aiohttp import web

from xkslab_shared import json_body, xks_wire

STATUS = xks_wire.ERROR_STATUS

# DsmError class names (carried by xkslab_shared.proxy_link) -> XKS errorName. Anything else is internal.
FROM_DSM = {
    "BadRequest": "ValidationException",
    "IntegrityFailure": "InvalidCiphertextException",
    "AuthFailed": "AuthenticationFailedException",
    "AccessDenied": "AccessDeniedException",
    "NotFound": "KeyNotFoundException",
    "InvalidState": "InvalidStateException",
    "KeyOpNotAllowed": "InvalidKeyUsageException",
    "Unsupported": "UnsupportedOperationException",
    "DeadlineExceeded": "DependencyTimeoutException",
}
MAX_MESSAGE = 511


class XksError(Exception):
    def __init__(self, name: str, message: str) -> None:
        if name not in STATUS:
            raise ValueError(f"not an XKS errorName: {name}")
        super().__init__(message)
        self.name = name
        self.message = message

    @property
    def status(self) -> int:
        return STATUS[self.name]


def from_dsm(code: str, message: str) -> XksError:
    name = FROM_DSM.get(code)
    if name is None:
        # Sealed, AuditUnavailable, Internal, Conflict...: the key manager could not serve the request.
        return XksError("InternalException", "the key manager could not complete the request")
    return XksError(name, message)


def printable(message: str) -> str:
    """The spec allows only printable ASCII, under 512 characters."""
    if len(message) <= MAX_MESSAGE and message.isascii() and message.isprintable():
        return message  # every message the proxy and the key manager write: no walk over its characters
    text = "".join(c if " " <= c <= "~" else "?" for c in message)
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def error_response(error: XksError) -> web.Response:
    body = json_body.dumps({"errorName": error.name, "errorMessage": printable(error.message)})
    return web.Response(body=body, status=error.status, content_type="application/json")
