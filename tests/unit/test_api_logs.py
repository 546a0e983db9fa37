"""The DSM REST audit-log route (``dsm_emulator.api.logs``) on a real DsmCore.

The app is built here: the logs routes, a middleware that picks the caller (the account's system
principal, or an app chosen by the ``X-Test-App`` header) in place of the DSM's session check, and the
service's own error middleware (tests/api_harness.py). The data directory is initialised once with the real CLI and copied per test.
"""

from __future__ import annotations

import asyncio
import calendar
import json
import time
import uuid
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from sqlalchemy import func, select

from dsm_emulator.api import logs
from dsm_emulator.audit import AuditEvent
from dsm_emulator.authz import Principal
from dsm_emulator.keys import KeySpec
from dsm_emulator.models import AuditRow
from tests import api_harness

Client = TestClient[web.Request, web.Application]
# Every _source key sdkms-cli's audit-log indexes with [], plus the spec-required ones.
SOURCE_KEYS = {
    "acct_id",
    "actor_type",
    "actor_id",
    "action_type",
    "severity",
    "message",
    "object_id",
    "group_ids",
    "time",
    "client_ip",
    "response_time",
    "client_provided_context",
}


template = api_harness.template
env = api_harness.env


@pytest.fixture
async def client(env: SimpleNamespace, aiohttp_client: Any) -> Client:
    return await api_harness.route_client(env, aiohttp_client, logs.routes)


async def get(client: Client, query: Any = None, status: int = 200, **kw: Any) -> Any:
    resp = await client.get("/sys/v1/logs", params=query, **kw)
    text = await resp.text()
    assert resp.status == status, text
    return json.loads(text)


async def make_keys(env: SimpleNamespace, n: int, p: Principal | None = None) -> list[str]:
    kids = []
    for i in range(n):
        spec = KeySpec(name=f"k-{i}-{uuid.uuid4()}", obj_type="AES", key_size=256)
        kids.append((await env.core.keys.create(p or env.system, spec)).kid)
    return kids


