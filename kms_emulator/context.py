"""What every KMS operation is handed: the service's resources (KmsContext, one per app) and the facts of
one request (Call), plus the ARN and time conventions all operations share."""

from __future__ import annotations

import re
from collections.abc import Hashable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kms_emulator.sealing import KmsSealer
from xkslab_shared.config import KmsSettings
from xkslab_shared.generation import GenerationCache

if TYPE_CHECKING:
    from kms_emulator.callers import CallerCheck
    from kms_emulator.metrics import KmsMetrics
    from kms_emulator.store_health import StoreWatch
    from kms_emulator.throttle import StoreThrottle
    from kms_emulator.xks_client import XksProxyClient, XksProxyConfig

_CREDENTIAL = re.compile(r"Credential=([A-Za-z0-9]{1,128})/")


@dataclass(frozen=True)
class KmsContext:
    settings: KmsSettings
    sessions: async_sessionmaker[AsyncSession]
    sealer: KmsSealer
    xks: XksProxyClient
    # What a data operation needs of its key (the key, its store, its unsealed backing key), cached until
    # any process changes the KMS tables (xkslab_shared/generation.py).
    usable_keys: GenerationCache[Hashable, Any]
    # The Prometheus metrics (GET /metrics), the CloudWatch external key store metrics among them.
    metrics: KmsMetrics
    # Consecutive proxy failures per key store, which turn a CONNECTED store FAILED (store_health.py).
    watch: StoreWatch
    # kms.verify_sigv4: who signed each request (None: the setting is off, nothing is checked).
    callers: CallerCheck | None = None
    # kms.xks_store_rps: AWS's per-external-key-store request quota (None: no quota).
    throttle: StoreThrottle | None = None
    # Each key store row's proxy configuration with its secret unsealed (proxy.proxy_config), by the row's
    # id, endpoint, path, access key id and sealed secret.
    proxy_configs: dict[tuple[str, str, str, str, bytes], XksProxyConfig] = field(default_factory=dict)

    @property
    def arn_prefix(self) -> str:
        return f"arn:aws:kms:{self.settings.region}:{self.settings.account_id}:"

    def key_arn(self, key_id: str) -> str:
        return f"{self.arn_prefix}key/{key_id}"

    def alias_arn(self, alias_name: str) -> str:
        return f"{self.arn_prefix}{alias_name}"


@dataclass(frozen=True)
class Call:
    """One KMS request. ``request_id`` is fresh per request: it is the x-amzn-RequestId answered and the
    kmsRequestId of every XKS proxy call the request makes, so the two logs can be joined."""

    operation: str
    request_id: str
    principal_arn: str


def principal_arn(authorization: str | None, account_id: str) -> str:
    """With kms.verify_sigv4 off: the caller as an IAM user named after its access key id (read, not
    checked). With it on, kms_emulator.callers names the access key's user instead."""
    match = _CREDENTIAL.search(authorization or "")
    return f"arn:aws:iam::{account_id}:user/{match.group(1) if match else 'anonymous'}"


def utcnow() -> datetime:
    return datetime.now(UTC)


def aware(value: datetime) -> datetime:
    """SQLite hands timestamps back without a zone; they were stored as UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def epoch(value: datetime | None) -> float | None:
    return None if value is None else aware(value).timestamp()
