"""Several processes on one database: the CLI in a second terminal beside a running DSM and XKS proxy.

The running DSM caches keys, app credentials and permissions (xkslab_shared/generation.py); the CLI is
another process with caches of its own. These tests change things with the real CLI in a subprocess and
ask the running proxy right after the command returns: the change must already be honoured. And while a
load runs, administrative commands writing the same audit chain must not fail a single request.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests import xks_harness
from tests.xks_harness import XksEnv, b64, close_env, make_env, metadata, start_runner
from xks_frontend.app import create_app as create_xks_app
from xkslab_shared.config import load_settings

xks_template = xks_harness.xks_template  # the fixtures this module uses
xks_env = xks_harness.xks_env
db_env = xks_harness.db_env

REPO = Path(__file__).resolve().parents[2]


async def xkslab(data_dir: Path, *args: str, as_json: bool = True) -> Any:
    """Run the real CLI in its own process (off the event loop, so the servers keep serving)."""

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "xkslab",
                "--data-dir",
                str(data_dir),
                *args,
                *(["--json"] if as_json else []),
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            timeout=120,
        )

    proc = await asyncio.to_thread(run)
    assert proc.returncode == 0, f"xkslab {' '.join(args)} failed: {proc.stderr}"
    return json.loads(proc.stdout) if as_json else proc.stdout


async def encrypt_status(env: XksEnv, key_id: str | None = None) -> tuple[int, Any]:
    return await env.encrypt(b"\x01" * 32, key_id)


async def test_a_key_disabled_by_the_cli_is_refused_as_soon_as_the_command_returns(xks_env: XksEnv) -> None:
    for _ in range(3):  # warm the cache: the key is served from memory from now on
        status, _ = await encrypt_status(xks_env)
        assert status == 200
    await xkslab(xks_env.data_dir, "key", "disable", "root-kek-1")
    status, err = await encrypt_status(xks_env)
    assert status == 400 and err["errorName"] == "InvalidStateException", err
    await xkslab(xks_env.data_dir, "key", "enable", "root-kek-1")
    status, _ = await encrypt_status(xks_env)
    assert status == 200


async def test_a_rekey_by_the_cli_moves_encryption_to_the_new_version_and_old_ciphertexts_decrypt(
    xks_env: XksEnv,
) -> None:
    status, old = await encrypt_status(xks_env)
    assert status == 200
    await xkslab(xks_env.data_dir, "key", "rekey", "root-kek-1")
    status, new = await encrypt_status(xks_env)
    assert status == 200
    assert old["ciphertextMetadata"] != new["ciphertextMetadata"]  # key_version=1 -> key_version=2
    for ciphertext in (old, new):
        status, plain = await xks_env.decrypt(ciphertext)
        assert status == 200 and plain["plaintext"] == b64(b"\x01" * 32)


async def test_a_secret_reset_twice_by_the_cli_locks_out_the_first_credential_at_once(
    xks_env: XksEnv,
) -> None:
    status, _ = await encrypt_status(xks_env)
    assert status == 200  # the credentials are cached now
    # awsxks keeps the previous pair valid after one reset; a second reset retires it.
    await xkslab(xks_env.data_dir, "app", "reset-secret", xks_env.app_id)
    status, _ = await encrypt_status(xks_env)
    assert status == 200
    fresh = await xkslab(xks_env.data_dir, "app", "reset-secret", xks_env.app_id)
    status, err = await encrypt_status(xks_env)
    assert status == 401 and err["errorName"] == "AuthenticationFailedException", err
    xks_env.akid = fresh["awsxks"]["access_key_id"]
    xks_env.secret = fresh["awsxks"]["secret_key"]
    status, _ = await encrypt_status(xks_env)
    assert status == 200


async def test_admin_commands_beside_a_load_fail_no_request_and_keep_the_audit_chain_whole(
    xks_env: XksEnv,
) -> None:
    """Issue 11 #1: the CLI writes the same audit chain as the running DSM. Before the chain head was
    taken under a lock, the server's next row collided with the CLI's and that request failed."""
    await admin_commands_beside_a_load(xks_env)


@pytest.mark.parametrize("db_backend", ["postgres"])
async def test_admin_commands_beside_a_load_on_postgresql(db_env: XksEnv) -> None:
    """The same on PostgreSQL, where the chain head is guarded by an advisory lock, not the database's
    one write lock: the CLI process and the server must still queue, never collide."""
    await admin_commands_beside_a_load(db_env)


async def admin_commands_beside_a_load(xks_env: XksEnv) -> None:
    statuses: Counter[int] = Counter()
    stop = asyncio.Event()

    async def load() -> None:
        while not stop.is_set():
            status, body = await xks_env.post(
                xks_env.url("encrypt"),
                {
                    "requestMetadata": metadata(),
                    "plaintext": b64(b"x" * 32),
                    "encryptionAlgorithm": "AES_GCM",
                },
            )
            statuses[status] += 1
            if status != 200:
                statuses_detail.append(body)

    statuses_detail: list[Any] = []
    workers = [asyncio.create_task(load()) for _ in range(8)]
    try:
        created = []
        for i in range(4):
            created.append(await xkslab(xks_env.data_dir, "key", "create", f"beside-load-{i}"))
            await xkslab(xks_env.data_dir, "key", "disable", f"beside-load-{i}")
            await xkslab(xks_env.data_dir, "app", "reset-secret", xks_env.app_id)
            # Each reset keeps the previous pair valid: follow it, as KMS would after an update.
            cred = await xkslab(xks_env.data_dir, "app", "credential", xks_env.app_id)
            pair = cred["awsxks"]
            xks_env.akid, xks_env.secret = pair["access_key_id"], pair["secret_key"]
    finally:
        stop.set()
        await asyncio.gather(*workers)
    assert statuses[200] > 0
    assert set(statuses) == {200}, (statuses, statuses_detail[:3])
    assert len({k["kid"] for k in created}) == 4
    verified = await xkslab(xks_env.data_dir, "audit", "verify")
    assert verified["ok"] is True, verified
    rows = await xks_env.audit_rows("xks.encrypt")
    assert sum(1 for r in rows if r["outcome"] == "success") == statuses[200]


async def test_a_request_the_proxy_gave_up_on_is_audited_as_refused_not_success(
    xks_template: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """Deadlines: another process holds the database's write lock (a long CLI transaction, a backup)
    longer than the proxy waits. The proxy answers 503 DependencyTimeoutException; when the DSM gets
    the lock, the row it writes for that request must say refused, because that is what KMS was told."""
    import sqlite3

    env = await make_env(xks_template, tmp_path)  # the harness's generous deadline, for the warm-up and end
    try:
        status, _ = await encrypt_status(env)  # warm: the key and credentials are cached
        assert status == 200
        # The deadline under test, on a second proxy beside the first. The lock is held until the proxy
        # has answered, so the value need only be one a stalled machine cannot spend before the call
        # reaches the key manager (whose audit row is read below): 2 s rather than 300 ms.
        impatient = load_settings(
            env.data_dir,
            overrides={"xks.dsm_urls": env.dsm_url, "xks.prefix_cache_s": 0.0, "xks.dsm_timeout_ms": 2000},
            environ={},
        )
        runner, port = await start_runner(create_xks_app(impatient))
        env.runners.append(runner)
        impatient_url = env.url("encrypt").replace(env.proxy_url, f"http://127.0.0.1:{port}")
        blocker = sqlite3.connect(env.data_dir / "xkslab.db", isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")  # the write lock, held until the proxy has answered
            request_id = "0c9a4c85-5b1d-4c38-9a4b-5d9f1f0d6e21"
            status, err = await env.post(
                impatient_url,
                {
                    "requestMetadata": metadata(kmsRequestId=request_id),
                    "plaintext": b64(b"x" * 32),
                    "encryptionAlgorithm": "AES_GCM",
                },
            )
            assert status == 503 and err["errorName"] == "DependencyTimeoutException", err
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        deadline = time.monotonic() + 120  # a hang guard: the DSM writes the row once it has the lock
        while time.monotonic() < deadline:
            rows = [r for r in await env.audit_rows("xks.encrypt") if r["kms_request_id"] == request_id]
            if rows:
                break
            await asyncio.sleep(0.05)
        assert len(rows) == 1, rows
        assert rows[0]["outcome"] == "refused" and "deadline" in rows[0]["message"], rows[0]
        status, _ = await encrypt_status(env)  # and the lab carries on
        assert status == 200
    finally:
        await close_env(env)


async def test_dsm_rest_callers_see_cli_changes_as_soon_as_the_command_returns(xks_env: XksEnv) -> None:
    """The DSM REST path caches a Bearer token's principal and the keys crypto calls use: a key disabled
    and an app deleted by the CLI in another process are honoured by the next call."""
    import base64

    app, _ = await xks_env.core.admin.create_app(
        xks_env.system, "rest-app", groups={xks_env.group_id: frozenset({"ENCRYPT", "DECRYPT"})}
    )
    secret = (await xks_env.core.admin.get_credential(xks_env.system, app.app_id))["secret"]
    api_key = base64.b64encode(f"{app.app_id}:{secret}".encode()).decode()
    async with xks_env.http.post(
        f"{xks_env.dsm_url}/sys/v1/session/auth", headers={"Authorization": f"Basic {api_key}"}
    ) as response:
        assert response.status == 200
        token = (await response.json())["access_token"]
    bearer = {"Authorization": f"Bearer {token}"}
    body = {"alg": "AES", "mode": "GCM", "plain": b64(b"hello")}
    url = f"{xks_env.dsm_url}/crypto/v1/keys/{xks_env.kek_id}/encrypt"

    async def encrypt() -> int:
        async with xks_env.http.post(url, json=body, headers=bearer) as response:
            return response.status

    for _ in range(3):  # the principal and the key are cached now
        assert await encrypt() == 200
    await xkslab(xks_env.data_dir, "key", "disable", "root-kek-1")
    assert await encrypt() in (400, 409)
    await xkslab(xks_env.data_dir, "key", "enable", "root-kek-1")
    assert await encrypt() == 200
    await xkslab(xks_env.data_dir, "app", "delete", app.app_id, as_json=False)
    assert await encrypt() == 401
