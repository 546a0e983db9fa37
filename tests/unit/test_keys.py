"""KeyService: generation and import, crypto through the service, key_ops and lifecycle enforcement,
rekey, authorisation of apps, the audit trail (and that it never carries secrets), persistence across a
restart on both sealers, and deletion. Every test runs on SQLite and PostgreSQL (``sessions``)."""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dsm_emulator import crypto, store
from dsm_emulator.audit import AuditLog
from dsm_emulator.authz import Principal
from dsm_emulator.errors import AccessDenied, BadRequest, Conflict, IntegrityFailure, InvalidState, NotFound
from dsm_emulator.keyring import Keyring
from dsm_emulator.keyring_admin import KeyringAdmin
from dsm_emulator.keys import KeyService, KeySpec, effective_state
from dsm_emulator.models import Account, AuditRow, Group, SecurityObject
from dsm_emulator.sealing import Sealer, open_sealer
from xkslab_shared.config import AuditSettings

GENERATED_AES_OPS = {"ENCRYPT", "DECRYPT", "WRAPKEY", "UNWRAPKEY", "DERIVEKEY", "APPMANAGEABLE"}
PLAINTEXT = b"attack at dawn: the eagle lands at 0400, bring the secret codebook!"


# ------------------------------------------------------------------------------------ fixtures


async def seed_account(sessions: async_sessionmaker[AsyncSession]) -> tuple[str, str, str]:
    """An account with two groups; the first (oldest) is where an admin's keys go by default."""
    acct_id, group_id, other_group_id = (str(uuid.uuid4()) for _ in range(3))
    creator = str(uuid.uuid4())
    created = datetime.now(UTC)
    async with sessions.begin() as session:
        session.add(Account(acct_id=acct_id, name=f"acct-{acct_id}", enabled=True, created_at=created))
        await session.flush()
        session.add_all(
            [
                Group(
                    group_id=group_id,
                    acct_id=acct_id,
                    name="group-a",
                    description=None,
                    creator_type="user",
                    creator_id=creator,
                    created_at=created - timedelta(minutes=1),
                ),
                Group(
                    group_id=other_group_id,
                    acct_id=acct_id,
                    name="group-b",
                    description=None,
                    creator_type="user",
                    creator_id=creator,
                    created_at=created,
                ),
            ]
        )
    return acct_id, group_id, other_group_id


@dataclass
class Env:
    sessions: async_sessionmaker[AsyncSession]
    keyring: Keyring
    audit: AuditLog
    keys: KeyService
    acct_id: str
    group_id: str
    other_group_id: str
    admin: Principal

    def app(self, permissions: Mapping[str, Iterable[str]]) -> Principal:
        return Principal(
            kind="app",
            id=str(uuid.uuid4()),
            acct_id=self.acct_id,
            group_permissions=MappingProxyType({g: frozenset(p) for g, p in permissions.items()}),
        )

    async def aes(self, name: str, bits: int = 256, **spec: Any) -> SecurityObject:
        return await self.keys.create(self.admin, KeySpec(name=name, obj_type="AES", key_size=bits, **spec))

    async def rows(self, **where: Any) -> list[AuditRow]:
        return await audit_rows(self.sessions, **where)


async def audit_rows(sessions: async_sessionmaker[AsyncSession], **where: Any) -> list[AuditRow]:
    stmt = select(AuditRow).order_by(AuditRow.chain, AuditRow.seq)
    for column, value in where.items():
        stmt = stmt.where(getattr(AuditRow, column) == value)
    async with sessions() as session:
        return list((await session.scalars(stmt)).all())


async def count_objects(sessions: async_sessionmaker[AsyncSession]) -> int:
    async with sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(SecurityObject)) or 0)


@pytest.fixture
async def env(sessions: async_sessionmaker[AsyncSession], keyring: Keyring) -> AsyncIterator[Env]:
    acct_id, group_id, other_group_id = await seed_account(sessions)
    audit = AuditLog(sessions, keyring, AuditSettings())
    await audit.start()
    try:
        yield Env(
            sessions=sessions,
            keyring=keyring,
            audit=audit,
            keys=KeyService(sessions, keyring, audit),
            acct_id=acct_id,
            group_id=group_id,
            other_group_id=other_group_id,
            admin=Principal(kind="user", id=str(uuid.uuid4()), acct_id=acct_id, is_admin=True),
        )
    finally:
        await audit.close()


# ------------------------------------------------------------------------- generate and import


@pytest.mark.parametrize("bits", [128, 192, 256])
async def test_generate_aes(env: Env, bits: int) -> None:
    obj = await env.aes(f"aes-{bits}", bits)
    assert obj.key_size == bits
    assert set(obj.key_ops) == GENERATED_AES_OPS
    assert "EXPORT" not in obj.key_ops
    assert obj.state == "Active" and effective_state(obj) == "Active"
    assert obj.origin == "FortanixHSM"
    assert obj.group_id == env.group_id
    assert obj.version == 1 and obj.replaced_kid is None and obj.replacement_kid is None
    assert obj.activation_date is not None

    material = await env.keys.material(obj)
    assert len(material) == bits // 8
    assert obj.kcv is not None and len(obj.kcv) == 6
    assert obj.kcv == crypto.kcv(material)

    stored = await env.keys.get(env.admin, kid=obj.kid)
    assert stored.sealed_material is not None
    assert material not in stored.sealed_material
    assert material.hex().encode() not in stored.sealed_material
    # A service without a cache opens the stored blob to the same material.
    assert await KeyService(env.sessions, env.keyring, env.audit).material(stored) == material

    other = await env.aes(f"aes-{bits}-2", bits)
    assert await env.keys.material(other) != material
    with pytest.raises(InvalidState, match="not exportable"):
        await env.keys.export(env.admin, kid=obj.kid)


