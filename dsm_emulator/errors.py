"""The key manager's domain errors. Each protocol edge (DSM REST, the XKS operations, the CLI) maps
these to its own wire shape in one place; messages are safe to show (no secrets, no key material).

    DsmError
    ├── BadRequest            malformed or invalid input                         (400)
    │   └── IntegrityFailure  ciphertext/tag/padding does not authenticate        (400)
    ├── AuthFailed            unknown identity, wrong secret, bad or expired token (401)
    ├── AccessDenied          authenticated, but not allowed                      (403)
    ├── NotFound              no such object (or not visible to the caller)       (404)
    │   └── NotVisible        it exists outside the caller's groups: answers as NotFound, audited as is
    ├── Conflict              name already taken                                  (409)
    ├── TooManyAttempts       too many failed logins for this identity and source  (429)
    ├── InvalidState          disabled key, wrong lifecycle state, missing key op (400 / 409 by edge)
    │   └── KeyOpNotAllowed   the key's type or key_ops do not allow the operation (400)
    ├── Unsupported           larger than this implementation supports            (501)
    ├── Internal              an unexpected failure, detail only in the log       (500)
    ├── Sealed                keyring unavailable or sealing backend failure       (503)
    ├── AuditUnavailable      the audit row could not be written: fail closed      (503)
    ├── DeadlineExceeded      the caller's deadline passed before the work was done (503)
    └── SchemaMismatch        database schema revision unknown to this code        (start-up)
"""

from __future__ import annotations


class DsmError(Exception):
    """Base of every error the key manager raises on purpose."""

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        # What the refusal's audit row says; only NotVisible says more than the caller is told.
        self.audit_message = message

    @property
    def public_name(self) -> str:
        """The error's class as callers may learn it (the XKS wire maps these names to errorNames)."""
        return type(self).__name__


class BadRequest(DsmError):
    status = 400


class IntegrityFailure(BadRequest):
    """Decryption or unwrapping failed to authenticate."""


class AuthFailed(DsmError):
    status = 401


class AccessDenied(DsmError):
    status = 403


class NotFound(DsmError):
    status = 404


# Marks the part of an audit message that the refused caller must not read back (see redact_hidden).
_HIDDEN = " [hidden from the caller: "


class NotVisible(NotFound):
    """The object exists, but outside every group of the caller. The caller gets exactly what a missing
    object gives (status and message), so names and kids in other groups cannot be probed; the audit row
    names the object and says why, for administrators."""

    def __init__(self, message: str, kid: str, group_id: str) -> None:
        super().__init__(message)
        where = f"object {kid} is in group {group_id}, not one of the caller's"
        self.audit_message = f"{message}{_HIDDEN}{where}]"

    @property
    def public_name(self) -> str:
        return "NotFound"


def redact_hidden(message: str) -> str:
    """An audit message as the caller it refused may read it: without what NotVisible kept from it (an app
    reads its own audit rows, and must not learn there what the 404 did not tell it)."""
    head, marker, _ = message.partition(_HIDDEN)
    return head if marker else message


class Conflict(DsmError):
    status = 409


class UnsupportedMediaType(DsmError):
    """A body in a Content-Encoding the API does not take (xkslab_shared/body_encoding.py)."""

    status = 415


class TooManyAttempts(DsmError):
    """Refused before any check: this identity failed to log in too often from this address."""

    status = 429

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class InvalidState(DsmError):
    """The object exists but its state, enabled flag or key_ops forbid the operation."""

    status = 400


class KeyOpNotAllowed(InvalidState):
    """The key exists and is usable, but not for this operation (XKS InvalidKeyUsageException)."""


class Unsupported(DsmError):
    status = 501


class Internal(DsmError):
    status = 500


class Sealed(DsmError):
    status = 503


class AuditUnavailable(DsmError):
    status = 503


class DeadlineExceeded(DsmError):
    """The caller (the XKS proxy) stops waiting at its deadline: work that cannot be answered by then is
    not done, or not acknowledged, and its audit row says so."""

    status = 503


class SchemaMismatch(DsmError):
    status = 503
