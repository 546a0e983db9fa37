"""AdminService and the credential helpers: bootstrap, user and app logins, group and app management,
secret and awsxks credentials (rotation with a previous pair), authorisation with audited refusals, and
that no secret is stored in the clear anywhere (every column of every table, and the SQLite files).
Database tests run on SQLite and PostgreSQL (``sessions``); the pure helpers run once."""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, inspect, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dsm_emulator import audit as audit_module
from dsm_emulator import secrets as creds
from dsm_emulator.admin import AdminService
from dsm_emulator.audit import AuditLog
from dsm_emulator.authz import DEFAULT_APP_PERMISSIONS, Principal, system_principal
from dsm_emulator.errors import AccessDenied, AuthFailed, BadRequest, Conflict, NotFound
from dsm_emulator.keyring import Keyring
from dsm_emulator.models import (
    AccountMember,
    App,
    AppCredential,
    AppGroup,
    AuditRow,
    Group,
    SecurityObject,
    User,
)
from xkslab_shared.config import AuditSettings

PASSWORD = "correct horse battery staple"
EMAIL = "Admin@Example.COM"
ACCESS_KEY_RE = re.compile(r"^[A-Z2-7]{20,30}$")
XKS_SECRET_RE = re.compile(r"^[a-zA-Z0-9/+=]{43,64}$")


# ------------------------------------------------------------------------------ pure helpers


def test_hash_and_verify_secret() -> None:
    encoded = creds.hash_secret("s3cret")
    scheme, n, r, p, salt, digest = encoded.split("$")
    assert (scheme, n, r, p) == ("scrypt", "16384", "8", "1")
    assert len(base64.b64decode(salt)) == 16 and len(base64.b64decode(digest)) == 32
    assert "s3cret" not in encoded
    assert creds.verify_secret("s3cret", encoded)
    assert not creds.verify_secret("s3cret!", encoded)
    assert creds.hash_secret("s3cret") != encoded  # salted


@pytest.mark.parametrize(
    "encoded",
    [
        "",
        "scrypt",
        "bcrypt$16384$8$1$AAAA$AAAA",
        "scrypt$16384$8$1$!!!!$AAAA",
        "scrypt$1000$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "scrypt$1073741824$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAA",
        "scrypt$x$8$1$AAAA$AAAA",
        None,
    ],
)
def test_verify_secret_refuses_malformed_encodings(encoded: Any) -> None:
    assert creds.verify_secret("s3cret", encoded) is False


def test_app_secret_and_api_key() -> None:
    secret = creds.new_app_secret()
    assert ":" not in secret and "=" not in secret
    assert len(base64.urlsafe_b64decode(secret + "==")) == 64
    assert creds.new_app_secret() != secret
    assert len(base64.urlsafe_b64decode(creds.new_app_secret(32) + "=")) == 32
    with pytest.raises(ValueError):
        creds.new_app_secret(4)
    app_id = str(uuid.uuid4())
    key = creds.api_key(app_id, secret)
    assert base64.b64decode(key, validate=True) == f"{app_id}:{secret}".encode()
    assert creds.parse_api_key(key) == (app_id, secret)
    for bad in ["not base64!", base64.b64encode(b"no-colon").decode(), base64.b64encode(b"a:b:c").decode()]:
        with pytest.raises(ValueError):
            creds.parse_api_key(bad)


def test_awsxks_credential_shapes() -> None:
    for _ in range(20):
        access_key_id, secret = creds.new_awsxks_credential()
        assert len(access_key_id) == 24 and ACCESS_KEY_RE.match(access_key_id)
        assert len(secret) == 44 and XKS_SECRET_RE.match(secret)
        assert creds.valid_access_key_id(access_key_id) and creds.valid_xks_secret(secret)
    assert not creds.valid_access_key_id("A" * 19)
    assert not creds.valid_access_key_id("A" * 31)
    assert not creds.valid_access_key_id("ABCDEFGHIJKLMNOPQRST1")  # '1' is not base32
    assert not creds.valid_access_key_id("abcdefghijklmnopqrstu")
    assert not creds.valid_access_key_id("A" * 20 + "\n")
    assert not creds.valid_xks_secret("a" * 42)
    assert not creds.valid_xks_secret("a" * 65)
    assert not creds.valid_xks_secret("a" * 42 + "-")
    assert creds.valid_xks_secret("a/+=" * 11)