async def test_import_aes_is_external_and_exportable(env: Env) -> None:
    value = os.urandom(32)
    obj = await env.keys.create(env.admin, KeySpec(name="imported", obj_type="AES"), value=value)
    assert obj.origin == "External"
    assert obj.key_size == 256
    assert "EXPORT" in obj.key_ops
    assert GENERATED_AES_OPS <= set(obj.key_ops)
    assert obj.kcv == crypto.kcv(value)
    assert obj.sealed_material is not None and value not in obj.sealed_material

    exported_obj, exported = await env.keys.export(env.admin, kid=obj.kid)
    assert exported == value
    assert exported_obj.kid == obj.kid
    _, by_name = await env.keys.export(env.admin, name="imported")
    assert by_name == value

    # With an explicit key_size that matches, and key_ops without EXPORT.
    fixed = await env.keys.create(
        env.admin,
        KeySpec(name="imported-128", obj_type="AES", key_size=128, key_ops=["ENCRYPT", "DECRYPT"]),
        value=os.urandom(16),
    )
    assert fixed.key_size == 128 and sorted(fixed.key_ops) == ["DECRYPT", "ENCRYPT"]
    with pytest.raises(InvalidState):
        await env.keys.export(env.admin, kid=fixed.kid)


async def test_generate_hmac_and_secret(env: Env) -> None:
    hmac = await env.keys.create(env.admin, KeySpec(name="mac", obj_type="HMAC", key_size=256))
    assert hmac.obj_type == "HMAC" and hmac.key_size == 256
    assert set(hmac.key_ops) == {"MACGENERATE", "MACVERIFY", "APPMANAGEABLE"}
    assert hmac.kcv is None
    assert len(await env.keys.material(hmac)) == 32

    secret = await env.keys.create(env.admin, KeySpec(name="secret", obj_type="SECRET", key_size=512))
    assert secret.obj_type == "SECRET" and secret.key_size == 512
    assert set(secret.key_ops) == {"DERIVEKEY", "APPMANAGEABLE"}
    assert len(await env.keys.material(secret)) == 64
    assert (
        secret.sealed_material is not None and await env.keys.material(secret) not in secret.sealed_material
    )

    with pytest.raises(InvalidState):
        await env.keys.encrypt(env.admin, hmac.kid, "GCM", PLAINTEXT)
    with pytest.raises(BadRequest):
        await env.keys.create(env.admin, KeySpec(name="mac-small", obj_type="HMAC", key_size=64))


async def test_opaque_import_only(env: Env) -> None:
    blob = b"\x00\xffany opaque bytes at all, not a key \x01\x02\x03"
    obj = await env.keys.create(env.admin, KeySpec(name="opaque", obj_type="OPAQUE"), value=blob)
    assert obj.obj_type == "OPAQUE" and obj.key_size == len(blob) * 8
    assert obj.origin == "External" and obj.kcv is None
    _, exported = await env.keys.export(env.admin, kid=obj.kid)
    assert exported == blob

    with pytest.raises(BadRequest, match="only be imported"):
        await env.keys.create(env.admin, KeySpec(name="opaque-gen", obj_type="OPAQUE", key_size=256))
    with pytest.raises(InvalidState):
        await env.keys.encrypt(env.admin, obj.kid, "GCM", PLAINTEXT)  # OPAQUE has no ENCRYPT op
    assert await count_objects(env.sessions) == 1


@pytest.mark.parametrize(
    ("spec", "value"),
    [
        (KeySpec(name="k", obj_type="ARIA", key_size=128), None),
        (KeySpec(name="k", obj_type="aes", key_size=128), None),
        (KeySpec(name="k", obj_type="AES", key_size=100), None),
        (KeySpec(name="k", obj_type="AES"), None),
        (KeySpec(name="k", obj_type="AES", key_size=128), bytes(32)),
        (KeySpec(name="k", obj_type="AES"), bytes(20)),
        (KeySpec(name="k", obj_type="AES", key_size=128, key_ops=["ENCRYPT", "LAUNCHMISSILES"]), None),
        (KeySpec(name="", obj_type="AES", key_size=128), None),
        (KeySpec(name="k", obj_type="AES", key_size=128, state="Destroyed"), None),
    ],
    ids=[
        "obj_type",
        "obj_type-case",
        "aes-100",
        "no-size",
        "size-mismatch",
        "import-bad-size",
        "key_ops",
        "empty-name",
        "state",
    ],
)
async def test_invalid_specs_are_bad_requests(env: Env, spec: KeySpec, value: bytes | None) -> None:
    with pytest.raises(BadRequest):
        await env.keys.create(env.admin, spec, value=value)
    assert await count_objects(env.sessions) == 0
    operation = "key.import" if value is not None else "key.create"
    refused = await env.rows(operation=operation, outcome="refused")
    assert len(refused) == 1
    assert refused[0].actor_id == env.admin.id


async def test_duplicate_name_conflicts(env: Env) -> None:
    first = await env.aes("dup")
    with pytest.raises(Conflict, match="sobject already exists"):
        await env.aes("dup")
    with pytest.raises(Conflict, match="sobject already exists"):
        await env.keys.create(env.admin, KeySpec(name="dup", obj_type="AES"), value=os.urandom(16))
    other = await env.aes("other")
    with pytest.raises(Conflict, match="sobject already exists"):
        await env.keys.update(env.admin, other.kid, name="dup")
    assert await count_objects(env.sessions) == 2
    assert (await env.keys.get(env.admin, name="dup")).kid == first.kid
    # The same name in another account is fine.
    acct2, _, _ = await seed_account(env.sessions)
    admin2 = Principal(kind="user", id=str(uuid.uuid4()), acct_id=acct2, is_admin=True)
    theirs = await env.keys.create(admin2, KeySpec(name="dup", obj_type="AES", key_size=128))
    assert theirs.acct_id == acct2 and theirs.kid != first.kid


# ---------------------------------------------------------------------------------- crypto


