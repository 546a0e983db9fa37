"""Callers' access keys, for ``kms.verify_sigv4``: made, listed and deleted by ``xkslab kms access-key``,
read (all of them, unsealed, as one cached value) by the signature check in ``kms_emulator.callers``.

An access key is an IAM-style pair: ``AKIA`` + 16 characters of A-Z2-7, and a 40-character secret. The
secret is shown once, at creation; the table keeps it sealed under the KMS sealing key with AAD (access
key id, purpose), never in the clear. Writes go through the invalidating sessions, so every process's
cache of the keys is dropped within the cache poll interval (at once in the writing process).
``open_tables`` is the entry point for code outside the KMS process (``xkslab kms access-key`` and
``xkslab up``, which makes the lab's own key with ``kms.verify_sigv4`` on).
"""

from __future__ import annotations

import base64
import os
import re
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from kms_emulator.models import KmsAccessKey
from kms_emulator.sealing import ACCESS_KEY_SECRET, KmsSealer
from xkslab_shared import db
from xkslab_shared.config import Settings
from xkslab_shared.generation import invalidating_sessions

_BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
# IAM's user name rule: 1-64 of letters, digits and + = , . @ _ -
USER_NAME = re.compile(r"[\w+=,.@-]{1,64}", re.ASCII)


class AccessKeyError(ValueError):
    """A bad user name, or no such access key; the message is one sentence for the command line."""


@dataclass(frozen=True)
class AccessKey:
    access_key_id: str
    user_name: str
    creation_date: datetime

    def as_dict(self) -> dict[str, str]:
        return {
            "access_key_id": self.access_key_id,
            "user_name": self.user_name,
            "creation_date": _aware(self.creation_date).isoformat(),
        }


@dataclass(frozen=True)
class Caller:
    """What a signature check needs of one access key (the secret unsealed: memory only)."""

    user_name: str
    secret: str

    def __repr__(self) -> str:
        return f"Caller(user_name={self.user_name!r}, secret=<hidden>)"


def _aware(value: datetime) -> datetime:
    """SQLite hands timestamps back without a zone; they were stored as UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def new_access_key_id() -> str:
    return "AKIA" + "".join(secrets.choice(_BASE32) for _ in range(16))


def new_secret() -> str:
    return base64.b64encode(os.urandom(30)).decode()  # 40 characters of A-Z a-z 0-9 + /, as AWS's


@asynccontextmanager
async def open_tables(
    settings: Settings,
) -> AsyncIterator[tuple[async_sessionmaker[AsyncSession], KmsSealer]]:
    """The KMS tables of a data directory through the invalidating sessions (so a running KMS drops its
    cached keys at once, and other KMS processes within the cache poll interval), and the KMS sealer."""
    database = settings.database
    engine = db.create_engine(settings.database_url, busy_timeout_ms=database.busy_timeout_ms, pool_size=1)
    try:
        await db.check_schema(engine)
        sealer = KmsSealer.open(settings.path(settings.kms.seal_key_file))
        sessions, _generation = invalidating_sessions(engine, database.cache_poll_ms / 1000)
        yield sessions, sealer
    finally:
        await engine.dispose()


def _row(key: KmsAccessKey) -> AccessKey:
    return AccessKey(key.access_key_id, key.user_name, key.creation_date)


async def create(
    sessions: async_sessionmaker[AsyncSession], sealer: KmsSealer, user_name: str
) -> tuple[AccessKey, str]:
    """A new access key for ``user_name`` and its secret (the only time the secret is returned)."""
    if not USER_NAME.fullmatch(user_name):
        raise AccessKeyError("a user name is 1 to 64 letters, digits or + = , . @ _ -")
    access_key_id, secret = new_access_key_id(), new_secret()
    sealed = sealer.seal(secret.encode(), purpose=ACCESS_KEY_SECRET, row_id=access_key_id)
    row = KmsAccessKey(
        access_key_id=access_key_id,
        user_name=user_name,
        sealed_secret=sealed,
        creation_date=datetime.now(UTC),
    )
    async with sessions() as session, session.begin():
        session.add(row)
    return _row(row), secret


async def list_all(sessions: async_sessionmaker[AsyncSession]) -> list[AccessKey]:
    async with sessions() as session:
        rows = await session.scalars(
            select(KmsAccessKey).order_by(KmsAccessKey.creation_date, KmsAccessKey.access_key_id)
        )
        return [_row(row) for row in rows]


async def remove(sessions: async_sessionmaker[AsyncSession], access_key_id: str) -> None:
    """Delete an access key (an ORM delete, so that the flush raises the cache generation)."""
    async with sessions() as session, session.begin():
        row = await session.get(KmsAccessKey, access_key_id)
        if row is None:
            raise AccessKeyError(f"no access key {access_key_id}")
        await session.delete(row)


async def load_callers(sessions: async_sessionmaker[AsyncSession], sealer: KmsSealer) -> dict[str, Caller]:
    """Every access key, unsealed, by access key id: the value the signature check caches."""
    async with sessions() as session:
        rows = list(await session.scalars(select(KmsAccessKey)))
    return {
        row.access_key_id: Caller(
            row.user_name,
            sealer.unseal(row.sealed_secret, purpose=ACCESS_KEY_SECRET, row_id=row.access_key_id).decode(),
        )
        for row in rows
    }
