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
copies what the PASSIVE round left, syncs the database file, and waits until no reader uses the WAL (busy
handler again); writers wait behind it meanwhile (new readers read on). The next writer then starts the
WAL from its beginning. The checkpointer's busy handler gives up after ``RESTART_WAIT_MS`` (far below the
writers' busy timeout and the proxy's budget for the key manager), so a long reader (another process's
``audit verify``) holds the writers up that long at most: without the write lock SQLite runs the round
as a PASSIVE one, and a RESTART still waiting for readers gives the lock back; the next round tries
again. The file keeps its largest size, overwritten in place; ``journal_size_limit`` on every
connection (xkslab_shared/db.py) caps it.

Nothing here opens the database file itself (an ``os.open`` to fdatasync it before the RESTART did, once):
POSIX ``close()`` of any descriptor of a file drops every fcntl lock the process holds on it, the SHARED
locks of this process's SQLite connections included (SQLite's own VFS defers its closes for this reason;
https://sqlite.org/howtocorrupt.html, 2.2). Another process closing its last connection then got the
EXCLUSIVE lock, checkpointed and deleted the WAL and its index while this process still wrote to them:
"database disk image is malformed" in the CLI and the audit writer, 500s on XKS, in
tests/integration/test_cross_process.py. tests/unit/test_wal_growth.py checks the locks survive a round.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger("xkslab.wal")

# The busy timeout of the checkpointer's connection: how long a RESTART waits for the write lock and,
# holding it, for readers. Writers wait at most about this long behind it (plus its copy and sync).
RESTART_WAIT_MS = 50


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
        with contextlib.suppress(sqlite3.Error):
            await self.checkpoint()
        await asyncio.get_running_loop().run_in_executor(self._executor, self._disconnect)
        self._executor.shutdown(wait=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.checkpoint()
            except sqlite3.Error as exc:  # a locked or missing file: the next round tries again
                name = getattr(exc, "sqlite_errorname", "")
                log.warning("WAL checkpoint failed: %s %s: %s", type(exc).__name__, name, exc)

    def _checkpoint(self) -> tuple[int, int, int]:
        if self._conn is None:
            self._conn = sqlite3.connect(
                self._path, isolation_level=None, timeout=min(self._busy_timeout_ms, RESTART_WAIT_MS) / 1000
            )
            self._conn.execute("PRAGMA wal_autocheckpoint=0")
        row = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()  # never waits
        if 0 < self._restart_frames < int(row[1]):
            row = self._conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
            self.restarts += 1
        self.rounds += 1
        return (int(row[0]), int(row[1]), int(row[2]))

    def _disconnect(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None
