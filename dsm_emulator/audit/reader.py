"""Reading the audit log back: verifying the chains, exporting and tailing rows.

These run in the CLI and the logs API, often against a database some other process is writing, so they
share nothing with the writer but the chain hash: verify() recomputes each row's hash with the same
definition the writer used, and export/tail turn rows into JSON-ready data. Keeping them apart from the
writer keeps the fail-closed write path small enough to reason about.
"""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dsm_emulator.audit.chain import AUDIT_KEY_PURPOSE, ZERO_HASH, _utc, row_hash
from dsm_emulator.audit.checkpoints import BAD_SIGNATURE, resume_point, save_checkpoint
from dsm_emulator.errors import DsmError
from dsm_emulator.keyring import Keyring
from dsm_emulator.models import AuditCheckpoint, AuditRow

PAGE_SIZE = 1000

_TABLE = AuditRow.__table__


@dataclass
class ChainProblem:
    chain: str
    seq: int
    row_id: str
    reason: str


@dataclass
class VerifyResult:
    problems: list[ChainProblem] = field(default_factory=list)
    checked: int = 0  # rows whose hash was recomputed
    resumed: dict[str, int] = field(default_factory=dict)  # chain -> the checkpoint's seq it resumed after
    saved: dict[str, int] = field(default_factory=dict)  # chain -> the seq of the checkpoint written


async def verify(
    sessions: async_sessionmaker[AsyncSession], keyring: Keyring, *, page_size: int = PAGE_SIZE
) -> list[ChainProblem]:
    """Walk every chain in full, in seq order, a page at a time, and report the first bad row of each.

    A deleted row shows as a gap at the row after it. Rows cut off the END of a chain cannot be seen
    from the chain alone; compare with an exported copy (``export(since_seq=...)``) for that, or keep
    checkpoints (``verify_chains(checkpoint=True)``): a chain cut below its checkpoint is reported."""
    return (await verify_chains(sessions, keyring, page_size=page_size)).problems


async def verify_chains(
    sessions: async_sessionmaker[AsyncSession],
    keyring: Keyring,
    *,
    resume: bool = False,
    checkpoint: bool = False,
    page_size: int = PAGE_SIZE,
) -> VerifyResult:
    """verify(), optionally resuming each chain after its signed checkpoint (``resume``: only the rows
    written since are checked, plus the checkpoint's own row hash and signature) and recording a new
    checkpoint at the end of each chain found intact (``checkpoint``; checkpoints.py)."""
    result = VerifyResult()
    async with sessions() as session:
        chains = set(await session.scalars(select(AuditRow.chain).distinct()))
        saved = {c.chain: c for c in await session.scalars(select(AuditCheckpoint))} if resume else {}
    keys: dict[int, bytes | None] = {}
    for chain in sorted(chains | set(saved)):
        expected, prev = 1, ZERO_HASH
        if (cp := saved.get(chain)) is not None:
            start = await resume_point(sessions, keyring, cp)
            if isinstance(start, str):
                result.problems.append(ChainProblem(chain, cp.seq, "", start))
                if not start.startswith(BAD_SIGNATURE):
                    continue  # the chain lost or changed the row the checkpoint vouched for
                # a forged checkpoint vouches for nothing: verify this chain from its first row
            else:
                expected, prev = start
                result.resumed[chain] = cp.seq
        problem, expected, prev = await _walk(
            sessions, keyring, chain, expected, prev, keys, page_size, result
        )
        if problem is not None:
            result.problems.append(problem)
        elif checkpoint and expected > 1 and (cp is None or cp.seq != expected - 1):
            await save_checkpoint(sessions, keyring, chain, expected - 1, prev)
            result.saved[chain] = expected - 1
    return result


async def _walk(
    sessions: async_sessionmaker[AsyncSession],
    keyring: Keyring,
    chain: str,
    expected: int,
    prev: bytes,
    keys: dict[int, bytes | None],
    page_size: int,
    result: VerifyResult,
) -> tuple[ChainProblem | None, int, bytes]:
    """Check ``chain`` from row ``expected`` (chained onto ``prev``) to its end: the first problem (or
    None), and the next seq and hash after the last good row."""
    while True:
        stmt = select(_TABLE).where(AuditRow.chain == chain, AuditRow.seq >= expected)
        async with sessions() as session:
            page = (await session.execute(stmt.order_by(AuditRow.seq).limit(page_size))).all()
        if not page:
            return None, expected, prev
        for row in page:
            values = row._asdict()
            if values["key_term"] not in keys:
                with contextlib.suppress(DsmError):  # a term another process rotated to
                    await keyring.ensure_term(values["key_term"])
            result.checked += 1
            reason = _row_problem(values, expected, prev, keyring, keys)
            if reason is not None:
                return ChainProblem(chain, values["seq"], values["id"], reason), expected, prev
            expected, prev = expected + 1, bytes(values["row_hash"])


def _row_problem(
    values: Mapping[str, Any], expected: int, prev: bytes, keyring: Keyring, keys: dict[int, bytes | None]
) -> str | None:
    if values["seq"] != expected:
        return f"seq gap: expected seq {expected}, found {values['seq']} (rows deleted)"
    if bytes(values["prev_hash"]) != prev:
        return "prev_hash does not match the hash of the previous row"
    term = values["key_term"]
    if term not in keys:
        try:
            keys[term] = keyring.derive(AUDIT_KEY_PURPOSE, term)
        except DsmError:
            keys[term] = None
    if (key := keys[term]) is None:
        return f"row names keyring term {term}, which the keyring does not have"
    if not hmac.compare_digest(row_hash(key, prev, values), bytes(values["row_hash"])):
        return "row_hash does not match the row's contents (row altered)"
    return None


# ------------------------------------------------------------------------------------------ reading


def _to_dict(values: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(values)
    out["time"] = _utc(out["time"]).isoformat(timespec="microseconds")
    out["prev_hash"] = bytes(out["prev_hash"]).hex()
    out["row_hash"] = bytes(out["row_hash"]).hex()
    out["group_ids"] = list(out["group_ids"] or [])
    return out


def row_to_dict(row: AuditRow) -> dict[str, Any]:
    """A row as JSON-ready data: time as UTC ISO 8601, hashes as hex."""
    return _to_dict({c.key: getattr(row, c.key) for c in _TABLE.columns})


async def export(
    sessions: async_sessionmaker[AsyncSession], *, since_seq: Mapping[str, int] | None = None
) -> AsyncIterator[dict[str, Any]]:
    """Every row in (time, chain, seq) order, streamed with a server-side cursor. ``since_seq`` maps a
    chain to the last seq already exported: only later rows of that chain are yielded (other chains in
    full), so an export can be continued incrementally."""
    stmt = select(_TABLE).order_by(AuditRow.time, AuditRow.chain, AuditRow.seq)
    if since_seq:
        later = (and_(AuditRow.chain == c, AuditRow.seq > s) for c, s in since_seq.items())
        stmt = stmt.where(or_(AuditRow.chain.not_in(list(since_seq)), *later))
    async with sessions() as session:
        result = await session.stream(stmt.execution_options(yield_per=PAGE_SIZE))
        async for row in result:
            yield _to_dict(row._asdict())


async def tail(sessions: async_sessionmaker[AsyncSession], limit: int) -> list[dict[str, Any]]:
    """The newest ``limit`` rows, newest first."""
    order = (AuditRow.time.desc(), AuditRow.chain.desc(), AuditRow.seq.desc())
    stmt = select(_TABLE).order_by(*order).limit(max(limit, 0))
    async with sessions() as session:
        return [_to_dict(row._asdict()) for row in await session.execute(stmt)]
