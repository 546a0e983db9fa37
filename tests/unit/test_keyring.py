"""The keyring barrier: blobs bound to their context, rotation keeps old blobs readable, rewrap moves
terms between sealers, and every failure is Sealed."""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dsm_emulator.errors import Sealed
from dsm_emulator.keyring import Keyring
from dsm_emulator.sealing import Sealer


async def test_seal_open_round_trip_and_context_binding(keyring: Keyring) -> None:
    blob = keyring.seal(b"material", b"kid-1|1")
    assert b"material" not in blob
    assert keyring.open(blob, b"kid-1|1") == b"material"
    with pytest.raises(Sealed):
        keyring.open(blob, b"kid-2|1")
    tampered = bytearray(blob)
    tampered[-1] ^= 1
    with pytest.raises(Sealed):
        keyring.open(bytes(tampered), b"kid-1|1")
    with pytest.raises(Sealed, match="unknown format version"):
        keyring.open(b"\x09" + blob[1:], b"kid-1|1")


async def test_rotation_keeps_old_blobs_and_survives_reload(
    keyring: Keyring, sessions: async_sessionmaker[AsyncSession], software_sealer: Sealer
) -> None:
    old = keyring.seal(b"old", b"ctx")
    assert await keyring.rotate() == 2
    new = keyring.seal(b"new", b"ctx")
    assert new[1:5] == (2).to_bytes(4, "big")
    reloaded = await Keyring.load(sessions, software_sealer)
    assert reloaded.terms == [1, 2]
    assert reloaded.open(old, b"ctx") == b"old"
    assert reloaded.open(new, b"ctx") == b"new"
    assert reloaded.derive("audit", 1) == keyring.derive("audit", 1)
    assert reloaded.derive("audit", 1) != reloaded.derive("audit", 2)
    assert reloaded.derive("audit") != reloaded.derive("jwt")


async def test_rewrap_moves_terms_to_another_sealer(
    keyring: Keyring, sessions: async_sessionmaker[AsyncSession], software_sealer: Sealer, sealer: Sealer
) -> None:
    blob = keyring.seal(b"payload", b"ctx")
    await keyring.rewrap(sealer)
    with pytest.raises(Sealed, match="configured sealing key"):
        await Keyring.load(sessions, software_sealer)
    moved = await Keyring.load(sessions, sealer)
    assert moved.open(blob, b"ctx") == b"payload"
    await moved.rewrap(software_sealer)
    back = await Keyring.load(sessions, software_sealer)
    assert back.open(blob, b"ctx") == b"payload"


async def test_load_without_terms_is_sealed(
    sessions: async_sessionmaker[AsyncSession], software_sealer: Sealer
) -> None:
    with pytest.raises(Sealed, match="xkslab init"):
        await Keyring.load(sessions, software_sealer)