# ---------------------------------------------------------------------------------- fixtures


@dataclass
class Env:
    sessions: async_sessionmaker[AsyncSession]
    keyring: Keyring
    audit: AuditLog
    admin: AdminService
    acct_id: str
    user: User
    group_id: str
    p: Principal  # the bootstrap administrator

    async def rows(self, **where: Any) -> list[AuditRow]:
        stmt = select(AuditRow).order_by(AuditRow.chain, AuditRow.seq)
        for column, value in where.items():
            stmt = stmt.where(getattr(AuditRow, column) == value)
        async with self.sessions() as session:
            return list((await session.scalars(stmt)).all())

    async def group(self, name: str) -> str:
        return (await self.admin.create_group(self.p, name)).group_id

    async def count(self, model: Any, *where: Any) -> int:
        async with self.sessions() as session:
            return int(await session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


@pytest.fixture
async def env(sessions: async_sessionmaker[AsyncSession], keyring: Keyring) -> AsyncIterator[Env]:
    audit = AuditLog(sessions, keyring, AuditSettings())
    await audit.start()
    try:
        admin = AdminService(sessions, keyring, audit)
        account, user, group = await admin.bootstrap("Lab", EMAIL, PASSWORD)
        p = await admin.principal_for_user(user, account.acct_id)
        yield Env(sessions, keyring, audit, admin, account.acct_id, user, group.group_id, p)
        assert await audit_module.verify(sessions, keyring) == []
    finally:
        await audit.close()


# -------------------------------------------------------------------------- bootstrap, users


async def test_bootstrap(env: Env) -> None:
    assert env.user.email == "admin@example.com"
    assert env.user.password_hash.startswith("scrypt$") and PASSWORD not in env.user.password_hash
    assert creds.verify_secret(PASSWORD, env.user.password_hash)
    assert env.p == Principal(kind="user", id=env.user.user_id, acct_id=env.acct_id, is_admin=True)
    groups = await env.admin.list_groups(env.p)
    assert [(g.group_id, g.name, g.creator_id) for g in groups] == [
        (env.group_id, "Default Group", env.user.user_id)
    ]
    assert await env.admin.user_accounts(env.user.user_id) == {env.acct_id: ["ACCOUNTADMINISTRATOR"]}
    assert (await env.admin.get_account(env.p, env.acct_id)).name == "Lab"
    with pytest.raises(NotFound):
        await env.admin.get_account(env.p, str(uuid.uuid4()))
    (row,) = await env.rows(operation="account.bootstrap")
    assert (row.actor_type, row.actor_id, row.acct_id, row.action_type, row.outcome) == (
        "System",
        None,
        env.acct_id,
        "ADMINISTRATIVE",
        "success",
    )
    assert row.group_ids == [env.group_id]


async def test_bootstrap_conflicts_and_validation(env: Env) -> None:
    with pytest.raises(Conflict, match="account already exists"):
        await env.admin.bootstrap("Lab", "other@example.com", PASSWORD)
    with pytest.raises(Conflict, match="user already exists"):
        await env.admin.bootstrap("Lab 2", "ADMIN@example.com", PASSWORD)
    with pytest.raises(BadRequest, match="admin_email"):
        await env.admin.bootstrap("Lab 3", "not-an-email", PASSWORD)
    with pytest.raises(BadRequest, match="admin_password"):
        await env.admin.bootstrap("Lab 3", "x@example.com", "")
    with pytest.raises(BadRequest, match="account_name"):
        await env.admin.bootstrap("  ", "x@example.com", PASSWORD)
    refused = await env.rows(operation="account.bootstrap", outcome="refused")
    assert len(refused) == 2  # the two conflicts; validation fails before anything is attempted
    assert await env.count(User) == 1
    other = await env.admin.create_account("Second")
    assert other.name == "Second" and other.acct_id != env.acct_id
    with pytest.raises(Conflict, match="account already exists"):
        await env.admin.create_account("Second")


async def test_user_authentication(env: Env) -> None:
    user = await env.admin.authenticate_user("admin@example.com", PASSWORD)
    assert user.user_id == env.user.user_id and user.last_logged_in_at is not None
    with pytest.raises(AuthFailed) as wrong:
        await env.admin.authenticate_user(EMAIL, PASSWORD + "x")
    with pytest.raises(AuthFailed) as unknown:
        await env.admin.authenticate_user("nobody@example.com", PASSWORD)
    assert wrong.value.message == unknown.value.message == "invalid credentials"
    rows = await env.rows(operation="user.authenticate")
    assert [(r.action_type, r.outcome, r.actor_id) for r in rows] == [
        ("AUTH", "success", env.user.user_id),
        ("AUTH", "refused", env.user.user_id),
        ("AUTH", "refused", None),
    ]
    assert all(PASSWORD not in r.message for r in rows)


async def test_principal_for_user_roles(env: Env) -> None:
    async with env.sessions.begin() as session:
        member = User(
            user_id=str(uuid.uuid4()),
            email="member@example.com",
            password_hash=creds.hash_secret("pw"),
            created_at=datetime.now(UTC),
            last_logged_in_at=None,
        )
        session.add(member)
        await session.flush()
        session.add(AccountMember(user_id=member.user_id, acct_id=env.acct_id, roles=["ACCOUNTMEMBER"]))
    p = await env.admin.principal_for_user(member, env.acct_id)
    assert p.kind == "user" and not p.is_admin
    # members read, but do not manage
    assert [g.group_id for g in await env.admin.list_groups(p)] == [env.group_id]
    with pytest.raises(AccessDenied):
        await env.admin.create_group(p, "mine")
    with pytest.raises(AccessDenied):
        await env.admin.principal_for_user(member, str(uuid.uuid4()))
    with pytest.raises(AccessDenied):
        await env.admin.principal_for_user(member, "not-a-uuid")


# ------------------------------------------------------------------------------------ groups


async def test_group_crud(env: Env) -> None:
    created = await env.admin.create_group(env.p, " Payments ", "card keys")
    assert (created.name, created.description, created.acct_id) == ("Payments", "card keys", env.acct_id)
    assert created.creator_type == "user" and created.creator_id == env.user.user_id
    assert (await env.admin.get_group(env.p, created.group_id)).name == "Payments"
    assert {g.name for g in await env.admin.list_groups(env.p)} == {"Default Group", "Payments"}

    with pytest.raises(Conflict, match="group already exists"):
        await env.admin.create_group(env.p, "Payments")
    other = await env.admin.create_group(env.p, "Other")
    with pytest.raises(Conflict, match="group already exists"):
        await env.admin.update_group(env.p, other.group_id, name="Payments")

    updated = await env.admin.update_group(env.p, created.group_id, name="Cards", description="")
    assert (updated.name, updated.description) == ("Cards", None)
    assert (await env.admin.get_group(env.p, created.group_id)).name == "Cards"

    await env.admin.delete_group(env.p, created.group_id)
    with pytest.raises(NotFound, match="group does not exist"):
        await env.admin.get_group(env.p, created.group_id)
    with pytest.raises(NotFound, match="group does not exist"):
        await env.admin.delete_group(env.p, created.group_id)
    with pytest.raises(NotFound, match="group does not exist"):
        await env.admin.get_group(env.p, "nonsense")
    with pytest.raises(BadRequest, match="name"):
        await env.admin.create_group(env.p, "")
    with pytest.raises(BadRequest, match="name"):
        await env.admin.create_group(env.p, "x" * 201)

    ops = [(r.operation, r.outcome) for r in await env.rows(action_type="ADMINISTRATIVE")]
    assert ops[1:] == [
        ("group.create", "success"),
        ("group.create", "refused"),
        ("group.create", "success"),
        ("group.update", "refused"),
        ("group.update", "success"),
        ("group.delete", "success"),
        ("group.delete", "refused"),
    ]


async def test_group_in_another_account_is_invisible(env: Env) -> None:
    account, user, group = await env.admin.bootstrap("Other lab", "o@example.com", PASSWORD)
    other_admin = await env.admin.principal_for_user(user, account.acct_id)
    with pytest.raises(NotFound):
        await env.admin.get_group(env.p, group.group_id)
    with pytest.raises(NotFound):
        await env.admin.delete_group(env.p, group.group_id)
    with pytest.raises(NotFound):
        await env.admin.create_app(env.p, "x", groups=[group.group_id], default_group=None)
    assert [g.group_id for g in await env.admin.list_groups(other_admin)] == [group.group_id]
    # names are unique per account, not globally
    await env.admin.create_group(other_admin, "Default Group 2")
    await env.admin.create_group(env.p, "Default Group 2")


async def test_delete_group_protection(env: Env) -> None:
    keys = await env.group("keys")
    async with env.sessions.begin() as session:
        session.add(
            SecurityObject(
                kid=str(uuid.uuid4()),
                acct_id=env.acct_id,
                group_id=keys,
                name="k",
                obj_type="AES",
                key_size=256,
                key_ops=["ENCRYPT"],
                state="Active",
                origin="FortanixHSM",
                custom_metadata={},
                creator_type="user",
                creator_id=env.user.user_id,
                created_at=datetime.now(UTC),
            )
        )
    with pytest.raises(Conflict, match="security object"):
        await env.admin.delete_group(env.p, keys)

    only = await env.group("only")
    app, _ = await env.admin.create_app(env.p, "single", groups=[only], default_group=None)
    with pytest.raises(Conflict, match="only group"):
        await env.admin.delete_group(env.p, only)

    # a group that is an app's default but not its only group can go; another becomes the default
    second = await env.group("second")
    both, _ = await env.admin.create_app(env.p, "both", groups=[second, only], default_group=second)
    await env.admin.update_app(env.p, app.app_id, add_groups=[env.group_id])
    await env.admin.delete_group(env.p, second)
    assert (await env.admin.get_app(env.p, both.app_id)).default_group_id == only
    assert set(await env.admin.app_groups(both.app_id)) == {only}
    assert await env.count(Group, Group.group_id.in_([keys, only])) == 2


# -------------------------------------------------------------------------------------- apps


async def test_create_app_with_map_and_list_groups(env: Env) -> None:
    second = await env.group("second")
    mapped, secret = await env.admin.create_app(
        env.p,
        "mapped",
        groups={env.group_id: ["ENCRYPT", "DECRYPT"], second: ["SIGN"]},
        default_group=second,
        description="d",
        app_type="kes",
    )
    assert (mapped.auth_type, mapped.default_group_id, mapped.app_type, mapped.enabled) == (
        "Secret",
        second,
        "kes",
        True,
    )
    assert await env.admin.app_groups(mapped.app_id) == {
        env.group_id: frozenset({"ENCRYPT", "DECRYPT"}),
        second: frozenset({"SIGN"}),
    }
    assert len(base64.urlsafe_b64decode(secret + "==")) == 64

    listed, _ = await env.admin.create_app(env.p, "listed", groups=[second, env.group_id], default_group=None)
    assert listed.default_group_id == second  # the first one
    assert await env.admin.app_groups(listed.app_id) == {
        second: DEFAULT_APP_PERMISSIONS,
        env.group_id: DEFAULT_APP_PERMISSIONS,
    }
    assert [a.name for a in await env.admin.list_apps(env.p)] == ["mapped", "listed"]
    assert {a.name for a in await env.admin.list_apps(env.p, group_id=env.group_id)} == {"mapped", "listed"}
    third = await env.group("third")
    assert await env.admin.list_apps(env.p, group_id=third) == []

    principal = await env.admin.principal_for_app(mapped)
    assert (principal.kind, principal.id, principal.acct_id, principal.is_admin) == (
        "app",
        mapped.app_id,
        env.acct_id,
        False,
    )
    assert dict(principal.group_permissions) == await env.admin.app_groups(mapped.app_id)
    # an app sees itself and its own groups only
    assert [a.app_id for a in await env.admin.list_apps(principal)] == [mapped.app_id]
    assert {g.group_id for g in await env.admin.list_groups(principal)} == {env.group_id, second}
    with pytest.raises(NotFound):
        await env.admin.get_group(principal, third)
    with pytest.raises(NotFound):
        await env.admin.get_app(principal, listed.app_id)
    assert (await env.admin.get_app(principal, mapped.app_id)).name == "mapped"

    (row,) = await env.rows(operation="app.create", object_id=mapped.app_id)
    assert sorted(row.group_ids) == sorted([env.group_id, second])
    assert secret not in row.message


async def test_create_app_validation(env: Env) -> None:
    g = env.group_id
    with pytest.raises(NotFound, match="group does not exist"):
        await env.admin.create_app(env.p, "a", groups=[str(uuid.uuid4())], default_group=None)
    with pytest.raises(BadRequest, match="add_groups"):
        await env.admin.create_app(env.p, "a", groups=["not-a-group-id"], default_group=None)
    with pytest.raises(BadRequest, match="add_groups: unknown permission"):
        await env.admin.create_app(env.p, "a", groups={g: ["ENCRYPT", "FLY"]}, default_group=None)
    with pytest.raises(BadRequest, match="add_groups"):
        await env.admin.create_app(env.p, "a", groups={g: "ENCRYPT"}, default_group=None)
    with pytest.raises(BadRequest, match="add_groups"):
        await env.admin.create_app(env.p, "a", groups=[], default_group=None)
    with pytest.raises(BadRequest, match="default_group"):
        await env.admin.create_app(env.p, "a", groups=[g], default_group=str(uuid.uuid4()))
    with pytest.raises(BadRequest, match="credential"):
        await env.admin.create_app(env.p, "a", groups=[g], default_group=None, credential_kind="cert")  # type: ignore[arg-type]
    with pytest.raises(BadRequest, match="access_key_id"):
        await env.admin.create_app(env.p, "a", groups=[g], default_group=None, awsxks_access_key_id="A" * 24)
    with pytest.raises(BadRequest, match="name"):
        await env.admin.create_app(env.p, "", groups=[g], default_group=None)
    await env.admin.create_app(env.p, "a", groups=[g], default_group=None)
    with pytest.raises(Conflict, match="app already exists"):
        await env.admin.create_app(env.p, "a", groups=[g], default_group=None)
    assert await env.count(App) == 1


async def test_update_and_delete_app(env: Env) -> None:
    g1, g2, g3 = env.group_id, await env.group("g2"), await env.group("g3")
    app, secret = await env.admin.create_app(env.p, "app", groups={g1: ["ENCRYPT"]}, default_group=None)
    updated = await env.admin.update_app(
        env.p,
        app.app_id,
        name="renamed",
        description="new",
        add_groups={g2: ["DECRYPT"], g3: None},
        mod_groups={g1: ["ENCRYPT", "MANAGE"]},
        default_group=g2,
    )
    assert (updated.name, updated.description, updated.default_group_id) == ("renamed", "new", g2)
    assert await env.admin.app_groups(app.app_id) == {
        g1: frozenset({"ENCRYPT", "MANAGE"}),
        g2: frozenset({"DECRYPT"}),
        g3: DEFAULT_APP_PERMISSIONS,
    }
    await env.admin.update_app(env.p, app.app_id, del_groups=[g2])
    assert set(await env.admin.app_groups(app.app_id)) == {g1, g3}
    assert (await env.admin.get_app(env.p, app.app_id)).default_group_id in {g1, g3}

    with pytest.raises(BadRequest, match="del_groups"):
        await env.admin.update_app(env.p, app.app_id, del_groups=[g1, g3])
    with pytest.raises(BadRequest, match="del_groups"):
        await env.admin.update_app(env.p, app.app_id, del_groups=[g2])
    with pytest.raises(BadRequest, match="mod_groups"):
        await env.admin.update_app(env.p, app.app_id, mod_groups={g2: ["SIGN"]})
    with pytest.raises(BadRequest, match="mod_groups: unknown permission"):
        await env.admin.update_app(env.p, app.app_id, mod_groups={g1: ["NOPE"]})
    with pytest.raises(BadRequest, match="default_group"):
        await env.admin.update_app(env.p, app.app_id, default_group=g2)
    with pytest.raises(BadRequest, match="enabled"):
        await env.admin.update_app(env.p, app.app_id, enabled="no")  # type: ignore[arg-type]
    with pytest.raises(NotFound, match="group does not exist"):
        await env.admin.update_app(env.p, app.app_id, add_groups=[str(uuid.uuid4())])
    await env.admin.create_app(env.p, "taken", groups=[g1], default_group=None)
    with pytest.raises(Conflict, match="app already exists"):
        await env.admin.update_app(env.p, app.app_id, name="taken")
    assert set(await env.admin.app_groups(app.app_id)) == {g1, g3}  # refusals changed nothing

    await env.admin.delete_app(env.p, app.app_id)
    with pytest.raises(NotFound, match="app does not exist"):
        await env.admin.get_app(env.p, app.app_id)
    with pytest.raises(AuthFailed):
        await env.admin.authenticate_app(app.app_id, secret)
    assert await env.count(AppCredential, AppCredential.app_id == app.app_id) == 0
    assert await env.count(AppGroup, AppGroup.app_id == app.app_id) == 0


# ------------------------------------------------------------------------------ secret apps


async def test_secret_app_authentication(env: Env) -> None:
    app, secret = await env.admin.create_app(env.p, "kes", groups=[env.group_id], default_group=None)
    assert (await env.admin.authenticate_app(app.app_id, secret)).app_id == app.app_id
    assert creds.parse_api_key(creds.api_key(app.app_id, secret)) == (app.app_id, secret)
    assert await env.admin.get_credential(env.p, app.app_id) == {"secret": secret}

    failures = []
    for app_id, attempt in [(app.app_id, secret[:-1]), (str(uuid.uuid4()), secret), ("junk", secret)]:
        with pytest.raises(AuthFailed) as info:
            await env.admin.authenticate_app(app_id, attempt)
        failures.append(info.value.message)
    await env.admin.update_app(env.p, app.app_id, enabled=False)
    with pytest.raises(AuthFailed) as info:
        await env.admin.authenticate_app(app.app_id, secret)
    failures.append(info.value.message)
    assert set(failures) == {"invalid credentials"}
    await env.admin.update_app(env.p, app.app_id, enabled=True)
    await env.admin.authenticate_app(app.app_id, secret)

    rows = await env.rows(operation="app.authenticate")
    assert [(r.outcome, r.actor_id) for r in rows] == [
        ("success", app.app_id),
        ("refused", app.app_id),
        ("refused", None),
        ("refused", None),
        ("refused", app.app_id),
        ("success", app.app_id),
    ]
    assert {r.action_type for r in rows} == {"AUTH"}
    assert "disabled" in rows[4].message
    # showing the credential is audited
    (shown,) = await env.rows(operation="app.credential")
    assert shown.object_id == app.app_id and secret not in shown.message


async def test_reset_secret_invalidates_old(env: Env) -> None:
    app, old = await env.admin.create_app(env.p, "app", groups=[env.group_id], default_group=None)
    same, new = await env.admin.reset_secret(env.p, app.app_id, secret_size=32)
    assert same.app_id == app.app_id and new != old
    assert len(base64.urlsafe_b64decode(new + "=")) == 32
    with pytest.raises(AuthFailed):
        await env.admin.authenticate_app(app.app_id, old)
    await env.admin.authenticate_app(app.app_id, new)
    assert await env.admin.get_credential(env.p, app.app_id) == {"secret": new}
    assert await env.count(AppCredential, AppCredential.app_id == app.app_id) == 1
    with pytest.raises(BadRequest, match="secret_size"):
        await env.admin.reset_secret(env.p, app.app_id, secret_size=1)
    with pytest.raises(BadRequest, match="access_key_id"):
        await env.admin.reset_secret(env.p, app.app_id, access_key_id="A" * 24)
    with pytest.raises(NotFound):
        await env.admin.reset_secret(env.p, str(uuid.uuid4()))
    with pytest.raises(NotFound):
        await env.admin.remove_previous_credential(env.p, app.app_id)
    await env.admin.authenticate_app(app.app_id, new)


# ------------------------------------------------------------------------------ awsxks apps


async def test_awsxks_app_generated_credential(env: Env) -> None:
    app, secret = await env.admin.create_app(
        env.p, "xks", groups=[env.group_id], default_group=None, credential_kind="awsxks"
    )
    assert app.auth_type == "AwsXks"
    cred = await env.admin.get_credential(env.p, app.app_id)
    access_key_id = cred["awsxks"]["access_key_id"]
    assert cred == {"awsxks": {"access_key_id": access_key_id, "secret_key": secret}}
    assert ACCESS_KEY_RE.match(access_key_id) and XKS_SECRET_RE.match(secret)
    assert len(access_key_id) == 24 and len(secret) == 44
    assert await env.admin.awsxks_secrets(app.app_id) == [(access_key_id, secret)]
    found = await env.admin.app_by_access_key_id(access_key_id)
    assert found is not None and found.app_id == app.app_id
    assert await env.admin.app_by_access_key_id("A" * 24) is None
    assert await env.admin.app_by_access_key_id("nonsense") is None
    # an awsxks app has no API key
    with pytest.raises(AuthFailed):
        await env.admin.authenticate_app(app.app_id, secret)
    async with env.sessions() as session:
        row = await session.scalar(select(AppCredential).where(AppCredential.app_id == app.app_id))
    assert row is not None and row.secret_hash is None and row.access_key_id == access_key_id
    assert row.sealed_secret is not None and secret.encode() not in row.sealed_secret
    # a disabled app has no usable SigV4 secret
    await env.admin.update_app(env.p, app.app_id, enabled=False)
    assert await env.admin.awsxks_secrets(app.app_id) == []


async def test_awsxks_supplied_credential(env: Env) -> None:
    access_key_id, secret = "ABCDEFGHIJKLMNOPQRST234567", "s" * 40 + "/+=A"
    app, returned = await env.admin.create_app(
        env.p,
        "xks",
        groups=[env.group_id],
        default_group=None,
        credential_kind="awsxks",
        awsxks_access_key_id=access_key_id,
        awsxks_secret=secret,
    )
    assert returned == secret
    assert await env.admin.awsxks_secrets(app.app_id) == [(access_key_id, secret)]
    bad = [
        {"awsxks_access_key_id": "short"},
        {"awsxks_access_key_id": "abcdefghijklmnopqrstuvwx"},
        {"awsxks_access_key_id": "ABCDEFGHIJKLMNOPQRST0189"},
        {"awsxks_secret": "too-short"},
        {"awsxks_secret": "a" * 43 + "-"},
        {"awsxks_secret": "a" * 65},
    ]
    for kwargs in bad:
        with pytest.raises(BadRequest, match=r"access_key_id|secret_key"):
            await env.admin.create_app(
                env.p, "bad", groups=[env.group_id], default_group=None, credential_kind="awsxks", **kwargs
            )
    with pytest.raises(Conflict, match="access key id already in use"):
        await env.admin.create_app(
            env.p,
            "dup",
            groups=[env.group_id],
            default_group=None,
            credential_kind="awsxks",
            awsxks_access_key_id=access_key_id,
        )
    assert await env.count(App) == 1


async def test_awsxks_rotation_keeps_previous(env: Env) -> None:
    app, first_secret = await env.admin.create_app(
        env.p, "xks", groups=[env.group_id], default_group=None, credential_kind="awsxks"
    )
    ((first_id, _),) = await env.admin.awsxks_secrets(app.app_id)
    _, second_secret = await env.admin.reset_secret(env.p, app.app_id)
    pairs = await env.admin.awsxks_secrets(app.app_id)
    assert len(pairs) == 2 and pairs[1] == (first_id, first_secret)
    second_id = pairs[0][0]
    assert pairs[0] == (second_id, second_secret) and second_id != first_id
    cred = await env.admin.get_credential(env.p, app.app_id)
    assert cred == {
        "awsxks": {"access_key_id": second_id, "secret_key": second_secret},
        "previous": {"awsxks": {"access_key_id": first_id, "secret_key": first_secret}},
    }
    for key_id in (first_id, second_id):
        owner = await env.admin.app_by_access_key_id(key_id)
        assert owner is not None and owner.app_id == app.app_id

    # a third pair, supplied: the first pair is gone, the second is now previous
    third_id, third_secret = creds.new_awsxks_credential()
    with pytest.raises(Conflict, match="access key id already in use"):
        await env.admin.reset_secret(env.p, app.app_id, access_key_id=second_id)
    with pytest.raises(BadRequest, match="secret_key"):
        await env.admin.reset_secret(env.p, app.app_id, secret_key="bad")
    _, returned = await env.admin.reset_secret(
        env.p, app.app_id, access_key_id=third_id, secret_key=third_secret
    )
    assert returned == third_secret
    assert await env.admin.awsxks_secrets(app.app_id) == [
        (third_id, third_secret),
        (second_id, second_secret),
    ]
    assert await env.admin.app_by_access_key_id(first_id) is None

    await env.admin.remove_previous_credential(env.p, app.app_id)
    assert await env.admin.awsxks_secrets(app.app_id) == [(third_id, third_secret)]
    assert "previous" not in await env.admin.get_credential(env.p, app.app_id)
    with pytest.raises(NotFound, match="no previous credential"):
        await env.admin.remove_previous_credential(env.p, app.app_id)
    ops = [(r.operation, r.outcome) for r in await env.rows(object_id=app.app_id)]
    assert ("app.reset_secret", "success") in ops and ("app.remove_previous_credential", "success") in ops


# ----------------------------------------------------------------------------- authorisation


async def test_non_admin_app_is_refused_and_audited(env: Env) -> None:
    app, _ = await env.admin.create_app(env.p, "crypto", groups=[env.group_id], default_group=None)
    p = await env.admin.principal_for_app(app)
    other, _ = await env.admin.create_app(env.p, "other", groups=[env.group_id], default_group=None)
    attempts = [
        ("group.create", env.admin.create_group(p, "mine")),
        ("group.update", env.admin.update_group(p, env.group_id, name="x")),
        ("group.delete", env.admin.delete_group(p, env.group_id)),
        ("app.create", env.admin.create_app(p, "new", groups=[env.group_id], default_group=None)),
        ("app.update", env.admin.update_app(p, app.app_id, enabled=False)),
        ("app.delete", env.admin.delete_app(p, other.app_id)),
        ("app.reset_secret", env.admin.reset_secret(p, app.app_id)),
        ("app.credential", env.admin.get_credential(p, app.app_id)),
        ("app.remove_previous_credential", env.admin.remove_previous_credential(p, app.app_id)),
    ]
    for _operation, attempt in attempts:
        with pytest.raises(AccessDenied):
            await attempt
    refused = await env.rows(actor_type="App", outcome="refused")
    assert [r.operation for r in refused] == [op for op, _ in attempts]
    assert all(r.actor_id == app.app_id and r.acct_id == env.acct_id for r in refused)
    assert all(r.severity == "WARNING" and "refused" in r.message for r in refused)
    assert await env.count(Group) == 1 and await env.count(App) == 2
    assert (await env.admin.get_app(env.p, app.app_id)).enabled

    # the system principal (the CLI operator) is an administrator
    system = system_principal(env.acct_id)
    group = await env.admin.create_group(system, "by-cli")
    assert group.creator_type == "user" and group.creator_id == env.acct_id
    (row,) = await env.rows(operation="group.create", object_id=group.group_id)
    assert row.actor_type == "System"


# ------------------------------------------------------------------------ nothing in the clear


async def test_no_secret_is_stored_in_the_clear(env: Env, db_url: str) -> None:
    _, app_secret = await env.admin.create_app(env.p, "a", groups=[env.group_id], default_group=None)
    xks, xks_secret = await env.admin.create_app(
        env.p, "x", groups=[env.group_id], default_group=None, credential_kind="awsxks"
    )
    _, xks_secret_2 = await env.admin.reset_secret(env.p, xks.app_id)
    reset, reset_secret = await env.admin.create_app(env.p, "r", groups=[env.group_id], default_group=None)
    _, reset_secret_2 = await env.admin.reset_secret(env.p, reset.app_id)
    for app_id in (xks.app_id, reset.app_id):
        await env.admin.get_credential(env.p, app_id)
    await env.admin.authenticate_user(EMAIL, PASSWORD)
    with pytest.raises(AuthFailed):
        await env.admin.authenticate_user(EMAIL, "wrong " + PASSWORD)
    needles = [app_secret, xks_secret, xks_secret_2, reset_secret, reset_secret_2, PASSWORD]

    async with env.sessions() as session:
        conn = await session.connection()
        tables = await conn.run_sync(lambda c: inspect(c).get_table_names())
        assert {"apps", "app_credentials", "audit_log", "users"} <= set(tables)
        seen = 0
        for table in tables:
            for row in (await conn.execute(text(f'SELECT * FROM "{table}"'))).all():
                for value in row:
                    seen += 1
                    blob = bytes(value) if isinstance(value, bytes | bytearray | memoryview) else None
                    as_text = None if blob is not None else str(value)
                    for needle in needles:
                        if blob is not None:
                            assert needle.encode() not in blob, f"secret in {table}"
                        else:
                            assert as_text is not None and needle not in as_text, f"secret in {table}"
        assert seen > 100

    if db_url.startswith("sqlite"):
        await env.audit.close()  # let the writer finish; the engine's connections stay open (WAL)
        path = Path(db_url.split("///", 1)[1])
        files = [f for f in (path, Path(f"{path}-wal")) if f.exists()]
        assert path in files
        data = b"".join(f.read_bytes() for f in files)
        assert len(data) > 4096
        for needle in needles:
            assert needle.encode() not in data
            assert needle.encode("utf-16-le") not in data
        # the clear identifiers are there, so the search does look at the right bytes
        assert xks.app_id.encode() in data
