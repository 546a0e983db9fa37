"""The database every service shares: async engine and session factory (with the SQLite pragmas),
the migrations, and the start-up check that the schema is exactly at alembic head.

The schema is one, owned by the migrations in ``migrations/``; every service refuses to start against a
revision it does not know, because new code on an old schema (or old code on a newer one) corrupts data.

alembic is imported only where a migration runs or the schema check is in doubt: importing it costs about
0.1-0.15 s of CPU, which every ``xkslab`` command (and the test suite runs thousands) paid for a check
that, on a database already at head, two small queries and a read of migrations/versions answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import event, inspect, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

import migrations

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(migrations.__file__).parent


# One naming convention for every service's tables, so constraint names in the one alembic history
# are predictable (and migrations can drop them by name).
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class SchemaMismatch(RuntimeError):
    """The database is not at the schema revision this code was written for."""


def alembic_config(url: str) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolation would choke on a '%' in a password.
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None, "migrations/versions has no revision"
    return head


def upgrade(url: str, revision: str = "head") -> None:
    """Run the migrations up to ``revision``. Synchronous: alembic's env runs its own event loop, so
    async callers use ``upgrade_async``. Several processes may upgrade one database at once (nodes of a
    fleet starting together): the first migrates, the others wait and find nothing left to do (on
    PostgreSQL an advisory lock, migrations/env.py; on SQLite a lock file beside the database)."""
    from alembic import command

    with _sqlite_upgrade_lock(url):
        command.upgrade(alembic_config(url), revision)


@contextlib.contextmanager
def _sqlite_upgrade_lock(url: str) -> Iterator[None]:
    """An exclusive flock on ``<database>.migrate.lock`` for a SQLite file (the kernel drops it if the
    process dies); nothing for other databases, which lock inside the upgrade's transaction."""
    parsed = make_url(url)
    database = parsed.database
    if not parsed.drivername.startswith("sqlite") or not database or database == ":memory:":
        yield
        return
    path = Path(database)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".migrate.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


async def upgrade_async(url: str) -> None:
    await asyncio.to_thread(upgrade, url)


# A WAL that once grew large (a bulk load, a reader holding it, a checkpoint that could not get its locks)
# is cut back to this size by the first commit after it restarts; below it the file is kept and
# overwritten in place, which costs a commit's fdatasync less than growing it again (0.95 against 1.94 ms
# for 64 KB on this machine's disk). XKS Encrypt at 32 connections stayed below it (11-25 MB); audit rows
# committed flat out by eight tasks did not (30-86 MB between restarts, README issue 22).
WAL_SIZE_LIMIT = 32 * 2**20


def _sqlite_pragmas(busy_timeout_ms: int, wal_autocheckpoint: bool = True) -> Any:
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        # WAL lets readers run beside the single writer; FULL sync because a key must never be lost to a
        # power cut (group commit keeps the fsync count low); the busy timeout makes writers of several
        # services queue instead of failing at once.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        # Deleted content (destroyed key material, erased history) is overwritten with zeros rather than
        # left in free space, where a raw read of the file would still find it.
        cursor.execute("PRAGMA secure_delete=ON")
        cursor.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        if not wal_autocheckpoint:  # a WalCheckpointer (xkslab_shared/wal.py) does it off the request path
            cursor.execute("PRAGMA wal_autocheckpoint=0")
        cursor.close()

    return on_connect


