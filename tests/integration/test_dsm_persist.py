"""``POST /crypto/v1/keys/persist``: a transient key stored as a new object. What the transient key
encrypted, the stored key decrypts; the stored key never gains a key operation the transient key lacked;
a bad token, a taken name and a caller without a session are refused in the Fortanix shape; the persist
is audited."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from dsm_emulator.api.app import create_app
from tests.integration.test_cli import init
from tests.integration.test_dsm_api import bearer, login
from xkslab_shared.config import load_settings


@pytest.fixture
async def client(empty_db_url: str, tmp_path: Path, aiohttp_client: Any) -> Any:
    """A DSM on SQLite and on PostgreSQL: persisting writes a row under a unique name."""
    data_dir = tmp_path / "data"
    init(data_dir, empty_db_url)
    return await aiohttp_client(create_app(load_settings(data_dir)))


async def transient(client: Any, headers: dict[str, str], key_ops: list[str]) -> str:
    resp = await client.post(
        "/crypto/v1/keys",
        headers=headers,
        json={"name": "t", "obj_type": "AES", "key_size": 256, "transient": True, "key_ops": key_ops},
    )
    assert resp.status == 201, await resp.text()
    return str((await resp.json())["transient_key"])


async def test_a_persisted_key_decrypts_what_its_transient_key_encrypted(client: Any) -> None:
    headers = bearer(await login(client))
    token = await transient(client, headers, ["ENCRYPT", "DECRYPT"])
    plain = base64.b64encode(b"persist me" * 3).decode()
    resp = await client.post(
        "/crypto/v1/encrypt",
        headers=headers,
        json={"key": {"transient_key": token}, "alg": "AES", "mode": "CBC", "plain": plain},
    )
    assert resp.status == 200, await resp.text()
    sealed = await resp.json()

    resp = await client.post(
        "/crypto/v1/keys/persist",
        headers=headers,
        json={"name": "kept", "transient_key": token, "custom_metadata": {"why": "test"}},
    )
    assert resp.status == 201, await resp.text()
    key = await resp.json()
    assert (key["name"], key["obj_type"], key["key_size"], key["origin"]) == (
        "kept",
        "AES",
        256,
        "FortanixHSM",
    )
    assert sorted(key["key_ops"]) == ["DECRYPT", "ENCRYPT"] and key["custom_metadata"] == {"why": "test"}
    assert "transient_key" not in key or key["transient_key"] is None

    resp = await client.post(
        "/crypto/v1/decrypt",
        headers=headers,
        json={"key": {"kid": key["kid"]}, "alg": "AES", "mode": "CBC", **sealed},
    )
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["plain"] == plain

    logs = await (await client.get("/sys/v1/logs", headers=headers)).json()
    assert any(hit["_source"]["message"] == "Persisted AES key kept" for hit in logs["hits"])


async def test_persist_refusals(client: Any) -> None:
    headers = bearer(await login(client))
    token = await transient(client, headers, ["ENCRYPT", "DECRYPT"])
    body = {"name": "kept", "transient_key": token}
    assert (await client.post("/crypto/v1/keys/persist", json=body)).status == 401

    resp = await client.post("/crypto/v1/keys/persist", headers=headers, json={**body, "key_ops": ["EXPORT"]})
    assert resp.status == 400
    assert (await resp.json())["message"] == "key_ops must be among the transient key's key_ops"

    forged = base64.b64encode(b"not a sealed key").decode()
    resp = await client.post(
        "/crypto/v1/keys/persist", headers=headers, json={**body, "transient_key": forged}
    )
    assert resp.status == 400 and (await resp.json())["message"] == "invalid transient key"

    resp = await client.post("/crypto/v1/keys/persist", headers=headers, json={"transient_key": token})
    assert resp.status == 400 and "name" in (await resp.json())["message"]

    assert (await client.post("/crypto/v1/keys/persist", headers=headers, json=body)).status == 201
    resp = await client.post("/crypto/v1/keys/persist", headers=headers, json=body)
    assert resp.status == 409
    listed = await (await client.get("/crypto/v1/keys", headers=headers, params={"name": "kept"})).json()
    assert len(listed) == 1
