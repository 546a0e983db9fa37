"""DSM sessions over HTTP on SQLite and PostgreSQL: reauth stays inside the session's absolute lifetime,
terminate revokes the whole reauth chain, and revocations live in the database, so a restarted app and a
second app on the same database refuse them too. The real ``sdkms`` SDK renews and terminates once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import jwt
import pytest

from dsm_emulator.api.app import create_app
from dsm_emulator.api.context import CORE_KEY
from tests.integration import test_dsm_api
from tests.integration.test_cli import init
from tests.integration.test_dsm_api import bearer, login
from xkslab_shared.config import Settings, load_settings

sqlite_dir = test_dsm_api.sqlite_dir
server_url = test_dsm_api.server_url

# Upper bound on polls while waiting for something that must happen; a slow machine only polls fewer
# times within it, so it cannot fail a correct server.
MAX_POLLS = 400
POLL_S = 0.05


@pytest.fixture
def dsm_dir(empty_db_url: str, tmp_path: Path) -> Path:
    data_dir = tmp_path / "data"
    init(data_dir, empty_db_url)
    return data_dir


def dsm_settings(data_dir: Path, **dsm: Any) -> Settings:
    return load_settings(data_dir, overrides={f"dsm.{k}": v for k, v in dsm.items()}, environ={})


def claims_of(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


async def refusal(resp: Any) -> str:
    """The message of a 401 in the DSM error shape."""
    assert resp.status == 401, (resp.status, await resp.text())
    message = (await resp.json())["message"]
    assert isinstance(message, str) and message
    return message


async def reauth(client: Any, token: str) -> str:
    resp = await client.post("/sys/v1/session/reauth", headers=bearer(token))
    assert resp.status == 200, await resp.text()
    return str((await resp.json())["access_token"])


async def works(client: Any, token: str) -> bool:
    resp = await client.get("/sys/v1/groups", headers=bearer(token))
    if resp.status == 401:
        await refusal(resp)
        return False
    assert resp.status == 200, await resp.text()
    return True


async def test_reauth_renews_within_the_same_session(dsm_dir: Path, aiohttp_client: Any) -> None:
    client = await aiohttp_client(create_app(dsm_settings(dsm_dir)))
    first = await login(client)
    chain = [first, await reauth(client, first)]
    chain.append(await reauth(client, chain[-1]))
    claims = [claims_of(t) for t in chain]
    assert len({c["jti"] for c in claims}) == 3
    assert {(c["sid"], c["sxp"]) for c in claims} == {(claims[0]["sid"], claims[0]["sxp"])}
    assert claims[0]["sxp"] - claims[0]["iat"] == Settings().dsm.session_max_lifetime_s
    assert all(c["exp"] <= c["sxp"] for c in claims)
    assert [await works(client, t) for t in chain] == [True, True, True]
    other = claims_of(await login(client))
    assert other["sid"] != claims[0]["sid"]


async def test_reauth_cannot_outlive_the_session_lifetime(dsm_dir: Path, aiohttp_client: Any) -> None:
    client = await aiohttp_client(create_app(dsm_settings(dsm_dir, session_max_lifetime_s=1)))
    token = await login(client)
    session = claims_of(token)
    assert session["exp"] == session["sxp"] == session["iat"] + 1
    # Renew as fast as possible: without an absolute lifetime this would go on for ever.
    for _ in range(MAX_POLLS):
        resp = await client.post("/sys/v1/session/reauth", headers=bearer(token))
        if resp.status != 200:
            break
        token = (await resp.json())["access_token"]
        renewed = claims_of(token)
        assert (renewed["sid"], renewed["sxp"], renewed["exp"]) == (session["sid"],) + (session["sxp"],) * 2
        await asyncio.sleep(POLL_S)
    else:
        pytest.fail("reauth kept renewing a session past its absolute lifetime")
    await refusal(resp)
    assert not await works(client, token)
    assert await works(client, await login(client))

    # Even a validly signed token whose exp outlives its session's end is refused.
    key = client.server.app[CORE_KEY].keyring.derive("session-jwt")
    now = int(time.time())
    stretched = jwt.encode({**session, "iat": now, "exp": now + 3600}, key, algorithm="HS256")
    message = await refusal(await client.post("/sys/v1/session/reauth", headers=bearer(stretched)))
    assert "lifetime" in message
    assert not await works(client, stretched)


async def test_terminate_revokes_every_token_of_the_reauth_chain(dsm_dir: Path, aiohttp_client: Any) -> None:
    client = await aiohttp_client(create_app(dsm_settings(dsm_dir)))
    first = await login(client)
    middle = await reauth(client, first)
    last = await reauth(client, middle)
    bystander = await login(client)
    assert (await client.post("/sys/v1/session/terminate", headers=bearer(middle))).status == 204
    for token in (first, middle, last):
        resp = await client.get("/sys/v1/groups", headers=bearer(token))
        assert "terminated" in await refusal(resp)
        await refusal(await client.post("/sys/v1/session/reauth", headers=bearer(token)))
    assert await works(client, bystander)


async def test_terminated_session_stays_refused_after_a_restart(dsm_dir: Path, aiohttp_client: Any) -> None:
    settings = dsm_settings(dsm_dir)
    before = await aiohttp_client(create_app(settings))
    first = await login(before)
    minted = await reauth(before, first)
    assert (await before.post("/sys/v1/session/terminate", headers=bearer(first))).status == 204
    await before.close()

    after = await aiohttp_client(create_app(settings))
    assert not await works(after, first)
    assert not await works(after, minted)
    assert await works(after, await login(after))


async def test_terminate_on_one_instance_reaches_another(dsm_dir: Path, aiohttp_client: Any) -> None:
    one = await aiohttp_client(create_app(dsm_settings(dsm_dir)))
    two = await aiohttp_client(create_app(dsm_settings(dsm_dir, revocation_refresh_ms=100)))
    token = await login(one)
    minted = await reauth(two, token)
    assert await works(two, token) and await works(two, minted)
    assert (await one.post("/sys/v1/session/terminate", headers=bearer(token))).status == 204
    assert not await works(one, token)  # at once where it was terminated
    for _ in range(MAX_POLLS):
        if not await works(two, minted):
            break
        await asyncio.sleep(POLL_S)
    else:
        pytest.fail("the second instance never saw the terminate")
    assert not await works(two, token)


def sdk_renew_and_terminate(url: str) -> tuple[bool, int]:
    import sdkms.v1 as sdk

    cfg = sdk.Configuration()
    cfg.host = url
    cfg.username, cfg.password = test_dsm_api.EMAIL, test_dsm_api.PASSWORD
    client = sdk.ApiClient(configuration=cfg)
    first = sdk.AuthenticationApi(api_client=client).authorize().access_token
    cfg.api_key["Authorization"] = first
    cfg.api_key_prefix["Authorization"] = "Bearer"
    renewed = sdk.AuthenticationApi(api_client=client).re_auth().access_token
    cfg.api_key["Authorization"] = renewed
    renewed_works = bool(sdk.UsersApi(api_client=client).get_user_account())
    sdk.AuthenticationApi(api_client=client).terminate()
    cfg.api_key["Authorization"] = first
    try:
        sdk.UsersApi(api_client=client).get_user_account()
    except sdk.rest.ApiException as exc:
        return renewed_works, int(exc.status)
    return renewed_works, 200


async def test_real_sdkms_sdk_reauth_and_terminate(server_url: str) -> None:
    renewed_works, status_after = await asyncio.to_thread(sdk_renew_and_terminate, server_url)
    assert renewed_works and status_after == 401
