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
import subprocess
import sys
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


def fill(path: Path, rows: int) -> sqlite3.Connection:
    """A WAL database with ``rows`` one-row commits not checkpointed; the connection stays open (this
    process's SQLite connections hold a SHARED lock on the file for as long as they are open)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
    for i in range(rows):
        conn.execute("INSERT INTO t VALUES (?)", (i,))
    return conn


def close_elsewhere(path: Path) -> int:
    """Another process (the CLI) opens the database, reads and closes its only connection, which
    checkpoints and deletes the WAL if it gets the file's EXCLUSIVE lock, i.e. if no other process holds
    a SHARED one. Returns the rows it read."""
    code = (
        "import sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1])\n"
        "print(c.execute('SELECT count(*) FROM t').fetchone()[0])\n"
        "c.close()\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout)


async def test_a_restart_round_leaves_this_process_s_locks_so_another_process_cannot_delete_the_wal(
    tmp_path: Path,
) -> None:
    """The first version of the RESTART round opened and closed the database file to fdatasync it: a
    close drops every POSIX lock the process holds on the file, so the CLI closing its connection beside
    the lab deleted the WAL the lab still wrote to ("database disk image is malformed", 742 of 4,199 XKS
    calls answered 500 in tests/integration/test_cross_process.py)."""
    path = tmp_path / "locks.db"
    lab = fill(path, 50)
    checkpointer = WalCheckpointer(str(path), interval_s=3600, restart_frames=10)
    try:
        busy, frames, copied = await checkpointer.checkpoint()
        assert checkpointer.restarts == 1 and busy == 0 and copied == frames > 10
        lab.execute("INSERT INTO t VALUES (-1)")  # the next writer starts the WAL again
        assert close_elsewhere(path) == 51
        assert os.path.exists(f"{path}-wal")  # the other process could not take the file over
        lab.execute("INSERT INTO t VALUES (-2)")  # into the WAL every process sees
        assert close_elsewhere(path) == 52
    finally:
        await checkpointer.close()
        lab.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 52
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


async def test_a_restart_a_reader_holds_up_gives_the_write_lock_back_and_the_next_round_restarts(
    tmp_path: Path,
) -> None:
    """A reader of an older snapshot (another process's long read) keeps RESTART from finishing: the round
    gives the write lock back (busy), writers commit meanwhile, and a round after the reader ends
    restarts the WAL."""
    path = tmp_path / "reader.db"
    lab = fill(path, 20)
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    assert reader.execute("SELECT count(*) FROM t").fetchone()[0] == 20  # a snapshot of 20 rows
    for i in range(30):
        lab.execute("INSERT INTO t VALUES (?)", (i,))
    checkpointer = WalCheckpointer(str(path), interval_s=3600, restart_frames=10)
    try:
        busy, frames, copied = await checkpointer.checkpoint()
        assert checkpointer.restarts == 1 and busy == 1 and copied < frames, (busy, frames, copied)
        writer = sqlite3.connect(path, isolation_level=None, timeout=0)  # it must not wait at all
        writer.execute("INSERT INTO t VALUES (-1)")
        writer.close()
        assert reader.execute("SELECT count(*) FROM t").fetchone()[0] == 20  # its snapshot still
        reader.execute("COMMIT")
        busy, frames, copied = await checkpointer.checkpoint()
        assert checkpointer.restarts == 2 and busy == 0 and copied == frames
        lab.execute("INSERT INTO t VALUES (-2)")  # starts the WAL from its beginning
        assert lab.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1] <= 3
    finally:
        await checkpointer.close()
        reader.close()
        lab.close()
