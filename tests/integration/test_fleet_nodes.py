"""Nodes of one database (issue 23): the node registry and its heartbeats, the cache generation's
NOTIFY across nodes on PostgreSQL, and migrations that run once when several nodes start together.

Every node here is a real ``xkslab dsm serve`` / ``xks serve`` process on free ports of a real database
(a scratch PostgreSQL database, or a SQLite file), driven over HTTP."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import create_pg_database, drop_pg_database, pg_url
from tests.fleet import REPO, Node, nodes, start_node
from tests.integration.test_cli import init
from xkslab.lab.bootstrap import bootstrap_dsm
from xkslab_shared.config import load_settings
from xkslab_shared.db import head_revision

ADMIN = ("admin@xkslab.local", "correct horse battery")
FAST_BEATS = {"fleet.heartbeat_s": "0.2", "fleet.node_timeout_s": "1.5"}


async def fleet_dir(tmp_path: Path, db_url: str) -> tuple[Path, dict[str, Any]]:
    data_dir = tmp_path / "data"
    await asyncio.to_thread(init, data_dir, db_url)
    return data_dir, await bootstrap_dsm(load_settings(data_dir))


async def admin_headers(session: aiohttp.ClientSession, url: str) -> dict[str, str]:
    basic = base64.b64encode(":".join(ADMIN).encode()).decode()
    async with session.post(url + "/sys/v1/session/auth", headers={"Authorization": f"Basic {basic}"}) as r:
        assert r.status == 200, await r.text()
        token = (await r.json())["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    async with session.get(url + "/sys/v1/users/accounts", headers=headers) as r:
        (acct_id,) = await r.json()
    async with session.post(
        url + "/sys/v1/session/select_account", headers=headers, json={"acct_id": acct_id}
    ):
        pass
    return headers


async def listed(session: aiohttp.ClientSession, node: Node, headers: dict[str, str]) -> dict[str, Any]:
    async with session.get(node.url + "/sys/v1/nodes", headers=headers) as r:
        assert r.status == 200, await r.text()
        body: dict[str, Any] = await r.json()
    return {row["id"]: row for row in body["nodes"]}


async def until(predicate: Any, what: str, timeout_s: float = 60.0) -> None:
    """Poll ``predicate`` (an async callable) until it is true; the timeout only turns a hang into a
    failure."""
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        assert time.monotonic() < deadline, f"never: {what}"
        await asyncio.sleep(0.1)


@pytest.fixture
async def pg_database() -> Any:
    name = await create_pg_database()
    try:
        yield pg_url(name)
    finally:
        await drop_pg_database(name)


async def test_each_node_registers_beats_and_is_dropped_when_killed(tmp_path: Path, pg_database: str) -> None:
    data_dir, _ = await fleet_dir(tmp_path, pg_database)
    with nodes() as fleet:
        for name in ("dsm-1", "dsm-2"):
            fleet.append(
                await asyncio.to_thread(
                    start_node, data_dir, "dsm", name, {**FAST_BEATS, "audit.node_id": name}
                )
            )
        proxy_settings = {**FAST_BEATS, "xks.node_id": "xks-1", "xks.dsm_urls": fleet[0].url}
        fleet.append(await asyncio.to_thread(start_node, data_dir, "xks", "xks-1", proxy_settings))
        dsm1, dsm2, proxy = fleet
        async with aiohttp.ClientSession() as session:
            headers = await admin_headers(session, dsm1.url)

            async def all_three_with_urls() -> bool:
                rows = await listed(session, dsm2, headers)  # any node lists the whole fleet
                return all(rows.get(n.name, {}).get("urls") == n.urls for n in fleet)

            await until(all_three_with_urls, "every node registered with the URLs it bound")
            rows = await listed(session, dsm2, headers)
            assert {rows[n]["kind"] for n in ("dsm-1", "dsm-2")} == {"dsm"} and rows["xks-1"]["kind"] == "xks"
            assert all(row["live"] and row["stopped"] is None for row in rows.values())
            assert rows["dsm-2"]["pid"] == dsm2.process.pid
            first_beat = rows["dsm-2"]["last_heartbeat"]

            async def beat_again() -> bool:
                return bool((await listed(session, dsm1, headers))["dsm-2"]["last_heartbeat"] > first_beat)

            await until(beat_again, "dsm-2's heartbeat renewed")

            dsm2.process.kill()  # SIGKILL: no chance to say goodbye, its heartbeat just stops
            dsm2.process.wait()

            async def dsm2_not_live() -> bool:
                return not (await listed(session, dsm1, headers))["dsm-2"]["live"]

            await until(dsm2_not_live, "a killed node not live once its heartbeat is older than the timeout")
            rows = await listed(session, dsm1, headers)
            assert rows["dsm-1"]["live"] and rows["xks-1"]["live"] and rows["dsm-2"]["stopped"] is None

            proxy.stop()  # SIGTERM: a clean stop marks the row stopped at once
            rows = await listed(session, dsm1, headers)
            assert rows["xks-1"]["stopped"] is not None and not rows["xks-1"]["live"]


async def test_the_node_list_is_for_administrators(tmp_path: Path, empty_db_url: str) -> None:
    data_dir, facts = await fleet_dir(tmp_path, empty_db_url)
    with nodes() as fleet:
        fleet.append(await asyncio.to_thread(start_node, data_dir, "dsm", "dsm-1", FAST_BEATS))
        async with aiohttp.ClientSession() as session:
            app = {"Authorization": f"Basic {facts['dsm_api_key']}"}
            async with session.get(fleet[0].url + "/sys/v1/nodes", headers=app) as r:
                assert r.status == 403 and "administrator" in (await r.json())["message"]
            headers = await admin_headers(session, fleet[0].url)
            rows = await listed(session, fleet[0], headers)
            assert rows["dsm-1"]["live"] and rows["dsm-1"]["kind"] == "dsm"


async def test_a_key_disabled_through_one_node_is_refused_by_another_within_a_second(
    tmp_path: Path, pg_database: str
) -> None:
    """The poll is set to 5 s, so only the NOTIFY (a trigger on the counter, LISTEN on each node) can
    make node 2 refuse within a second. The delay is measured from the moment node 1 answered the
    disable (its transaction committed before it answered) to node 2's first refusal."""
    data_dir, facts = await fleet_dir(tmp_path, pg_database)
    slow_poll = {"database.cache_poll_ms": "5000", "database.cache_max_age_s": "600"}
    with nodes() as fleet:
        for name in ("dsm-1", "dsm-2"):
            fleet.append(
                await asyncio.to_thread(
                    start_node, data_dir, "dsm", name, {**slow_poll, "audit.node_id": name}
                )
            )
        node1, node2 = fleet
        kid = facts["root_kek_id"]
        auth = {"Authorization": f"Basic {facts['dsm_api_key']}"}
        body = {
            "key": {"kid": kid},
            "alg": "AES",
            "mode": "GCM",
            "plain": base64.b64encode(b"\x01" * 16).decode(),
        }
        async with aiohttp.ClientSession() as session:

            async def encrypt_on_node2() -> aiohttp.ClientResponse:
                async with session.post(node2.url + "/crypto/v1/encrypt", headers=auth, json=body) as r:
                    await r.read()
                    return r

            for _ in range(3):  # node 2 now serves the key from its cache
                assert (await encrypt_on_node2()).status == 200
            async with session.patch(
                node1.url + f"/crypto/v1/keys/{kid}", headers=auth, json={"enabled": False}
            ) as r:
                assert r.status == 200 and (await r.json())["enabled"] is False
            committed = time.monotonic()
            while True:
                answer = await encrypt_on_node2()
                if answer.status != 200:
                    refused = time.monotonic()
                    break
                assert time.monotonic() - committed < 30, "node 2 never refused the disabled key"
                await asyncio.sleep(0.005)
            assert answer.status == 400
            delay = refused - committed
            assert delay < 1.0, f"node 2 refused the disabled key {delay:.3f} s after node 1 committed"


