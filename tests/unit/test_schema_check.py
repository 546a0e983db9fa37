"""The start-up schema check without alembic (xkslab_shared.db.declared_head and check_schema's quick
path): it agrees with alembic on the real migrations, steps aside whenever the files are not the plain
linear history it understands, and refuses every database that is not exactly at head, as before."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import text

from dsm_emulator import store
from dsm_emulator.errors import SchemaMismatch
from xkslab_shared import db

VERSIONS = db.MIGRATIONS_DIR / "versions"


def test_the_declared_head_is_alembics_head() -> None:
    assert db.declared_head() is not None
    assert db.declared_head() == db.head_revision()


def _copy(tmp_path: Path) -> Path:
    target = tmp_path / "versions"
    shutil.copytree(VERSIONS, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def _write(versions: Path, name: str, revision: str, down: str, extra: str = "") -> None:
    (versions / name).write_text(
        f'"""A test revision."""\n\nrevision: str = {revision}\ndown_revision: str | None = {down}\n'
        f"branch_labels: str | None = None\ndepends_on: str | None = None\n{extra}"
    )


def test_a_new_revision_in_either_quote_style_is_the_new_head(tmp_path: Path) -> None:
    versions = _copy(tmp_path)
    head = db.head_revision()
    _write(versions, "9998_next.py", "'9998'", repr(head))
    assert db.declared_head(versions) == "9998"
    _write(versions, "9999_after.py", '"9999"', '"9998"')
    assert db.declared_head(versions) == "9999"
    (versions / "__init__.py").write_text("revision = 'not a migration'\n")  # alembic skips it too
    (versions / "notes.txt").write_text('revision: str = "nope"\n')
    assert db.declared_head(versions) == "9999"


@pytest.mark.parametrize(
    ("revision", "down", "extra"),
    [
        ('"9998"', '"0001"', ""),  # a second branch: two heads
        ('"9998"', '("0001", "0002")', ""),  # a merge revision
        ('"9998"', '"no_such_revision"', ""),  # a parent no file defines
        ('"0001"', "None", ""),  # a revision defined twice
        ("make_id()", '"0001"', ""),  # not a literal
        ('"9998"', '"0001"', 'revision = "again"\n'),  # two assignments
    ],
)
def test_anything_but_a_plain_linear_history_is_left_to_alembic(
    tmp_path: Path, revision: str, down: str, extra: str
) -> None:
    versions = _copy(tmp_path)
    _write(versions, "9998_odd.py", revision, down, extra)
    assert db.declared_head(versions) is None


def test_branch_labels_are_left_to_alembic(tmp_path: Path) -> None:
    versions = _copy(tmp_path)
    _write(versions, "9998_next.py", '"9998"', repr(db.head_revision()))
    path = versions / "9998_next.py"
    path.write_text(path.read_text().replace("branch_labels: str | None = None", 'branch_labels = ("x",)'))
    assert db.declared_head(versions) is None


async def test_a_database_at_head_passes(db_url: str) -> None:
    engine = store.create_engine(db_url)
    try:
        await store.check_schema(engine)
    finally:
        await engine.dispose()


async def test_a_database_one_revision_behind_is_refused(empty_db_url: str) -> None:
    head = db.head_revision()
    previous = ScriptDirectory.from_config(db.alembic_config(empty_db_url)).get_revision(head).down_revision
    assert isinstance(previous, str)
    await asyncio.to_thread(store.upgrade, empty_db_url, previous)
    engine = store.create_engine(empty_db_url)
    try:
        with pytest.raises(SchemaMismatch, match=f"schema revision {previous}, .* needs revision {head}"):
            await store.check_schema(engine)
    finally:
        await engine.dispose()


async def test_a_version_table_with_head_and_another_row_is_not_taken_for_head(db_url: str) -> None:
    """The quick path accepts exactly one row, the head; anything else goes to alembic, which refuses
    several heads in its own words."""
    engine = store.create_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO alembic_version (version_num) VALUES ('0001')"))
        with pytest.raises(Exception, match="more than one head"):
            await store.check_schema(engine)
    finally:
        await engine.dispose()