@pytest.mark.parametrize("tag_len", [96, 128])
async def test_gcm_with_aad(env: Env, tag_len: int) -> None:
    key = await env.aes("gcm")
    aad = b"header: not secret"
    ct = await env.keys.encrypt(env.admin, key.kid, "GCM", PLAINTEXT, aad=aad, tag_len_bits=tag_len)
    assert ct.iv is not None and len(ct.iv) == 12
    assert ct.tag is not None and len(ct.tag) == tag_len // 8
    assert ct.cipher != PLAINTEXT and len(ct.cipher) == len(PLAINTEXT)
    plain = await env.keys.decrypt(env.admin, key.kid, "GCM", ct.cipher, iv=ct.iv, aad=aad, tag=ct.tag)
    assert plain == PLAINTEXT
    # It is the key's own material that was used.
    material = await env.keys.material(key)
    assert crypto.decrypt("GCM", material, ct.cipher, iv=ct.iv, aad=aad, tag=ct.tag) == PLAINTEXT

    with pytest.raises(IntegrityFailure):
        await env.keys.decrypt(env.admin, key.kid, "GCM", ct.cipher, iv=ct.iv, aad=b"other", tag=ct.tag)
    with pytest.raises(IntegrityFailure):
        await env.keys.decrypt(env.admin, key.kid, "GCM", ct.cipher, iv=ct.iv, tag=ct.tag)
    other = await env.aes("gcm-other")
    with pytest.raises(IntegrityFailure):
        await env.keys.decrypt(env.admin, other.kid, "GCM", ct.cipher, iv=ct.iv, aad=aad, tag=ct.tag)
    with pytest.raises(BadRequest):
        await env.keys.encrypt(env.admin, key.kid, "GCM", PLAINTEXT, tag_len_bits=64)


@pytest.mark.parametrize("mode", ["CBC", "CBCNOPAD", "CTR", "ECB"])
async def test_block_modes_round_trip(env: Env, mode: str) -> None:
    key = await env.aes(f"key-{mode}", 192)
    plain = PLAINTEXT[:48]
    ct = await env.keys.encrypt(env.admin, key.kid, mode, plain)
    if mode == "ECB":
        assert ct.iv is None
    else:
        assert ct.iv is not None and len(ct.iv) == 16
    assert ct.tag is None
    assert ct.cipher != plain
    assert len(ct.cipher) == (64 if mode == "CBC" else 48)
    assert await env.keys.decrypt(env.admin, key.kid, mode, ct.cipher, iv=ct.iv) == plain
    assert crypto.decrypt(mode, await env.keys.material(key), ct.cipher, iv=ct.iv) == plain

    iv = bytes(range(16))
    if mode != "ECB":
        fixed = await env.keys.encrypt(env.admin, key.kid, mode, plain, iv=iv)
        assert fixed.iv == iv
        assert fixed.cipher == crypto.encrypt(mode, await env.keys.material(key), plain, iv=iv).cipher
    if mode in ("CBCNOPAD", "ECB"):
        with pytest.raises(BadRequest):
            await env.keys.encrypt(env.admin, key.kid, mode, b"not aligned")
    with pytest.raises(BadRequest):
        await env.keys.encrypt(env.admin, key.kid, "XTS", plain)


@pytest.mark.parametrize("mode", ["KW", "KWP"])
async def test_wrap_and_unwrap(env: Env, mode: str) -> None:
    wrapping = await env.aes("wrapping")
    value = os.urandom(16)
    subject = await env.keys.create(env.admin, KeySpec(name="subject", obj_type="AES"), value=value)

    wrapped = await env.keys.wrap(env.admin, wrapping.kid, subject.kid, mode)
    assert wrapped.iv is None and wrapped.tag is None
    assert len(wrapped.cipher) == 24
    assert value not in wrapped.cipher

    unwrapped = await env.keys.unwrap(
        env.admin, wrapping.kid, wrapped.cipher, mode, KeySpec(name="unwrapped", obj_type="AES")
    )
    assert unwrapped.kid != subject.kid
    assert unwrapped.key_size == 128 and unwrapped.origin == "External"
    assert unwrapped.kcv == subject.kcv

    ct = await env.keys.encrypt(env.admin, subject.kid, "GCM", PLAINTEXT)
    plain = await env.keys.decrypt(env.admin, unwrapped.kid, "GCM", ct.cipher, iv=ct.iv, tag=ct.tag)
    assert plain == PLAINTEXT
    _, exported = await env.keys.export(env.admin, kid=unwrapped.kid)
    assert exported == value

    tampered = bytes([wrapped.cipher[0] ^ 1]) + wrapped.cipher[1:]
    with pytest.raises(IntegrityFailure):
        await env.keys.unwrap(env.admin, wrapping.kid, tampered, mode, KeySpec(name="never", obj_type="AES"))
    # A generated key is not exportable, so it cannot be wrapped either.
    with pytest.raises(InvalidState):
        await env.keys.wrap(env.admin, wrapping.kid, wrapping.kid, mode)
    # A key without WRAPKEY cannot wrap.
    plain_key = await env.aes("no-wrap", key_ops=["ENCRYPT", "DECRYPT"])
    with pytest.raises(InvalidState):
        await env.keys.wrap(env.admin, plain_key.kid, subject.kid, mode)
    assert {o.name for o in await env.keys.list(env.admin)} == {"wrapping", "subject", "unwrapped", "no-wrap"}


# ------------------------------------------------------------------------- key_ops, enabled


async def test_key_ops_are_enforced(env: Env) -> None:
    decrypt_only = await env.aes("decrypt-only", key_ops=["DECRYPT"])
    with pytest.raises(InvalidState, match="key_ops"):
        await env.keys.encrypt(env.admin, decrypt_only.kid, "GCM", PLAINTEXT)
    encrypt_only = await env.aes("encrypt-only", key_ops=["ENCRYPT"])
    ct = await env.keys.encrypt(env.admin, encrypt_only.kid, "CBC", PLAINTEXT)
    with pytest.raises(InvalidState, match="key_ops"):
        await env.keys.decrypt(env.admin, encrypt_only.kid, "CBC", ct.cipher, iv=ct.iv)
    # Granting DECRYPT afterwards makes it work.
    await env.keys.update(env.admin, encrypt_only.kid, key_ops=["ENCRYPT", "DECRYPT"])
    assert await env.keys.decrypt(env.admin, encrypt_only.kid, "CBC", ct.cipher, iv=ct.iv) == PLAINTEXT
    with pytest.raises(BadRequest):
        await env.keys.update(env.admin, encrypt_only.kid, key_ops=["ENCRYPT", "BOGUS"])


