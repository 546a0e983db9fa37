"""The DSM REST sobject and crypto routes (``dsm_emulator.api.sobjects``, ``dsm_emulator.api.crypto``) on a
real DsmCore.

The app here is built by the test: the routes, a middleware that picks the caller (the account's system
principal, or an app chosen by the ``X-Test-App`` header) in place of the DSM's session check, and the
service's own error middleware (tests/api_harness.py). The data directory is initialised once with the real CLI and copied per test.
"""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from dsm_emulator.api import crypto, sobjects
from dsm_emulator.errors import DsmError
from tests import api_harness

Client = TestClient[web.Request, web.Application]
PLAIN = b"attack at dawn: the eagle lands at 0400, bring the secret codebook!"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


# ------------------------------------------------------------------------------------ fixtures


template = api_harness.template
env = api_harness.env


@pytest.fixture
async def client(env: SimpleNamespace, aiohttp_client: Any) -> Client:
    return await api_harness.route_client(env, aiohttp_client, sobjects.routes, crypto.routes)


async def add_app(env: SimpleNamespace, name: str, perms: list[str]) -> None:
    app, _secret = await env.core.admin.create_app(env.system, name, groups={env.group_id: perms})
    env.apps[name] = await env.core.admin.principal_for_app(app)


async def call(client: Client, method: str, path: str, body: Any = None, status: int = 200, **kw: Any) -> Any:
    resp = await client.request(method, path, json=body, **kw)
    text = await resp.text()
    assert resp.status == status, text
    return json.loads(text) if text else None


async def generate(client: Client, name: str | None = None, **extra: Any) -> dict[str, Any]:
    body = {"name": name or f"k-{uuid.uuid4()}", "obj_type": "AES", "key_size": 256, **extra}
    return await call(client, "POST", "/crypto/v1/keys", body, 201)  # type: ignore[no-any-return]


async def all_keys(client: Client) -> list[dict[str, Any]]:
    return await call(client, "GET", "/crypto/v1/keys?show_destroyed=true&limit=1000")  # type: ignore[no-any-return]


# ------------------------------------------------------------------------------ security objects


