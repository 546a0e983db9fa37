"""The small lies of issue 18, each shown with the client that met it: sdkms-cli's rotate-secret and
list-accounts (the real CLI against ``xkslab dsm serve`` over HTTPS), a key's lastused_at after XKS and
crypto-API use (kept without a database write per request), and an unknown ``POST /crypto/v1/keys/<word>``."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from dsm_emulator.api.app import create_app
from dsm_emulator.models import SecurityObject
from dsm_emulator.views import sobject_view
from tests import xks_harness
from tests.integration.test_dsm_api import bearer, login
from tests.integration.test_sdkms_cli import dsm_https
from tests.xks_harness import XksEnv
from xkslab_shared.config import load_settings

__all__ = ["dsm_https"]  # the sdkms-cli server fixture, shared with test_sdkms_cli

db_env = xks_harness.db_env


# ------------------------------------------------------------------------------------ sdkms-cli


@pytest.fixture
def cli(dsm_https: tuple[str, Path], tmp_path: Path) -> Iterator[Any]:
    endpoint, ca = dsm_https
    env = {**os.environ, "SDKMS_CLI_TOKEN_FILE": str(tmp_path / "tokens"), "HOME": str(tmp_path)}
    env.pop("FORTANIX_API_KEY", None)
    env.pop("SDKMS_API_KEY", None)

    def run(*args: str) -> bytes:
        proc = subprocess.run(
            ["sdkms-cli", "--api-endpoint", endpoint, "--ssl-ca-cert", str(ca), *args],
            capture_output=True,
            env=env,
            cwd=tmp_path,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert proc.returncode == 0, f"sdkms-cli {args}: {proc.stdout!r} {proc.stderr!r}"
        return proc.stdout

    run("user-login", "--username", "admin@example.com", "--password", "s3cret-pass")
    yield run


def test_sdkms_cli_rotate_secret_sets_the_given_value(cli: Any, tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.write_text("the first secret")
    second.write_text("the second, longer secret value")
    old_kid = cli("import-secret", "--name", "db-password", "--obj-type", "SECRET", "--in", str(first))
    new_kid = cli("rotate-secret", "--name", "db-password", "--in", str(second)).decode().strip()
    assert new_kid and new_kid != old_kid.decode().strip()
    assert cli("export-object", "--kid", new_kid, "--der") == b"the second, longer secret value"
    assert cli("export-object", "--kid", old_kid.decode().strip(), "--der") == b"the first secret"


def test_sdkms_cli_list_accounts_without_detail(cli: Any) -> None:
    (line,) = cli("list-accounts").decode().strip().splitlines()
    acct_id, *_rest, state = line.split()
    uuid.UUID(acct_id)
    assert state == "Activated"


# ------------------------------------------------------------------------------------ lastused_at


async def test_last_use_is_the_time_of_last_use_without_a_write_per_request(db_env: XksEnv) -> None:
    env, keys = db_env, db_env.core.keys
    await keys.usage.close()  # this test writes by hand: no timer decides what it sees

    async def stored() -> datetime | None:
        async with env.core.sessions() as session:
            return (await session.get(SecurityObject, env.kek_id)).lastused_at  # type: ignore[union-attr]

    assert sobject_view(await keys.get(env.system, kid=env.kek_id))["lastused_at"] == "19700101T000000Z"
    updates: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE SECURITY_OBJECTS"):
            updates.append(statement)

    engine = env.core.engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        before = datetime.now(UTC).replace(microsecond=0)
        for _ in range(5):
            status, encrypted = await env.encrypt(b"used through XKS")
            assert status == 200, encrypted
        status, decrypted = await env.decrypt(encrypted)
        assert status == 200, decrypted
        assert updates == [] and await stored() is None

        shown = sobject_view(await keys.get(env.system, kid=env.kek_id))["lastused_at"]
        used = datetime.strptime(shown, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        assert before <= used <= datetime.now(UTC)

        assert await keys.usage.flush() == 1
        assert len(updates) == 1
        written = await stored()
        assert written is not None
        assert abs(written.replace(tzinfo=UTC) - used) < timedelta(seconds=1)
        assert await keys.usage.flush() == 0 and len(updates) == 1  # nothing new: no statement
    finally:
        event.remove(engine, "before_cursor_execute", count)

    # An older time from another node never moves the stored one back.
    keys.usage._unwritten[env.kek_id] = used - timedelta(days=1)
    await keys.usage.flush()
    assert (await stored()).replace(tzinfo=UTC) >= used  # type: ignore[union-attr]


async def test_last_use_is_written_when_the_core_closes(db_env: XksEnv) -> None:
    """A one-shot core (a CLI command) writes what it noted; the next reader sees it."""
    env = db_env
    kid = await env.create_key("crypto-api-key")
    await env.core.keys.encrypt(env.system, kid, "GCM", b"used through the crypto API")
    await env.core.keys.usage.close()
    async with env.core.sessions() as session:
        assert (await session.get(SecurityObject, kid)).lastused_at is not None  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------ routes


async def test_unknown_post_under_keys_is_a_404_in_the_dsm_shape(tmp_path: Path, aiohttp_client: Any) -> None:
    from tests.integration.test_cli import init

    data_dir = tmp_path / "data"
    init(data_dir, f"sqlite+aiosqlite:///{data_dir / 'xkslab.db'}")
    client = await aiohttp_client(create_app(load_settings(data_dir)))
    h = bearer(await login(client))
    resp = await client.post("/crypto/v1/keys/frobnicate", headers=h, json={})
    assert resp.status == 404 and resp.content_type == "application/json"
    assert isinstance((await resp.json())["message"], str)
    # Paths that do exist keep their answers: a kid's own path and other collections.
    resp = await client.post(f"/crypto/v1/keys/{uuid.uuid4()}", headers=h, json={})
    assert resp.status == 405
    resp = await client.delete("/sys/v1/version", headers=h)
    assert resp.status == 405