async def test_disabled_key_refuses_crypto(env: Env) -> None:
    key = await env.aes("toggle")
    ct = await env.keys.encrypt(env.admin, key.kid, "GCM", PLAINTEXT)
    updated = await env.keys.update(env.admin, key.kid, enabled=False)
    assert updated.enabled is False
    assert (await env.keys.get(env.admin, kid=key.kid)).enabled is False
    with pytest.raises(InvalidState, match="disabled"):
        await env.keys.encrypt(env.admin, key.kid, "GCM", PLAINTEXT)
    with pytest.raises(InvalidState, match="disabled"):
        await env.keys.decrypt(env.admin, key.kid, "GCM", ct.cipher, iv=ct.iv, tag=ct.tag)
    await env.keys.update(env.admin, key.kid, enabled=True)
    assert await env.keys.decrypt(env.admin, key.kid, "GCM", ct.cipher, iv=ct.iv, tag=ct.tag) == PLAINTEXT
    again = await env.keys.encrypt(env.admin, key.kid, "GCM", PLAINTEXT)
    assert again.cipher != ct.cipher  # a fresh IV
    # Created disabled.
    off = await env.aes("born-disabled", enabled=False)
    with pytest.raises(InvalidState, match="disabled"):
        await env.keys.encrypt(env.admin, off.kid, "GCM", PLAINTEXT)


# ---------------------------------------------------------------------------------- states


async def test_preactive_and_activate(env: Env) -> None:
    key = await env.aes("pre", state="PreActive")
    assert key.state == "PreActive" and key.activation_date is None
    with pytest.raises(InvalidState, match="PreActive"):
        await env.keys.encrypt(env.admin, key.kid, "GCM", PLAINTEXT)
    activated = await env.keys.activate(env.admin, key.kid)
    assert activated.state == "Active" and activated.activation_date is not None
    ct = await env.keys.encrypt(env.admin, key.kid, "GCM", PLAINTEXT)
    assert await env.keys.decrypt(env.admin, key.kid, "GCM", ct.cipher, iv=ct.iv, tag=ct.tag) == PLAINTEXT
    with pytest.raises(InvalidState):
        await env.keys.activate(env.admin, key.kid)
    with pytest.raises(InvalidState):
        await env.keys.activate(env.admin, (await env.aes("active")).kid)

    # A future activation date makes a new key PreActive; a past one makes it Active.
    future = await env.aes("future", activation_date=datetime.now(UTC) + timedelta(hours=1))
    assert future.state == "PreActive" and effective_state(future) == "PreActive"
    with pytest.raises(InvalidState):
        await env.keys.encrypt(env.admin, future.kid, "GCM", PLAINTEXT)
    past = await env.aes("past", activation_date=datetime.now(UTC) - timedelta(hours=1))
    assert past.state == "Active"
    await env.keys.encrypt(env.admin, past.kid, "GCM", PLAINTEXT)


async def test_revoke_superseded_then_compromised(env: Env) -> None:
    key = await env.aes("revoked")
    ct = await env.keys.encrypt(env.admin, key.kid, "GCM", PLAINTEXT)
    revoked = await env.keys.revoke(env.admin, key.kid, "Superseded", "replaced by a new key")
    assert revoked.state == "Deactivated"
    assert revoked.deactivation_date is not None and revoked.compromise_date is None
    assert revoked.revocation_reason == {"code": "Superseded", "message": "replaced by a new key"}
    stored = await env.keys.get(env.admin, kid=key.kid)
    assert stored.state == "Deactivated" and effective_state(stored) == "Deactivated"
    with pytest.raises(InvalidState, match="Deactivated"):
        await env.keys.encrypt(env.admin, key.kid, "GCM", PLAINTEXT)
    assert await env.keys.decrypt(env.admin, key.kid, "GCM", ct.cipher, iv=ct.iv, tag=ct.tag) == PLAINTEXT

    compromised = await env.keys.revoke(env.admin, key.kid, "KeyCompromise")
    assert compromised.state == "Compromised" and compromised.compromise_date is not None
    with pytest.raises(InvalidState):
        await env.keys.encrypt(env.admin, key.kid, "GCM", PLAINTEXT)
    assert await env.keys.decrypt(env.admin, key.kid, "GCM", ct.cipher, iv=ct.iv, tag=ct.tag) == PLAINTEXT
    with pytest.raises(InvalidState):
        await env.keys.revoke(env.admin, key.kid, "Superseded")

    direct = await env.aes("direct")
    assert (await env.keys.revoke(env.admin, direct.kid, "KeyCompromise")).state == "Compromised"


async def test_bad_revocation_code(env: Env) -> None:
    key = await env.aes("revoke-bad")
    with pytest.raises(BadRequest):
        await env.keys.revoke(env.admin, key.kid, "BecauseISaidSo")
    with pytest.raises(BadRequest):
        await env.keys.revoke(env.admin, key.kid, "superseded")
    assert (await env.keys.get(env.admin, kid=key.kid)).state == "Active"
    refused = await env.rows(operation="key.revoke")
    assert [(r.outcome, r.object_id) for r in refused] == [("refused", key.kid)] * 2


async def test_destroy(env: Env) -> None:
    key = await env.aes("doomed")
    ct = await env.keys.encrypt(env.admin, key.kid, "GCM", PLAINTEXT)
    with pytest.raises(InvalidState, match="revoked before"):
        await env.keys.destroy(env.admin, key.kid)
    assert (await env.keys.get(env.admin, kid=key.kid)).sealed_material is not None

    await env.keys.revoke(env.admin, key.kid, "CessationOfOperation")
    destroyed = await env.keys.destroy(env.admin, key.kid)
    assert destroyed.state == "Destroyed" and destroyed.destruction_date is not None
    stored = await env.keys.get(env.admin, kid=key.kid)
    assert stored.state == "Destroyed" and stored.sealed_material is None
    with pytest.raises(InvalidState):
        await env.keys.decrypt(env.admin, key.kid, "GCM", ct.cipher, iv=ct.iv, tag=ct.tag)
    with pytest.raises(InvalidState):
        await env.keys.material(stored)
    # A fresh service (no cache) refuses too.
    fresh = KeyService(env.sessions, env.keyring, env.audit)
    with pytest.raises(InvalidState):
        await fresh.decrypt(env.admin, key.kid, "GCM", ct.cipher, iv=ct.iv, tag=ct.tag)
    with pytest.raises(InvalidState):
        await env.keys.destroy(env.admin, key.kid)
    with pytest.raises(InvalidState):
        await env.keys.rekey(env.admin, kid=key.kid)
    assert [o.kid for o in await env.keys.list(env.admin)] == []
    assert [o.kid for o in await env.keys.list(env.admin, show_destroyed=True)] == [key.kid]

    # A PreActive key never used may be destroyed directly.
    pre = await env.aes("pre-doomed", state="PreActive")
    assert (await env.keys.destroy(env.admin, pre.kid)).state == "Destroyed"