async def test_generate_import_get_list_patch_delete(client: Client, env: SimpleNamespace) -> None:
    gen = await generate(client, "alpha", description="d", custom_metadata={"a": "1"}, transient=None, junk=1)
    assert gen["obj_type"] == "AES" and gen["key_size"] == 256 and gen["group_id"] == env.group_id
    assert gen["custom_metadata"] == {"a": "1"} and gen["state"] == "Active" and "value" not in gen
    assert set(gen["key_ops"]) >= {"ENCRYPT", "DECRYPT"} and gen["never_exportable"] is True

    material = bytes(range(32))
    imp = await call(
        client,
        "PUT",
        "/crypto/v1/keys",
        {
            "name": "beta",
            "obj_type": "AES",
            "value": b64(material),
            "key_ops": ["ENCRYPT", "DECRYPT", "EXPORT"],
        },
        201,
    )
    assert imp["key_size"] == 256 and imp["origin"] in ("External", "FortanixHSM")
    dup = await call(
        client, "PUT", "/crypto/v1/keys", {"name": "beta", "obj_type": "AES", "value": b64(material)}, 409
    )
    assert dup == {"message": "sobject already exists"}

    assert (await call(client, "GET", f"/crypto/v1/keys/{gen['kid']}"))["name"] == "alpha"
    listed = await call(client, "GET", "/crypto/v1/keys")
    assert isinstance(listed, list) and {k["name"] for k in listed} == {"alpha", "beta"}
    by_name = await call(client, "GET", "/crypto/v1/keys?sort=name:asc&limit=1")
    assert [k["name"] for k in by_name] == ["alpha"]
    page2 = await call(client, "GET", "/crypto/v1/keys?sort=name:asc&limit=100&start=alpha")
    assert [k["name"] for k in page2] == ["beta"]
    assert [k["name"] for k in await call(client, "GET", "/crypto/v1/keys?name=beta")] == ["beta"]
    assert await call(client, "GET", "/crypto/v1/keys?obj_type=HMAC") == []
    await call(client, "GET", "/crypto/v1/keys?limit=abc", status=400)
    await call(client, "GET", "/crypto/v1/keys?show_destroyed=maybe", status=400)

    info = await call(client, "POST", "/crypto/v1/keys/info", {"name": "alpha"})
    assert info["kid"] == gen["kid"]
    assert (await call(client, "POST", "/crypto/v1/keys/info", {"kid": gen["kid"]}))["name"] == "alpha"
    missing = await call(client, "POST", "/crypto/v1/keys/info", {"name": "nope"}, 404)
    assert missing == {"message": "sobject does not exist"}
    transient = await call(client, "POST", "/crypto/v1/keys/info", {"transient_key": "abc"}, 400)
    assert transient == {"message": "invalid transient key"}
    await call(client, "POST", "/crypto/v1/keys/info", {"kid": gen["kid"], "name": "alpha"}, 400)

    exported = await call(client, "POST", "/crypto/v1/keys/export", {"name": "beta"})
    assert unb64(exported["value"]) == material
    assert unb64((await call(client, "GET", f"/crypto/v1/keys/{imp['kid']}/export"))["value"]) == material
    refused = await call(client, "GET", f"/crypto/v1/keys/{gen['kid']}/export", status=400)
    assert "EXPORT" in refused["message"]
    assert (await call(client, "POST", "/crypto/v1/keys/export", {"name": "nope"}, 404))["message"] == (
        "sobject does not exist"
    )

    patched = await call(
        client,
        "PATCH",
        f"/crypto/v1/keys/{gen['kid']}",
        {"name": "alpha2", "enabled": False, "description": None},
    )
    assert (patched["name"], patched["enabled"], patched["description"]) == ("alpha2", False, "d")
    await call(client, "PATCH", f"/crypto/v1/keys/{gen['kid']}", {"enabled": "no"}, 400)

    assert await call(client, "DELETE", f"/crypto/v1/keys/{gen['kid']}", status=204) is None
    await call(client, "GET", f"/crypto/v1/keys/{gen['kid']}", status=404)
    await call(client, "GET", "/crypto/v1/keys/not-a-uuid", status=404)
    assert [k["name"] for k in await call(client, "GET", "/crypto/v1/keys")] == ["beta"]


async def test_lifecycle_activate_revoke_destroy(client: Client) -> None:
    key = await generate(client, state="PreActive")
    assert key["state"] == "PreActive"
    await call(client, "POST", f"/crypto/v1/keys/{key['kid']}/activate", status=204)
    await call(client, "POST", f"/crypto/v1/keys/{key['kid']}/activate", status=400)
    await call(client, "POST", f"/crypto/v1/keys/{key['kid']}/revoke", {"code": "Bogus"}, 400)
    await call(client, "POST", f"/crypto/v1/keys/{key['kid']}/revoke", {"code": "Superseded"}, 204)
    assert (await call(client, "GET", f"/crypto/v1/keys/{key['kid']}"))["state"] == "Deactivated"
    await call(client, "POST", f"/crypto/v1/keys/{key['kid']}/destroy", status=204)
    assert (await call(client, "GET", f"/crypto/v1/keys/{key['kid']}"))["state"] == "Destroyed"
    assert await call(client, "GET", "/crypto/v1/keys") == []
    assert [k["kid"] for k in await call(client, "GET", "/crypto/v1/keys?show_destroyed=True")] == [
        key["kid"]
    ]


async def test_rekey_by_name_links_both_ways(client: Client) -> None:
    old = await generate(client, "rotating")
    new = await call(client, "POST", "/crypto/v1/keys/rekey", {"name": "rotating", "description": None})
    assert new["name"] == "rotating" and new["kid"] != old["kid"]
    assert new["links"] == {"replaced": old["kid"]}
    renamed = await call(client, "GET", f"/crypto/v1/keys/{old['kid']}")
    assert renamed["name"].startswith("rotating (rotated at ") and renamed["links"] == {
        "replacement": new["kid"]
    }
    await call(client, "POST", "/crypto/v1/keys/rekey", {"name": "nope"}, 404)
    await call(client, "POST", "/crypto/v1/keys/rekey", {}, 400)


# ------------------------------------------------------------------------------------- crypto


