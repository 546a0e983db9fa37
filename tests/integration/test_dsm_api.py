"""The DSM REST API (sessions, admin and system endpoints) over HTTP: through aiohttp's test client on
SQLite (one smoke test on PostgreSQL), and through the real Fortanix ``sdkms`` SDK against a real
listening server."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web

from dsm_emulator.api.app import create_app
from dsm_emulator.api.context import CORE_KEY
from tests.integration.test_cli import init
from xkslab_shared.config import load_settings

PASSWORD = "correct horse battery"
EMAIL = "admin@xkslab.local"


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def sqlite_dir(tmp_path: Path) -> Path:
    data_dir = tmp_path / "data"
    init(data_dir, f"sqlite+aiosqlite:///{data_dir / 'xkslab.db'}")
    return data_dir


async def login(client: Any) -> str:
    resp = await client.post("/sys/v1/session/auth", headers=basic(EMAIL, PASSWORD))
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] > 0 and body["entity_id"]
    return str(body["access_token"])


@pytest.fixture
async def client(sqlite_dir: Path, aiohttp_client: Any) -> Any:
    return await aiohttp_client(create_app(load_settings(sqlite_dir)))


async def test_public_endpoints(client: Any) -> None:
    resp = await client.get("/sys/v1/health")
    assert resp.status == 204
    resp = await client.get("/sys/v1/version")
    assert resp.status == 200
    body = await resp.json()
    assert body["version"] == "xkslab-0.1.0" and body["server_mode"] == "Software"


async def test_user_and_app_flow(client: Any) -> None:
    token = await login(client)
    h = bearer(token)
    accounts = await (await client.get("/sys/v1/users/accounts", headers=h)).json()
    assert len(accounts) == 1
    (acct_id,) = accounts
    assert "ACCOUNTADMINISTRATOR" in accounts[acct_id]["roles"]
    resp = await client.post("/sys/v1/session/select_account", headers=h, json={"acct_id": acct_id})
    assert resp.status == 200 and await resp.json() == {}
    account = await (await client.get(f"/sys/v1/accounts/{acct_id}", headers=h)).json()
    assert account["acct_id"] == acct_id
    users = await (await client.get("/sys/v1/users", headers=h)).json()
    assert [u["user_email"] for u in users] == [EMAIL]
    assert await (await client.get("/sys/v1/plugins", headers=h)).json() == []

    # groups: create (junk fields and nulls ignored), list, get, patch, delete
    resp = await client.post(
        "/sys/v1/groups",
        headers=h,
        json={"name": "kek", "description": None, "add_quorum_policy": False, "n": None},
    )
    assert resp.status == 200, await resp.text()
    group = await resp.json()
    gid = group["group_id"]
    assert group["acct_id"] == acct_id
    listed = await (await client.get("/sys/v1/groups", headers=h)).json()
    assert gid in [g["group_id"] for g in listed]
    resp = await client.patch(f"/sys/v1/groups/{gid}", headers=h, json={"description": "root keks"})
    assert (await resp.json())["description"] == "root keks"
    spare = await (await client.post("/sys/v1/groups", headers=h, json={"name": "spare"})).json()
    resp = await client.delete(f"/sys/v1/groups/{spare['group_id']}", headers=h)
    assert resp.status == 204
    assert (await client.get(f"/sys/v1/groups/{spare['group_id']}", headers=h)).status == 404

    # apps: list form of add_groups (sdkms-cli), credential, API key, session-less Basic
    resp = await client.post(
        "/sys/v1/apps", headers=h, json={"name": "xks", "add_groups": [gid], "default_group": gid}
    )
    assert resp.status == 200, await resp.text()
    app = await resp.json()
    app_id = app["app_id"]
    assert app["default_group"] == gid and "ENCRYPT" in app["groups"][gid]
    cred = await (await client.get(f"/sys/v1/apps/{app_id}/credential", headers=h)).json()
    assert cred["app_id"] == app_id
    api_key = base64.b64encode(f"{app_id}:{cred['credential']['secret']}".encode()).decode()
    app_basic = {"Authorization": f"Basic {api_key}"}
    resp = await client.post("/sys/v1/session/auth", headers=app_basic)
    assert resp.status == 200
    app_token = (await resp.json())["access_token"]
    app_groups = await (await client.get("/sys/v1/groups", headers=bearer(app_token))).json()
    assert [g["group_id"] for g in app_groups] == [gid]
    for _ in range(2):  # the second one comes from the Basic cache
        resp = await client.get("/sys/v1/groups", headers=app_basic)
        assert resp.status == 200
    # an app is not an administrator
    resp = await client.post("/sys/v1/groups", headers=bearer(app_token), json={"name": "x"})
    assert resp.status == 403 and "message" in await resp.json()
    resp = await client.post("/sys/v1/session/reauth", headers=bearer(app_token))
    assert (await resp.json())["entity_id"] == app_id

    resp = await client.patch(f"/sys/v1/apps/{app_id}", headers=h, json={"description": "d", "enabled": None})
    assert (await resp.json())["description"] == "d"
    assert len(await (await client.get(f"/sys/v1/apps?group_id={gid}", headers=h)).json()) == 1
    resp = await client.post(f"/sys/v1/apps/{app_id}/reset_secret", headers=h, json={"secret_size": 32})
    assert resp.status == 200
    assert (await client.post("/sys/v1/session/auth", headers=app_basic)).status == 401

    # awsxks app
    resp = await client.post(
        "/sys/v1/apps",
        headers=h,
        json={"name": "xks-proxy", "add_groups": {gid: ["ENCRYPT", "DECRYPT"]}, "credential": {"awsxks": {}}},
    )
    xks = await resp.json()
    assert xks["auth_type"] == "AwsXks"
    cred = await (await client.get(f"/sys/v1/apps/{xks['app_id']}/credential", headers=h)).json()
    assert set(cred["credential"]["awsxks"]) == {"access_key_id", "secret_key"}
    assert (await client.delete(f"/sys/v1/apps/{xks['app_id']}", headers=h)).status == 204

    # refresh, terminate: the token stops working
    assert (await client.post("/sys/v1/session/refresh", headers=bearer(app_token))).status == 204
    assert (await client.post("/sys/v1/session/terminate", headers=bearer(app_token))).status == 204
    assert (await client.get("/sys/v1/groups", headers=bearer(app_token))).status == 401


async def test_negative_table(client: Any, sqlite_dir: Path) -> None:
    token = await login(client)
    h = bearer(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    forged = jwt.encode({**claims}, b"k" * 32, algorithm="HS256")
    key = client.server.app[CORE_KEY].keyring.derive("session-jwt")
    expired = jwt.encode({**claims, "exp": int(time.time()) - 10}, key, algorithm="HS256")
    settings = load_settings(sqlite_dir)
    big = b'{"name":"' + b"x" * (settings.dsm.max_body_bytes + 10) + b'"}'
    await client.post("/sys/v1/groups", headers=h, json={"name": "dup"})
    cases: list[tuple[str, str, dict[str, str], Any, int]] = [
        ("GET", "/sys/v1/groups", {}, None, 401),
        ("GET", "/sys/v1/groups", {"Authorization": "Bearer"}, None, 401),
        ("GET", "/sys/v1/groups", bearer(forged), None, 401),
        ("GET", "/sys/v1/groups", bearer(expired), None, 401),
        ("GET", "/sys/v1/groups", bearer("not.a.jwt"), None, 401),
        ("GET", "/sys/v1/groups", basic("not-a-uuid", "x"), None, 401),
        ("POST", "/sys/v1/session/auth", basic(EMAIL, "wrong password"), None, 401),
        ("POST", "/sys/v1/session/auth", {"Authorization": "Basic !!!"}, None, 401),
        ("POST", "/sys/v1/groups", h, b"{not json", 400),
        ("POST", "/sys/v1/groups", h, b"", 400),
        ("POST", "/sys/v1/groups", h, json.dumps({"name": 5}).encode(), 400),
        ("POST", "/sys/v1/groups", h, json.dumps(["name"]).encode(), 400),
        ("POST", "/sys/v1/apps", h, json.dumps({"name": "a", "add_groups": "g"}).encode(), 400),
        ("POST", "/sys/v1/apps", h, json.dumps({"name": "a", "add_groups": {"nope": []}}).encode(), 400),
        ("POST", "/sys/v1/groups", h, io.BytesIO(big), 413),
        ("GET", "/sys/v1/groups/00000000-0000-0000-0000-000000000000", h, None, 404),
        ("GET", "/sys/v1/groups/not-a-uuid", h, None, 404),
        ("GET", "/sys/v1/apps/00000000-0000-0000-0000-000000000000", h, None, 404),
        ("GET", "/sys/v1/nothing/here", h, None, 404),
        ("DELETE", "/sys/v1/version", h, None, 405),
        ("POST", "/sys/v1/groups", h, json.dumps({"name": "dup"}).encode(), 409),
    ]
    for method, path, headers, data, status in cases:
        resp = await client.request(
            method, path, headers={**headers, "Content-Type": "application/json"}, data=data
        )
        assert resp.status == status, (method, path, status, await resp.text())
        assert resp.content_type == "application/json", (method, path)
        assert isinstance((await resp.json())["message"], str), (method, path)
        assert (await client.get("/sys/v1/health")).status == 204


@pytest.mark.parametrize("db_backend", ["postgres"])
async def test_postgres_smoke(empty_db_url: str, tmp_path: Path, aiohttp_client: Any) -> None:
    data_dir = tmp_path / "pgdata"
    init(data_dir, empty_db_url)
    client = await aiohttp_client(create_app(load_settings(data_dir)))
    h = bearer(await login(client))
    group = await (await client.post("/sys/v1/groups", headers=h, json={"name": "pg"})).json()
    resp = await client.post("/sys/v1/groups", headers=h, json={"name": "pg"})
    assert resp.status == 409
    listed = await (await client.get("/sys/v1/groups", headers=h)).json()
    assert group["group_id"] in [g["group_id"] for g in listed]


@pytest.fixture
async def server_url(sqlite_dir: Path) -> AsyncIterator[str]:
    runner = web.AppRunner(create_app(load_settings(sqlite_dir)))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def sdk_flow(url: str) -> dict[str, Any]:
    import sdkms.v1 as sdk

    cfg = sdk.Configuration()
    cfg.host = url
    cfg.username, cfg.password = EMAIL, PASSWORD
    client = sdk.ApiClient(configuration=cfg)
    auth = sdk.AuthenticationApi(api_client=client).authorize()
    cfg.api_key["Authorization"] = auth.access_token
    cfg.api_key_prefix["Authorization"] = "Bearer"
    accounts = sdk.UsersApi(api_client=client).get_user_account()
    acct_id = next(iter(accounts))
    sdk.AuthenticationApi(api_client=client).select_account(sdk.SelectAccountRequest(acct_id=acct_id))
    version = sdk.AuthenticationApi(api_client=client).get_server_version()
    group = sdk.GroupsApi(api_client=client).create_group(sdk.GroupRequest(name="sdk-group"))
    apps = sdk.AppsApi(api_client=client)
    app = apps.create_app(
        sdk.AppRequest(
            name="sdk-app",
            default_group=group.group_id,
            add_groups={group.group_id: ["ENCRYPT", "DECRYPT", "WRAPKEY", "UNWRAPKEY"]},
        )
    )
    cred = apps.get_credential(app.app_id)
    api_key = base64.b64encode(f"{app.app_id}:{cred.credential.secret}".encode()).decode()

    app_cfg = sdk.Configuration()
    app_cfg.host = url
    app_cfg.app_api_key = api_key
    app_client = sdk.ApiClient(configuration=app_cfg)
    app_auth = sdk.AuthenticationApi(api_client=app_client).authorize()
    app_cfg.api_key["Authorization"] = app_auth.access_token
    app_cfg.api_key_prefix["Authorization"] = "Bearer"
    groups = sdk.GroupsApi(api_client=app_client).get_groups()
    sdk.AuthenticationApi(api_client=app_client).terminate()
    return {
        "acct_id": acct_id,
        "version": version.version,
        "group_id": group.group_id,
        "app_id": app.app_id,
        "app_entity": app_auth.entity_id,
        "app_groups": [g.group_id for g in groups],
    }


async def test_real_sdkms_sdk(server_url: str) -> None:
    result = await asyncio.to_thread(sdk_flow, server_url)
    assert result["version"] == "xkslab-0.1.0"
    assert result["app_entity"] == result["app_id"]
    assert result["app_groups"] == [result["group_id"]]