async def test_past_deactivation_date_acts_as_deactivated(env: Env) -> None:
    key = await env.aes("expiring")
    ct = await env.keys.encrypt(env.admin, key.kid, "GCM", PLAINTEXT)
    await env.keys.update(env.admin, key.kid, deactivation_date=datetime.now(UTC) - timedelta(seconds=1))
    stored = await env.keys.get(env.admin, kid=key.kid)
    assert stored.state == "Active"  # the row was not flipped ...
    assert effective_state(stored) == "Deactivated"  # ... but it behaves as Deactivated
    with pytest.raises(InvalidState, match="Deactivated"):
        await env.keys.encrypt(env.admin, key.kid, "GCM", PLAINTEXT)
    assert await env.keys.decrypt(env.admin, key.kid, "GCM", ct.cipher, iv=ct.iv, tag=ct.tag) == PLAINTEXT
    # No longer effectively Active, so it may be destroyed without an explicit revoke.
    assert (await env.keys.destroy(env.admin, key.kid)).state == "Destroyed"

    # The same when the date is given at creation, and a future date changes nothing yet.
    born = await env.aes("born-expired", deactivation_date=datetime.now(UTC) - timedelta(minutes=1))
    with pytest.raises(InvalidState):
        await env.keys.encrypt(env.admin, born.kid, "GCM", PLAINTEXT)
    later = await env.aes("expires-later", deactivation_date=datetime.now(UTC) + timedelta(hours=1))
    await env.keys.encrypt(env.admin, later.kid, "GCM", PLAINTEXT)


# ----------------------------------------------------------------------------------- rekey


async def test_rekey_by_name(env: Env) -> None:
    old = await env.aes("rotating", 128, description="d", custom_metadata={"team": "crypto"})
    old_ct = await env.keys.encrypt(env.admin, old.kid, "GCM", PLAINTEXT)

    new = await env.keys.rekey(env.admin, name="rotating")
    assert new.kid != old.kid
    assert new.name == "rotating"
    assert new.version == old.version + 1 == 2
    assert new.replaced_kid == old.kid and new.replacement_kid is None
    assert new.state == "Active" and new.obj_type == "AES" and new.key_size == 128
    assert sorted(new.key_ops) == sorted(old.key_ops)
    assert new.group_id == old.group_id
    assert new.custom_metadata == {"team": "crypto"} and new.description == "d"
    assert await env.keys.material(new) != await env.keys.material(old)
    assert new.kcv == crypto.kcv(await env.keys.material(new))

    rotated = await env.keys.get(env.admin, kid=old.kid)
    assert rotated.name.startswith("rotating (rotated at ") and rotated.name.endswith(")")
    assert rotated.replacement_kid == new.kid
    assert rotated.state == "Active"  # not deactivated unless asked
    assert (await env.keys.get(env.admin, name="rotating")).kid == new.kid

    assert await env.keys.decrypt(env.admin, old.kid, "GCM", old_ct.cipher, iv=old_ct.iv, tag=old_ct.tag) == (
        PLAINTEXT
    )
    new_ct = await env.keys.encrypt(env.admin, new.kid, "GCM", PLAINTEXT)
    assert await env.keys.decrypt(env.admin, new.kid, "GCM", new_ct.cipher, iv=new_ct.iv, tag=new_ct.tag) == (
        PLAINTEXT
    )
    with pytest.raises(IntegrityFailure):
        await env.keys.decrypt(env.admin, new.kid, "GCM", old_ct.cipher, iv=old_ct.iv, tag=old_ct.tag)

    with pytest.raises(InvalidState):
        await env.keys.rekey(env.admin, kid=old.kid)
    with pytest.raises(InvalidState):
        await env.keys.rekey(env.admin, name=rotated.name)
    with pytest.raises(NotFound):
        await env.keys.rekey(env.admin, name="no such key")
    with pytest.raises(BadRequest):
        await env.keys.rekey(env.admin)


async def test_rekey_twice_and_deactivate_rotated(env: Env) -> None:
    first = await env.aes("twice")
    second = await env.keys.rekey(env.admin, kid=first.kid, deactivate_rotated_key=True)
    assert (await env.keys.get(env.admin, kid=first.kid)).state == "Deactivated"
    # Rotating the new key again within the same second must not collide with the first rotated name.
    third = await env.keys.rekey(env.admin, name="twice")
    assert third.version == 3 and third.replaced_kid == second.kid
    names = {o.kid: o.name for o in await env.keys.list(env.admin)}
    assert names[third.kid] == "twice"
    assert len(set(names.values())) == 3
    assert all(name.startswith("twice (rotated at ") for kid, name in names.items() if kid != third.kid)

    # A name of the maximum length still fits once the rotation suffix is added.
    long_name = "n" * 4096
    await env.aes(long_name, 128)
    replacement = await env.keys.rekey(env.admin, name=long_name)
    assert replacement.name == long_name
    rotated = await env.keys.get(env.admin, kid=replacement.replaced_kid)
    assert len(rotated.name) <= 4096 and rotated.name.endswith(")") and "(rotated at " in rotated.name


# --------------------------------------------------------------------------- authorisation


