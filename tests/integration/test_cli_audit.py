"""`xkslab audit verify` against a real data directory, in real processes, on SQLite and PostgreSQL: a
tampered row named whatever column was changed, and a verify that resumes after its signed checkpoint
while --full still finds older tampering. (Apart from test_cli.py so that pytest-xdist's ``loadfile``
can run it beside the rest.)"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.integration.test_cli import init, run, run_json


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


TAMPERED_COLUMNS = ["message", "actor_id", "object_id", "outcome", "operation", "severity"]


def test_audit_verify_names_a_tampered_row(data_dir: Path, empty_db_url: str) -> None:
    # One lab for every column (a lab per column was a dozen set-ups of the same rows): each column is
    # tampered with, verified with --full (no checkpoint may hide it) and put back, which the next
    # clean verify proves.
    init(data_dir, empty_db_url)
    for i in range(4):
        run(data_dir, "key", "create", f"k{i}")
    rows = run_json(data_dir, "audit", "tail", "-n", "100")
    target = rows[len(rows) // 2]
    for column in TAMPERED_COLUMNS:
        original = _column_value(empty_db_url, data_dir, target["id"], column)
        _flip_one_byte(empty_db_url, data_dir, target["id"], column)
        proc = run(data_dir, "audit", "verify", "--full", "--json", check=False)
        assert proc.returncode == 1, column
        report = json.loads(proc.stdout)
        assert report["ok"] is False, column
        assert report["problems"][0]["row_id"] == target["id"], column
        _set_column(empty_db_url, data_dir, target["id"], column, original)
    assert run_json(data_dir, "audit", "verify", "--full")["ok"] is True


def _column_value(db_url: str, data_dir: Path, row_id: str, column: str) -> Any:
    sql = f"SELECT {column} FROM audit_log WHERE id = "
    if db_url.startswith("sqlite"):
        with sqlite3.connect(data_dir / "xkslab.db") as conn:
            return conn.execute(sql + "?", (row_id,)).fetchone()[0]
    return asyncio.run(_pg(db_url, lambda conn: conn.fetchval(sql + "$1", row_id)))


def _set_column(db_url: str, data_dir: Path, row_id: str, column: str, value: Any) -> None:
    sql = f"UPDATE audit_log SET {column} = "
    if db_url.startswith("sqlite"):
        with sqlite3.connect(data_dir / "xkslab.db") as conn:
            assert conn.execute(sql + "? WHERE id = ?", (value, row_id)).rowcount == 1
        return
    status = asyncio.run(_pg(db_url, lambda conn: conn.execute(sql + "$1 WHERE id = $2", value, row_id)))
    assert status == "UPDATE 1"


async def _pg(db_url: str, call: Any) -> Any:
    conn = await asyncpg.connect(db_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        return await call(conn)
    finally:
        await conn.close()


def test_audit_verify_resumes_after_its_checkpoint_and_full_finds_older_tampering(
    data_dir: Path, empty_db_url: str
) -> None:
    init(data_dir, empty_db_url)
    for i in range(3):
        run(data_dir, "key", "create", f"k{i}")
    first = run_json(data_dir, "audit", "verify")
    assert first["ok"] is True and first["checked"] == first["rows"] > 0 and first["checkpoints"]
    oldest = run_json(data_dir, "audit", "tail", "-n", "100")[-1]
    _flip_one_byte(empty_db_url, data_dir, oldest["id"], "message")
    resumed = run_json(data_dir, "audit", "verify")  # before the checkpoint: not walked again
    assert resumed["ok"] is True and resumed["checked"] == 0 and resumed["resumed_after"]
    proc = run(data_dir, "audit", "verify", "--full", "--json", check=False)
    assert proc.returncode == 1
    full = json.loads(proc.stdout)
    assert full["full"] is True and full["problems"][0]["row_id"] == oldest["id"]
    run(data_dir, "key", "create", "k-late")
    newest = run_json(data_dir, "audit", "tail", "-n", "1")[0]
    _flip_one_byte(empty_db_url, data_dir, newest["id"], "message")
    proc = run(data_dir, "audit", "verify", "--json", check=False)  # after the checkpoint: found
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["problems"][0]["row_id"] == newest["id"]
    text = run(data_dir, "audit", "verify", check=False)
    assert text.returncode == 1 and f"row {newest['id']}" in text.stdout


def _flip_one_byte(db_url: str, data_dir: Path, row_id: str, column: str) -> None:
    expr = (
        f"CASE WHEN {column} IS NULL THEN 'x' ELSE substr({column}, 1, length({column}) - 1) || "
        f"CASE WHEN substr({column}, length({column})) = 'a' THEN 'b' ELSE 'a' END END"
    )
    if db_url.startswith("sqlite"):
        with sqlite3.connect(data_dir / "xkslab.db") as conn:
            assert (
                conn.execute(f"UPDATE audit_log SET {column} = {expr} WHERE id = ?", (row_id,)).rowcount == 1
            )
        return
    dsn = db_url.replace("postgresql+asyncpg://", "postgresql://")

    async def update() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            assert (
                await conn.execute(f"UPDATE audit_log SET {column} = {expr} WHERE id = $1", row_id)
                == "UPDATE 1"
            )
        finally:
            await conn.close()

    asyncio.run(update())
