"""Key derivation, ECDH agreement and KCVs at the DSM's handlers (the service's error middleware, an
administrator or an app by ``X-Test-App``), with independent oracles: ``cryptography``'s AES and ECDH,
RFC 5869's HKDF vector. Storage is involved (the new key is sealed in its row), so the flows run on SQLite
and PostgreSQL; refusals are checked for their status, their message and their audit row."""

from __future__ import annotations

import base64
import json
import uuid
from types import SimpleNamespace
from typing import Any, cast

from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from sqlalchemy import select

from dsm_emulator.api import admin, crypto, derive, signing, sobjects
from dsm_emulator.audit import tail
from dsm_emulator.models import SecurityObject
from tests import api_harness
from tests.unit.test_group_policies import db_env as db_env  # a fixture

Client = TestClient  # type: ignore[type-arg]
template = api_harness.template
env = api_harness.env
ROUTES = (admin.routes, sobjects.routes, crypto.routes, derive.routes, signing.routes)
H = bytes.fromhex
RFC5869_OKM = "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


async def routed(env: SimpleNamespace, aiohttp_client: Any) -> Client:
    return cast(Client, await api_harness.route_client(env, aiohttp_client, *ROUTES))


async def call(client: Client, method: str, path: str, body: Any = None, status: int = 200, **kw: Any) -> Any:
    resp = await client.request(method, path, json=body, **kw)
    text = await resp.text()
    assert resp.status == status, text
    return json.loads(text) if text else None


async def imported(client: Client, obj_type: str, value: bytes, ops: list[str], **extra: Any) -> Any:
    body = {"name": f"{obj_type}-{uuid.uuid4()}", "obj_type": obj_type, "value": b64(value), "key_ops": ops}
    return await call(client, "PUT", "/crypto/v1/keys", {**body, **extra}, status=201)


async def exported(client: Client, kid: str) -> bytes:
    return base64.b64decode((await call(client, "GET", f"/crypto/v1/keys/{kid}/export"))["value"])


def aes(key: bytes, mode: modes.CBC | modes.ECB, data: bytes) -> bytes:
    enc = Cipher(algorithms.AES(key), mode).encryptor()
    return enc.update(data) + enc.finalize()


def new_key(name: str, key_type: str = "AES", key_size: int = 256, **extra: Any) -> dict[str, Any]:
    return {"name": name, "key_type": key_type, "key_size": key_size, **extra}


async def test_derived_keys_are_what_the_mechanisms_say(db_env: SimpleNamespace, aiohttp_client: Any) -> None:
    client = await routed(db_env, aiohttp_client)
    base_value = bytes(range(32))
    base = await imported(client, "AES", base_value, ["ENCRYPT", "DERIVEKEY"])
    data, iv = bytes(range(100, 132)), bytes(16)
    mechanism = {"encrypt_data": {"alg": "AES", "mode": "CBCNOPAD", "plain": b64(data), "iv": b64(iv)}}
    body = {**new_key("derived", key_ops=["ENCRYPT", "EXPORT"]), "mechanism": mechanism}
    made = await call(client, "POST", f"/crypto/v1/keys/{base['kid']}/derive", body)
    assert made["obj_type"] == "AES" and made["key_size"] == 256 and made["origin"] == "FortanixHSM"
    assert set(made["key_ops"]) == {"ENCRYPT", "EXPORT"} and made["kid"] != base["kid"]
    expected = aes(base_value, modes.CBC(iv), data)  # the oracle: cryptography's own AES
    assert await exported(client, made["kid"]) == expected
    assert made["kcv"] == aes(expected, modes.ECB(), bytes(16))[:3].hex().upper()
    async with db_env.core.sessions() as session:
        row = await session.scalar(select(SecurityObject).where(SecurityObject.kid == made["kid"]))
    assert row is not None and row.sealed_material is not None and expected not in row.sealed_material

    # Ex style, the base named by name; HKDF over an imported SECRET, checked against RFC 5869 case 1.
    secret = await imported(client, "SECRET", b"\x0b" * 22, ["DERIVEKEY"])
    hkdf = {
        "hkdf": {
            "hash_alg": "SHA256",
            "salt": b64(H("000102030405060708090a0b0c")),
            "info": b64(H("f0f1f2f3f4f5f6f7f8f9")),
        }
    }
    body = {
        "key": {"name": secret["name"]},
        **new_key("okm", "SECRET", 336, key_ops=["EXPORT"]),
        "mechanism": hkdf,
    }
    okm = await call(client, "POST", "/crypto/v1/derive", body)
    assert okm["obj_type"] == "SECRET" and await exported(client, okm["kid"]) == H(RFC5869_OKM)
    # Without key_ops the new key gets a generated key's defaults: not exportable.
    body = {"key": {"kid": secret["kid"]}, **new_key("quiet", "HMAC", 256), "mechanism": hkdf}
    quiet = await call(client, "POST", "/crypto/v1/derive", body)
    assert set(quiet["key_ops"]) == {"MACGENERATE", "MACVERIFY", "APPMANAGEABLE"}

    # A transient result: a token, not a stored object; exportable through it when EXPORT was asked for.
    body = {
        "key": {"kid": secret["kid"]},
        **new_key("t", "AES", 128, key_ops=["EXPORT"], transient=True),
        "mechanism": hkdf,
    }
    transient = await call(client, "POST", "/crypto/v1/derive", body)
    assert "kid" not in transient and transient["origin"] == "Transient"
    value = (
        await call(client, "POST", "/crypto/v1/keys/export", {"transient_key": transient["transient_key"]})
    )["value"]
    assert base64.b64decode(value) == H(RFC5869_OKM)[:16]

    rows = await tail(db_env.core.sessions, 200)
    uses = [r for r in rows if r["operation"] == "crypto.derive" and r["outcome"] == "success"]
    assert {r["object_id"] for r in uses} == {base["kid"], secret["kid"]} and len(uses) == 4
    made_rows = [r for r in rows if r["operation"] == "key.derive"]
    assert {r["object_id"] for r in made_rows} == {made["kid"], okm["kid"], quiet["kid"]}
    assert base64.b64encode(expected).decode() not in json.dumps(rows, default=str)


