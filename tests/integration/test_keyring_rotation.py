"""`xkslab seal rotate` in another process beside a running key manager and proxy, on SQLite and
PostgreSQL: the running DSM opens what the other process sealed under the new term (a key, an app's
SigV4 secret), keys from before the rotation keep working, the rotation has its audit row and the audit
chain verifies. Before, the running DSM answered every use of such a key with `Sealed: sealed blob names
keyring term 2, which this keyring does not have`, because it read the keyring's terms only at start."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import select

from dsm_emulator.audit import verify
from dsm_emulator.models import AuditRow
from tests import xks_harness
from tests.xks_harness import XksEnv, b64

db_env = xks_harness.db_env  # the fixture this module uses (SQLite and PostgreSQL)

REPO = Path(__file__).resolve().parents[2]


async def xkslab(data_dir: Path, *args: str) -> Any:
    """The real CLI in its own process (off the event loop, so the servers keep serving)."""

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "xkslab", "--data-dir", str(data_dir), *args],
            capture_output=True,
            text=True,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            timeout=300,
        )

    proc = await asyncio.to_thread(run)
    assert proc.returncode == 0, f"xkslab {' '.join(args)} failed: {proc.stderr}"
    return json.loads(proc.stdout) if "--json" in args else proc.stdout


async def round_trip(env: XksEnv, key_id: str, **signer: str) -> None:
    status, encrypted = await env.post(
        env.url("encrypt", key_id, prefix=signer.pop("prefix", None)),
        {
            "requestMetadata": xks_harness.metadata(),
            "plaintext": b64(b"rotated"),
            "encryptionAlgorithm": "AES_GCM",
        },
        **signer,
    )
    assert status == 200, encrypted
    status, plain = await env.decrypt(encrypted, key_id)
    assert status == 200 and plain["plaintext"] == b64(b"rotated"), plain


async def test_a_rotation_in_another_process_leaves_the_running_lab_working(db_env: XksEnv) -> None:
    env = db_env
    status, before = await env.encrypt(b"sealed under term 1")  # the running DSM has its key in memory
    assert status == 200, before

    rotated = await xkslab(env.data_dir, "seal", "rotate", "--json")
    assert rotated == {"active_term": 2}
    ops = "ENCRYPT,DECRYPT,WRAPKEY,UNWRAPKEY"
    late = await xkslab(
        env.data_dir, "key", "create", "late", "--group", env.group_id, "--key-ops", ops, "--json"
    )
    app = await xkslab(
        env.data_dir, "app", "create", "late-app", "--group", env.group_id, "--credential", "awsxks", "--json"
    )

    # A key the other process sealed under term 2, used by the running DSM through the running proxy.
    await round_trip(env, late["kid"])
    # An app whose SigV4 secret the other process sealed under term 2.
    pair = app["credential"]["awsxks"]
    await round_trip(
        env,
        late["kid"],
        prefix=f"/crypto/v1/apps/{app['app_id']}/aws",
        akid=pair["access_key_id"],
        secret=pair["secret_key"],
    )
    # What existed before the rotation keeps working, old ciphertexts included.
    status, plain = await env.decrypt(before)
    assert status == 200 and plain["plaintext"] == b64(b"sealed under term 1"), plain
    await round_trip(env, env.kek_id)
    assert env.core.keyring.term_loads == 1  # loaded once, on demand

    async with env.core.sessions() as session:
        rows = (await session.scalars(select(AuditRow).where(AuditRow.operation == "keyring.rotate"))).all()
    assert [(r.actor_type, r.outcome, r.message) for r in rows] == [
        ("System", "success", "Started keyring term 2")
    ]
    verified = await xkslab(env.data_dir, "audit", "verify", "--json")
    assert verified["ok"] is True, verified
    # and by the running DSM, whose keyring started before the rows keyed under term 2
    assert await verify(env.core.sessions, env.core.keyring) == []