async def test_app_with_encrypt_only(env: Env) -> None:
    key = await env.aes("shared")
    app = env.app({env.group_id: ["ENCRYPT"]})
    ct = await env.keys.encrypt(app, key.kid, "GCM", PLAINTEXT)
    with pytest.raises(AccessDenied):
        await env.keys.decrypt(app, key.kid, "GCM", ct.cipher, iv=ct.iv, tag=ct.tag)
    assert (await env.keys.get(app, kid=key.kid)).kid == key.kid
    with pytest.raises(AccessDenied):
        await env.keys.export(app, kid=key.kid)
    with pytest.raises(AccessDenied):
        await env.keys.update(app, key.kid, enabled=False)
    with pytest.raises(AccessDenied):
        await env.keys.create(app, KeySpec(name="app-made", obj_type="AES", key_size=128))

    ok = await env.rows(actor_id=app.id, operation="crypto.encrypt")
    assert [(r.outcome, r.object_id, r.actor_type) for r in ok] == [("success", key.kid, "App")]
    refused = await env.rows(actor_id=app.id, operation="crypto.decrypt")
    assert [(r.outcome, r.object_id) for r in refused] == [("refused", key.kid)]
    assert (await env.keys.get(env.admin, kid=key.kid)).enabled is True


async def test_app_in_another_group_is_refused_and_audited(env: Env) -> None:
    key = await env.aes("group-a-key")
    outsider = env.app({env.other_group_id: ["ENCRYPT", "DECRYPT", "MANAGE", "EXPORT"]})
    # Exactly what a missing key gives (issue 11): the kid or name of another group's key is not confirmed.
    for attempt in (
        env.keys.get(outsider, kid=key.kid),
        env.keys.get(outsider, name="group-a-key"),
        env.keys.encrypt(outsider, key.kid, "GCM", PLAINTEXT),
        env.keys.revoke(outsider, key.kid, "KeyCompromise"),
        env.keys.delete(outsider, key.kid),
    ):
        with pytest.raises(NotFound) as refused:
            await attempt
        assert refused.value.message == "sobject does not exist"

    refusals = await env.rows(actor_id=outsider.id, outcome="refused")
    by_op = {r.operation: r for r in refusals}
    assert {"crypto.encrypt", "key.revoke", "key.delete"} <= set(by_op)
    for row in by_op.values():
        assert row.object_id == key.kid
        assert f"object {key.kid} is in group {env.group_id}" in row.message  # the audit row says why
        assert row.actor_type == "App"
        assert row.acct_id == env.acct_id
    assert await env.rows(actor_id=outsider.id, outcome="success") == []
    stored = await env.keys.get(env.admin, kid=key.kid)
    assert stored.state == "Active"

    # A principal of another account does not even learn that the key exists.
    acct2, _, _ = await seed_account(env.sessions)
    stranger = Principal(kind="user", id=str(uuid.uuid4()), acct_id=acct2, is_admin=True)
    with pytest.raises(NotFound):
        await env.keys.get(stranger, kid=key.kid)
    with pytest.raises(NotFound):
        await env.keys.encrypt(stranger, key.kid, "GCM", PLAINTEXT)
    assert await env.keys.list(stranger) == []


async def test_app_manage_needs_appmanageable(env: Env) -> None:
    locked = await env.aes("locked", key_ops=["ENCRYPT", "DECRYPT"])
    manageable = await env.aes("manageable")
    app = env.app({env.group_id: ["MANAGE", "ENCRYPT"]})
    with pytest.raises((AccessDenied, InvalidState)):
        await env.keys.update(app, locked.kid, enabled=False)
    with pytest.raises((AccessDenied, InvalidState)):
        await env.keys.delete(app, locked.kid)
    with pytest.raises((AccessDenied, InvalidState)):
        await env.keys.rekey(app, kid=locked.kid)
    stored = await env.keys.get(env.admin, kid=locked.kid)
    assert stored.enabled is True and stored.name == "locked" and stored.replacement_kid is None
    refused = await env.rows(actor_id=app.id, operation="key.update")
    assert [(r.outcome, r.object_id) for r in refused] == [("refused", locked.kid)]

    updated = await env.keys.update(app, manageable.kid, description="set by app", enabled=False)
    assert updated.description == "set by app" and updated.enabled is False
    created = await env.keys.create(app, KeySpec(name="app-made", obj_type="AES", key_size=128))
    assert created.group_id == env.group_id and created.creator_type == "app"
    assert created.creator_id == app.id
    rekeyed = await env.keys.rekey(app, kid=created.kid)
    assert rekeyed.replaced_kid == created.kid


async def test_list_for_app_shows_only_its_groups(env: Env) -> None:
    a1 = await env.aes("a1")
    a2 = await env.aes("a2")
    b1 = await env.aes("b1", group_id=env.other_group_id)
    assert b1.group_id == env.other_group_id

    app_a = env.app({env.group_id: ["ENCRYPT"]})
    app_b = env.app({env.other_group_id: ["ENCRYPT"]})
    app_both = env.app({env.group_id: ["ENCRYPT"], env.other_group_id: ["DECRYPT"]})
    app_none = env.app({})
    assert {o.kid for o in await env.keys.list(app_a)} == {a1.kid, a2.kid}
    assert {o.kid for o in await env.keys.list(app_b)} == {b1.kid}
    assert {o.kid for o in await env.keys.list(app_both)} == {a1.kid, a2.kid, b1.kid}
    assert await env.keys.list(app_none) == []
    assert {o.kid for o in await env.keys.list(env.admin)} == {a1.kid, a2.kid, b1.kid}
    # A group filter cannot widen what an app sees.
    assert await env.keys.list(app_a, group_id=env.other_group_id) == []
    assert [o.name for o in await env.keys.list(env.admin, sort="name:desc")] == ["b1", "a2", "a1"]
    assert [o.name for o in await env.keys.list(env.admin, sort="name:asc", limit=2)] == ["a1", "a2"]
    assert [o.name for o in await env.keys.list(env.admin, name="a2")] == ["a2"]
    with pytest.raises(NotFound):
        await env.keys.create(env.admin, KeySpec(name="x", obj_type="AES", key_size=128, group_id="nope"))
    with pytest.raises(BadRequest):
        await env.keys.list(env.admin, sort="created:asc")