async def test_derive_refusals(env: SimpleNamespace, aiohttp_client: Any) -> None:
    client = await routed(env, aiohttp_client)
    ok = {"encrypt_data": {"alg": "AES", "mode": "ECB", "plain": b64(bytes(32))}}
    no_derive = await imported(client, "AES", bytes(32), ["ENCRYPT"])
    base = await imported(client, "AES", bytes(range(32)), ["DERIVEKEY"])

    async def refused(kid: str, status: int, needle: str, **changes: Any) -> None:
        body = {**new_key(f"n-{uuid.uuid4()}"), "mechanism": ok, **changes}
        answer = await call(
            client, "POST", f"/crypto/v1/keys/{kid}/derive", body, status=status, headers=changes.pop("h", {})
        )
        assert needle in answer["message"], answer

    await refused(no_derive["kid"], 400, "operation DERIVEKEY is not allowed by this key's key_ops")
    await refused(base["kid"], 400, "key_type EC cannot be derived", key_type="EC")
    await refused(base["kid"], 400, "key_size 100 is not valid for AES", key_size=100)
    await refused(
        base["kid"],
        400,
        "the encrypted data gives 32 bytes; the new key needs 64",
        key_type="SECRET",
        key_size=512,
    )
    await refused(
        base["kid"],
        400,
        "exactly one of encrypt_data, hkdf",
        mechanism={**ok, "hkdf": {"hash_alg": "SHA256"}},
    )
    await refused(
        base["kid"], 400, "mechanism.pbkdf2 is not a derivation mechanism", mechanism={"pbkdf2": {}}
    )
    await refused(
        base["kid"],
        501,
        "xkslab does not emulate BIP32 key derivation",
        mechanism={"bip32_master_key": {"network": "mainnet"}},
    )
    cbc = {"encrypt_data": {"alg": "AES", "mode": "CBC", "plain": b64(bytes(32))}}
    await refused(base["kid"], 400, "encrypt_data.iv is required for CBC", mechanism=cbc)
    await refused(base["kid"], 400, "missing required field key_type", key_type=None)
    await refused(base["kid"], 400, "field elliptic_curve does not apply", elliptic_curve="NistP256")
    await refused(str(uuid.uuid4()), 404, "sobject does not exist")
    taken = {**new_key(base["name"]), "mechanism": ok}
    assert (await call(client, "POST", f"/crypto/v1/keys/{base['kid']}/derive", taken, status=409))[
        "message"
    ] == "sobject already exists"
    body = {"key": {"transient_key": "x"}, **new_key("tk"), "mechanism": ok}
    assert "transient" in (await call(client, "POST", "/crypto/v1/derive", body, status=400))["message"]

    rsa = await call(
        client,
        "POST",
        "/crypto/v1/keys",
        {"name": "r", "obj_type": "RSA", "key_size": 2048, "key_ops": ["DERIVEKEY", "SIGN"]},
        status=201,
    )
    await refused(
        rsa["kid"],
        400,
        "encrypt_data derives from AES, DES, DES3 keys, not RSA",
        mechanism={"encrypt_data": {**ok["encrypt_data"], "alg": "RSA"}},
    )
    await refused(
        rsa["kid"],
        400,
        "hkdf derives from SECRET, HMAC, AES keys, not RSA",
        mechanism={"hkdf": {"hash_alg": "SHA256"}},
    )
    await call(client, "PATCH", f"/crypto/v1/keys/{base['kid']}", {"enabled": False})
    await refused(base["kid"], 400, "the key is disabled")
    await call(client, "PATCH", f"/crypto/v1/keys/{base['kid']}", {"enabled": True})

    # An app needs DERIVEKEY in the base key's group (and MANAGE there to store the new key).
    app, _secret = await env.core.admin.create_app(
        env.system, "no-derive", groups={env.group_id: ["ENCRYPT", "MANAGE"]}
    )
    env.apps["no-derive"] = await env.core.admin.principal_for_app(app)
    body = {**new_key("by-app"), "mechanism": ok}
    denied = await call(
        client,
        "POST",
        f"/crypto/v1/keys/{base['kid']}/derive",
        body,
        status=403,
        headers={"X-Test-App": "no-derive"},
    )
    assert "DERIVEKEY" in denied["message"]

    rows = [r for r in await tail(env.core.sessions, 200) if r["operation"] == "crypto.derive"]
    assert sum(r["outcome"] == "refused" for r in rows) >= 6
    # Only the 409 read the base key: its use is recorded, and the new key's creation refused.
    assert [r["outcome"] for r in rows].count("success") == 1
    made = [r for r in await tail(env.core.sessions, 200) if r["operation"] == "key.derive"]
    assert [(r["outcome"], r["message"]) for r in made] == [
        ("refused", f"Derived AES key {base['name']}: sobject already exists")
    ] or made