def _take_write_lock_first(engine: AsyncEngine) -> None:
    """Make every transaction of ``engine`` start with BEGIN IMMEDIATE (SQLAlchemy's documented recipe:
    the driver's own BEGIN turned off, ours emitted). A deferred transaction that reads and then writes
    fails at once with SQLITE_BUSY if another process wrote in between; one that takes the write lock
    first waits its turn (busy_timeout) and then reads the newest data, which the audit chain head needs."""

    def no_driver_begin(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None

    def begin_immediate(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    event.listen(engine.sync_engine, "connect", no_driver_begin)
    event.listen(engine.sync_engine, "begin", begin_immediate)


def create_engine(
    url: str,
    *,
    busy_timeout_ms: int = 5000,
    pool_size: int = 10,
    write_lock_first: bool = False,
    wal_autocheckpoint: bool = True,
) -> AsyncEngine:
    """The engine for ``url``. ``write_lock_first``: on SQLite, transactions take the database's write
    lock before their first statement (for writers that read what they are about to extend); other
    databases lock explicitly where it matters (an advisory lock on PostgreSQL). ``wal_autocheckpoint``
    False: on SQLite, commits never checkpoint the WAL (someone else must: xkslab_shared/wal.py)."""
    if url.startswith("sqlite"):
        engine = create_async_engine(url)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas(busy_timeout_ms, wal_autocheckpoint))
        if write_lock_first:
            _take_write_lock_first(engine)
        return engine
    return create_async_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def _current_revision(conn: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn).get_current_revision()


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(_current_revision)


async def check_schema(engine: AsyncEngine) -> None:
    """Raise SchemaMismatch unless the database is exactly at alembic head.

    The usual case, a database at head, is answered without alembic (``_at_declared_head``); anything
    else (behind, ahead, empty, several heads, a migration file the quick read does not understand) is
    decided by alembic itself, as it always was."""
    head = declared_head()
    if head is not None:
        async with engine.connect() as conn:
            if await conn.run_sync(_at_declared_head, head):
                return
    current = await current_revision(engine)
    head = head_revision()
    if current != head:
        where = "an empty database" if current is None else f"schema revision {current}"
        raise SchemaMismatch(
            f"database has {where}, this xkslab needs revision {head}: run 'xkslab db upgrade'"
        )


# The lines of a migration file as our template writes them (migrations/script.py.mako), either quote.
_REVISION = re.compile(r"""^revision(?:: str)? = (["'])([^"'\\]+)\1$""", re.M)
_DOWN_REVISION = re.compile(r"""^down_revision(?:: [^=\n]+)? = (?:None|(["'])([^"'\\]+)\1)$""", re.M)
_NO_BRANCHING = re.compile(r"^(?:branch_labels|depends_on)(?:: [^=\n]+)? = None$", re.M)
_REVISION_FILE = re.compile(r"(?!\.#|__init__).*\.py")


def declared_head(versions: Path | None = None) -> str | None:
    """The head revision of ``migrations/versions`` read from the files' text, without alembic (which
    imports each file): the one revision no other file names as its ``down_revision``. None when the
    files are not the plain linear history our template writes (a file with no literal ``revision``,
    branch labels, dependencies, a merge, several heads): then only alembic can say, and callers ask it.
    tests/unit/test_store.py checks this agrees with alembic's ``head_revision``."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (versions or MIGRATIONS_DIR / "versions").iterdir():
        if not path.is_file() or not _REVISION_FILE.fullmatch(path.name):
            continue
        source = path.read_text(encoding="utf-8")
        revision = [name for _quote, name in _REVISION.findall(source)]
        down = [name for _quote, name in _DOWN_REVISION.findall(source)]
        if len(revision) != 1 or len(down) != 1 or len(_NO_BRANCHING.findall(source)) != 2:
            return None
        if revision[0] in revisions:
            return None
        revisions.add(revision[0])
        if down[0]:
            parents.add(down[0])
    heads = revisions - parents
    if len(heads) != 1 or not parents <= revisions:
        return None
    return heads.pop()


def _at_declared_head(conn: Connection, head: str) -> bool:
    """Whether alembic's version table holds exactly one row, ``head`` (what alembic's own
    ``MigrationContext.get_current_revision`` reads, in its default table)."""
    if not inspect(conn).has_table("alembic_version"):
        return False
    rows = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    return list(rows) == [head]


async def ping(sessions: async_sessionmaker[AsyncSession]) -> None:
    """One round trip to the database (the health endpoints): raises when it cannot be reached."""
    async with sessions() as session:
        await session.execute(text("SELECT 1"))


def describe_error(exc: BaseException) -> str:
    """A loggable description of a database error: the driver's own message and, from sqlite3, the name
    of SQLite's result code (SQLITE_BUSY, SQLITE_CORRUPT); never str() of a StatementError, which embeds
    the statement's parameters. Anything else: its type's name only."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    if not isinstance(orig, BaseException) or (orig is exc and not isinstance(exc, sqlite3.Error)):
        return type(exc).__name__
    code = getattr(orig, "sqlite_errorname", None)
    inner = "" if orig is exc else f": {type(orig).__name__}"
    return f"{type(exc).__name__}{inner}{f' ({code})' if code else ''}: {str(orig)[:300]}"
