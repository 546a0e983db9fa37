"""Fortanix's own ``sdkms-cli``, unchanged, on the user and account commands it has (``list-users``,
``show-user``, ``list-accounts``, ``show-account``, ``select-account``) against a listening DSM on SQLite
and PostgreSQL, as the administrator and as a plain member; a user of no concern is "does not exist"."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from dsm_emulator.api.app import create_app
from tests.integration.test_cli import init
from tests.integration.test_dsm_api import EMAIL, PASSWORD
from tests.integration.test_sdkms_cli import REPO
from xkslab_shared.certs import make_local_ca, make_server_cert
from xkslab_shared.config import load_settings

BOB, BOB_PW = "bob@xkslab.local", "bob's password"


@pytest.fixture
async def lab_https(empty_db_url: str, tmp_path: Path) -> AsyncIterator[tuple[str, Path, Path]]:
    """The DSM over HTTPS (sdkms-cli refuses plain http) on the test's database: (url, CA, data dir)."""
    data_dir = tmp_path / "data"
    await asyncio.to_thread(init, data_dir, empty_db_url)
    ca_crt, ca_key = make_local_ca(data_dir / "tls")
    crt, key = make_server_cert(data_dir / "tls", ca_crt, ca_key, "dsm", ["localhost"])
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(crt, key)
    runner = web.AppRunner(create_app(load_settings(data_dir)))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"https://localhost:{port}", ca_crt, data_dir
    finally:
        await runner.cleanup()


def cli_flow(url: str, ca: Path, data_dir: Path, home: Path) -> dict[str, subprocess.CompletedProcess[str]]:
    xkslab = [sys.executable, "-m", "xkslab", "--data-dir", str(data_dir)]
    subprocess.run(
        [*xkslab, "user", "create", BOB, "--password", BOB_PW],
        check=True,
        capture_output=True,
        cwd=REPO,
        timeout=120,
    )
    env = {**os.environ, "SDKMS_CLI_TOKEN_FILE": str(home / "tokens"), "HOME": str(home)}
    env.pop("FORTANIX_API_KEY", None)
    env.pop("SDKMS_API_KEY", None)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["sdkms-cli", "--api-endpoint", url, "--ssl-ca-cert", str(ca), *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=home,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )

    r = {"login": cli("user-login", "--username", EMAIL, "--password", PASSWORD)}
    r["list-users"] = cli("list-users")
    ids = {
        email: user_id for user_id, email in (line.split() for line in r["list-users"].stdout.splitlines())
    }
    r["show-user"] = cli("show-user", "--user-id", ids[BOB])
    r["list-accounts"] = cli("list-accounts")
    acct_id = r["list-accounts"].stdout.split()[0]
    r["list-accounts --detail"] = cli("list-accounts", "--detail")
    r["show-account"] = cli("show-account", "--account-id", acct_id)
    r["select-account"] = cli("select-account", "--account-id", acct_id)
    r["show-unknown"] = cli("show-user", "--user-id", "3f7d6c1e-0000-4000-8000-000000000000")
    r["logout"] = cli("user-logout")
    r["bob-login"] = cli("user-login", "--username", BOB, "--password", BOB_PW)
    r["bob-show-admin"] = cli("show-user", "--user-id", ids[EMAIL])
    r["bob-show-account"] = cli("show-account", "--account-id", acct_id)
    return r


async def test_sdkms_cli_user_and_account_commands(lab_https: tuple[str, Path, Path], tmp_path: Path) -> None:
    url, ca, data_dir = lab_https
    home = tmp_path / "home"
    home.mkdir()
    r = await asyncio.to_thread(cli_flow, url, ca, data_dir, home)

    failed = {name: p.stderr for name, p in r.items() if p.returncode != 0 and name != "show-unknown"}
    assert failed == {}
    assert sorted(line.split()[1] for line in r["list-users"].stdout.splitlines()) == sorted([EMAIL, BOB])
    shown = json.loads(r["show-user"].stdout)
    assert shown["user_email"] == BOB and shown["email_verified"] is True and shown["groups"] == {}
    assert len(shown["account_role"]) == 1  # the SDK reads the role as an enum object it cannot print
    columns = r["list-accounts"].stdout.split()
    assert columns[1:] == ["xkslab", "AuthType.Password", "Activated"]
    assert json.loads(r["list-accounts --detail"].stdout.splitlines()[0])["acct_id"] == columns[0]
    account = json.loads(r["show-account"].stdout)
    assert (account["acct_id"], account["name"], account["enabled"]) == (columns[0], "xkslab", True)
    assert r["show-unknown"].returncode == 1 and "user does not exist" in r["show-unknown"].stderr
    assert json.loads(r["bob-show-admin"].stdout)["user_email"] == EMAIL
    assert json.loads(r["bob-show-account"].stdout)["name"] == "xkslab"
