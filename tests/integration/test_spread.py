"""A proxy in front of two DSM nodes (issue 23): its calls are spread over both, a node killed mid-way
costs no call, and a hung node (a real server that accepts and never answers) costs at most the one
deadline in total and then no more calls.

Every node is a real ``xkslab dsm serve`` / ``xks serve`` process on a scratch PostgreSQL database,
driven with XKS calls signed as KMS signs them; which node did a call is read from the database: each DSM
node writes its own audit chain (``audit.node_id``)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from sqlalchemy.engine import make_url

from tests.fleet import Node, nodes, start_node
from tests.integration.test_fleet_nodes import fleet_dir, pg_database  # noqa: F401 (a fixture)
from tests.xks_harness import b64, metadata, sign

TIMEOUT_MS = 3000  # the proxy's one deadline: generous, so a loaded machine does not decide an outcome


class Proxy:
    def __init__(self, node: Node, facts: dict[str, Any]) -> None:
        self.base = node.url + facts["xks_uri_path"]
        self.facts = facts

    async def call(self, session: aiohttp.ClientSession, operation: str, request_id: str) -> int:
        kid = self.facts["root_kek_id"]
        url = f"{self.base}/keys/{kid}/{operation}"
        kms_operation = "Encrypt" if operation == "encrypt" else "DescribeKey"
        payload: dict[str, Any] = {"requestMetadata": metadata(kms_operation, kmsRequestId=request_id)}
        if operation == "encrypt":
            payload |= {"plaintext": b64(b"spread" * 5), "encryptionAlgorithm": "AES_GCM"}
        body = json.dumps(payload).encode()
        headers = sign(url, body, self.facts["xks_access_key_id"], self.facts["xks_secret_access_key"])
        async with session.post(url, data=body, headers=headers) as answer:
            await answer.read()
            return answer.status


async def done_by(database_url: str, request_ids: list[str]) -> dict[str, int]:
    """How many of these KMS requests each DSM node's audit chain recorded."""
    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT chain, count(*) AS n FROM audit_log WHERE kms_request_id = ANY($1::text[]) GROUP BY chain",
            request_ids,
        )
    finally:
        await connection.close()
    return {row["chain"]: int(row["n"]) for row in rows}


async def until_recorded(database_url: str, request_ids: list[str]) -> dict[str, int]:
    """The audit rows are group-committed: wait until every acknowledged call's row is in."""
    deadline = time.monotonic() + 60  # turns a hang into a failure only
    while True:
        counts = await done_by(database_url, request_ids)
        if sum(counts.values()) >= len(request_ids) or time.monotonic() > deadline:
            return counts
        await asyncio.sleep(0.2)


HELD: list[asyncio.StreamWriter] = []  # the hung node's connections


@pytest.fixture
async def hung() -> AsyncIterator[str]:
    """A node that accepts connections and reads requests but never answers."""
    held = HELD
    held.clear()

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        while await reader.read(65536):
            pass

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        for writer in held:
            writer.close()
        held.clear()
        server.close()


async def start_dsm_nodes(data_dir: Path, fleet: list[Node], count: int) -> None:
    for index in range(1, count + 1):
        name = f"dsm-{index}"
        fleet.append(await asyncio.to_thread(start_node, data_dir, "dsm", name, {"audit.node_id": name}))


async def start_proxy(data_dir: Path, fleet: list[Node], dsm_urls: list[str]) -> Node:
    settings = {
        "xks.node_id": "xks-1",
        "xks.dsm_urls": ",".join(dsm_urls),
        "xks.dsm_timeout_ms": str(TIMEOUT_MS),
    }
    fleet.append(await asyncio.to_thread(start_node, data_dir, "xks", "xks-1", settings))
    return fleet[-1]


async def test_calls_are_spread_over_both_nodes_and_a_killed_node_costs_no_call(
    tmp_path: Path,
    pg_database: str,  # noqa: F811
) -> None:
    data_dir, facts = await fleet_dir(tmp_path, pg_database)
    with nodes() as fleet:
        await start_dsm_nodes(data_dir, fleet, 2)
        dsm1, dsm2 = fleet
        proxy = Proxy(await start_proxy(data_dir, fleet, [dsm1.url, dsm2.url]), facts)
        async with aiohttp.ClientSession() as session:
            before = [str(uuid.uuid4()) for _ in range(40)]
            for index, request_id in enumerate(before[:20]):  # one after another, then side by side
                assert await proxy.call(session, "encrypt" if index % 2 else "metadata", request_id) == 200
            statuses = await asyncio.gather(*(proxy.call(session, "encrypt", r) for r in before[20:]))
            assert set(statuses) == {200}
            spread = await until_recorded(pg_database, before)
            # Both nodes took a share (round robin would give each half; the machine's noise moves it).
            assert spread.get("dsm-1", 0) >= 8 and spread.get("dsm-2", 0) >= 8, spread

            dsm1.process.kill()  # SIGKILL: its connections are reset, its port refuses
            dsm1.process.wait()
            after = [str(uuid.uuid4()) for _ in range(30)]
            statuses = [await proxy.call(session, "encrypt", r) for r in after[:15]]
            statuses += await asyncio.gather(*(proxy.call(session, "encrypt", r) for r in after[15:]))
            assert statuses == [200] * 30  # every Encrypt went (or was sent again) to the live node
            assert await until_recorded(pg_database, after) == {"dsm-2": 30}


async def test_a_hung_node_costs_at_most_the_one_deadline_and_then_no_call(
    tmp_path: Path,
    pg_database: str,  # noqa: F811
    hung: str,
) -> None:
    data_dir, facts = await fleet_dir(tmp_path, pg_database)
    with nodes() as fleet:
        await start_dsm_nodes(data_dir, fleet, 1)
        proxy = Proxy(await start_proxy(data_dir, fleet, [hung, fleet[0].url]), facts)
        async with aiohttp.ClientSession() as session:
            waits: list[float] = []
            statuses: list[int] = []
            request_ids = [str(uuid.uuid4()) for _ in range(12)]
            for index, request_id in enumerate(request_ids):
                started = time.monotonic()
                statuses.append(await proxy.call(session, "encrypt" if index < 8 else "metadata", request_id))
                waits.append(time.monotonic() - started)
            assert HELD, "the hung node was never asked"
    # An Encrypt that reached the hung node is not sent again (the node may be doing it): it times out
    # once, after the one deadline (not one per node); every later call goes to the live node, and the
    # hung one is only probed. Reads (GetKeyMetadata) never fail for the hung node.
    assert statuses[:8].count(503) <= 1 and set(statuses[:8]) <= {200, 503}, statuses
    assert set(statuses[8:]) == {200}, statuses
    assert max(waits) < 2 * TIMEOUT_MS / 1000, waits