@pytest.mark.parametrize("tag_len", [96, 128])
async def test_gcm_round_trip_both_path_styles(client: Client, tag_len: int) -> None:
    key = await generate(client, "gcm-key")
    ad = b64(b"header")
    req = {"alg": "AES", "mode": "GCM", "plain": b64(PLAIN), "ad": ad, "tag_len": tag_len}
    enc = await call(client, "POST", f"/crypto/v1/keys/{key['kid']}/encrypt", req)
    assert enc["kid"] == key["kid"] and len(unb64(enc["tag"])) == tag_len // 8 and len(unb64(enc["iv"])) == 12
    dec_req = {
        "alg": "AES",
        "mode": "GCM",
        "cipher": enc["cipher"],
        "iv": enc["iv"],
        "ad": ad,
        "tag": enc["tag"],
    }
    dec = await call(client, "POST", f"/crypto/v1/keys/{key['kid']}/decrypt", dec_req)
    assert dec == {"kid": key["kid"], "plain": b64(PLAIN)}

    enc_ex = await call(client, "POST", "/crypto/v1/encrypt", {**req, "key": {"name": "gcm-key"}})
    assert enc_ex["kid"] == key["kid"]
    dec_ex_req = {**dec_req, "cipher": enc_ex["cipher"], "iv": enc_ex["iv"], "tag": enc_ex["tag"]}
    dec_ex = await call(client, "POST", "/crypto/v1/decrypt", {**dec_ex_req, "key": {"kid": key["kid"]}})
    assert unb64(dec_ex["plain"]) == PLAIN
    bad_ad = await call(
        client, "POST", "/crypto/v1/decrypt", {**dec_ex_req, "ad": b64(b"x"), "key": {"kid": key["kid"]}}, 400
    )
    assert bad_ad["message"]


@pytest.mark.parametrize(
    ("mode", "plain", "has_iv"),
    [("CBC", PLAIN, True), ("CBCNOPAD", PLAIN[:32], True), ("CTR", PLAIN, True), ("ECB", PLAIN[:48], False)],
)
async def test_other_modes_round_trip(client: Client, mode: str, plain: bytes, has_iv: bool) -> None:
    key = await generate(client)
    enc = await call(
        client,
        "POST",
        "/crypto/v1/encrypt",
        {"key": {"kid": key["kid"]}, "alg": "AES", "mode": mode, "plain": b64(plain)},
    )
    assert ("iv" in enc) is has_iv and "tag" not in enc
    dec = await call(
        client,
        "POST",
        f"/crypto/v1/keys/{key['kid']}/decrypt",
        {"alg": "AES", "mode": mode, "cipher": enc["cipher"], "iv": enc.get("iv"), "ad": None, "tag": None},
    )
    assert unb64(dec["plain"]) == plain


@pytest.mark.parametrize("mode", ["KW", "KWP"])
async def test_wrap_unwrap_both_path_styles(client: Client, mode: str) -> None:
    kek = await generate(client, "kek")
    material = bytes(range(100, 132))
    subject = await call(
        client,
        "PUT",
        "/crypto/v1/keys",
        {"name": "dek", "obj_type": "AES", "value": b64(material), "key_ops": ["ENCRYPT", "EXPORT"]},
        201,
    )
    wrapped = await call(
        client,
        "POST",
        f"/crypto/v1/keys/{kek['kid']}/wrapkey",
        {"alg": "AES", "kid": subject["kid"], "mode": mode},
    )
    assert set(wrapped) == {"wrapped_key"}
    wrapped_ex = await call(
        client,
        "POST",
        "/crypto/v1/wrapkey",
        {"key": {"name": "kek"}, "subject": {"name": "dek"}, "alg": "AES", "mode": mode},
    )
    assert wrapped_ex == wrapped  # AES-KW is deterministic

    unwrap = {
        "alg": "AES",
        "mode": mode,
        "obj_type": "AES",
        "wrapped_key": wrapped["wrapped_key"],
        "key_ops": ["EXPORT"],
    }
    first = await call(client, "POST", f"/crypto/v1/keys/{kek['kid']}/unwrapkey", {**unwrap, "name": "u1"})
    second = await call(
        client,
        "POST",
        "/crypto/v1/unwrapkey",
        {**unwrap, "name": "u2", "key": {"kid": kek["kid"]}, "custom_metadata": {"x": "y"}},
    )
    assert second["custom_metadata"] == {"x": "y"} and first["key_size"] == 256
    for obj in (first, second):
        assert unb64((await call(client, "GET", f"/crypto/v1/keys/{obj['kid']}/export"))["value"]) == material

    not_exportable = await generate(client)
    await call(
        client,
        "POST",
        f"/crypto/v1/keys/{kek['kid']}/wrapkey",
        {"alg": "AES", "kid": not_exportable["kid"], "mode": mode},
        400,
    )
    bad = {**unwrap, "wrapped_key": b64(b"\0" * 40), "name": "u3"}
    await call(client, "POST", f"/crypto/v1/keys/{kek['kid']}/unwrapkey", bad, 400)
    assert "u3" not in {k["name"] for k in await all_keys(client)}