def _upgrade(data_dir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "xkslab", "--data-dir", str(data_dir), "db", "upgrade"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


async def test_three_nodes_upgrading_an_empty_database_together_migrate_it_once(
    tmp_path: Path, empty_db_url: str
) -> None:
    """Three ``xkslab db upgrade`` at once on an empty database: without the lock two of them would both
    find no schema and both create the first tables (one fails on a duplicate table). With it, all three
    succeed and the schema is at head once."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    if not empty_db_url.startswith("sqlite"):
        (data_dir / "xkslab.toml").write_text(f'[database]\nurl = "{empty_db_url}"\n')
    processes = [_upgrade(data_dir) for _ in range(3)]
    results = [await asyncio.to_thread(p.communicate, timeout=180) for p in processes]
    for process, (_out, err) in zip(processes, results, strict=True):
        assert process.returncode == 0, err
    current = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "xkslab", "--data-dir", str(data_dir), "db", "current"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    assert current.returncode == 0 and head_revision() in current.stdout, current.stdout + current.stderr


async def test_an_account_selected_through_one_node_is_selected_on_every_node(
    tmp_path: Path, empty_db_url: str
) -> None:
    """Behind a balancer (or with --workers) a client's next request may reach another process: the
    selection is in the database, not in the memory of the process that took it. Two DSM applications
    on one database (in this process, each its own server and caches), on SQLite and PostgreSQL."""
    from aiohttp import web

    from dsm_emulator.api.app import create_app

    data_dir, _ = await fleet_dir(tmp_path, empty_db_url)
    await _second_account_for_the_admin(data_dir)  # so a login's token names no account: it must select
    runners: list[web.AppRunner] = []
    urls: list[str] = []
    try:
        for _ in range(2):
            runner = web.AppRunner(create_app(load_settings(data_dir)))
            await runner.setup()
            runners.append(runner)
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            urls.append(f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}")  # type: ignore[union-attr]
        async with aiohttp.ClientSession() as session:
            basic = base64.b64encode(":".join(ADMIN).encode()).decode()
            async with session.post(
                urls[0] + "/sys/v1/session/auth", headers={"Authorization": f"Basic {basic}"}
            ) as r:
                headers = {"Authorization": f"Bearer {(await r.json())['access_token']}"}
            async with session.get(urls[0] + "/sys/v1/users/accounts", headers=headers) as r:
                acct_id = next(a for a, facts in (await r.json()).items() if facts.get("name") != "second")
            async with session.get(urls[1] + "/sys/v1/groups", headers=headers) as r:
                assert r.status == 403 and "no account selected" in (await r.json())["message"]
            async with session.post(
                urls[0] + "/sys/v1/session/select_account", headers=headers, json={"acct_id": acct_id}
            ) as r:
                assert r.status == 200
            for url in urls:  # the selection made through the first is honoured by both
                async with session.get(url + "/sys/v1/groups", headers=headers) as r:
                    assert r.status == 200, await r.text()
            async with session.post(urls[1] + "/sys/v1/session/terminate", headers=headers) as r:
                assert r.status == 204
            # Terminated through the second: the first no longer serves it (the selection is gone at
            # once, 403; the revocation is seen within dsm.revocation_refresh_ms, 401).
            async with session.get(urls[0] + "/sys/v1/groups", headers=headers) as r:
                assert r.status in (401, 403), await r.text()
    finally:
        for runner in runners:
            await runner.cleanup()


async def _second_account_for_the_admin(data_dir: Path) -> None:
    from sqlalchemy import select

    from dsm_emulator.core import DsmCore
    from dsm_emulator.models import AccountMember, User

    async with await DsmCore.open(load_settings(data_dir)) as core:
        second = await core.admin.create_account("second")
        async with core.sessions() as session, session.begin():
            user_id = await session.scalar(select(User.user_id).where(User.email == ADMIN[0]))
            assert user_id is not None
            session.add(
                AccountMember(user_id=user_id, acct_id=second.acct_id, roles=["ACCOUNTADMINISTRATOR"])
            )


async def test_a_lost_listen_connection_is_reopened_and_notifications_go_on(
    tmp_path: Path, pg_database: str
) -> None:
    """The LISTEN connection of every node is cut by the server (pg_terminate_backend, as a PostgreSQL
    restart or fail-over would): each node opens it again, and a key disabled through node 1 is still
    refused by node 2 within a second, the poll being 5 s."""
    import asyncpg
    from sqlalchemy.engine import make_url

    from xkslab_shared.generation import LISTEN_APPLICATION

    data_dir, facts = await fleet_dir(tmp_path, pg_database)
    dsn = make_url(pg_database).set(drivername="postgresql").render_as_string(hide_password=False)
    slow_poll = {"database.cache_poll_ms": "5000", "database.cache_max_age_s": "600"}
    listening = (
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database()"
    )
    with nodes() as fleet:
        for name in ("dsm-1", "dsm-2"):
            settings = {**slow_poll, "audit.node_id": name}
            fleet.append(await asyncio.to_thread(start_node, data_dir, "dsm", name, settings))
        node1, node2 = fleet
        connection = await asyncpg.connect(dsn)
        try:

            async def listeners() -> list[int]:
                return [row["pid"] for row in await connection.fetch(listening, LISTEN_APPLICATION)]

            async def both_listening() -> bool:
                return len(await listeners()) == 2

            await until(both_listening, "both nodes LISTENing")
            cut = await listeners()
            for pid in cut:
                await connection.execute("SELECT pg_terminate_backend($1)", pid)

            async def both_listening_again() -> bool:
                now = await listeners()
                return len(now) == 2 and not set(now) & set(cut)

            await until(both_listening_again, "both nodes LISTENing again on new connections")
        finally:
            await connection.close()
        kid = facts["root_kek_id"]
        auth = {"Authorization": f"Basic {facts['dsm_api_key']}"}
        body = {
            "key": {"kid": kid},
            "alg": "AES",
            "mode": "GCM",
            "plain": base64.b64encode(b"\x03" * 16).decode(),
        }
        async with aiohttp.ClientSession() as session:

            async def status_on_node2() -> int:
                async with session.post(node2.url + "/crypto/v1/encrypt", headers=auth, json=body) as r:
                    await r.read()
                    return r.status

            for _ in range(3):
                assert await status_on_node2() == 200
            async with session.patch(
                node1.url + f"/crypto/v1/keys/{kid}", headers=auth, json={"enabled": False}
            ) as r:
                assert r.status == 200
            committed = time.monotonic()
            while await status_on_node2() == 200:
                assert time.monotonic() - committed < 30, "node 2 never refused the disabled key"
                await asyncio.sleep(0.005)
            delay = time.monotonic() - committed
            assert delay < 1.0, f"node 2 refused the disabled key {delay:.3f} s after node 1 committed"