async def test_malformed_kid_is_not_found(env: Env) -> None:
    for kid in ("not-a-kid", "x" * 100, str(uuid.uuid4())):
        with pytest.raises(NotFound):
            await env.keys.get(env.admin, kid=kid)
        with pytest.raises(NotFound):
            await env.keys.encrypt(env.admin, kid, "GCM", PLAINTEXT)
        with pytest.raises(NotFound):
            await env.keys.update(env.admin, kid, enabled=False)
    refused = await env.rows(outcome="refused")
    assert {r.operation for r in refused} == {"crypto.encrypt", "key.update"}
    assert len(refused) == 6


# ----------------------------------------------------------------------------------- audit


async def test_every_operation_writes_one_audit_row(env: Env) -> None:
    admin = env.admin
    app = env.app({env.group_id: ["ENCRYPT", "DECRYPT", "WRAPKEY", "UNWRAPKEY", "EXPORT", "MANAGE"]})
    seen = len(await env.rows())

    async def expect(
        operation: str, actor: Principal, object_id: str | None, outcome: str = "success"
    ) -> None:
        nonlocal seen
        rows = await env.rows()
        assert len(rows) == seen + 1, [r.operation for r in rows[seen:]]
        row = rows[-1]
        assert (row.operation, row.actor_id, row.object_id, row.outcome) == (
            operation,
            actor.id,
            object_id,
            outcome,
        )
        assert row.actor_type == actor.actor_type
        assert row.acct_id == env.acct_id
        seen += 1

    key = await env.aes("audited")
    await expect("key.create", admin, key.kid)
    assert (await env.rows(object_id=key.kid))[0].group_ids == [env.group_id]
    value = os.urandom(32)
    imported = await env.keys.create(app, KeySpec(name="audited-import", obj_type="AES"), value=value)
    await expect("key.import", app, imported.kid)
    await env.keys.update(admin, key.kid, description="desc")
    await expect("key.update", admin, key.kid)
    ct = await env.keys.encrypt(app, key.kid, "GCM", PLAINTEXT)
    await expect("crypto.encrypt", app, key.kid)
    assert (await env.rows())[-1].action_type == "CRYPTOOPERATION"
    await env.keys.decrypt(app, key.kid, "GCM", ct.cipher, iv=ct.iv, tag=ct.tag)
    await expect("crypto.decrypt", app, key.kid)
    with pytest.raises(IntegrityFailure):
        await env.keys.decrypt(app, key.kid, "GCM", ct.cipher, iv=ct.iv, tag=bytes(16))
    await expect("crypto.decrypt", app, key.kid, "refused")
    wrapped = await env.keys.wrap(app, key.kid, imported.kid, "KWP")
    await expect("crypto.wrap", app, key.kid)
    await env.keys.export(app, kid=imported.kid)
    await expect("key.export", app, imported.kid)
    await env.keys.export(app, name="audited-import")
    await expect("key.export", app, imported.kid)  # named by name, recorded by kid
    await env.keys.unwrap(
        app, key.kid, wrapped.cipher, "KWP", KeySpec(name="audited-unwrapped", obj_type="AES")
    )
    rows = await env.rows()
    assert [r.operation for r in rows[seen:]] == ["crypto.unwrap", "key.import"]
    assert rows[seen].object_id == key.kid
    seen += 2
    new = await env.keys.rekey(admin, kid=key.kid)
    await expect("key.rekey", admin, new.kid)
    await env.keys.revoke(admin, key.kid, "Superseded")
    await expect("key.revoke", admin, key.kid)
    await env.keys.destroy(admin, key.kid)
    await expect("key.destroy", admin, key.kid)
    pre = await env.aes("audited-pre", state="PreActive")
    await expect("key.create", admin, pre.kid)
    await env.keys.activate(admin, pre.kid)
    await expect("key.activate", admin, pre.kid)
    await env.keys.delete(admin, pre.kid)
    await expect("key.delete", admin, pre.kid)
    with pytest.raises(Conflict):
        await env.aes("audited-import")
    await expect("key.create", admin, None, "refused")
    # Reads are not audited.
    await env.keys.get(admin, kid=key.kid)
    await env.keys.list(admin)
    rows = await env.rows()
    assert len(rows) == seen
    # Every row about a key names the key's group.
    for row in rows:
        if row.object_id is not None:
            assert row.group_ids == [env.group_id], (row.operation, row.outcome)


async def test_audit_never_contains_plaintext_or_key_material(env: Env) -> None:
    app = env.app({env.group_id: ["ENCRYPT", "DECRYPT", "WRAPKEY", "UNWRAPKEY", "EXPORT", "MANAGE"]})
    value = os.urandom(32)
    imported = await env.keys.create(env.admin, KeySpec(name="leaky?", obj_type="AES"), value=value)
    generated = await env.aes("generated")
    aad = b"aad is not secret but let us check anyway"
    for principal in (env.admin, app):
        for kid in (imported.kid, generated.kid):
            ct = await env.keys.encrypt(principal, kid, "GCM", PLAINTEXT, aad=aad)
            await env.keys.decrypt(principal, kid, "GCM", ct.cipher, iv=ct.iv, aad=aad, tag=ct.tag)
            cbc = await env.keys.encrypt(principal, kid, "CBC", PLAINTEXT)
            await env.keys.decrypt(principal, kid, "CBC", cbc.cipher, iv=cbc.iv)
            with pytest.raises(IntegrityFailure):
                await env.keys.decrypt(principal, kid, "GCM", ct.cipher, iv=ct.iv, tag=ct.tag)
    await env.keys.export(app, kid=imported.kid)
    wrapped = await env.keys.wrap(env.admin, generated.kid, imported.kid, "KW")
    unwrapped = await env.keys.unwrap(
        env.admin, generated.kid, wrapped.cipher, "KW", KeySpec(name="unwrapped", obj_type="AES")
    )
    rekeyed = await env.keys.rekey(env.admin, kid=generated.kid)
    await env.keys.encrypt(env.admin, rekeyed.kid, "ECB", PLAINTEXT[:32])

    secrets_ = [PLAINTEXT, value, await env.keys.material(generated), await env.keys.material(rekeyed)]
    secrets_.append(await env.keys.material(unwrapped))
    needles: set[str] = set()
    for secret in secrets_:
        needles |= {
            secret.hex(),
            secret.hex().upper(),
            base64.b64encode(secret).decode(),
            base64.urlsafe_b64encode(secret).decode(),
            # a prefix long enough to be meaningful, in case a message truncates
            secret.hex()[:24],
            base64.b64encode(secret).decode()[:20],
        }
    needles.add(PLAINTEXT.decode())
    needles.add(PLAINTEXT.decode()[:20])

    rows = await env.rows()
    assert len(rows) >= 28
    for row in rows:
        for column in AuditRow.__table__.columns:
            cell = getattr(row, column.key)
            texts = (
                [cell] if isinstance(cell, str) else [str(c) for c in cell] if isinstance(cell, list) else []
            )
            if isinstance(cell, bytes):
                assert not any(s in cell for s in secrets_), column.key
            for text in texts:
                leaked = [n for n in needles if n in text]
                assert not leaked, f"{row.operation}.{column.key} leaks a secret: {text!r}"