async def test_agreed_keys_are_the_ecdh_secret(db_env: SimpleNamespace, aiohttp_client: Any) -> None:
    client = await routed(db_env, aiohttp_client)
    alice, bob = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())

    def pkcs8(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(ser.Encoding.DER, ser.PrivateFormat.PKCS8, ser.NoEncryption())

    ours = await imported(client, "EC", pkcs8(alice), ["AGREEKEY", "SIGN"])
    theirs_public = bob.public_key().public_bytes(ser.Encoding.DER, ser.PublicFormat.SubjectPublicKeyInfo)
    theirs = await imported(client, "EC", theirs_public, ["AGREEKEY", "VERIFY"])
    shared = bob.exchange(ec.ECDH(), alice.public_key())  # the oracle, from the other side
    body = {
        "private_key": {"kid": ours["kid"]},
        "public_key": {"name": theirs["name"]},
        "mechanism": "diffie_hellman",
        **new_key("agreed", "SECRET", 256, key_ops=["EXPORT", "DERIVEKEY"]),
    }
    agreed = await call(client, "POST", "/crypto/v1/agree", body)
    assert agreed["obj_type"] == "SECRET" and await exported(client, agreed["kid"]) == shared
    aes128 = await call(
        client, "POST", "/crypto/v1/agree", {**body, **new_key("a128", "AES", 128, key_ops=["EXPORT"])}
    )
    assert await exported(client, aes128["kid"]) == shared[:16] and aes128["kcv"]

    async def refused(status: int, needle: str, **changes: Any) -> None:
        answer = await call(
            client,
            "POST",
            "/crypto/v1/agree",
            {**body, "name": f"x-{uuid.uuid4()}", **changes},
            status=status,
        )
        assert needle in answer["message"], answer

    await refused(400, "mechanism must be diffie_hellman", mechanism="ecdh")
    await refused(400, "the shared secret gives 32 bytes; the new key needs 48", key_size=384)
    await refused(
        400, "private_key: this EC object holds only a public key", private_key={"kid": theirs["kid"]}
    )
    no_agree = await imported(client, "EC", pkcs8(ec.generate_private_key(ec.SECP256R1())), ["SIGN"])
    await refused(400, "operation AGREEKEY is not allowed", public_key={"kid": no_agree["kid"]})
    p384 = await imported(client, "EC", pkcs8(ec.generate_private_key(ec.SECP384R1())), ["AGREEKEY"])
    await refused(400, "different curves (NistP256 and NistP384)", public_key={"kid": p384["kid"]})
    aes_key = await imported(client, "AES", bytes(16), ["AGREEKEY"])
    await refused(400, "public_key: key agreement takes EC keys, not AES", public_key={"kid": aes_key["kid"]})
    await refused(400, "missing required field private_key", private_key=None)
    # An app needs the AGREEKEY permission in the keys' group.
    app, _secret = await db_env.core.admin.create_app(
        db_env.system, "no-agree", groups={db_env.group_id: ["SIGN", "MANAGE", "DERIVEKEY"]}
    )
    db_env.apps["no-agree"] = await db_env.core.admin.principal_for_app(app)
    denied = await call(
        client,
        "POST",
        "/crypto/v1/agree",
        {**body, "name": "by-app"},
        status=403,
        headers={"X-Test-App": "no-agree"},
    )
    assert "AGREEKEY" in denied["message"]
    rows = [r for r in await tail(db_env.core.sessions, 200) if r["operation"] == "crypto.agree"]
    outcomes = [r["outcome"] for r in rows]
    assert outcomes.count("success") == 2 and outcomes.count("refused") == 6
    assert {r["object_id"] for r in rows if r["outcome"] == "success"} == {ours["kid"]}


async def test_kcv_routes(env: SimpleNamespace, aiohttp_client: Any) -> None:
    client = await routed(env, aiohttp_client)
    key = await imported(client, "AES", bytes(16), ["ENCRYPT"])
    assert key["kcv"] == "66E94B"  # AES-128, zero key, zero block: 66e94bd4...
    by_kid = await call(client, "POST", "/crypto/v1/keys/kcv", {"kid": key["kid"]})
    assert by_kid == {"kid": key["kid"], "kcv": b64(H("66e94b"))}
    assert (await call(client, "POST", "/crypto/v1/keys/kcv", {"name": key["name"]}))["kcv"] == by_kid["kcv"]
    des3 = await call(
        client, "POST", "/crypto/v1/keys", {"name": "d3", "obj_type": "DES3", "key_size": 168}, status=201
    )
    assert (
        base64.b64decode((await call(client, "POST", "/crypto/v1/keys/kcv", {"kid": des3["kid"]}))["kcv"])
        .hex()
        .upper()
        == des3["kcv"]
    )
    hmac_key = await call(
        client, "POST", "/crypto/v1/keys", {"name": "h", "obj_type": "HMAC", "key_size": 256}, status=201
    )
    answer = await call(client, "POST", "/crypto/v1/keys/kcv", {"kid": hmac_key["kid"]}, status=400)
    assert "defined for AES, DES and DES3 keys, not HMAC" in answer["message"]
    transient = await call(
        client,
        "POST",
        "/crypto/v1/keys",
        {"name": "t", "obj_type": "AES", "key_size": 128, "transient": True},
        status=201,
    )
    assert (await call(client, "POST", "/crypto/v1/keys/kcv", {"transient_key": transient["transient_key"]}))[
        "kcv"
    ] == b64(H(transient["kcv"]))

    verify = "/crypto/v1/keys/kcv/verify"
    for kcv in ("66E94B", "66e94b", b64(H("66e94b"))):
        assert await call(
            client, "POST", verify, {"kcv": kcv, "value": b64(bytes(16)), "obj_type": "AES"}
        ) == {"verified": True}
    assert await call(
        client, "POST", verify, {"kcv": "66E94C", "value": b64(bytes(16)), "obj_type": "AES"}
    ) == {"verified": False}
    for body, needle in (
        ({"kcv": "66E9B", "value": b64(bytes(16)), "obj_type": "AES"}, "field kcv must be 3 bytes"),
        (
            {"kcv": "66E94B", "value": b64(bytes(10)), "obj_type": "AES"},
            "AES key must be 128, 192 or 256 bits",
        ),
        (
            {"kcv": "66E94B", "value": b64(bytes(16)), "obj_type": "HMAC"},
            "obj_type must be one of AES, DES, DES3",
        ),
        ({"kcv": "66E94B", "obj_type": "AES"}, "missing required field value"),
    ):
        assert needle in (await call(client, "POST", verify, body, status=400))["message"]
    rows = [r for r in await tail(env.core.sessions, 100) if r["operation"] == "key.kcv"]
    assert [r["outcome"] for r in rows].count("success") == 3 and [r["outcome"] for r in rows].count(
        "refused"
    ) == 1


async def test_des3_keys_and_aes_cfb_ofb_ccm(env: SimpleNamespace, aiohttp_client: Any) -> None:
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
    from cryptography.hazmat.decrepit.ciphers.modes import CFB, OFB
    from cryptography.hazmat.primitives.ciphers.aead import AESCCM

    client = await routed(env, aiohttp_client)
    made = await call(
        client, "POST", "/crypto/v1/keys", {"name": "des3", "obj_type": "DES3", "key_size": 168}, status=201
    )
    assert made["key_size"] == 168 and len(made["kcv"]) == 6
    assert set(made["key_ops"]) == {
        "ENCRYPT",
        "DECRYPT",
        "WRAPKEY",
        "UNWRAPKEY",
        "DERIVEKEY",
        "APPMANAGEABLE",
    }
    value = bytes(range(1, 25))
    des3 = await imported(client, "DES3", value, ["ENCRYPT", "DECRYPT"])
    assert des3["key_size"] == 168
    iv = bytes(8)
    out = await call(
        client,
        "POST",
        f"/crypto/v1/keys/{des3['kid']}/encrypt",
        {"alg": "DES3", "mode": "CBCNOPAD", "plain": b64(bytes(16)), "iv": b64(iv)},
    )
    enc = Cipher(TripleDES(value), modes.CBC(iv)).encryptor()
    assert base64.b64decode(out["cipher"]) == enc.update(bytes(16)) + enc.finalize()
    back = await call(
        client,
        "POST",
        "/crypto/v1/decrypt",
        {
            "key": {"kid": des3["kid"]},
            "alg": "DES3",
            "mode": "CBCNOPAD",
            "cipher": out["cipher"],
            "iv": b64(iv),
        },
    )
    assert back["plain"] == b64(bytes(16))
    two_key = await imported(client, "DES3", bytes(range(16)), ["ENCRYPT"])
    assert two_key["key_size"] == 112
    assert (await imported(client, "DES", bytes(8), ["ENCRYPT"]))["key_size"] == 56
    bad = await call(
        client,
        "PUT",
        "/crypto/v1/keys",
        {"name": "b", "obj_type": "DES3", "value": b64(bytes(20))},
        status=400,
    )
    assert "a value of 20 bytes is not a DES3 key" in bad["message"]
    bad = await call(
        client, "POST", "/crypto/v1/keys", {"name": "b", "obj_type": "DES3", "key_size": 192}, status=400
    )
    assert "key_size 192 is not valid for DES3" in bad["message"]
    gcm = await call(
        client,
        "POST",
        f"/crypto/v1/keys/{des3['kid']}/encrypt",
        {"alg": "DES3", "mode": "GCM", "plain": b64(b"x")},
        status=400,
    )
    assert "mode GCM is not available for DES and DES3 keys" in gcm["message"]
    wrong = await call(
        client,
        "POST",
        f"/crypto/v1/keys/{des3['kid']}/encrypt",
        {"alg": "AES", "mode": "CBC", "plain": b64(b"x")},
        status=400,
    )
    assert "alg AES does not match the key's type DES3" in wrong["message"]
    rekeyed = await call(client, "POST", "/crypto/v1/keys/rekey", {"name": "des3"})
    assert rekeyed["obj_type"] == "DES3" and rekeyed["key_size"] == 168 and rekeyed["kcv"] != made["kcv"]

    key_value = bytes(range(16))
    aes_key = await imported(client, "AES", key_value, ["ENCRYPT", "DECRYPT"])
    url = f"/crypto/v1/keys/{aes_key['kid']}"
    nonce, ad = bytes(range(12)), b"header"
    ccm = await call(
        client,
        "POST",
        f"{url}/encrypt",
        {
            "alg": "AES",
            "mode": "CCM",
            "plain": b64(b"ccm data"),
            "iv": b64(nonce),
            "ad": b64(ad),
            "tag_len": 64,
        },
    )
    sealed = AESCCM(key_value, tag_length=8).encrypt(nonce, b"ccm data", ad)
    assert base64.b64decode(ccm["cipher"]) + base64.b64decode(ccm["tag"]) == sealed
    opened = await call(
        client,
        "POST",
        f"{url}/decrypt",
        {
            "alg": "AES",
            "mode": "CCM",
            "cipher": ccm["cipher"],
            "iv": b64(nonce),
            "ad": b64(ad),
            "tag": ccm["tag"],
        },
    )
    assert opened["plain"] == b64(b"ccm data")
    tampered = {
        "alg": "AES",
        "mode": "CCM",
        "cipher": ccm["cipher"],
        "iv": b64(nonce),
        "ad": b64(b"other"),
        "tag": ccm["tag"],
    }
    await call(client, "POST", f"{url}/decrypt", tampered, status=400)
    for mode in ("CFB", "OFB"):
        out = await call(
            client, "POST", f"{url}/encrypt", {"alg": "AES", "mode": mode, "plain": b64(b"odd length data")}
        )
        iv16 = base64.b64decode(out["iv"])
        dec = Cipher(algorithms.AES(key_value), CFB(iv16) if mode == "CFB" else OFB(iv16)).decryptor()
        assert dec.update(base64.b64decode(out["cipher"])) + dec.finalize() == b"odd length data"


MALFORMED = [
    ("/crypto/v1/derive", []),
    (
        "/crypto/v1/derive",
        {
            "key": "kid",
            "name": "n",
            "key_type": "AES",
            "key_size": 128,
            "mechanism": {"hkdf": {"hash_alg": "SHA256"}},
        },
    ),
    (
        "/crypto/v1/derive",
        {"key": {"kid": "x"}, "name": "n", "key_type": "AES", "key_size": "128", "mechanism": {}},
    ),
    (
        "/crypto/v1/derive",
        {"key": {"kid": "x"}, "name": "n", "key_type": "AES", "key_size": 128, "mechanism": []},
    ),
    (
        "/crypto/v1/derive",
        {"key": {"kid": "x"}, "name": "n", "key_type": "AES", "key_size": 128, "mechanism": {"hkdf": 5}},
    ),
    (
        "/crypto/v1/derive",
        {"key": {"kid": "x"}, "name": "n", "key_type": 7, "key_size": 128, "mechanism": {"hkdf": {}}},
    ),
    (
        "/crypto/v1/derive",
        {
            "key": {"kid": "x"},
            "name": "n",
            "key_type": "AES",
            "key_size": 128,
            "mechanism": {"encrypt_data": {"alg": "AES", "mode": "ECB", "plain": "%%"}},
        },
    ),
    (
        "/crypto/v1/derive",
        {
            "key": {"kid": "x"},
            "name": "n",
            "key_type": "AES",
            "key_size": True,
            "mechanism": {"hkdf": {"hash_alg": "SHA256"}},
        },
    ),
    (
        "/crypto/v1/derive",
        {
            "key": {"kid": "x"},
            "name": "n",
            "key_type": "AES",
            "key_size": 128,
            "transient": "yes",
            "mechanism": {"hkdf": {"hash_alg": "SHA256"}},
        },
    ),
    (
        "/crypto/v1/agree",
        {
            "mechanism": "diffie_hellman",
            "name": "n",
            "key_type": "SECRET",
            "key_size": 256,
            "private_key": 1,
            "public_key": {"kid": "x"},
        },
    ),
    ("/crypto/v1/agree", {"mechanism": ["diffie_hellman"]}),
    ("/crypto/v1/keys/kcv", {"kid": "x", "name": "y"}),
    ("/crypto/v1/keys/kcv", "kid"),
    ("/crypto/v1/keys/kcv", {"transient_key": "not a token"}),
    ("/crypto/v1/keys/kcv/verify", {"kcv": 5, "value": "AAAA", "obj_type": "AES"}),
    ("/crypto/v1/keys/kcv/verify", {"kcv": "ZZZZZZ", "value": "AAAA", "obj_type": "AES"}),
    ("/crypto/v1/keys/kcv/verify", {"kcv": "000000", "value": "AAAA", "obj_type": "DES3"}),
]


async def test_malformed_requests_are_4xx_with_a_message(env: SimpleNamespace, aiohttp_client: Any) -> None:
    client = await routed(env, aiohttp_client)
    for path, body in MALFORMED:
        resp = await client.post(path, json=body)
        answer = await resp.json()
        assert 400 <= resp.status < 500 and answer["message"], (path, body, resp.status, answer)
    resp = await client.post(f"/crypto/v1/keys/{uuid.uuid4()}/derive", data=b"{not json")
    assert resp.status == 400
