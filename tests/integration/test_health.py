"""``GET /health`` of each service, on real servers over loopback: 200 and ``{"status": "ok"}`` while it
can serve (on SQLite and PostgreSQL), 503 naming the dependency when it cannot: the proxy without its key
manager, the DSM and the KMS without their database (a PostgreSQL database that stops accepting
connections, then accepts them again). The KMS's own endpoint, ``POST /`` with X-Amz-Target, is not
touched by the new route."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import PG_ADMIN_DSN
from tests.kms_harness import KmsEnv, start_kms, stop_kms
from tests.xks_harness import XksEnv, db_env, start_runner
from xks_frontend.app import create_app as create_xks_app
from xkslab.lab.control import healthy
from xkslab_shared.config import load_settings

__all__ = ["db_env"]  # a fixture, used by name


async def health(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    async with http.get(url + "/health") as response:
        assert response.content_type == "application/json"
        return response.status, await response.json()


@pytest.fixture
async def kms(db_env: XksEnv) -> AsyncIterator[KmsEnv]:
    env = await start_kms(db_env.data_dir)
    try:
        yield env
    finally:
        await stop_kms(env)


async def test_each_service_answers_get_health(db_env: XksEnv, kms: KmsEnv) -> None:
    expected = {
        db_env.dsm_url: {"service": "dsm", "status": "ok", "checks": {"database": "ok"}},
        db_env.proxy_url: {"service": "xks", "status": "ok", "checks": {"dsm": "ok"}},
        kms.url: {"service": "kms", "status": "ok", "checks": {"database": "ok"}},
    }
    for url, answer in expected.items():
        assert await health(db_env.http, url) == (200, answer)
    # The KMS endpoint is unchanged beside it: POST / with X-Amz-Target, and any other GET refused.
    assert isinstance((await kms.call("list_keys"))["Keys"], list)
    async with db_env.http.get(kms.url + "/ping") as response:
        assert response.status == 400
        assert (await response.json(content_type=None))["__type"] == "UnsupportedOperationException"


async def test_the_proxy_is_unavailable_without_its_key_manager(db_env: XksEnv, kms: KmsEnv) -> None:
    # Port 1 on loopback: nothing listens there, so every call to this "key manager" is refused.
    settings = load_settings(
        db_env.data_dir,
        overrides={"xks.dsm_urls": "http://127.0.0.1:1", "xks.dsm_timeout_ms": 5000},
        environ={},
    )
    runner, port = await start_runner(create_xks_app(settings))
    lab = {"dsm": {"url": db_env.dsm_url}, "kms": {"endpoint_url": kms.url}}
    try:
        status, answer = await health(db_env.http, f"http://127.0.0.1:{port}")
        # What `xkslab wait --health` asks: all three healthy, which this proxy is not.
        assert not await asyncio.to_thread(healthy, {**lab, "xks": {"url": f"http://127.0.0.1:{port}"}})
        assert await asyncio.to_thread(healthy, {**lab, "xks": {"url": db_env.proxy_url}})
    finally:
        await runner.cleanup()
    assert status == 503
    assert answer["service"] == "xks" and answer["status"] == "unavailable"
    assert answer["checks"]["dsm"].startswith("unavailable")


async def _allow_connections(database: str, allowed: bool) -> None:
    connection = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await connection.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS {str(allowed).lower()}')
        if not allowed:
            await connection.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", database
            )
    finally:
        await connection.close()


async def _until_healthy(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    """A pool may hold a connection the outage killed: the first check after it may fail once more."""
    for _ in range(20):
        found = await health(http, url)
        if found[0] == 200:
            return found
        await asyncio.sleep(0.1)
    return found


@pytest.mark.parametrize("db_backend", ["postgres"])
async def test_the_dsm_and_the_kms_are_unavailable_without_their_database(
    db_env: XksEnv, kms: KmsEnv
) -> None:
    database = make_url(db_env.core.settings.database_url).database
    assert database
    await _allow_connections(database, False)
    try:
        for url, service in ((db_env.dsm_url, "dsm"), (kms.url, "kms")):
            status, answer = await health(db_env.http, url)
            assert status == 503, (service, answer)
            assert answer["service"] == service and answer["status"] == "unavailable"
            assert answer["checks"]["database"].startswith("unavailable")
            assert "postgres" not in str(answer)  # the exception's class only, never a URL
    finally:
        await _allow_connections(database, True)
    for url in (db_env.dsm_url, kms.url):
        status, answer = await _until_healthy(db_env.http, url)
        assert (status, answer["status"]) == (200, "ok")