async def test_disabled_key_is_refused(client: Client) -> None:
    key = await generate(client)
    await call(client, "PATCH", f"/crypto/v1/keys/{key['kid']}", {"enabled": False})
    req = {"alg": "AES", "mode": "CBC", "plain": b64(PLAIN)}
    refused = await call(client, "POST", f"/crypto/v1/keys/{key['kid']}/encrypt", req, 400)
    assert refused == {"message": "the key is disabled"}
    await call(client, "PATCH", f"/crypto/v1/keys/{key['kid']}", {"enabled": True})
    await call(client, "POST", f"/crypto/v1/keys/{key['kid']}/encrypt", req)


async def test_app_principal_needs_group_permissions(client: Client, env: SimpleNamespace) -> None:
    key = await generate(client, key_ops=["ENCRYPT", "DECRYPT", "APPMANAGEABLE"])
    await add_app(env, "reader", ["ENCRYPT"])
    hdr = {"X-Test-App": "reader"}
    req = {"alg": "AES", "mode": "CTR", "plain": b64(PLAIN)}
    enc = await call(client, "POST", f"/crypto/v1/keys/{key['kid']}/encrypt", req, headers=hdr)
    dec = {"alg": "AES", "mode": "CTR", "cipher": enc["cipher"], "iv": enc["iv"]}
    await call(client, "POST", f"/crypto/v1/keys/{key['kid']}/decrypt", dec, 403, headers=hdr)
    assert [k["kid"] for k in await call(client, "GET", "/crypto/v1/keys", headers=hdr)] == [key["kid"]]


async def test_batch_encrypt_decrypt_with_a_bad_item(client: Client) -> None:
    k1, k2 = await generate(client), await generate(client)
    items = [
        {
            "kid": k1["kid"],
            "request": {
                "alg": "AES",
                "mode": "CBC",
                "plain": b64(b"one"),
                "iv": None,
                "ad": None,
                "tag_len": None,
            },
        },
        {"kid": str(uuid.uuid4()), "request": {"alg": "AES", "mode": "CBC", "plain": b64(b"two")}},
        {"kid": k2["kid"], "request": {"alg": "AES", "mode": "GCM", "plain": b64(b"three"), "tag_len": 128}},
        {"kid": k2["kid"], "request": {"alg": "AES", "mode": "CBC", "plain": "not base64!"}},
        "junk",
    ]
    out = await call(client, "POST", "/crypto/v1/keys/batch/encrypt", items)
    assert [r["status"] for r in out] == [200, 404, 200, 400, 400]
    assert out[1] == {"status": 404, "error": "sobject does not exist"}
    assert "plain" in out[3]["error"] and out[0]["body"]["kid"] == k1["kid"]
    assert set(out[0]["body"]) == {"kid", "cipher", "iv"} and set(out[2]["body"]) == {
        "kid",
        "cipher",
        "iv",
        "tag",
    }

    dec_items = [
        {
            "kid": k1["kid"],
            "request": {"alg": "AES", "mode": "CBC", **{f: out[0]["body"][f] for f in ("cipher", "iv")}},
        },
        {
            "kid": k2["kid"],
            "request": {"mode": "GCM", **{f: out[2]["body"][f] for f in ("cipher", "iv", "tag")}},
        },
        {
            "kid": k1["kid"],
            "request": {"mode": "CBC", "cipher": out[2]["body"]["cipher"], "iv": out[0]["body"]["iv"]},
        },
    ]
    dec = await call(client, "POST", "/crypto/v1/keys/batch/decrypt", dec_items)
    assert dec[0] == {"status": 200, "body": {"kid": k1["kid"], "plain": b64(b"one")}}
    assert dec[1]["body"]["plain"] == b64(b"three") and dec[2]["status"] == 400
    await call(client, "POST", "/crypto/v1/keys/batch/encrypt", {"kid": k1["kid"]}, 400)


