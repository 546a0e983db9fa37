"""The key manager's SQLite WAL stays bounded under a steady stream of commits (xkslab_shared/wal.py).

SQLite only: PostgreSQL keeps its own write-ahead log, which no code of ours checkpoints; there is no
``-wal`` file of ours to grow. Under a steady load a PASSIVE checkpoint round never lets the WAL start
again from its beginning, because commits keep appending frames while the round copies the earlier ones
(found with strace and file sizes: 72 to 108 MB in 6 s of XKS Encrypt). The checkpointer's rounds are
driven here by the count of rows committed, never by the clock, and the writers keep committing while
each round runs, as they do under load.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import uuid
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dsm_emulator import store
from dsm_emulator.audit import AuditEvent, AuditLog
from dsm_emulator.audit.raw import open_raw_writer
from dsm_emulator.keyring import Keyring
from xkslab_shared.config import AuditSettings
from xkslab_shared.wal import WalCheckpointer

Sessions = async_sessionmaker[AsyncSession]

ROWS = 2400  # about 600 group commits of up to 4 rows: 58 MB of WAL when it never restarted
ROUND_EVERY = 50  # rows between checkpoint rounds
IN_ROUND = 100  # rows the writers may commit while one round runs, before they wait for it
# At most ROUND_EVERY + IN_ROUND rows between two restarts, at most about 15 frames (4 KB pages) a row
# (one-row commits): under 10 MB whatever the timing; 2 MB typically.
WAL_BOUND = 10 * 2**20


def event(i: int) -> AuditEvent:
    return AuditEvent(
        operation="crypto.encrypt",
        action_type="CRYPTOOPERATION",
        message=f"row {i}",
        actor_type="App",
        actor_id=str(uuid.uuid4()),
        response_time_us=i,
    )


def wal_size(path: Path) -> int:
    try:
        return os.stat(f"{path}-wal").st_size
    except FileNotFoundError:
        return 0


@pytest.mark.parametrize("db_backend", ["sqlite"])
async def test_the_wal_stays_bounded_while_commits_run_beside_every_checkpoint(
    db_url: str, tmp_path: Path, keyring: Keyring
) -> None:
    path = tmp_path / "xkslab.db"
    engine = store.create_engine(db_url, wal_autocheckpoint=False, write_lock_first=True)
    raw = open_raw_writer(engine, wal_autocheckpoint=False)
    log = AuditLog(
        store.session_factory(engine), keyring, AuditSettings(node_id="wal", flush_interval_ms=0), raw=raw
    )
    await log.start()
    # Rounds are run by hand (the loop's interval would tie the bound to the clock).
    checkpointer = WalCheckpointer(str(path), interval_s=3600, restart_frames=200)
    done = 0
    round_over = asyncio.Event()
    round_over.set()
    cap = ROWS
    sizes: list[int] = []
    rounds: list[tuple[int, int, int]] = []

    async def writer(first: int) -> None:
        nonlocal done
        for i in range(first, ROWS, 4):
            while done >= cap:  # a round outlasted IN_ROUND rows (a stalled thread): bound by count
                round_over.clear()
                await round_over.wait()
            await log.record(event(i))
            done += 1

    async def driver() -> None:
        nonlocal cap
        due = ROUND_EVERY
        while done < ROWS:
            if done < due:
                await asyncio.sleep(0.001)
                continue
            due = done + ROUND_EVERY
            cap = done + IN_ROUND
            rounds.append(await checkpointer.checkpoint())  # the writers go on meanwhile
            cap = ROWS
            round_over.set()
            sizes.append(wal_size(path))

    try:
        await asyncio.gather(driver(), *(writer(k) for k in range(4)))
        sizes.append(wal_size(path))
    finally:
        await log.close()
        await checkpointer.close()
        await engine.dispose()
    assert len(rounds) >= ROWS // ROUND_EVERY // 3, rounds  # the writers did run beside the rounds
    assert max(sizes) < WAL_BOUND, (sizes, rounds)
    assert checkpointer.restarts >= len(rounds) // 2, rounds
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM audit_log WHERE chain = 'wal'").fetchone()[0] == ROWS
