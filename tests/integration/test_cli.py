"""The command line against a real data directory, its commands in this process (tests/cli_runner.py) and
the restart's phases in real ones (cli_worker.py), on SQLite and PostgreSQL and on both sealing backends:
set-up, administration, restart, rewrap, audit verification, and a search of the stored bytes for every
secret."""

from __future__ import annotations

import base64
import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.cli_runner import run_cli

WORKER = Path(__file__).with_name("cli_worker.py")
REPO = Path(__file__).resolve().parents[2]


def run(
    data_dir: Path,
    *args: str,
    env: dict[str, str] | None = None,
    check: bool = True,
    input_bytes: bytes | None = None,
) -> subprocess.CompletedProcess[str]:
    """``xkslab --data-dir DATA_DIR ARGS``, in this process (tests/cli_runner.py); bytes out when given
    bytes in."""
    proc = run_cli(["--data-dir", str(data_dir), *args], env=env, input=input_bytes, text=input_bytes is None)
    if check and proc.returncode != 0:
        raise AssertionError(f"xkslab {' '.join(args)} failed ({proc.returncode}): {proc.stderr!s}")
    return proc


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


def test_commands_refuse_an_unknown_schema(data_dir: Path) -> None:
    run_json(data_dir, "init", "--admin-password", "pw")
    with sqlite3.connect(data_dir / "xkslab.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'ffff_future'")
    proc = run(data_dir, "key", "list", check=False)
    assert proc.returncode == 1
    assert "schema revision ffff_future" in proc.stderr and "xkslab db upgrade" in proc.stderr
    from dsm_emulator.store import head_revision

    assert f"needed: {head_revision()}" in run(data_dir, "db", "current").stdout