# ---------------------------------------------------------------------------------- bad inputs

GOOD_ENC = {"alg": "AES", "mode": "GCM", "plain": b64(PLAIN), "tag_len": 128}
BAD_INPUTS: list[tuple[str, str, dict[str, Any] | str, str]] = [
    ("encrypt", "POST", {**GOOD_ENC, "plain": "!!notb64"}, "plain"),
    ("encrypt", "POST", {**GOOD_ENC, "plain": "YWJj"[:3]}, "plain"),  # unpadded
    ("encrypt", "POST", {**GOOD_ENC, "plain": "YWI"}, "plain"),
    ("encrypt", "POST", {**GOOD_ENC, "iv": "AAAA_-AA"}, "iv"),  # url-safe alphabet
    ("encrypt", "POST", {**GOOD_ENC, "plain": 12}, "plain"),
    ("encrypt", "POST", {**GOOD_ENC, "tag_len": "128"}, "tag_len"),
    ("encrypt", "POST", {**GOOD_ENC, "tag_len": True}, "tag_len"),
    ("encrypt", "POST", {**GOOD_ENC, "tag_len": 100}, "tag"),
    ("encrypt", "POST", {**GOOD_ENC, "mode": "XTS"}, "mode"),
    ("encrypt", "POST", {**GOOD_ENC, "mode": None}, "mode"),
    ("encrypt", "POST", {**GOOD_ENC, "mode": 3}, "mode"),
    ("encrypt", "POST", {**GOOD_ENC, "alg": "RSA"}, "alg"),
    ("encrypt", "POST", {k: v for k, v in GOOD_ENC.items() if k != "plain"}, "plain"),
    ("encrypt", "POST", "[1, 2]", "object"),
    ("encrypt", "POST", "{not json", "JSON"),
    ("decrypt", "POST", {"alg": "AES", "mode": "GCM", "cipher": "AAAA", "iv": b64(b"\0" * 12)}, "tag"),
    ("decrypt", "POST", {"alg": "AES", "mode": "CBC", "cipher": ["AAAA"]}, "cipher"),
    ("/crypto/v1/keys", "POST", {"name": "x", "obj_type": "AES", "key_size": "256"}, "key_size"),
    ("/crypto/v1/keys", "POST", {"name": 5, "obj_type": "AES", "key_size": 256}, "name"),
    (
        "/crypto/v1/keys",
        "POST",
        {"name": "x", "obj_type": "AES", "key_size": 256, "key_ops": "ENCRYPT"},
        "key_ops",
    ),
    ("/crypto/v1/keys", "POST", {"name": "x", "obj_type": "AES", "key_size": 256, "key_ops": [1]}, "key_ops"),
    (
        "/crypto/v1/keys",
        "POST",
        {"name": "x", "obj_type": "AES", "key_size": 256, "custom_metadata": {"a": 1}},
        "custom_metadata",
    ),
    (
        "/crypto/v1/keys",
        "POST",
        {"name": "x", "obj_type": "AES", "key_size": 256, "enabled": "true"},
        "enabled",
    ),
    (
        "/crypto/v1/keys",
        "POST",
        {"name": "x", "obj_type": "AES", "key_size": 256, "transient": "yes"},
        "transient",
    ),
    ("/crypto/v1/keys", "POST", {"name": "x", "obj_type": "AES", "key_size": 100}, "key_size"),
    ("/crypto/v1/keys", "PUT", {"name": "x", "obj_type": "AES", "value": "AAAAAAAAAAAAAAAAAAAAAA"}, "value"),
    ("/crypto/v1/keys", "PUT", {"name": "x", "obj_type": "AES"}, "value"),
    ("/crypto/v1/encrypt", "POST", {**GOOD_ENC, "key": "KID"}, "key"),
    ("/crypto/v1/encrypt", "POST", {**GOOD_ENC, "key": {}}, "key"),
    ("/crypto/v1/encrypt", "POST", GOOD_ENC, "key"),
    ("/crypto/v1/encrypt", "POST", {**GOOD_ENC, "mode": "XTS", "key": {"name": "no-such-key"}}, "mode"),
    (
        "/crypto/v1/decrypt",
        "POST",
        {"mode": "CBC", "cipher": "AAA", "key": {"name": "no-such-key"}},
        "cipher",
    ),
    ("/crypto/v1/encrypt", "POST", {**GOOD_ENC, "key": {"transient_key": "AAAA"}}, "invalid transient key"),
    (
        "/crypto/v1/keys",
        "POST",
        {"name": "x", "obj_type": "AES", "key_size": 100, "transient": True},
        "key_size",
    ),
    (
        "/crypto/v1/unwrapkey",
        "POST",
        {
            "alg": "AES",
            "mode": "KW",
            "obj_type": "AES",
            "wrapped_key": "A",
            "name": "z",
            "key": {"name": "no-such"},
        },
        "wrapped_key",
    ),
    (
        "/crypto/v1/wrapkey",
        "POST",
        {"alg": "AES", "mode": "GCM", "tag_len": "x", "key": {"name": "a"}, "subject": {"name": "b"}},
        "tag_len",
    ),
    ("wrapkey", "POST", {"alg": "AES", "mode": "KW", "kid": 7}, "kid"),
    ("wrapkey", "POST", {"alg": "AES", "mode": "KW", "kid": "K", "tag_len": 1.5}, "tag_len"),
    (
        "unwrapkey",
        "POST",
        {"alg": "AES", "mode": "KW", "obj_type": "AES", "name": "z", "wrapped_key": "A"},
        "wrapped_key",
    ),
    (
        "unwrapkey",
        "POST",
        {"alg": "AES", "mode": "KWP", "obj_type": "AES", "wrapped_key": b64(b"\0" * 24)},
        "name",
    ),
]


