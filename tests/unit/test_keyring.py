"""The keyring barrier: blobs bound to their context, rotation keeps old blobs readable, rewrap moves
terms between sealers, and every failure is Sealed. Rotation and rewrap are audited mutations; a term
rotated to by another process is loaded on demand, once for all the callers that need it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dsm_emulator.audit import AuditLog, verify
from dsm_emulator.errors import Sealed
from dsm_emulator.keyring import Keyring
from dsm_emulator.keyring_admin import KeyringAdmin
from dsm_emulator.models import AuditRow
from dsm_emulator.sealing import Sealer
from xkslab_shared.config import AuditSettings
from xkslab_shared.generation import Generation

Sessions = async_sessionmaker[AsyncSession]


@pytest.fixture
async def audit(sessions: Sessions, keyring: Keyring) -> AsyncIterator[AuditLog]:
    log = AuditLog(sessions, keyring, AuditSettings())
    await log.start()
    try:
        yield log
    finally:
        await log.close()


async def _rows(sessions: Sessions, operation: str) -> list[AuditRow]:
    async with sessions() as session:
        return list(await session.scalars(select(AuditRow).where(AuditRow.operation == operation)))


async def test_seal_open_round_trip_and_context_binding(keyring: Keyring) -> None:
    blob = keyring.seal(b"material", b"kid-1|1")
    assert b"material" not in blob
    assert await keyring.open(blob, b"kid-1|1") == b"material"
    with pytest.raises(Sealed):
        await keyring.open(blob, b"kid-2|1")
    tampered = bytearray(blob)
    tampered[-1] ^= 1
    with pytest.raises(Sealed):
        await keyring.open(bytes(tampered), b"kid-1|1")
    with pytest.raises(Sealed, match="unknown format version"):
        await keyring.open(b"\x09" + blob[1:], b"kid-1|1")
    with pytest.raises(Sealed, match="term 7, which this keyring does not have"):
        await keyring.open(blob[:1] + (7).to_bytes(4, "big") + blob[5:], b"kid-1|1")


async def test_rotation_keeps_old_blobs_and_survives_reload(
    keyring: Keyring, sessions: Sessions, software_sealer: Sealer, audit: AuditLog
) -> None:
    old = keyring.seal(b"old", b"ctx")
    assert await KeyringAdmin(keyring, audit).rotate() == 2
    new = keyring.seal(b"new", b"ctx")
    assert new[1:5] == (2).to_bytes(4, "big")
    reloaded = await Keyring.load(sessions, software_sealer)
    assert reloaded.terms == [1, 2]
    assert await reloaded.open(old, b"ctx") == b"old"
    assert await reloaded.open(new, b"ctx") == b"new"
    assert reloaded.derive("audit", 1) == keyring.derive("audit", 1)
    assert reloaded.derive("audit", 1) != reloaded.derive("audit", 2)
    assert reloaded.derive("audit") != reloaded.derive("jwt")


async def test_rotation_is_audited_and_raises_the_generation(
    keyring: Keyring, sessions: Sessions, audit: AuditLog
) -> None:
    generation = Generation(sessions, poll_s=0.0)
    before = await generation.current()
    assert await KeyringAdmin(keyring, audit).rotate() == 2
    assert await generation.current() > before
    [row] = await _rows(sessions, "keyring.rotate")
    assert (row.actor_type, row.outcome, row.message) == ("System", "success", "Started keyring term 2")
    assert await verify(sessions, keyring) == []


async def test_a_term_rotated_by_another_process_is_loaded_once_for_every_caller(
    keyring: Keyring, sessions: Sessions, software_sealer: Sealer
) -> None:
    other = await Keyring.load(sessions, software_sealer)  # another process, started before the rotation
    writer = AuditLog(sessions, keyring, AuditSettings(node_id="cli"))
    await writer.start()
    try:
        assert await KeyringAdmin(keyring, writer).rotate() == 2
    finally:
        await writer.close()
    blob = keyring.seal(b"made after the rotation", b"ctx")
    assert other.terms == [1]
    # The first caller is cancelled while the load runs: the others still get the term.
    callers = [asyncio.create_task(other.open(blob, b"ctx")) for _ in range(8)]
    await asyncio.sleep(0)
    callers[0].cancel()
    results = await asyncio.gather(*callers[1:])
    assert results == [b"made after the rotation"] * 7
    assert other.term_loads == 1 and other.terms == [1, 2]
    assert other.active_term == 1  # it keeps sealing under its own term until it restarts
    assert await other.open(other.seal(b"x", b"c"), b"c") == b"x"


async def test_rewrap_moves_terms_to_another_sealer(
    keyring: Keyring, sessions: Sessions, software_sealer: Sealer, sealer: Sealer, audit: AuditLog
) -> None:
    blob = keyring.seal(b"payload", b"ctx")
    assert await KeyringAdmin(keyring, audit).rewrap(sealer) == 1
    with pytest.raises(Sealed, match="configured sealing key"):
        await Keyring.load(sessions, software_sealer)
    moved = await Keyring.load(sessions, sealer)
    assert await moved.open(blob, b"ctx") == b"payload"
    back_log = AuditLog(sessions, moved, AuditSettings(node_id="other"))
    await back_log.start()
    try:
        await KeyringAdmin(moved, back_log).rewrap(software_sealer)
    finally:
        await back_log.close()
    back = await Keyring.load(sessions, software_sealer)
    assert await back.open(blob, b"ctx") == b"payload"
    rows = await _rows(sessions, "keyring.rewrap")
    assert len(rows) == 2 and all(r.outcome == "success" and r.actor_type == "System" for r in rows)


async def test_load_without_terms_is_sealed(sessions: Sessions, software_sealer: Sealer) -> None:
    with pytest.raises(Sealed, match="xkslab init"):
        await Keyring.load(sessions, software_sealer)