async def all_rows(client: Client, headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    return (await get(client, {"size": "1000"}, headers=headers))["hits"]  # type: ignore[no-any-return]


# -------------------------------------------------------------------------------------- tests


async def test_shape_and_newest_first(client: Client, env: SimpleNamespace) -> None:
    kids = await make_keys(env, 3)
    await env.core.audit.record(
        AuditEvent(
            operation="xks.encrypt",
            action_type="CRYPTOOPERATION",
            message="xks encrypt",
            actor_type="System",
            acct_id=env.acct_id,
            object_id=kids[0],
            client_ip="10.0.0.7",
            kms_request_id="req-1",
            kms_operation="Encrypt",
            response_time_us=1_500_250,
        )
    )
    hits = await all_rows(client)
    assert len(hits) >= 4
    for h in hits:
        assert set(h) == {"_id", "_source"} and uuid.UUID(h["_id"])
        src = h["_source"]
        assert set(src) == SOURCE_KEYS
        assert src["acct_id"] == env.acct_id and isinstance(src["group_ids"], list)
        assert src["actor_id"] is not None
        time.strptime(src["time"], "%Y-%m-%dT%H:%M:%SZ")
        rt = src["response_time"]
        assert rt is None or set(rt) == {"secs", "nanos"}
    newest = hits[0]["_source"]
    assert newest["message"] == "xks encrypt" and newest["object_id"] == kids[0]
    assert newest["client_ip"] == "10.0.0.7"
    assert newest["response_time"] == {"secs": 1, "nanos": 500_250_000}
    assert newest["actor_type"] == "System" and newest["actor_id"] == env.acct_id
    assert json.loads(newest["client_provided_context"]) == {
        "kmsRequestId": "req-1",
        "kmsOperation": "Encrypt",
        "awsPrincipalArn": None,
        "kmsKeyArn": None,
    }
    created = [h["_source"]["object_id"] for h in hits if h["_source"]["object_id"] in kids[1:]]
    assert created[:2] == [kids[2], kids[1]]  # newest first
    times = [h["_source"]["time"] for h in hits]
    assert times == sorted(times, reverse=True)
    assert all(h["_source"]["client_provided_context"] is None for h in hits[1:])


async def test_previous_id_paging_visits_every_row_once_and_ends(
    client: Client, env: SimpleNamespace
) -> None:
    await make_keys(env, 12)
    everything = [h["_id"] for h in await all_rows(client)]
    assert len(everything) >= 12
    seen: list[str] = []
    query: dict[str, str] = {"size": "5"}
    for _ in range(100):
        hits = (await get(client, query))["hits"]
        if not hits:
            break
        assert len(hits) <= 5
        seen.extend(h["_id"] for h in hits)
        query["previous_id"] = hits[-1]["_id"]
    else:
        pytest.fail("paging did not end")
    assert seen == everything and len(set(seen)) == len(seen)
    # from= offsets agree with the same ordering
    page = (await get(client, {"size": "3", "from": "2"}))["hits"]
    assert [h["_id"] for h in page] == everything[2:5]
    # an unknown previous_id gives an empty page; a malformed one is a 400
    assert (await get(client, {"previous_id": str(uuid.uuid4())}))["hits"] == []
    await get(client, {"previous_id": "nope"}, status=400)


async def test_size_limits(client: Client, env: SimpleNamespace) -> None:
    await make_keys(env, 4)
    assert len((await get(client, {"size": "2"}))["hits"]) == 2
    assert len((await get(client, {"size": "1000"}))["hits"]) >= 4
    assert len((await get(client))["hits"]) >= 4  # default 100
    for bad in ("0", "-1", "1001", "ten", "1.5"):
        body = await get(client, {"size": bad}, status=400)
        assert "size" in body["message"]
    await get(client, {"from": "-1"}, status=400)
    await get(client, {"range_from": "yesterday"}, status=400)
    await get(client, {"actor_id": "not-a-uuid"}, status=400)


async def test_filters(client: Client, env: SimpleNamespace) -> None:
    kids = await make_keys(env, 2)
    await env.core.audit.record(
        AuditEvent(
            operation="test.warn",
            action_type="AUTH",
            message="a warning",
            actor_type="System",
            acct_id=env.acct_id,
            severity="WARNING",
        )
    )
    hits = await all_rows(client)
    total = len(hits)

    by_object = (await get(client, {"object_id": kids[0]}))["hits"]
    assert by_object and all(h["_source"]["object_id"] == kids[0] for h in by_object)

    auth = (await get(client, {"action_type": "AUTH"}))["hits"]
    assert auth and all(h["_source"]["action_type"] == "AUTH" for h in auth)
    admin = (await get(client, {"action_type": "ADMINISTRATIVE"}))["hits"]
    assert admin and all(h["_source"]["action_type"] == "ADMINISTRATIVE" for h in admin)
    for form in ("AUTH,ADMINISTRATIVE", "[AUTH ADMINISTRATIVE]"):
        both = (await get(client, {"action_type": form}))["hits"]
        assert len(both) == len(auth) + len(admin)
    repeated = (await get(client, [("action_type", "AUTH"), ("action_type", "ADMINISTRATIVE")]))["hits"]
    assert len(repeated) == len(auth) + len(admin)

    warn = (await get(client, {"severity": "WARNING"}))["hits"]
    assert [h["_source"]["message"] for h in warn] == ["a warning"]
    system = (await get(client, {"actor_type": "System"}))["hits"]
    assert len(system) == total  # the CLI operator did everything here
    assert (await get(client, {"actor_type": "App"}))["hits"] == []
    assert (await get(client, {"actor_id": str(uuid.uuid4())}))["hits"] == []
    assert (await get(client, {"action_type": "CUSTOM"}))["hits"] == []


async def test_time_range(client: Client, env: SimpleNamespace) -> None:
    await make_keys(env, 2)
    hits = await all_rows(client)
    now = int(time.time())
    assert len(
        (await get(client, {"range_from": str(now - 3600), "range_to": str(now + 3600)}))["hits"]
    ) == len(hits)
    assert (await get(client, {"range_from": str(now + 3600)}))["hits"] == []
    assert (await get(client, {"range_to": str(now - 3600 * 24 * 365)}))["hits"] == []
    # inclusive to the second shown in "time"
    newest = hits[0]["_source"]["time"]
    epoch = calendar.timegm(time.strptime(newest, "%Y-%m-%dT%H:%M:%SZ"))
    got = (await get(client, {"range_from": str(epoch), "range_to": str(epoch)}))["hits"]
    assert got and got[0]["_id"] == hits[0]["_id"]
    assert all(h["_source"]["time"] == newest for h in got)


async def test_app_sees_only_its_own_rows(client: Client, env: SimpleNamespace) -> None:
    app, _secret = await env.core.admin.create_app(env.system, "reader", groups={env.group_id: ["MANAGE"]})
    reader = await env.core.admin.principal_for_app(app)
    env.apps["reader"] = reader
    await make_keys(env, 2)
    mine = await make_keys(env, 1, reader)
    hits = await all_rows(client, {"X-Test-App": "reader"})
    assert hits and all(h["_source"]["actor_id"] == reader.id for h in hits)
    assert all(h["_source"]["actor_type"] == "App" for h in hits)
    assert mine[0] in {h["_source"]["object_id"] for h in hits}
    assert len(hits) < len(await all_rows(client))
    # a previous_id of a row the app may not see is treated as unknown
    other = (await get(client, {"actor_type": "System", "size": "1"}))["hits"][0]["_id"]
    resp = await get(client, {"previous_id": other}, headers={"X-Test-App": "reader"})
    assert resp["hits"] == []


async def test_other_account_rows_are_invisible(client: Client, env: SimpleNamespace) -> None:
    other_acct = str(uuid.uuid4())
    await env.core.audit.record(
        AuditEvent(
            operation="test.other",
            action_type="OTHER",
            message="someone else's",
            actor_type="System",
            acct_id=other_acct,
        )
    )
    assert all(h["_source"]["acct_id"] == env.acct_id for h in await all_rows(client))
    assert "someone else's" not in {h["_source"]["message"] for h in await all_rows(client)}


async def test_paging_through_rows_with_the_same_time(client: Client, env: SimpleNamespace) -> None:
    # Concurrent records are committed in one batch and share one timestamp: ties break on (chain, seq).
    events = [
        AuditEvent(
            operation="test.batch",
            action_type="OTHER",
            message=f"m{i}",
            actor_type="System",
            acct_id=env.acct_id,
        )
        for i in range(7)
    ]
    await asyncio.gather(*(env.core.audit.record(e) for e in events))
    everything = [h["_id"] for h in await all_rows(client)]
    batch = [h for h in await all_rows(client) if h["_source"]["message"].startswith("m")]
    assert len({h["_source"]["time"] for h in batch}) == 1
    async with env.core.sessions() as session:
        tied = (
            (
                await session.execute(
                    select(func.count()).where(AuditRow.operation == "test.batch").group_by(AuditRow.time)
                )
            )
            .scalars()
            .all()
        )
    assert max(tied) > 1  # the tie-breaking path is really exercised
    seen: list[str] = []
    query = {"size": "1"}
    while hits := (await get(client, query))["hits"]:
        seen.append(hits[0]["_id"])
        query["previous_id"] = hits[0]["_id"]
        assert len(seen) <= len(everything)
    assert seen == everything
