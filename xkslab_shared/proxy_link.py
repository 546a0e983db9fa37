"""The link between the XKS proxy and the key manager: one internal HTTP call per XKS request.

Both sides import this module, so the shape of the call is written down once. The proxy authenticates
with a bearer token from a 0600 file; the token alone is not enough to use a key, because the DSM still
verifies the KMS SigV4 signature over the forwarded request parts and the raw body.

    POST /internal/xks/v1/call   ForwardedCall.to_json()
         -> {"result": {...}} | {"error": {"code": "<DsmError class>", "message": "..."}}
    GET  /internal/xks/v1/prefixes
         -> {"prefixes": {"<uri path prefix>": "<app id>"}}
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CALL_PATH = "/internal/xks/v1/call"
PREFIXES_PATH = "/internal/xks/v1/prefixes"
INTERNAL_PREFIX = "/internal/xks/"


def read_token(path: Path, *, create: bool = False) -> str:
    """The proxy token in ``path``; with ``create``, a new random one is written (0600) if it is missing."""
    if create and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # atomic and never replaces: two starting services agree on one token
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    token = path.read_text().strip()
    if len(token) < 32:
        raise ValueError(f"{path}: the proxy token must be at least 32 characters")
    return token


MAX_BUDGET_MS = 600_000


def budget_for(timeout_ms: int) -> int:
    """The deadline the proxy passes on for a call it waits ``timeout_ms`` for: shorter by a margin, so
    that the key manager's refusal (and its audit row) is committed before the proxy gives up; then the
    audit row agrees with what the caller was told."""
    return max(1, timeout_ms - max(10, timeout_ms // 5))


@dataclass(frozen=True)
class ForwardedCall:
    app_id: str
    operation: str  # health | metadata | encrypt | decrypt
    key_id: str | None
    method: str
    path: str
    query: str
    headers: Mapping[str, str]  # lower-case names: the ones SignedHeaders lists, authorization, x-amz-date
    body: bytes = field(repr=False)
    max_plaintext_bytes: int
    max_aad_bytes: int
    policy_allowed: bool | None = None  # None: no policy applies (health, or no policy file)
    policy_rule: str | None = None
    # How long the proxy will still wait for the answer, in ms: the key manager gives up on (and audits
    # as refused) work it cannot answer within it. None: no deadline (an older proxy).
    budget_ms: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "app_id": self.app_id,
            "operation": self.operation,
            "key_id": self.key_id,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": dict(self.headers),
            "body": base64.b64encode(self.body).decode("ascii"),
            "limits": {"max_plaintext_bytes": self.max_plaintext_bytes, "max_aad_bytes": self.max_aad_bytes},
            "policy": None
            if self.policy_allowed is None
            else {"allowed": self.policy_allowed, "rule": self.policy_rule or ""},
            "budget_ms": self.budget_ms,
        }

    @classmethod
    def from_json(cls, data: Any) -> ForwardedCall:
        """Raises ValueError on any deviation: the caller answers 400 to a malformed internal call."""
        try:
            headers = data["headers"]
            limits = data["limits"]
            policy = data.get("policy")
            budget = data.get("budget_ms")
            if not isinstance(headers, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
            ):
                raise ValueError("headers must map strings to strings")
            call = cls(
                app_id=_str(data["app_id"]),
                operation=_str(data["operation"]),
                key_id=None if data.get("key_id") is None else _str(data["key_id"]),
                method=_str(data["method"]),
                path=_str(data["path"]),
                query=_str(data["query"]),
                headers={k.lower(): v for k, v in headers.items()},
                body=base64.b64decode(_str(data["body"]), validate=True),
                max_plaintext_bytes=_int(limits["max_plaintext_bytes"]),
                max_aad_bytes=_int(limits["max_aad_bytes"]),
                policy_allowed=None if policy is None else bool(policy["allowed"]),
                policy_rule=None if policy is None else _str(policy["rule"]),
                budget_ms=None if budget is None else _int(budget),
            )
        except (KeyError, TypeError, binascii.Error) as exc:
            raise ValueError(f"malformed internal XKS call ({type(exc).__name__})") from None
        if call.operation not in ("health", "metadata", "encrypt", "decrypt"):
            raise ValueError("unknown XKS operation")
        if call.budget_ms is not None and not 0 < call.budget_ms <= MAX_BUDGET_MS:
            raise ValueError(f"budget_ms must be 1 to {MAX_BUDGET_MS}")
        if (call.key_id is None) != (call.operation == "health"):
            raise ValueError("key_id is required for key operations and only for them")
        return call


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return value


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError("expected an integer")
    return value
