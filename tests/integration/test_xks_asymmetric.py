"""The XKS path keeps refusing keys that are not AES (the XKS spec: an external key is an AES-256 key): an
RSA or EC key in the XKS app's group, with every key_op the path looks for, is InvalidKeyUsageException on
Encrypt and Decrypt, and its GetKeyMetadata does not claim AES_256."""

from __future__ import annotations

import dataclasses

import pytest

from dsm_emulator.keys import KeySpec
from tests.integration.test_xks_conformance import assert_error, send, valid_body
from tests.xks_harness import ALL_OPS, XksEnv, xks_env, xks_template

__all__ = ["xks_env", "xks_template"]  # fixtures


@pytest.mark.parametrize(
    "spec",
    [
        KeySpec(name="rsa-in-xks", obj_type="RSA", key_size=2048, key_ops=ALL_OPS),
        KeySpec(name="ec-in-xks", obj_type="EC", elliptic_curve="NistP256", key_ops=ALL_OPS),
    ],
    ids=["RSA", "EC"],
)
async def test_asymmetric_keys_are_refused_on_the_xks_path(xks_env: XksEnv, spec: KeySpec) -> None:
    kek = await xks_env.core.keys.get(xks_env.system, kid=xks_env.kek_id)  # in the XKS app's group
    made = await xks_env.core.keys.create(xks_env.system, dataclasses.replace(spec, group_id=kek.group_id))
    for op in ("encrypt", "decrypt"):
        body = await valid_body(xks_env, op)
        assert_error(await send(xks_env, xks_env.url(op, made.kid), body), 400, "InvalidKeyUsageException")
    reply = await send(xks_env, xks_env.url("metadata", made.kid), await valid_body(xks_env, "metadata"))
    assert reply.status == 200 and reply.json()["keySpec"] != "AES_256"
