"""The command line against a real data directory, in real processes, on SQLite and PostgreSQL and on
both sealing backends: set-up, administration, restart, rewrap, audit verification, and a search of the
stored bytes for every secret."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest

WORKER = Path(__file__).with_name("cli_worker.py")
REPO = Path(__file__).resolve().parents[2]


def run(
    data_dir: Path,
    *args: str,
    env: dict[str, str] | None = None,
    check: bool = True,
    input_bytes: bytes | None = None,
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "xkslab", "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=input_bytes is None,
        env=full_env,
        cwd=REPO,
        timeout=120,
        input=input_bytes,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"xkslab {' '.join(args)} failed ({proc.returncode}): {proc.stderr!s}")
    return proc  # type: ignore[return-value]


def run_json(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    return json.loads(run(data_dir, *args, "--json", env=env).stdout)


def worker(phase: str, data_dir: Path, out: Path, env: dict[str, str] | None = None) -> int:
    proc = subprocess.run(
        [sys.executable, str(WORKER), phase, str(data_dir), str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.strip())


def init(data_dir: Path, db_url: str, *extra: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    args = ["init", "--admin-password", "correct horse battery", *extra]
    if not db_url.startswith("sqlite"):
        args += ["--database-url", db_url]
    return run_json(data_dir, *args, env=env)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def pkcs11_env(token: Any) -> dict[str, str]:
    return {
        "XKSLAB_SEAL_PKCS11_TOKEN_LABEL": token.label,
        "XKSLAB_SEAL_PKCS11_PIN": token.pin,
        "XKSLAB_SEAL_PKCS11_LIBRARY": str(token.library),
    }


def test_admin_flow_and_clear_errors(data_dir: Path, empty_db_url: str) -> None:
    first = init(data_dir, empty_db_url)
    assert first["created"] is True and first["default_group_id"]
    again = (
        init(data_dir, empty_db_url)
        if empty_db_url.startswith("sqlite")
        else run_json(data_dir, "init", "--admin-password", "x")
    )
    assert again["created"] is False and again["acct_id"] == first["acct_id"]

    group = run_json(data_dir, "group", "create", "payments")
    assert group["name"] == "payments"
    key = run_json(data_dir, "key", "create", "root-kek", "--group", group["group_id"])
    assert (key["obj_type"], key["key_size"], key["state"], key["enabled"]) == ("AES", 256, "Active", True)
    assert "EXPORT" not in key["key_ops"]
    assert run_json(data_dir, "key", "disable", "root-kek")["enabled"] is False
    assert run_json(data_dir, "key", "enable", key["kid"])["enabled"] is True
    new = run_json(data_dir, "key", "rekey", "root-kek")
    assert new["name"] == "root-kek" and new["links"] == {"replaced": key["kid"]} and new["version"] == 2
    old = run_json(data_dir, "key", "show", key["kid"])
    assert old["links"] == {"replacement": new["kid"]} and old["name"].startswith("root-kek (rotated at ")
    names = {k["name"] for k in run_json(data_dir, "key", "list")}
    assert "root-kek" in names and old["name"] in names

    xks = run_json(
        data_dir, "app", "create", "aws-xks", "--group", group["group_id"], "--credential", "awsxks"
    )
    pair = xks["credential"]["awsxks"]
    assert re.fullmatch(r"[A-Z2-7]{20,30}", pair["access_key_id"])
    assert re.fullmatch(r"[a-zA-Z0-9/+=]{43,64}", pair["secret_key"])
    api = run_json(data_dir, "app", "create", "svc", "--group", group["group_id"])
    app_id, secret = base64.b64decode(api["api_key"]).decode().split(":", 1)
    assert app_id == api["app_id"] and secret
    assert {a["name"] for a in run_json(data_dir, "app", "list")} == {"aws-xks", "svc"}

    deleted = run(data_dir, "key", "delete", key["kid"])
    assert "deleted" in deleted.stdout
    missing = run(data_dir, "key", "show", key["kid"], check=False)
    assert missing.returncode == 1 and "sobject does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr
    dup = run(data_dir, "group", "create", "payments", check=False)
    assert dup.returncode == 1 and "already exists" in dup.stderr
    bad = run(data_dir, "key", "create", "k2", "--size", "100", check=False)
    assert bad.returncode == 1 and "key_size" in bad.stderr

    rows = run_json(data_dir, "audit", "tail", "-n", "100")
    operations = [r["operation"] for r in rows]
    for op in ("key.create", "key.update", "key.rekey", "key.delete"):
        assert op in operations
    refused = [r for r in rows if r["outcome"] == "refused"]
    assert any(r["operation"] == "key.create" for r in refused)
    assert run_json(data_dir, "audit", "verify")["ok"] is True
    exported = run(data_dir, "audit", "export").stdout.splitlines()
    assert len(exported) == len(rows)


def test_bad_configuration_names_the_setting(data_dir: Path, empty_db_url: str) -> None:
    init(data_dir, empty_db_url)
    proc = run(data_dir, "key", "list", env={"XKSLAB_AUDIT_BATCH_MAX": "lots"}, check=False)
    assert proc.returncode == 1
    assert "audit.batch_max" in proc.stderr and "XKSLAB_AUDIT_BATCH_MAX" in proc.stderr
    # A flag beats the environment: the same bad variable is overridden by --set.
    assert (
        run(
            data_dir, "--set", "audit.batch_max=64", "key", "list", env={"XKSLAB_AUDIT_BATCH_MAX": "lots"}
        ).returncode
        == 0
    )
    proc = run(data_dir, "--set", "audit.batch_max=0", "key", "list", check=False)
    assert proc.returncode == 1 and "audit.batch_max (command line)" in proc.stderr
    (data_dir / "xkslab.toml").write_text((data_dir / "xkslab.toml").read_text() + "\n[audit]\nbogus = 1\n")
    proc = run(data_dir, "key", "list", check=False)
    assert proc.returncode == 1
    assert "unknown setting audit.bogus" in proc.stderr


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


def test_restart_decrypts_everything(
    data_dir: Path, empty_db_url: str, seal_backend: str, request: pytest.FixtureRequest
) -> None:
    env: dict[str, str] = {}
    if seal_backend == "pkcs11":
        env = pkcs11_env(request.getfixturevalue("softhsm_token"))
    init(data_dir, empty_db_url, "--seal-backend", seal_backend, env=env)
    assert run_json(data_dir, "seal", "status", env=env)["backend"] == seal_backend
    out = data_dir.parent / "ciphertexts.json"
    assert worker("create", data_dir, out, env) == 12
    assert worker("check", data_dir, out, env) == 12
    run(data_dir, "seal", "rotate", env=env)
    out2 = data_dir.parent / "after-rotate.json"
    worker("create", data_dir, out2, env)
    assert worker("check", data_dir, out, env) == 12
    assert worker("check", data_dir, out2, env) == 12


def test_rewrap_software_to_pkcs11_and_back(data_dir: Path, empty_db_url: str, softhsm_token: Any) -> None:
    env = pkcs11_env(softhsm_token)
    init(data_dir, empty_db_url)
    out = data_dir.parent / "ciphertexts.json"
    worker("create", data_dir, out)
    moved = run_json(data_dir, "seal", "rewrap", "--to", "pkcs11", env=env)
    assert moved == {"terms": 1, "backend": "pkcs11"}
    status = run_json(data_dir, "seal", "status", env=env)
    assert status["backend"] == "pkcs11" and status["sealer_key_id"].startswith("pkcs11:")
    assert worker("check", data_dir, out, env) == 12
    # The software key can no longer open the keyring.
    wrong = run(data_dir, "seal", "status", env={"XKSLAB_SEAL_BACKEND": "software"}, check=False)
    assert wrong.returncode == 1 and "sealed by pkcs11:" in wrong.stderr
    run_json(data_dir, "seal", "rewrap", "--to", "software", env=env)
    assert run_json(data_dir, "seal", "status")["backend"] == "software"
    assert worker("check", data_dir, out) == 12


def test_no_secret_is_stored_in_the_clear(data_dir: Path, empty_db_url: str, tmp_path: Path) -> None:
    init(data_dir, empty_db_url)
    group_id = run_json(data_dir, "group", "list")[0]["group_id"]
    imported = os.urandom(32)
    run(data_dir, "key", "import", "imported", "--value-file", "-", "--json", input_bytes=imported)
    out = tmp_path / "ct.json"
    worker("create", data_dir, out)  # generates keys too
    api = run_json(data_dir, "app", "create", "svc", "--group", group_id)
    xks = run_json(data_dir, "app", "create", "xks", "--group", group_id, "--credential", "awsxks")
    secrets_ = [
        base64.b64decode(api["api_key"]).decode().split(":", 1)[1].encode(),
        xks["credential"]["awsxks"]["secret_key"].encode(),
        b"correct horse battery",
    ]
    materials = [imported, *_generated_materials(data_dir)]
    assert len(materials) == 4
    needles = [
        n for m in materials for n in (m, m.hex().encode(), m.hex().upper().encode(), base64.b64encode(m))
    ]
    needles += [n for s in secrets_ for n in (s, base64.b64encode(s))]
    haystack = _stored_bytes(empty_db_url, data_dir)
    assert len(haystack) > 10_000
    for needle in needles:
        assert needle not in haystack


def _generated_materials(data_dir: Path) -> list[bytes]:
    code = (
        "import asyncio,sys\n"
        "from dsm_emulator.core import DsmCore\n"
        "from dsm_emulator.models import SecurityObject\n"
        "from sqlalchemy import select\n"
        "from xkslab_shared.config import load_settings\n"
        "async def main():\n"
        "    async with await DsmCore.open(load_settings(sys.argv[1])) as core:\n"
        "        async with core.sessions() as s:\n"
        "            objs=(await s.scalars(select(SecurityObject).where(SecurityObject.origin=='FortanixHSM'))).all()\n"
        "        for o in objs: print((await core.keys.material(o)).hex())\n"
        "asyncio.run(main())\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(data_dir)], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return [bytes.fromhex(line) for line in proc.stdout.split()]


def _stored_bytes(db_url: str, data_dir: Path) -> bytes:
    if db_url.startswith("sqlite"):
        return b"".join(p.read_bytes() for p in data_dir.glob("xkslab.db*"))
    dsn = db_url.replace("postgresql+asyncpg://", "postgresql://")
    proc = subprocess.run(["pg_dump", "--data-only", "--inserts", dsn], capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_passphrase_sealing_and_wrong_passphrase(data_dir: Path, tmp_path: Path) -> None:
    env = {"XKSLAB_SEAL_PASSPHRASE": "correct passphrase for the lab"}
    run_json(data_dir, "init", "--admin-password", "pw", env=env)
    assert not (data_dir / "seal.key").exists() and (data_dir / "seal.salt").exists()
    out = tmp_path / "ct.json"
    worker("create", data_dir, out, env)
    assert worker("check", data_dir, out, env) == 12
    wrong = run(data_dir, "key", "list", env={"XKSLAB_SEAL_PASSPHRASE": "not it"}, check=False)
    assert wrong.returncode == 1 and "is sealed by software:" in wrong.stderr
    assert "not it" not in wrong.stderr


def test_commands_refuse_an_unknown_schema(data_dir: Path) -> None:
    run_json(data_dir, "init", "--admin-password", "pw")
    with sqlite3.connect(data_dir / "xkslab.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'ffff_future'")
    proc = run(data_dir, "key", "list", check=False)
    assert proc.returncode == 1
    assert "schema revision ffff_future" in proc.stderr and "xkslab db upgrade" in proc.stderr
    from dsm_emulator.store import head_revision

    assert f"needed: {head_revision()}" in run(data_dir, "db", "current").stdout