@pytest.mark.parametrize(("target", "method", "body", "mentions"), BAD_INPUTS)
async def test_bad_inputs_are_400_and_change_nothing(
    client: Client, target: str, method: str, body: dict[str, Any] | str, mentions: str
) -> None:
    key = await generate(client, "victim")
    path = target if target.startswith("/") else f"/crypto/v1/keys/{key['kid']}/{target}"
    if isinstance(body, dict) and body.get("kid") == "K":
        body = {**body, "kid": key["kid"]}
    before = await all_keys(client)
    if isinstance(body, str):
        resp = await client.request(method, path, data=body, headers={"Content-Type": "application/json"})
    else:
        resp = await client.request(method, path, json=body)
    payload = await resp.json()
    assert resp.status == 400, payload
    assert set(payload) == {"message"} and mentions in payload["message"], payload
    assert await all_keys(client) == before


# ------------------------------------------------------------------------------ transient keys


async def transient(client: Client, key_ops: list[str], **extra: Any) -> dict[str, Any]:
    body = {
        "name": f"dek-{uuid.uuid4()}",
        "key_size": 256,
        "obj_type": "AES",
        "transient": True,
        "key_ops": key_ops,
        "custom_metadata": {},
        **extra,
    }
    return await call(client, "POST", "/crypto/v1/keys", body, 201)  # type: ignore[no-any-return]