# ----------------------------------------------------------------------------- persistence


async def test_keys_survive_a_restart(db_url: str, sealer: Sealer, seal_config: object) -> None:
    engine = store.create_engine(db_url)
    sessions = store.session_factory(engine)
    try:
        acct_id, _, _ = await seed_account(sessions)
        admin = Principal(kind="user", id=str(uuid.uuid4()), acct_id=acct_id, is_admin=True)
        keyring = await Keyring.initialize(sessions, sealer)
        audit = AuditLog(sessions, keyring, AuditSettings())
        await audit.start()
        try:
            keys = KeyService(sessions, keyring, audit)
            gen = await keys.create(admin, KeySpec(name="gen", obj_type="AES", key_size=256))
            value = os.urandom(24)
            imp = await keys.create(admin, KeySpec(name="imp", obj_type="AES"), value=value)
            gcm = await keys.encrypt(admin, gen.kid, "GCM", PLAINTEXT, aad=b"ctx")
            cbc = await keys.encrypt(admin, imp.kid, "CBC", PLAINTEXT)
            # A keyring rotation in between: blobs of both terms must open after the restart.
            assert await KeyringAdmin(keyring, audit).rotate() == 2
            late = await keys.create(admin, KeySpec(name="late", obj_type="AES", key_size=128))
            ctr = await keys.encrypt(admin, late.kid, "CTR", PLAINTEXT)
            hmac = await keys.create(admin, KeySpec(name="mac", obj_type="HMAC", key_size=256))
            hmac_material = await keys.material(hmac)
            rotated_new = await keys.rekey(admin, kid=gen.kid)
            rotated_ct = await keys.encrypt(admin, rotated_new.kid, "GCM", PLAINTEXT)
            rows_before = len(await audit_rows(sessions, actor_id=admin.id))
        finally:
            await audit.close()
    finally:
        await engine.dispose()
    sealer.close()

    engine = store.create_engine(db_url)
    sessions = store.session_factory(engine)
    reopened = open_sealer(seal_config)  # type: ignore[arg-type]
    try:
        keyring = await Keyring.load(sessions, reopened)
        assert keyring.terms == [1, 2]
        audit = AuditLog(sessions, keyring, AuditSettings())
        await audit.start()
        try:
            keys = KeyService(sessions, keyring, audit)
            assert await keys.decrypt(
                admin, gen.kid, "GCM", gcm.cipher, iv=gcm.iv, aad=b"ctx", tag=gcm.tag
            ) == (PLAINTEXT)
            assert await keys.decrypt(admin, imp.kid, "CBC", cbc.cipher, iv=cbc.iv) == PLAINTEXT
            assert await keys.decrypt(admin, late.kid, "CTR", ctr.cipher, iv=ctr.iv) == PLAINTEXT
            assert (
                await keys.decrypt(
                    admin, rotated_new.kid, "GCM", rotated_ct.cipher, iv=rotated_ct.iv, tag=rotated_ct.tag
                )
                == PLAINTEXT
            )
            _, exported = await keys.export(admin, kid=imp.kid)
            assert exported == value
            reloaded_hmac = await keys.get(admin, kid=hmac.kid)
            assert await keys.material(reloaded_hmac) == hmac_material
            reloaded_gen = await keys.get(admin, kid=gen.kid)
            assert reloaded_gen.kcv == gen.kcv == crypto.kcv(await keys.material(reloaded_gen))
            assert reloaded_gen.replacement_kid == rotated_new.kid
            # New work after the restart, and its audit rows continue the trail.
            fresh = await keys.encrypt(admin, late.kid, "GCM", PLAINTEXT)
            assert await keys.decrypt(admin, late.kid, "GCM", fresh.cipher, iv=fresh.iv, tag=fresh.tag) == (
                PLAINTEXT
            )
            assert len(await audit_rows(sessions, actor_id=admin.id)) == rows_before + 7
        finally:
            await audit.close()
    finally:
        reopened.close()
        await engine.dispose()


# ---------------------------------------------------------------------------------- delete


async def test_delete(env: Env) -> None:
    key = await env.aes("deleted")
    keep = await env.aes("kept")
    ct = await env.keys.encrypt(env.admin, key.kid, "GCM", PLAINTEXT)
    assert await env.keys.material(key)  # cached
    await env.keys.delete(env.admin, key.kid)
    with pytest.raises(NotFound):
        await env.keys.get(env.admin, kid=key.kid)
    with pytest.raises(NotFound):
        await env.keys.get(env.admin, name="deleted")
    assert [o.kid for o in await env.keys.list(env.admin, show_destroyed=True)] == [keep.kid]
    with pytest.raises(NotFound):
        await env.keys.decrypt(env.admin, key.kid, "GCM", ct.cipher, iv=ct.iv, tag=ct.tag)
    with pytest.raises(NotFound):
        await env.keys.delete(env.admin, key.kid)
    assert await count_objects(env.sessions) == 1
    # The name is free again, and it is a different key.
    again = await env.aes("deleted")
    assert again.kid != key.kid
    with pytest.raises(IntegrityFailure):
        await env.keys.decrypt(env.admin, again.kid, "GCM", ct.cipher, iv=ct.iv, tag=ct.tag)
