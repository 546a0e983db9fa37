"""The deep health check AWS KMS asks the proxy for, answered by the key manager.

The spec wants health to mean "can do cryptography now", not "process is up": so the check reads the
database, encrypts and decrypts with a dedicated key derived from the keyring (never a customer's key),
and reports a node whose audit writer has stopped as unavailable. KMS polls it often, hence the short
cache; it lives apart from the request path because it needs none of the per-app authentication.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dsm_emulator import crypto
from dsm_emulator.audit import AuditLog
from dsm_emulator.keyring import Keyring
from dsm_emulator.models import KeyringTerm

# The logger keeps the name it had before xks became a package, so log filters keep working.
log = logging.getLogger("dsm_emulator.xks")

HEALTH_KEY_PURPOSE = "xks-health-test-key"


@dataclass(frozen=True)
class NodeHealth:
    id: str
    model: str
    status: str  # ACTIVE | DEGRADED | UNAVAILABLE

    def as_xks(self) -> dict[str, str]:
        return {"id": self.id, "model": self.model, "healthStatus": self.status}


class XksHealth:
    """The health part of XksService (which sets these attributes in its __init__)."""

    _sessions: async_sessionmaker[AsyncSession]
    _keyring: Keyring
    _audit: AuditLog
    _node_id: str
    _model: str
    _health_cache_s: float
    _health: tuple[float, NodeHealth] | None

    async def node_health(self) -> NodeHealth:
        """A deep check, as the spec asks: a real encrypt and decrypt with a dedicated test key (derived
        from the keyring, so it never touches a customer's key) after a database read; reused for at most
        ``health_cache_s`` seconds."""
        cached = self._health
        if cached is not None and time.monotonic() - cached[0] < self._health_cache_s:
            return cached[1]
        status = "ACTIVE"
        try:
            async with self._sessions() as session:
                await session.scalar(select(KeyringTerm.term).limit(1))
            key = self._keyring.derive(HEALTH_KEY_PURPOSE)
            probe = crypto.random_bytes(32)
            iv, ct, tag = crypto.aes_gcm_encrypt(key, probe, b"xks-health")
            if crypto.aes_gcm_decrypt(key, iv, ct, tag, b"xks-health") != probe:
                status = "UNAVAILABLE"
        except Exception:
            log.warning("XKS deep health check failed", exc_info=True)
            status = "UNAVAILABLE"
        if not self._audit.running:
            status = "UNAVAILABLE"
        health = NodeHealth(self._node_id, self._model, status)
        self._health = (time.monotonic(), health)
        return health
