"""Signed verify checkpoints: ``xkslab audit verify`` resumes each chain where it last found it intact.

Walking a chain recomputes every row's keyed hash: 48 s at 1,000,000 rows. A checkpoint records how far
a verify got (chain, seq, that row's hash, when), signed with an HMAC key derived from the sealed
keyring (purpose ``audit-checkpoint``, never the chain's own key), so a checkpoint can be neither forged
nor moved by someone holding only the database. The next verify checks the signature, checks that the
row at the checkpoint still has the hash it had, and walks only the rows after it: a daily verify costs
the day's rows. What that does not see, a row altered BEFORE the checkpoint with its hash left alone,
is what ``verify --full`` (no checkpoints) is for; a checkpoint that does not verify is reported and its
chain is walked from the start.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dsm_emulator.audit.chain import _utc
from dsm_emulator.errors import DsmError
from dsm_emulator.keyring import Keyring
from dsm_emulator.models import AuditCheckpoint, AuditRow

CHECKPOINT_KEY_PURPOSE = "audit-checkpoint"
BAD_SIGNATURE = "checkpoint signature does not verify"
_DOMAIN = b"xkslab-audit-checkpoint-v1\n"


def checkpoint_mac(key: bytes, chain: str, seq: int, row_hash: bytes, verified_at: datetime) -> bytes:
    when = _utc(verified_at).isoformat(timespec="microseconds")
    message = _DOMAIN + b"\n".join(
        [chain.encode(), str(seq).encode(), bytes(row_hash).hex().encode(), when.encode()]
    )
    return hmac.new(key, message, hashlib.sha256).digest()


async def resume_point(
    sessions: async_sessionmaker[AsyncSession], keyring: Keyring, cp: AuditCheckpoint
) -> str | tuple[int, bytes]:
    """Where the walk of ``cp.chain`` resumes: (the next seq, the hash it chains onto), or why not."""
    try:
        await keyring.ensure_term(cp.key_term)
        key = keyring.derive(CHECKPOINT_KEY_PURPOSE, cp.key_term)
    except DsmError:
        return f"{BAD_SIGNATURE}: the keyring has no term {cp.key_term}"
    expected = checkpoint_mac(key, cp.chain, cp.seq, cp.row_hash, cp.verified_at)
    if not hmac.compare_digest(expected, bytes(cp.mac)):
        return f"{BAD_SIGNATURE} (checkpoint altered): the chain is verified from its first row"
    stmt = select(AuditRow.row_hash).where(AuditRow.chain == cp.chain, AuditRow.seq == cp.seq)
    async with sessions() as session:
        found = await session.scalar(stmt)
    when = f"{_utc(cp.verified_at):%Y-%m-%d %H:%M}Z"
    if found is None:
        return f"row seq {cp.seq}, verified on {when}, is gone (rows deleted)"
    if not hmac.compare_digest(bytes(found), bytes(cp.row_hash)):
        return f"row seq {cp.seq} is not the row verified on {when} (row replaced)"
    return cp.seq + 1, bytes(cp.row_hash)


async def save_checkpoint(
    sessions: async_sessionmaker[AsyncSession], keyring: Keyring, chain: str, seq: int, row_hash: bytes
) -> None:
    """Record that ``chain`` verified up to row ``seq`` (hash ``row_hash``), replacing its checkpoint."""
    term = keyring.active_term
    key = keyring.derive(CHECKPOINT_KEY_PURPOSE, term)
    now = datetime.now(UTC)
    mac = checkpoint_mac(key, chain, seq, row_hash, now)
    async with sessions() as session, session.begin():
        await session.merge(
            AuditCheckpoint(chain=chain, seq=seq, row_hash=row_hash, verified_at=now, key_term=term, mac=mac)
        )
