"""Issue 11 #10: slow clients must not hold a server. Through the real runner (xkslab_shared/serve.py),
with small limits set as settings: a request whose body stalls gets 408 and its connection closed after
``http.body_timeout_ms`` while others are served meanwhile; past ``http.max_connections`` a new
connection is answered 503 and closed."""

from __future__ import annotations

import asyncio
import base64
import shutil
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from dsm_emulator.api.app import listener as dsm_listener
from kms_emulator.app import listener as kms_listener
from tests.api_harness import init_data_dir
from xks_frontend.app import listener as xks_listener
from xkslab_shared.config import load_settings
from xkslab_shared.serve import HttpLimits, start


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    return init_data_dir(tmp_path_factory.mktemp("limits") / "data")


async def serve_dsm(
    template: tuple[Path, dict[str, Any]], tmp_path: Path, stack: AsyncExitStack, **limits: Any
) -> tuple[str, int]:
    data_dir = tmp_path / "data"
    shutil.copytree(template[0], data_dir)
    settings = load_settings(data_dir, overrides={"dsm.port": 0, **limits}, environ={})
    url, *_ = await start(stack, dsm_listener(settings), lambda _: None)  # then the link's URL
    return url, int(url.rsplit(":", 1)[1])


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as opened:
        yield opened


async def read_all(reader: asyncio.StreamReader, within_s: float) -> bytes:
    return await asyncio.wait_for(reader.read(), within_s)  # until EOF


async def test_slow_bodies_are_cut_off_while_a_normal_client_is_served(
    template: tuple[Path, dict[str, Any]], tmp_path: Path, stack: AsyncExitStack
) -> None:
    url, port = await serve_dsm(
        template, tmp_path, stack, **{"http.body_timeout_ms": 800, "http.keepalive_timeout_s": 30}
    )
    creds = base64.b64encode(f"{template[1]['admin_email']}:pw".encode()).decode()
    async with aiohttp.ClientSession() as http:
        async with http.post(url + "/sys/v1/session/auth", headers={"Authorization": f"Basic {creds}"}) as r:
            token = (await r.json())["access_token"]
        head = (
            "POST /sys/v1/session/select_account HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {token}\r\nContent-Length: 100\r\n\r\n{{"
        ).encode()
        slow = []
        for _ in range(200):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(head)
            slow.append((reader, writer))
        await asyncio.sleep(0.2)
        # Meanwhile a normal client is served, with and without a body.
        async with http.get(url + "/sys/v1/version") as r:
            assert r.status == 200
        bearer = {"Authorization": f"Bearer {token}"}
        async with http.post(
            url + "/sys/v1/session/select_account", headers=bearer, json={"acct_id": "x"}
        ) as r:
            assert r.status in (400, 404), await r.text()
        answers = await asyncio.gather(*(read_all(reader, 15) for reader, _ in slow))
        for _, writer in slow:
            writer.close()
    # Every slow client got its 408 in the DSM's error shape, and then EOF (the read above ended).
    assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers), {a[:40] for a in answers}
    assert all(b'{"message":' in a for a in answers)


async def test_past_the_connection_cap_new_connections_get_503_and_the_cap_frees(
    template: tuple[Path, dict[str, Any]], tmp_path: Path, stack: AsyncExitStack
) -> None:
    url, port = await serve_dsm(
        template, tmp_path, stack, **{"http.max_connections": 5, "http.keepalive_timeout_s": 30}
    )
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
    await asyncio.sleep(0.2)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    refused = await read_all(reader, 5)
    writer.close()
    assert refused.startswith(b"HTTP/1.1 503 "), refused
    for _, held_writer in held:
        held_writer.close()
    async with aiohttp.ClientSession() as http:
        for _ in range(50):  # the server notices the closed connections within a moment
            try:
                async with http.get(url + "/sys/v1/health") as r:
                    if r.status == 204:
                        break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the server never accepted a connection again")


async def test_idle_connections_are_closed_after_the_keepalive_timeout(
    template: tuple[Path, dict[str, Any]], tmp_path: Path, stack: AsyncExitStack
) -> None:
    _, port = await serve_dsm(template, tmp_path, stack, **{"http.keepalive_timeout_s": 0.5})
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /sys/v1/health HTTP/1.1\r\nHo")  # stops in the middle of its headers
    assert await read_all(reader, 10) == b""
    writer.close()


def test_every_service_listener_carries_the_http_limits(tmp_path: Path) -> None:
    settings = load_settings(
        tmp_path, overrides={"http.max_connections": 7, "http.body_timeout_ms": 1500}, environ={}
    )
    expected = HttpLimits(7, 1.5, 15.0)
    for make in (dsm_listener, xks_listener, kms_listener):
        assert make(settings, web.Application()).limits == expected
