"""Issue 19 #11: a spray of wrong logins from many addresses gets a global budget of password hashes
(``dsm.login_max_failing_hashes``), and a login known to be good is hashed before every doubtful one
waiting. Clients come from distinct loopback addresses (127.0.0.10, ...), each bound as the source
address of its socket; what is asserted is counts and order, not time."""

from __future__ import annotations

import asyncio
import base64
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from dsm_emulator.api.app import create_app
from dsm_emulator.api.context import CORE_KEY
from dsm_emulator.core import DsmCore
from tests.api_harness import init_data_dir
from xkslab_shared.config import load_settings

BUDGET = 6  # hashes per window for doubtful logins
SOURCES = [f"127.0.0.{n}" for n in range(10, 20)]
PER_SOURCE = 8  # under the per-address bucket (10): only the global budget refuses them


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    return init_data_dir(tmp_path_factory.mktemp("budget") / "data")


@dataclass
class Dsm:
    url: str
    core: DsmCore
    admin: str


@pytest.fixture
async def dsm(template: tuple[Path, dict[str, Any]], tmp_path: Path) -> AsyncIterator[Dsm]:
    data_dir = tmp_path / "data"
    shutil.copytree(template[0], data_dir)
    settings = load_settings(data_dir, overrides={"dsm.login_max_failing_hashes": BUDGET}, environ={})
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield Dsm(f"http://127.0.0.1:{port}", app[CORE_KEY], template[1]["admin_email"])
    finally:
        await runner.cleanup()


async def login(url: str, user: str, password: str, source: str) -> int:
    connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    async with aiohttp.ClientSession(connector=connector) as http:
        async with http.post(f"{url}/sys/v1/session/auth", headers={"Authorization": f"Basic {token}"}) as r:
            await r.read()
            return r.status


async def test_a_spray_from_many_addresses_gets_a_bounded_budget_and_good_logins_go_first(dsm: Dsm) -> None:
    assert await login(dsm.url, dsm.admin, "pw", "127.0.0.1") == 200  # the administrator, earlier
    limiter = dsm.core.admin.login_limiter
    # At once: twice one address's burst, so two addresses' worth of a spray is hashed, no more.
    assert (limiter.max_failing_hashes, limiter.failing_hash_burst) == (BUDGET, 2 * limiter.source_burst)
    slot = dsm.core.admin._kdf_slot
    spray = [
        asyncio.create_task(login(dsm.url, f"nobody-{n}-{i}@example.com", "guess", source))
        for n, source in enumerate(SOURCES)
        for i in range(PER_SOURCE)
    ]
    for _ in range(600):  # until several doubtful hashes wait for the one running
        if len(slot._others) >= 4 or all(task.done() for task in spray):
            break
        await asyncio.sleep(0.05)
    waiting_before = len(slot._others)
    assert waiting_before >= 4, "the spray never queued: nothing to jump ahead of"
    # The administrator (known good from this address) is hashed before the doubtful ones waiting.
    assert await login(dsm.url, dsm.admin, "pw", "127.0.0.1") == 200
    assert len(slot._others) >= waiting_before - 2, (waiting_before, len(slot._others))
    statuses = await asyncio.gather(*spray)
    hashed, refused = statuses.count(401), statuses.count(429)
    assert hashed + refused == len(spray), statuses
    # A burst of the budget, and what it refilled meanwhile (a handful per minute at most here).
    assert limiter.failing_hash_burst <= hashed <= limiter.failing_hash_burst + BUDGET, statuses
    assert refused >= len(spray) - limiter.failing_hash_burst - BUDGET
    # A known identity that has not failed anywhere is not doubtful, from an address never seen before.
    assert await login(dsm.url, dsm.admin, "pw", "127.0.0.30") == 200
    # The administrator's own email failing from elsewhere makes it doubtful from a new address...
    assert await login(dsm.url, dsm.admin, "wrong", "127.0.0.31") in (401, 429)
    assert not limiter.known_good(dsm.admin, "127.0.0.32", known=True)
    # ... but not from the address it succeeded from.
    assert limiter.known_good(dsm.admin, "127.0.0.1", known=True)
