"""The key manager's domain errors. Each protocol edge (DSM REST, the XKS operations, the CLI) maps
these to its own wire shape in one place; messages are safe to show (no secrets, no key material).

    DsmError
    ├── BadRequest            malformed or invalid input                         (400)
    │   └── IntegrityFailure  ciphertext/tag/padding does not authenticate        (400)
    ├── AuthFailed            unknown identity, wrong secret, bad or expired token (401)
    ├── AccessDenied          authenticated, but not allowed                      (403)
    ├── NotFound              no such object (or not visible to the caller)       (404)
    ├── Conflict              name already taken                                  (409)
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


class Conflict(DsmError):
    status = 409


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
