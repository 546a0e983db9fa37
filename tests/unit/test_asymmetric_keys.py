"""RSA and EC keys at the DSM's handlers: the group's cryptographic_policy applied to their sizes and
curves, the batch sign and verify paths (not taken for a kid), and, on SQLite and PostgreSQL, the private
key sealed in its row while the public key is kept as given."""

from __future__ import annotations

import base64
import hashlib
from types import SimpleNamespace
from typing import Any, cast

from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from sqlalchemy import select

from dsm_emulator.api import admin, components, crypto, signing, sobjects
from dsm_emulator.models import SecurityObject
from tests import api_harness
from tests.unit.test_group_policies import call, group
from tests.unit.test_group_policies import db_env as db_env  # a fixture

Client = TestClient  # type: ignore[type-arg]
template = api_harness.template
env = api_harness.env
ROUTES = (admin.routes, components.routes, sobjects.routes, crypto.routes, signing.routes)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


async def routed(env: SimpleNamespace, aiohttp_client: Any) -> Client:
    return cast(Client, await api_harness.route_client(env, aiohttp_client, *ROUTES))


async def test_cryptographic_policy_limits_rsa_sizes_and_ec_curves(
    env: SimpleNamespace, aiohttp_client: Any
) -> None:
    client = await routed(env, aiohttp_client)
    policy = {"rsa": {"minimum_key_length": 3072}, "ec": {"elliptic_curves": ["NistP384"]}}
    gid = await group(client, "asym", cryptographic_policy=policy)
    shown = (await call(client, "GET", f"/sys/v1/groups/{gid}"))["cryptographic_policy"]
    assert shown == policy
    rsa_key = {"name": "r", "obj_type": "RSA", "group_id": gid}
    small = await call(client, "POST", "/crypto/v1/keys", {**rsa_key, "key_size": 2048}, status=400)
    assert "at least 3072" in small["message"]
    made = await call(client, "POST", "/crypto/v1/keys", {**rsa_key, "key_size": 3072}, status=201)
    assert made["key_size"] == 3072 and made["obj_type"] == "RSA"
    ec_key = {"name": "e", "obj_type": "EC", "group_id": gid}
    refused = await call(
        client, "POST", "/crypto/v1/keys", {**ec_key, "elliptic_curve": "NistP256"}, status=400
    )
    assert "NistP384" in refused["message"] and "NistP256" in refused["message"]
    local = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    await call(client, "PUT", "/crypto/v1/keys", {**ec_key, "value": b64(local)}, status=400)
    made = await call(client, "POST", "/crypto/v1/keys", {**ec_key, "elliptic_curve": "NistP384"}, status=201)
    assert made["elliptic_curve"] == "NistP384" and made["key_size"] is None

    aes_only = await group(client, "aes-only", cryptographic_policy={"aes": {}})
    body = {"name": "x", "obj_type": "RSA", "key_size": 2048, "group_id": aes_only}
    message = (await call(client, "POST", "/crypto/v1/keys", body, status=400))["message"]
    assert "does not allow RSA" in message
    bad_curve = {"name": "g", "cryptographic_policy": {"ec": {"elliptic_curves": ["Curve9"]}}}
    assert "unknown curve" in (await call(client, "POST", "/sys/v1/groups", bad_curve, status=400))["message"]


async def test_batch_sign_and_verify(env: SimpleNamespace, aiohttp_client: Any) -> None:
    client = await routed(env, aiohttp_client)
    key = await call(
        client, "POST", "/crypto/v1/keys", {"name": "b", "obj_type": "RSA", "key_size": 2048}, status=201
    )
    digest = hashlib.sha256(b"batch").digest()
    item = {"key": {"name": "b"}, "hash_alg": "SHA256", "hash": b64(digest), "mode": {"PSS": {}}}
    signed = await call(client, "POST", "/crypto/v1/keys/batch/sign", [item, {**item, "hash_alg": "MD5"}])
    assert [s["status"] for s in signed] == [200, 400]
    signature = base64.b64decode(signed[0]["body"]["signature"])
    public = serialization.load_der_public_key(base64.b64decode(key["pub_key"]))
    assert isinstance(public, rsa.RSAPublicKey)
    public.verify(signature, b"batch", padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())
    checks = [{**item, "signature": b64(signature)}, {**item, "signature": b64(bytes(256))}]
    verified = await call(client, "POST", "/crypto/v1/keys/batch/verify", checks)
    assert [v["body"]["result"] for v in verified] == [True, False]
    assert verified[0]["body"]["kid"] == key["kid"]


async def test_private_key_is_sealed_in_its_row(db_env: SimpleNamespace, aiohttp_client: Any) -> None:
    client = await routed(db_env, aiohttp_client)
    body = {"name": "sealed", "obj_type": "EC", "elliptic_curve": "NistP521", "key_ops": ["SIGN", "EXPORT"]}
    made = await call(client, "POST", "/crypto/v1/keys", body, status=201)
    exported = base64.b64decode((await call(client, "GET", f"/crypto/v1/keys/{made['kid']}/export"))["value"])
    private = serialization.load_der_private_key(exported, password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    scalar = private.private_numbers().private_value.to_bytes(66, "big")
    async with db_env.core.sessions() as session:
        row = await session.scalar(select(SecurityObject).where(SecurityObject.kid == made["kid"]))
    assert row is not None and row.sealed_material is not None
    assert exported not in row.sealed_material and scalar not in row.sealed_material
    assert row.pub_key == base64.b64decode(made["pub_key"]) and row.elliptic_curve == "NistP521"


def test_imported_private_keys_are_kept_as_pkcs8_whatever_form_came_in() -> None:
    from dsm_emulator import asymmetric

    for obj_type, private in (
        ("RSA", rsa.generate_private_key(65537, 2048)),
        ("EC", ec.generate_private_key(ec.SECP521R1())),
    ):
        spki = private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        pkcs8 = private.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        traditional = private.private_bytes(  # PKCS#1 RSAPrivateKey, SEC1 ECPrivateKey
            serialization.Encoding.DER,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        for value in (pkcs8, traditional):
            pair = asymmetric.load(obj_type, value, curve=None)
            assert (pair.material, pair.pub_key, pair.public_only) == (pkcs8, spki, False)
        public = asymmetric.load(obj_type, spki, curve=None)
        assert (public.material, public.pub_key, public.public_only) == (spki, spki, True)
