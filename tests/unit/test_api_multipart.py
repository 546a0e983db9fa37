"""Multipart encrypt and decrypt over HTTP (``dsm_emulator.api.multipart``) on a real DsmCore, on SQLite and
PostgreSQL (the key is looked up by kid and by name in the database): results equal ``cryptography``'s
one-shot AES; state tokens that are forged, altered, another app's, another key's, the other direction's
or already used are refused with a Fortanix ``{"message"}`` 400; permissions and key_ops are checked at
every step; one audit row per operation, at final."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from dsm_emulator.api import crypto, multipart, sobjects
from dsm_emulator.audit import tail
from dsm_emulator.authz import system_principal
from dsm_emulator.core import DsmCore
from dsm_emulator.keys import INVALID_STATE
from tests import api_harness
from xkslab_shared.config import load_settings

Client = TestClient[web.Request, web.Application]
KEY = bytes(range(32))
IV = bytes(range(100, 116))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def one_shot(mode: str, plain: bytes) -> bytes:
    if mode == "CTR":
        ctx = Cipher(algorithms.AES(KEY), modes.CTR(IV)).encryptor()
        return ctx.update(plain) + ctx.finalize()
    if mode == "CBC":
        padder = padding.PKCS7(128).padder()
        plain = padder.update(plain) + padder.finalize()
    ctx = Cipher(algorithms.AES(KEY), modes.CBC(IV)).encryptor()
    return ctx.update(plain) + ctx.finalize()


@pytest.fixture
async def db_env(empty_db_url: str, tmp_path: Path) -> AsyncIterator[SimpleNamespace]:
    data_dir, info = await asyncio.to_thread(api_harness.init_data_dir, tmp_path / "data", empty_db_url)
    core = await DsmCore.open(load_settings(data_dir, environ={}))
    try:
        yield SimpleNamespace(
            core=core,
            acct_id=info["acct_id"],
            group_id=info["default_group_id"],
            system=system_principal(info["acct_id"]),
        )
    finally:
        await core.close()


ROUTES = (sobjects.routes, crypto.routes, multipart.routes)
template = api_harness.template
env = api_harness.env


@pytest.fixture
async def client(env: SimpleNamespace, aiohttp_client: Any) -> Client:
    """On SQLite, from a data directory made once per module."""
    return cast(Client, await api_harness.route_client(env, aiohttp_client, *ROUTES))


@pytest.fixture
async def db_client(db_env: SimpleNamespace, aiohttp_client: Any) -> Client:
    """On SQLite and PostgreSQL, each from its own ``xkslab init``."""
    return cast(Client, await api_harness.route_client(db_env, aiohttp_client, *ROUTES))


async def add_app(env: SimpleNamespace, name: str, perms: list[str]) -> dict[str, str]:
    app, _secret = await env.core.admin.create_app(env.system, name, groups={env.group_id: perms})
    env.apps[name] = await env.core.admin.principal_for_app(app)
    return {"X-Test-App": name}


async def call(client: Client, path: str, body: Any, status: int = 200, **kw: Any) -> Any:
    resp = await client.post(path, json=body, **kw)
    text = await resp.text()
    assert resp.status == status, text
    return json.loads(text)


async def import_key(client: Client, name: str, **extra: Any) -> str:
    body = {"name": name, "obj_type": "AES", "value": b64(KEY), **extra}
    resp = await client.put("/crypto/v1/keys", json=body)
    assert resp.status == 201, await resp.text()
    return str((await resp.json())["kid"])


def paths(style: str, kid: str, direction: str) -> tuple[str, dict[str, Any]]:
    if style == "ex":
        return f"/crypto/v1/{direction}", {"key": {"kid": kid}}
    if style == "ex-name":
        return f"/crypto/v1/{direction}", {"key": {"name": "mp-key"}}
    return f"/crypto/v1/keys/{kid}/{direction}", {}


async def run(
    client: Client, style: str, kid: str, direction: str, mode: str, data: bytes, size: int, **kw: Any
) -> bytes:
    base, key = paths(style, kid, direction)
    started = await call(client, f"{base}/init", {**key, "alg": "AES", "mode": mode, "iv": b64(IV)}, **kw)
    assert started["kid"] == kid and (direction == "decrypt" or unb64(started["iv"]) == IV)
    state, out = started["state"], b""
    in_field, out_field = ("plain", "cipher") if direction == "encrypt" else ("cipher", "plain")
    for at in range(0, len(data), size):
        step = await call(
            client, f"{base}/update", {**key, in_field: b64(data[at : at + size]), "state": state}, **kw
        )
        out, state = out + unb64(step[out_field]), step["state"]
    last = await call(client, f"{base}/final", {**key, "state": state}, **kw)
    return out + unb64(last[out_field])


@pytest.mark.parametrize("style", ["kid", "ex", "ex-name"])
@pytest.mark.parametrize("mode", ["CBC", "CBCNOPAD", "CTR"])
async def test_round_trip_equals_one_shot(
    client: Client, env: SimpleNamespace, style: str, mode: str
) -> None:
    await round_trip(client, env, style, mode)


async def test_on_both_databases(db_client: Client, db_env: SimpleNamespace) -> None:
    await round_trip(db_client, db_env, "ex-name", "CBC")
    await test_state_tokens_cannot_be_forged_swapped_or_replayed(db_client, db_env)


async def round_trip(client: Client, env: SimpleNamespace, style: str, mode: str) -> None:
    kid = await import_key(client, "mp-key")
    plain = os.urandom(5000 if mode != "CBCNOPAD" else 4096)
    before = len(await tail(env.core.sessions, 10_000))
    cipher = await run(client, style, kid, "encrypt", mode, plain, 1000)
    assert cipher == one_shot(mode, plain)
    assert await run(client, style, kid, "decrypt", mode, cipher, 777) == plain
    rows = await tail(env.core.sessions, 10_000)
    new = rows[: len(rows) - before]
    assert [r["operation"] for r in new] == ["crypto.decrypt", "crypto.encrypt"]  # one per operation
    assert all(r["object_id"] == kid and "multipart" in r["message"] and mode in r["message"] for r in new)


async def test_state_tokens_cannot_be_forged_swapped_or_replayed(
    client: Client, env: SimpleNamespace
) -> None:
    kid = await import_key(client, f"mp-{uuid.uuid4()}")
    other = await import_key(client, f"other-{uuid.uuid4()}")
    start = {"alg": "AES", "mode": "CTR", "iv": b64(IV)}
    state = (await call(client, f"/crypto/v1/keys/{kid}/encrypt/init", start))["state"]
    upd = f"/crypto/v1/keys/{kid}/encrypt/update"

    async def refused(path: str, body: dict[str, Any], **kw: Any) -> None:
        assert (await call(client, path, body, 400, **kw))["message"] == INVALID_STATE

    raw = bytearray(unb64(state))
    raw[-1] ^= 1
    await refused(upd, {"plain": b64(b"x"), "state": b64(bytes(raw))})  # altered
    await refused(upd, {"plain": b64(b"x"), "state": b64(os.urandom(len(raw)))})  # forged
    await refused(f"/crypto/v1/keys/{other}/encrypt/update", {"plain": b64(b"x"), "state": state})  # key swap
    await refused("/crypto/v1/encrypt/update", {"key": {"kid": other}, "plain": b64(b"x"), "state": state})
    await refused(f"/crypto/v1/keys/{kid}/decrypt/update", {"cipher": b64(b"x"), "state": state})  # direction
    app = await add_app(env, f"other-app-{uuid.uuid4()}", ["ENCRYPT", "DECRYPT"])
    await refused(upd, {"plain": b64(b"x"), "state": state}, headers=app)  # another caller's state

    following = (await call(client, upd, {"plain": b64(b"first"), "state": state}))["state"]
    await refused(upd, {"plain": b64(b"again"), "state": state})  # an earlier state: CTR keystream reuse
    await call(client, f"/crypto/v1/keys/{kid}/encrypt/final", {"state": following})
    await refused(f"/crypto/v1/keys/{kid}/encrypt/final", {"state": following})  # after final
    await refused(upd, {"plain": b64(b"x"), "state": following})
    assert (await call(client, upd, {"plain": b64(b"x"), "state": "not base64!"}, 400))["message"]

    rows = await tail(env.core.sessions, 10_000)
    text = json.dumps(rows, default=str)
    assert state not in text and following not in text  # tokens never reach the audit log
    assert sum(r["outcome"] == "refused" for r in rows) >= 8


async def test_every_step_checks_permission_and_key_ops(client: Client, env: SimpleNamespace) -> None:
    kid = await import_key(client, "mp-key")
    enc_only = await add_app(env, "enc-only", ["ENCRYPT"])
    start = {"alg": "AES", "mode": "CBC", "iv": b64(IV)}
    denied = await call(client, f"/crypto/v1/keys/{kid}/decrypt/init", start, 403, headers=enc_only)
    assert "DECRYPT" in denied["message"]
    state = (await call(client, f"/crypto/v1/keys/{kid}/encrypt/init", start, headers=enc_only))["state"]
    # The key loses ENCRYPT halfway: the next step is refused, as a single-shot call would be.
    resp = await client.patch(f"/crypto/v1/keys/{kid}", json={"key_ops": ["DECRYPT", "APPMANAGEABLE"]})
    assert resp.status == 200, await resp.text()
    body = {"plain": b64(b"y" * 40), "state": state}
    refusal = await call(client, f"/crypto/v1/keys/{kid}/encrypt/update", body, 400, headers=enc_only)
    assert "ENCRYPT" in refusal["message"]
    no_ops = await import_key(client, "decrypt-only", key_ops=["DECRYPT"])
    assert "ENCRYPT" in (await call(client, f"/crypto/v1/keys/{no_ops}/encrypt/init", start, 400))["message"]


@pytest.mark.parametrize(
    ("path", "body", "status", "needle"),
    [
        ("encrypt/init", {"alg": "AES", "mode": "CCM"}, 400, "CBC, CBCNOPAD, CTR, GCM"),
        ("encrypt/init", {"alg": "AES", "mode": "ECB"}, 400, "CBC, CBCNOPAD, CTR, GCM"),
        ("encrypt/init", {"alg": "DES3", "mode": "CBC"}, 400, "only AES"),
        ("encrypt/init", {"alg": "AES", "mode": "CBC", "ad": "YWFk"}, 400, "(ad)"),
        ("encrypt/init", {"alg": "AES", "mode": "CBC", "iv": b64(b"short")}, 400, "16 bytes"),
        ("encrypt/init", {"alg": "AES", "mode": "GCM", "iv": b64(b"short")}, 400, "12 or 16 bytes"),
        ("decrypt/init", {"alg": "AES", "mode": "CBC"}, 400, "16 bytes"),
        ("encrypt/final", {"state": "AAAA", "tag": "AAAA"}, 400, "does not take tag"),
        ("decrypt/final", {"state": "AAAA", "tag_len": 128}, 400, "does not take tag_len"),
        ("encrypt/update", {"state": "AAAA"}, 400, "plain"),
    ],
)
async def test_bad_requests_name_the_field(
    client: Client, path: str, body: dict[str, Any], status: int, needle: str
) -> None:
    kid = await import_key(client, f"k-{uuid.uuid4()}")
    message = (await call(client, f"/crypto/v1/keys/{kid}/{path}", body, status))["message"]
    assert needle in message


async def test_cbc_decrypt_with_bad_padding_is_refused_at_final(client: Client) -> None:
    kid = await import_key(client, "mp-key")
    base = f"/crypto/v1/keys/{kid}/decrypt"
    state = (await call(client, f"{base}/init", {"alg": "AES", "mode": "CBC", "iv": b64(IV)}))["state"]
    bad = one_shot("CBCNOPAD", b"\x00" * 31 + b"\x11")
    state = (await call(client, f"{base}/update", {"cipher": b64(bad), "state": state}))["state"]
    assert "padding" in (await call(client, f"{base}/final", {"state": state}, 400))["message"]


async def test_transient_key_in_pieces(client: Client, env: SimpleNamespace) -> None:
    body = {"name": "t", "obj_type": "AES", "key_size": 256, "transient": True, "key_ops": ["ENCRYPT"]}
    resp = await client.post("/crypto/v1/keys", json=body)
    assert resp.status == 201, await resp.text()
    token = (await resp.json())["transient_key"]
    key = {"key": {"transient_key": token}}
    before = len(await tail(env.core.sessions, 10_000))
    started = await call(client, "/crypto/v1/encrypt/init", {**key, "alg": "AES", "mode": "CTR"})
    assert "kid" not in started and len(unb64(started["iv"])) == 16
    step = await call(
        client, "/crypto/v1/encrypt/update", {**key, "plain": b64(b"z" * 50), "state": started["state"]}
    )
    assert len(unb64(step["cipher"])) == 50
    await call(client, "/crypto/v1/encrypt/final", {**key, "state": step["state"]})
    assert len(await tail(env.core.sessions, 10_000)) == before  # transient keys are not audited


async def test_gcm_in_pieces_equals_aesgcm(client: Client) -> None:
    kid = await import_key(client, "mp-key")
    plain, aad = os.urandom(3000), b"header"
    base = f"/crypto/v1/keys/{kid}/encrypt"
    init = {"alg": "AES", "mode": "GCM", "iv": b64(IV[:12]), "ad": b64(aad)}
    state, cipher = (await call(client, f"{base}/init", init))["state"], b""
    for at in range(0, len(plain), 999):
        step = await call(client, f"{base}/update", {"plain": b64(plain[at : at + 999]), "state": state})
        cipher, state = cipher + unb64(step["cipher"]), step["state"]
    last = await call(client, f"{base}/final", {"state": state, "tag_len": 128})
    tag = unb64(last["tag"])
    assert cipher + unb64(last["cipher"]) + tag == AESGCM(KEY).encrypt(IV[:12], plain, aad)

    async def decrypt(with_tag: bytes) -> tuple[bytes, Any]:
        base = "/crypto/v1/decrypt"
        key = {"key": {"kid": kid}}
        state = (await call(client, f"{base}/init", {**key, **init}))["state"]
        step = await call(client, f"{base}/update", {**key, "cipher": b64(cipher), "state": state})
        resp = await client.post(f"{base}/final", json={**key, "state": step["state"], "tag": b64(with_tag)})
        return unb64(step["plain"]), (resp.status, await resp.json())

    shown, (status, answer) = await decrypt(tag)
    assert shown == plain and status == 200 and answer == {"plain": ""}
    _, (status, answer) = await decrypt(bytes(16))
    assert status == 400 and "tag mismatch" in answer["message"]  # a wrong tag is refused at final
    cbc = await call(client, f"{base}/init", {"alg": "AES", "mode": "CBC", "iv": b64(IV)})
    refused = await call(client, f"{base}/final", {"state": cbc["state"], "tag_len": 128}, 400)
    assert "tag_len" in refused["message"]