async def test_transient_kroxylicious_flow_stores_and_audits_nothing(
    client: Client, env: SimpleNamespace, tmp_path: Path
) -> None:
    from dsm_emulator.audit import tail

    stored = await generate(client, "kek")
    rows_before = len(await tail(env.core.sessions, 10_000))
    dek = await transient(client, ["EXPORT"])
    token = dek["transient_key"]
    assert token and "kid" not in dek and dek["origin"] == "Transient"
    assert dek["obj_type"] == "AES" and dek["key_size"] == 256 and dek["key_ops"] == ["EXPORT"]
    assert dek["group_id"] == env.group_id and dek["acct_id"] == env.acct_id and "value" not in dek
    assert [k["kid"] for k in await all_keys(client)] == [stored["kid"]]

    exported = await call(client, "POST", "/crypto/v1/keys/export", {"transient_key": token})
    value = unb64(exported["value"])
    assert len(value) == 32 and exported["transient_key"] == token and "kid" not in exported
    info = await call(client, "POST", "/crypto/v1/keys/info", {"transient_key": token})
    assert "value" not in info and info["name"] == dek["name"]
    refused = await call(
        client, "POST", "/crypto/v1/encrypt", {**GOOD_ENC, "key": {"transient_key": token}}, 400
    )
    assert "ENCRYPT" in refused["message"]

    rows = await tail(env.core.sessions, 10_000)
    assert len(rows) == rows_before  # transient-key operations are not audit-logged
    for row in rows:
        text = json.dumps(row, default=str)
        assert exported["value"] not in text and value.hex() not in text and token not in text
    files = [path for path in (tmp_path / "data").rglob("*") if path.is_file()]
    assert any(stored["kid"].encode() in path.read_bytes() for path in files)  # the search does see rows
    for path in files:
        if path.is_file():
            data = path.read_bytes()
            assert value not in data and exported["value"].encode() not in data, path
            assert dek["name"].encode() not in data, path


async def test_transient_encrypt_decrypt_round_trip(client: Client) -> None:
    dek = await transient(client, ["ENCRYPT", "DECRYPT"])
    key = {"transient_key": dek["transient_key"]}
    enc = await call(
        client,
        "POST",
        "/crypto/v1/encrypt",
        {"key": key, "alg": "AES", "mode": "GCM", "plain": b64(PLAIN), "ad": b64(b"hdr")},
    )
    assert "kid" not in enc and set(enc) == {"cipher", "iv", "tag"}
    dec = await call(
        client,
        "POST",
        "/crypto/v1/decrypt",
        {
            "key": key,
            "alg": "AES",
            "mode": "GCM",
            "cipher": enc["cipher"],
            "iv": enc["iv"],
            "tag": enc["tag"],
            "ad": b64(b"hdr"),
        },
    )
    assert dec == {"plain": b64(PLAIN)}
    cbc = await call(
        client, "POST", "/crypto/v1/encrypt", {"key": key, "alg": "AES", "mode": "CBC", "plain": b64(PLAIN)}
    )
    back = await call(
        client,
        "POST",
        "/crypto/v1/decrypt",
        {"key": key, "mode": "CBC", "cipher": cbc["cipher"], "iv": cbc["iv"]},
    )
    assert unb64(back["plain"]) == PLAIN
    no_export = await call(client, "POST", "/crypto/v1/keys/export", key, 400)
    assert "not exportable" in no_export["message"]
    assert await all_keys(client) == []


async def test_transient_bad_tokens_are_one_400(client: Client) -> None:
    token = (await transient(client, ["EXPORT", "ENCRYPT"]))["transient_key"]
    raw = bytearray(unb64(token))
    raw[-1] ^= 1
    for bad in (b64(bytes(raw)), token[:-4], "not base64!", b64(b"x" * 64), ""):
        for path in ("/crypto/v1/keys/export", "/crypto/v1/keys/info"):
            resp = await call(client, "POST", path, {"transient_key": bad}, 400)
            assert resp == {"message": "invalid transient key"}, bad
        resp = await call(
            client, "POST", "/crypto/v1/encrypt", {**GOOD_ENC, "key": {"transient_key": bad}}, 400
        )
        assert resp == {"message": "invalid transient key"}, bad
    both = await call(client, "POST", "/crypto/v1/keys/export", {"transient_key": token, "name": "x"}, 400)
    assert "exactly one" in both["message"]
    wrap = {"alg": "AES", "mode": "KW", "key": {"transient_key": token}, "subject": {"name": "x"}}
    assert "transient" in (await call(client, "POST", "/crypto/v1/wrapkey", wrap, 400))["message"]


