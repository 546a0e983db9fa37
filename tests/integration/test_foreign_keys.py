"""Issue 11, item 11: a key outside the caller's groups answers exactly as a key that does not exist (404,
the same body), so its name or kid cannot be probed; the audit log still tells an administrator what
happened, and the app reading its own audit rows learns nothing more. A caller inside the key's group
who lacks a permission still gets 403 (that tells it nothing it did not know). Over HTTP (aiohttp's test
client) on a data directory made by ``xkslab init``, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path
from typing import Any

import pytest

from dsm_emulator.api.app import create_app
from tests.integration.test_cli import init
from xkslab_shared.config import load_settings

PASSWORD = "correct horse battery"
EMAIL = "admin@xkslab.local"
PLAIN = base64.b64encode(b"sixteen byte msg").decode()


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
async def client(tmp_path: Path, empty_db_url: str, aiohttp_client: Any) -> Any:
    data_dir = tmp_path / "data"
    init(data_dir, empty_db_url)
    return await aiohttp_client(create_app(load_settings(data_dir)))


async def ok(resp: Any, status: int = 200) -> Any:
    assert resp.status == status, await resp.text()
    return await resp.json() if resp.status != 204 else None


async def setup(client: Any) -> dict[str, Any]:
    token = (await ok(await client.post("/sys/v1/session/auth", headers=basic(EMAIL, PASSWORD))))[
        "access_token"
    ]
    admin = {"Authorization": f"Bearer {token}"}
    mine = await ok(await client.post("/sys/v1/groups", headers=admin, json={"name": "mine"}))
    theirs = await ok(await client.post("/sys/v1/groups", headers=admin, json={"name": "theirs"}))
    app = await ok(
        await client.post(
            "/sys/v1/apps",
            headers=admin,
            json={
                "name": "svc",
                "add_groups": {mine["group_id"]: ["ENCRYPT"]},
                "default_group": mine["group_id"],
            },
        )
    )
    cred = await ok(await client.get(f"/sys/v1/apps/{app['app_id']}/credential", headers=admin))
    api_key = base64.b64encode(f"{app['app_id']}:{cred['credential']['secret']}".encode()).decode()
    keys = {}
    for name, group in (("mine-key", mine), ("their-key", theirs)):
        body = {"name": name, "obj_type": "AES", "key_size": 256, "group_id": group["group_id"]}
        keys[name] = await ok(await client.post("/crypto/v1/keys", headers=admin, json=body), 201)
    return {
        "admin": admin,
        "app": {"Authorization": f"Basic {api_key}"},
        "app_id": app["app_id"],
        "keys": keys,
    }


def requests(kid: str, name: str) -> list[tuple[str, str, dict[str, Any] | None]]:
    """Every way of naming a stored key: by kid in the path, by kid or name in the body."""
    enc = {"alg": "AES", "mode": "CBC", "plain": PLAIN}
    return [
        ("GET", f"/crypto/v1/keys/{kid}", None),
        ("PATCH", f"/crypto/v1/keys/{kid}", {"enabled": False}),
        ("DELETE", f"/crypto/v1/keys/{kid}", None),
        ("POST", f"/crypto/v1/keys/{kid}/encrypt", enc),
        ("POST", f"/crypto/v1/keys/{kid}/destroy", None),
        ("GET", f"/crypto/v1/keys/{kid}/export", None),
        ("POST", "/crypto/v1/keys/info", {"kid": kid}),
        ("POST", "/crypto/v1/keys/info", {"name": name}),
        ("POST", "/crypto/v1/keys/export", {"name": name}),
        ("POST", "/crypto/v1/keys/rekey", {"name": name}),
        ("POST", "/crypto/v1/encrypt", {**enc, "key": {"name": name}}),
        ("POST", "/crypto/v1/encrypt", {**enc, "key": {"kid": kid}}),
    ]


async def answer(client: Any, headers: dict[str, str], method: str, path: str, body: Any) -> tuple[int, Any]:
    resp = await client.request(method, path, headers=headers, json=body)
    return resp.status, await resp.json()


async def test_a_foreign_key_answers_as_a_missing_one(client: Any) -> None:
    env = await setup(client)
    theirs = env["keys"]["their-key"]
    missing_kid, missing_name = str(uuid.uuid4()), "no-such-key"
    for (method, path, body), (_, missing_path, missing_body) in zip(
        requests(theirs["kid"], "their-key"), requests(missing_kid, missing_name), strict=True
    ):
        foreign = await answer(client, env["app"], method, path, body)
        absent = await answer(client, env["app"], method, missing_path, missing_body)
        assert foreign == absent == (404, {"message": "sobject does not exist"}), (method, path, body)
    # Nothing was changed by all that.
    stored = await ok(await client.get(f"/crypto/v1/keys/{theirs['kid']}", headers=env["admin"]))
    assert stored["enabled"] is True and stored["name"] == "their-key"

    # Inside the key's group, a missing permission is still 403: the app knows this key anyway.
    mine = env["keys"]["mine-key"]
    enc = await ok(
        await client.post(
            f"/crypto/v1/keys/{mine['kid']}/encrypt",
            headers=env["app"],
            json={"alg": "AES", "mode": "CBC", "plain": PLAIN},
        )
    )
    status, body = await answer(
        client,
        env["app"],
        "POST",
        f"/crypto/v1/keys/{mine['kid']}/decrypt",
        {"alg": "AES", "mode": "CBC", "cipher": enc["cipher"], "iv": enc["iv"]},
    )
    assert status == 403 and "DECRYPT" in body["message"]

    # The administrator's audit log says which refusals were about the foreign key, named by kid even
    # when the app named it by name; the app's own view of those rows reads like a missing key's.
    hits = (await ok(await client.get("/sys/v1/logs?size=1000", headers=env["admin"])))["hits"]
    refusals = [h["_source"] for h in hits if h["_source"]["actor_id"] == env["app_id"]]
    about_theirs = [r for r in refusals if theirs["kid"] in r["message"]]
    # Reads (GET, info) are not audited, for a missing key either; everything else is, the refusal
    # naming the foreign key's kid even when the request named it by name.
    hidden = [r for r in about_theirs if "hidden from the caller" in r["message"]]
    assert len(hidden) == 8 and all(
        "refused: sobject does not exist" in r["message"] and r["severity"] == "WARNING" for r in hidden
    )
    assert any("Rekeyed their-key" in r["message"] for r in hidden)
    assert not any("hidden" in r["message"] for r in refusals if missing_kid in r["message"])

    # The app reads its own rows: a foreign key's refusals read exactly like a missing key's.
    own_hits = (await ok(await client.get("/sys/v1/logs?size=1000", headers=env["app"])))["hits"]
    own = [f"{h['_source']['object_id']} {h['_source']['message']}" for h in own_hits]

    def generic(messages: list[str], kid: str, name: str) -> list[str]:
        return sorted(m.replace(kid, "KID").replace(name, "NAME") for m in messages if kid in m or name in m)

    assert not any("hidden" in m for m in own)
    assert generic(own, theirs["kid"], "their-key") == generic(own, missing_kid, missing_name)
    assert len(generic(own, missing_kid, missing_name)) == 8


async def test_a_name_taken_in_another_group_is_all_an_app_learns_of_it(client: Any) -> None:
    """Fortanix names are unique per account, so creating (or renaming a key to) a name taken in a group
    the app cannot see answers 409, as Fortanix does: that the name is in use is the one thing an app
    with MANAGE in some group can learn of another group's key. Nothing else about it comes back, in the
    answer or in the app's own audit rows: not its kid, its group, its type or its state."""
    env = await setup(client)
    theirs = env["keys"]["their-key"]
    mine_group = env["keys"]["mine-key"]["group_id"]
    manager = await ok(
        await client.post(
            "/sys/v1/apps",
            headers=env["admin"],
            json={"name": "mgr", "add_groups": {mine_group: ["MANAGE"]}, "default_group": mine_group},
        )
    )
    cred = await ok(await client.get(f"/sys/v1/apps/{manager['app_id']}/credential", headers=env["admin"]))
    app = {
        "Authorization": "Basic "
        + base64.b64encode(f"{manager['app_id']}:{cred['credential']['secret']}".encode()).decode()
    }
    create = {"obj_type": "AES", "key_size": 256}
    taken = await answer(client, app, "POST", "/crypto/v1/keys", {"name": "their-key", **create})
    assert taken == (409, {"message": "sobject already exists"})
    # The same answer as for a name taken in the app's own group: it tells which, nothing more.
    assert await answer(client, app, "POST", "/crypto/v1/keys", {"name": "mine-key", **create}) == taken
    own = await ok(await client.post("/crypto/v1/keys", headers=app, json={"name": "fresh", **create}), 201)
    assert await answer(client, app, "PATCH", f"/crypto/v1/keys/{own['kid']}", {"name": "their-key"}) == taken
    # Found by name it is not: listing, reading and naming it in a body answer as for a missing key.
    listed = await ok(await client.get("/crypto/v1/keys?name=their-key", headers=app))
    assert listed == []
    assert await answer(client, app, "POST", "/crypto/v1/keys/info", {"name": "their-key"}) == (
        404,
        {"message": "sobject does not exist"},
    )
    # Nothing of the other key is in the app's own audit rows of those refusals.
    own_hits = (await ok(await client.get("/sys/v1/logs?size=1000", headers=app)))["hits"]
    text = " ".join(str(h["_source"]) for h in own_hits)
    assert theirs["kid"] not in text and theirs["group_id"] not in text
    stored = await ok(await client.get(f"/crypto/v1/keys/{theirs['kid']}", headers=env["admin"]))
    assert stored["name"] == "their-key" and stored["enabled"] is True
