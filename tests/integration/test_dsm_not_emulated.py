"""What the lab does not emulate answers 501 in the Fortanix shape, naming the feature: every entry of
dsm_emulator.api.not_emulated.NOT_EMULATED (so a new entry is tested by default), behind authentication
where Fortanix authenticates; an app id without a secret (certificate login) likewise; a path that is
neither served nor listed stays a 404."""

from __future__ import annotations

import base64
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest

from dsm_emulator.api import openapi
from dsm_emulator.api.app import create_app
from dsm_emulator.api.not_emulated import CERTIFICATE_LOGIN, NOT_EMULATED, NotEmulated
from tests.integration.test_cli import init
from tests.integration.test_dsm_api import basic, bearer, login
from xkslab_shared.config import load_settings


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ``xkslab init`` for the module (none of these tests depends on the database backend: they
    are answered before any object is read); each test gets its own copy."""
    data_dir = tmp_path_factory.mktemp("dsm") / "data"
    init(data_dir, f"sqlite+aiosqlite:///{data_dir / 'xkslab.db'}")
    return data_dir


@pytest.fixture
async def client(template: Path, tmp_path: Path, aiohttp_client: Any) -> Any:
    data_dir = tmp_path / "data"
    shutil.copytree(template, data_dir)
    return await aiohttp_client(create_app(load_settings(data_dir)))


def concrete(path: str) -> str:
    """The route's path with each placeholder given an id, as a client would send it."""
    parts = [str(uuid.uuid4()) if part.startswith("{") else part for part in path.split("/")]
    return "/".join(parts)


def entry_id(entry: NotEmulated) -> str:
    return f"{entry.method} {entry.path}"


@pytest.mark.parametrize("entry", NOT_EMULATED, ids=entry_id)
async def test_each_route_answers_501_naming_what_is_not_emulated(client: Any, entry: NotEmulated) -> None:
    headers = bearer(await login(client))
    resp = await client.request(entry.method, concrete(entry.path), headers=headers, json={})
    assert resp.status == 501, await resp.text()
    body = await resp.json()
    assert body == {"message": entry.message}
    assert body["message"].startswith(f"xkslab does not emulate {entry.feature}")


@pytest.mark.parametrize("entry", NOT_EMULATED, ids=entry_id)
async def test_an_anonymous_caller_learns_nothing_where_fortanix_authenticates(
    client: Any, entry: NotEmulated
) -> None:
    resp = await client.request(entry.method, concrete(entry.path), json={})
    body = await resp.json()
    if entry.public:
        assert resp.status == 501 and body == {"message": entry.message}
    else:
        assert resp.status == 401, body
        assert "emulate" not in body["message"]


@pytest.mark.parametrize("entry", NOT_EMULATED, ids=entry_id)
def test_each_route_is_documented_with_its_501(entry: NotEmulated) -> None:
    operation = openapi.build()["paths"][entry.path][entry.method.lower()]
    assert operation["operationId"] == entry.operation
    assert operation["responses"]["501"]["description"] == entry.message
    assert (operation["security"] == []) is entry.public


async def test_an_unknown_route_is_still_a_404(client: Any) -> None:
    headers = bearer(await login(client))
    for method, path in (
        ("POST", "/crypto/v1/keys/persits"),  # a typo of a listed route
        ("GET", "/sys/v1/no_such_thing"),
        ("POST", "/crypto/v1/agreee"),
    ):
        resp = await client.request(method, path, headers=headers, json={})
        assert resp.status == 404, (method, path, await resp.text())
        assert "emulate" not in (await resp.json())["message"]


async def test_an_app_id_without_a_secret_is_a_certificate_login_the_lab_lacks(client: Any) -> None:
    for app_id in (str(uuid.uuid4()), await created_app_id(client)):
        header = {"Authorization": "Basic " + base64.b64encode(f"{app_id}:".encode()).decode()}
        resp = await client.post("/sys/v1/session/auth", headers=header)
        assert resp.status == 501
        assert (await resp.json())["message"] == f"xkslab does not emulate {CERTIFICATE_LOGIN}"
    # A wrong secret is still a failed login, and a user with no password is no certificate login.
    resp = await client.post("/sys/v1/session/auth", headers=basic(str(uuid.uuid4()), "wrong"))
    assert resp.status == 401
    resp = await client.post("/sys/v1/session/auth", headers=basic("someone@example.com", ""))
    assert resp.status == 401


async def created_app_id(client: Any) -> str:
    headers = bearer(await login(client))
    groups = await (await client.get("/sys/v1/groups", headers=headers)).json()
    group_id = groups[0]["group_id"]
    resp = await client.post(
        "/sys/v1/apps",
        headers=headers,
        json={"name": "cert-app", "default_group": group_id, "add_groups": [group_id]},
    )
    assert resp.status in (200, 201), await resp.text()
    return str((await resp.json())["app_id"])
