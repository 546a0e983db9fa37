"""Sealing through the command line, in real processes, on SQLite and PostgreSQL and both sealing
backends: a restart decrypts everything, a rewrap to PKCS#11 and back, a passphrase, and a search of
the stored bytes for every secret. (Apart from test_cli.py so that pytest-xdist's ``loadfile`` can run
it beside the rest.)"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_cli import REPO, init, pkcs11_env, run, run_json, worker


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


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