async def test_transient_key_of_another_account_or_expired_is_invalid(env: SimpleNamespace) -> None:
    import dataclasses
    from datetime import timedelta

    from dsm_emulator import keys as keys_module
    from dsm_emulator.keys import KeySpec
    from dsm_emulator.keys import transient as transient_module

    keys = env.core.keys
    _view, token = await keys.create_transient(env.system, KeySpec(name="t", obj_type="HMAC", key_size=256))
    assert keys.open_transient(env.system, token).key_size == 256
    stranger = dataclasses.replace(env.system, acct_id=str(uuid.uuid4()))
    with pytest.raises(DsmError, match="invalid transient key"):
        keys.open_transient(stranger, token)
    later = keys_module.now() + keys_module.TRANSIENT_LIFETIME + timedelta(seconds=5)
    original = transient_module.now  # open_transient reads the clock of dsm_emulator.keys.transient
    transient_module.now = lambda: later  # type: ignore[assignment]
    try:
        with pytest.raises(DsmError, match="invalid transient key"):
            keys.open_transient(env.system, token)
    finally:
        transient_module.now = original  # type: ignore[assignment]
    with pytest.raises(DsmError, match="OPAQUE"):
        await keys.create_transient(env.system, KeySpec(name="t", obj_type="OPAQUE", key_size=256))


async def test_transient_keys_and_app_permissions(client: Client, env: SimpleNamespace) -> None:
    await add_app(env, "enc-only", ["ENCRYPT"])
    await add_app(env, "exporter", ["EXPORT", "ENCRYPT"])
    headers = {"X-Test-App": "enc-only"}
    body = {
        "name": "dek",
        "key_size": 256,
        "obj_type": "AES",
        "transient": True,
        "key_ops": ["EXPORT", "ENCRYPT"],
    }
    resp = await client.post("/crypto/v1/keys", json=body, headers=headers)
    assert resp.status == 201
    token = (await resp.json())["transient_key"]
    enc = await client.post(
        "/crypto/v1/encrypt", json={**GOOD_ENC, "key": {"transient_key": token}}, headers=headers
    )
    assert enc.status == 200
    exp = await client.post("/crypto/v1/keys/export", json={"transient_key": token}, headers=headers)
    assert exp.status == 403
    exp = await client.post(
        "/crypto/v1/keys/export", json={"transient_key": token}, headers={"X-Test-App": "exporter"}
    )
    assert exp.status == 200 and len(unb64((await exp.json())["value"])) == 32


# --------------------------------------------------------------------------- real SDK models


async def test_sdkms_models_round_trip(client: Client) -> None:
    from sdkms.v1 import ApiClient, Configuration
    from sdkms.v1.models import CryptMode, EncryptRequestEx, ObjectType, SobjectDescriptor

    key = await generate(client, "sdk-key")
    api = ApiClient(configuration=Configuration())
    request = EncryptRequestEx(
        key=SobjectDescriptor(name="sdk-key"),
        alg=ObjectType.AES,
        plain=bytearray(PLAIN),
        mode=CryptMode.GCM,
        ad=bytearray(b"hdr"),
        tag_len=96,
    )
    sent = api.sanitize_for_serialization(request)
    resp = await client.post(
        "/crypto/v1/encrypt", data=json.dumps(sent), headers={"Content-Type": "application/json"}
    )
    assert resp.status == 200
    encrypted = api.deserialize(SimpleNamespace(data=await resp.text()), "EncryptResponse")
    assert encrypted.kid == key["kid"] and len(encrypted.tag) == 12

    from sdkms.v1.models import DecryptRequestEx

    dec_req = DecryptRequestEx(
        key=SobjectDescriptor(kid=key["kid"]),
        alg=ObjectType.AES,
        cipher=bytearray(encrypted.cipher),
        mode=CryptMode.GCM,
        iv=bytearray(encrypted.iv),
        ad=bytearray(b"hdr"),
        tag=bytearray(encrypted.tag),
    )
    resp = await client.post(
        "/crypto/v1/decrypt",
        data=json.dumps(api.sanitize_for_serialization(dec_req)),
        headers={"Content-Type": "application/json"},
    )
    assert resp.status == 200
    decrypted = api.deserialize(SimpleNamespace(data=await resp.text()), "DecryptResponse")
    assert bytes(decrypted.plain) == PLAIN
    listed = api.deserialize(
        SimpleNamespace(data=await (await client.get("/crypto/v1/keys")).text()), "list[KeyObject]"
    )
    assert [obj.kid for obj in listed] == [key["kid"]]
