"""SQLite's WAL checkpoints, moved off the request path.

By default SQLite checkpoints at the commit that takes the WAL past 1,000 pages: that commit copies the
WAL into the database file and fsyncs it before it returns, and at 1,000,000 audit rows this pushed the
90th percentile of an audit commit from 6 to 18 ms. A process whose connections set
``wal_autocheckpoint=0`` (db.create_engine's ``wal_autocheckpoint=False``) runs a WalCheckpointer
instead: a thread of its own with its own connection runs ``PRAGMA wal_checkpoint(PASSIVE)`` every
interval. PASSIVE never waits for a lock and never blocks a writer or reader; frames a reader still needs
are copied by a later round.

PASSIVE alone lets the WAL grow without bound under a steady load: SQLite starts the WAL again from its
beginning only when a writer begins after a checkpoint that copied every frame, and a PASSIVE round copies
the frames committed before it began while new commits keep appending (72 to 108 MB in 6 s of XKS
Encrypt). So when the WAL still holds more than ``restart_frames`` frames after a PASSIVE round, the
same round runs ``PRAGMA wal_checkpoint(RESTART)`` at once. RESTART waits (through the busy handler,
polling) for the write lock, which blocks nobody; holding it, it waits for readers of an older snapshot,
copies what the PASSIVE round left (the frames of the few commits in between), syncs the database file,
and waits until no reader uses the WAL (busy handler again); writers wait behind it meanwhile (their busy
handler, within busy_timeout; new readers read on). The next writer then
starts the WAL from its beginning. If the write lock is not had within the busy timeout, SQLite runs it
as a PASSIVE round and the next round tries again. The file keeps its largest size, overwritten in
place; ``journal_size_limit`` on the writers' connections (xkslab_shared/db.py) caps it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger("xkslab.wal")


class WalCheckpointer:
    """Checkpoints the SQLite file at ``path`` every ``interval_s`` until closed (then once more)."""

    def __init__(
        self, path: str, interval_s: float, *, busy_timeout_ms: int = 5000, restart_frames: int = 1000
    ) -> None:
        self._path = path
        self._interval = interval_s
        self._restart_frames = restart_frames  # 0: PASSIVE only
        self._busy_timeout_ms = busy_timeout_ms
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wal-checkpoint")
        self._conn: sqlite3.Connection | None = None  # used only on the executor's thread
        self._task: asyncio.Task[None] | None = None
        self.rounds = 0  # completed checkpoint calls (tests, metrics)
        self.restarts = 0  # of which ran a RESTART checkpoint after the PASSIVE one

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="wal-checkpoint")

    async def checkpoint(self) -> tuple[int, int, int]:
        """One round: a PASSIVE checkpoint, then a RESTART one if the WAL still holds more than
        ``restart_frames`` frames: (busy, frames in the WAL, frames copied) of the last, as SQLite reports
        them (after a RESTART that got its locks: (0, n, n), and the next writer restarts the WAL)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._checkpoint)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(sqlite3.Error, OSError):
            await self.checkpoint()
        await asyncio.get_running_loop().run_in_executor(self._executor, self._disconnect)
        self._executor.shutdown(wait=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.checkpoint()
            except (sqlite3.Error, OSError) as exc:  # a locked or missing file: the next round tries again
                log.warning("WAL checkpoint failed: %s: %s", type(exc).__name__, exc)

    def _checkpoint(self) -> tuple[int, int, int]:
        if self._conn is None:
            self._conn = sqlite3.connect(
                self._path, isolation_level=None, timeout=self._busy_timeout_ms / 1000
            )
            self._conn.execute("PRAGMA wal_autocheckpoint=0")
        row = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if 0 < self._restart_frames < int(row[1]):
            # The PASSIVE round wrote its pages into the database file but, overtaken by a commit, did
            # not sync them; syncing them here, holding no lock, leaves RESTART's own sync (made while
            # every writer waits) only the pages of the commits since.
            fd = os.open(self._path, os.O_RDONLY)
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)
            row = self._conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
            self.restarts += 1
        self.rounds += 1
        return (int(row[0]), int(row[1]), int(row[2]))

    def _disconnect(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None
