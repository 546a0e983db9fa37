"""Group policies (``dsm_emulator.policies``) through the DSM REST routes on a real DsmCore: every field of
Fortanix's GroupRequest is either enforced (a test here shows it changing an outcome) or refused with a 400
that names it; the cryptographic, key metadata and export policies are checked on create, import, update,
rotate, export and wrap."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from dsm_emulator.api import admin, components, crypto, sobjects
from dsm_emulator.api.admin import GROUP_FIELDS
from dsm_emulator.authz import system_principal
from dsm_emulator.core import DsmCore
from tests import api_harness
from xkslab_shared.config import load_settings

Client = TestClient[web.Request, web.Application]

template = api_harness.template
env = api_harness.env


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@pytest.fixture
async def client(env: SimpleNamespace, aiohttp_client: Any) -> Client:
    routes = (admin.routes, components.routes, sobjects.routes, crypto.routes)
    return cast(Client, await api_harness.route_client(env, aiohttp_client, *routes))


@pytest.fixture
async def db_env(empty_db_url: str, tmp_path: Path) -> AsyncIterator[SimpleNamespace]:
    """``env`` on SQLite or PostgreSQL (``db_backend``): a data directory made for this test alone."""
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


@pytest.fixture
async def db_client(db_env: SimpleNamespace, aiohttp_client: Any) -> Client:
    routes = (admin.routes, components.routes, sobjects.routes, crypto.routes)
    return cast(Client, await api_harness.route_client(db_env, aiohttp_client, *routes))


async def call(client: Client, method: str, path: str, body: Any = None, status: int = 200) -> Any:
    resp = await client.request(method, path, json=body)
    text = await resp.text()
    assert resp.status == status, text
    return json.loads(text) if text else None


async def refused(client: Client, method: str, path: str, body: Any, *needles: str) -> str:
    """The 400's message, which must contain every needle."""
    message = str((await call(client, method, path, body, status=400))["message"])
    for needle in needles:
        assert needle in message, message
    return message


async def group(client: Client, name: str, **fields: Any) -> str:
    return str((await call(client, "POST", "/sys/v1/groups", {"name": name, **fields}))["group_id"])


async def key(client: Client, gid: str, name: str, status: int = 201, **fields: Any) -> Any:
    body = {"name": name, "obj_type": "AES", "key_size": 256, "group_id": gid, **fields}
    return await call(client, "POST", "/crypto/v1/keys", body, status=status)


# ----------------------------------------------------------- every GroupRequest field, classified

USER = "3d2b1c5a-8d4e-4a51-9d0e-6b7c5a4f3e21"
HMG = {
    "kind": "AwsKms",
    "url": "https://kms.us-east-1.amazonaws.com",
    "tls": {"mode": "required", "validate_hostname": True, "ca": {"ca_set": "global_roots"}},
}
# A value of each refused field that asks for something (what a Fortanix client would send).
REFUSED = {
    "add_hmg": [HMG],
    "mod_hmg": {str(uuid.uuid4()): HMG},
    "del_hmg": [str(uuid.uuid4())],
    "hmg_redundancy": "PriorityFailover",
    "hmg_segregation": True,
    "hmg_sync": True,
    "auto_scan": {"scan_interval_hours": 24},
    "client_configurations": {"common": {"cache_ttl": 60}},
    "wrapping_key_name": "group-wrapping-key",
    "google_access_reason_policy": {"allow": ["CUSTOMER_INITIATED_ACCESS"], "allow_missing_reason": False},
}


async def _name(client: Client, env: SimpleNamespace) -> None:
    gid = await group(client, "named")
    assert (await call(client, "PATCH", f"/sys/v1/groups/{gid}", {"name": "renamed"}))["name"] == "renamed"
    await call(client, "POST", "/sys/v1/groups", {"name": "renamed"}, status=409)


async def _description(client: Client, env: SimpleNamespace) -> None:
    gid = await group(client, "described", description="first")
    view = await call(client, "PATCH", f"/sys/v1/groups/{gid}", {"description": "second"})
    assert view["description"] == "second"


async def _acct_id(client: Client, env: SimpleNamespace) -> None:
    await refused(client, "POST", "/sys/v1/groups", {"name": "g", "acct_id": str(uuid.uuid4())}, "acct_id")
    await group(client, "own-account", acct_id=env.acct_id)


async def _cryptographic_policy(client: Client, env: SimpleNamespace) -> None:
    gid = await group(client, "crypto", cryptographic_policy={"aes": {"key_sizes": [256]}})
    await key(client, gid, "aes-128", key_size=128, status=400)
    await key(client, gid, "aes-256")


async def _key_metadata_policy(client: Client, env: SimpleNamespace) -> None:
    policy: dict[str, Any] = {"base": {"custom_metadata": {"owner": {"required": {}}}}}
    gid = await group(client, "metadata", key_metadata_policy=policy)
    await key(client, gid, "no-owner", status=400)
    await key(client, gid, "owned", custom_metadata={"owner": "team-a"})


async def _export_policy(client: Client, env: SimpleNamespace) -> None:
    gid = await group(client, "wrapped", export_policy={"$type": "Wrapped", "by": {"$type": "Any"}})
    kid = (await key(client, gid, "exportable", key_ops=["EXPORT", "ENCRYPT"]))["kid"]
    await call(client, "GET", f"/crypto/v1/keys/{kid}/export", status=400)


async def _custom_metadata(client: Client, env: SimpleNamespace) -> None:
    gid = await group(client, "labelled", custom_metadata={"team": "payments"})
    assert (await call(client, "GET", f"/sys/v1/groups/{gid}"))["custom_metadata"] == {"team": "payments"}
    await refused(client, "POST", "/sys/v1/groups", {"name": "bad", "custom_metadata": {"n": 1}}, "custom")


async def _approval_policy(client: Client, env: SimpleNamespace) -> None:
    app = await call(client, "POST", "/sys/v1/apps", {"name": "approver", "add_groups": [env.group_id]})
    policy = {"quorum": {"n": 1, "members": [{"app": app["app_id"]}]}}
    gid = await group(client, "held", approval_policy=policy)
    kid = (await key(client, gid, "held-key", key_ops=["EXPORT", "ENCRYPT"]))["kid"]
    await call(client, "GET", f"/crypto/v1/keys/{kid}/export", status=403)  # only through a request


async def _custodian_policy(client: Client, env: SimpleNamespace) -> None:
    users = [
        (await env.core.admin.create_user(env.system, f"custodian{i}@xkslab.local", "pw-custodian")).user_id
        for i in range(2)
    ]
    custodians = {"quorum": {"n": 2, "members": [{"user": u} for u in users]}}
    approval = {"quorum": {"n": 1, "members": [{"user": users[0]}]}}
    body = {"name": "no-quorum", "custodian_policy": custodians}
    await refused(client, "POST", "/sys/v1/groups", body, "custodian_policy", "approval_policy")
    one = {"quorum": {"n": 1, "members": [{"user": users[0]}]}}
    body = {"name": "one", "custodian_policy": one, "approval_policy": approval}
    await refused(client, "POST", "/sys/v1/groups", body, "custodian_policy", "at least 2")
    stranger = {"quorum": {"n": 2, "members": [{"user": users[0]}, {"user": str(uuid.uuid4())}]}}
    body = {"name": "stranger", "custodian_policy": stranger, "approval_policy": approval}
    await refused(client, "POST", "/sys/v1/groups", body, "custodian_policy", "not a user")
    gid = await group(client, "custody", custodian_policy=custodians, approval_policy=approval)
    assert (await call(client, "GET", f"/sys/v1/groups/{gid}"))["custodian_policy"] == {
        "quorum": {
            "n": 2,
            "members": [{"user": u} for u in users],
            "require_password": False,
            "require_2fa": False,
        }
    }
    kid = (await key(client, gid, "custodied", key_ops=["EXPORT", "ENCRYPT"]))["kid"]
    export = {"key": {"kid": kid}, "custodians": [{"user": u} for u in users]}
    # Only through an approval request, as Fortanix has it.
    await call(client, "POST", "/crypto/v1/keys/components/export", export, status=403)
    plain = (await key(client, env.group_id, "uncustodied", key_ops=["EXPORT", "ENCRYPT"]))["kid"]
    export = {"key": {"kid": plain}, "custodians": [{"user": u} for u in users]}
    await refused(client, "POST", "/crypto/v1/keys/components/export", export, "custodian_policy")


async def _history_policy(client: Client, env: SimpleNamespace, name: str) -> None:
    gid = await group(client, f"undo-{name}", **{name: {"undo_time_window": 604800}})
    kid = (await key(client, gid, f"kept-{name}"))["kid"]
    await call(client, "POST", f"/crypto/v1/keys/{kid}/revoke", {"code": "Unspecified"}, status=204)
    await call(client, "POST", f"/crypto/v1/keys/{kid}/destroy", status=204)
    history = (await call(client, "GET", f"/crypto/v1/keys/{kid}"))["history"]
    await call(client, "PUT", f"/crypto/v1/keys/{kid}/revert", {"ids": [history[-1]["id"]]}, status=204)
    assert (await call(client, "GET", f"/crypto/v1/keys/{kid}"))["state"] == "Deactivated"
    await refused(client, "POST", "/sys/v1/groups", {"name": "short", name: {"undo_time_window": 60}}, name)


async def _key_undo_policy(client: Client, env: SimpleNamespace) -> None:
    await _history_policy(client, env, "key_undo_policy")


async def _key_history_policy(client: Client, env: SimpleNamespace) -> None:
    await _history_policy(client, env, "key_history_policy")


ENFORCED: dict[str, Callable[[Client, SimpleNamespace], Awaitable[None]]] = {
    "name": _name,
    "description": _description,
    "acct_id": _acct_id,
    "cryptographic_policy": _cryptographic_policy,
    "key_metadata_policy": _key_metadata_policy,
    "export_policy": _export_policy,
    "custom_metadata": _custom_metadata,
    "approval_policy": _approval_policy,
    "custodian_policy": _custodian_policy,
    "key_undo_policy": _key_undo_policy,
    "key_history_policy": _key_history_policy,
}


def test_every_group_field_is_classified() -> None:
    """A field added to GROUP_FIELDS must be given a test here: an enforcing scenario or a refusal."""
    assert set(ENFORCED).isdisjoint(REFUSED)
    assert set(GROUP_FIELDS) == set(ENFORCED) | set(REFUSED)


@pytest.mark.parametrize("name", sorted(ENFORCED))
async def test_enforced_group_field_changes_the_outcome(
    name: str, client: Client, env: SimpleNamespace
) -> None:
    await ENFORCED[name](client, env)


@pytest.mark.parametrize("name", sorted(REFUSED))
async def test_refused_group_field_is_a_400_naming_it(name: str, client: Client) -> None:
    body = {"name": "asks-too-much", name: REFUSED[name]}
    message = await refused(client, "POST", "/sys/v1/groups", body, "is not implemented by xkslab")
    assert message.startswith(name), message
    assert all(g["name"] != "asks-too-much" for g in await call(client, "GET", "/sys/v1/groups"))
    gid = await group(client, "plain")
    await refused(client, "PATCH", f"/sys/v1/groups/{gid}", {name: REFUSED[name]}, name, "not implemented")
    assert name not in await call(client, "GET", f"/sys/v1/groups/{gid}")


async def test_real_clients_nulls_and_leftovers_are_not_refused(client: Client) -> None:
    """sdkms-cli create-group posts its argparse leftovers and nulls; the SDK sends null for unset fields."""
    cli_body = {
        "name": "from-cli",
        "description": None,
        "add_quorum_policy": False,
        "n": None,
        "users": None,
        "require_2fa": False,
        "require_password": False,
    }
    gid = (await call(client, "POST", "/sys/v1/groups", cli_body))["group_id"]
    sdk_body = {name: None for name in GROUP_FIELDS if name != "name"}
    await call(client, "PATCH", f"/sys/v1/groups/{gid}", {**sdk_body, "group_id": gid, "hmg_sync": False})
    await refused(
        client, "POST", "/sys/v1/groups", {"name": "x", "frobnicate": 1}, "frobnicate", "not a field"
    )
    other = str(uuid.uuid4())
    await refused(client, "PATCH", f"/sys/v1/groups/{gid}", {"group_id": other}, "group_id")


# ------------------------------------------------------------------------ cryptographic policy


async def test_cryptographic_policy_on_create_import_update_and_rotate(
    db_client: Client, db_env: SimpleNamespace
) -> None:
    client = db_client
    policy: dict[str, Any] = {
        "aes": {"key_sizes": [256]},
        "hmac": {"minimum_key_length": 256},
        "key_ops": ["ENCRYPT", "DECRYPT", "MACGENERATE", "MACVERIFY", "APPMANAGEABLE", "EXPORT"],
        "legacy_policy": "allowed",
    }
    gid = await group(client, "strict", cryptographic_policy=policy)
    shown = (await call(client, "GET", f"/sys/v1/groups/{gid}"))["cryptographic_policy"]
    assert shown["aes"] == {"key_sizes": [256]} and shown["hmac"] == {"minimum_key_length": 256}

    message = (await key(client, gid, "small", key_size=128, status=400))["message"]
    assert "cryptographic_policy" in message and "128" in message
    imported = {"name": "imp", "obj_type": "AES", "value": b64(bytes(16)), "group_id": gid}
    await call(client, "PUT", "/crypto/v1/keys", imported, status=400)
    await call(client, "PUT", "/crypto/v1/keys", {**imported, "value": b64(bytes(32))}, status=201)
    hmac = {"name": "mac", "obj_type": "HMAC", "group_id": gid}
    await call(client, "POST", "/crypto/v1/keys", {**hmac, "key_size": 128}, status=400)
    await call(client, "POST", "/crypto/v1/keys", {**hmac, "key_size": 256}, status=201)
    secret = {"name": "s", "obj_type": "SECRET", "key_size": 256, "group_id": gid}
    assert "SECRET" in (await call(client, "POST", "/crypto/v1/keys", secret, status=400))["message"]

    # key_ops: asked-for operations outside the policy are refused; defaults are narrowed to it.
    await key(client, gid, "wraps", key_ops=["WRAPKEY"], status=400)
    default = await key(client, gid, "defaults")
    assert set(default["key_ops"]) == {"ENCRYPT", "DECRYPT", "APPMANAGEABLE"}
    patch = {"key_ops": ["ENCRYPT", "DERIVEKEY"]}
    await call(client, "PATCH", f"/crypto/v1/keys/{default['kid']}", patch, status=400)
    await call(client, "PATCH", f"/crypto/v1/keys/{default['kid']}", {"key_ops": ["ENCRYPT"]})

    # A key made before the policy keeps working (legacy "allowed") but cannot be rotated into breach.
    old_gid = await group(client, "later")
    old = await key(client, old_gid, "old-128", key_size=128)
    assert (await call(client, "GET", f"/crypto/v1/keys/{old['kid']}"))["compliant_with_policies"] is True
    await call(client, "PATCH", f"/sys/v1/groups/{old_gid}", {"cryptographic_policy": policy})
    assert (await call(client, "GET", f"/crypto/v1/keys/{old['kid']}"))["compliant_with_policies"] is False
    listed = await call(client, "GET", f"/crypto/v1/keys?group_id={old_gid}")
    assert [k["compliant_with_policies"] for k in listed] == [False]
    info = await call(client, "POST", "/crypto/v1/keys/info", {"kid": old["kid"]})
    assert info["compliant_with_policies"] is False
    plain = {"alg": "AES", "mode": "CBC", "plain": b64(b"x" * 16)}
    await call(client, "POST", f"/crypto/v1/keys/{old['kid']}/encrypt", plain)
    assert (
        "128"
        in (await call(client, "POST", "/crypto/v1/keys/rekey", {"kid": old["kid"]}, status=400))["message"]
    )
    await call(client, "PATCH", f"/sys/v1/groups/{old_gid}", {"cryptographic_policy": "remove"})
    assert "cryptographic_policy" not in await call(client, "GET", f"/sys/v1/groups/{old_gid}")
    assert (await call(client, "GET", f"/crypto/v1/keys/{old['kid']}"))["compliant_with_policies"] is True
    await call(client, "POST", "/crypto/v1/keys/rekey", {"kid": old["kid"]})


@pytest.mark.parametrize(
    ("policy", "named"),
    [
        ({"aes": {"key_sizes": [256], "random_iv": True}}, "cryptographic_policy.aes.random_iv"),
        ({"aes": {"fpe": {"radix": 10}}}, "cryptographic_policy.aes.fpe"),
        ({"rsa": {"signature_policy": [{}]}}, "cryptographic_policy.rsa.signature_policy"),
        ({"aes": {}, "legacy_policy": "prohibited"}, "cryptographic_policy.legacy_policy"),
    ],
)
async def test_cryptographic_policy_parts_not_enforced_are_refused(
    policy: dict[str, Any], named: str, client: Client
) -> None:
    body = {"name": "g", "cryptographic_policy": policy}
    await refused(client, "POST", "/sys/v1/groups", body, named, "is not implemented by xkslab")


async def test_cryptographic_policy_allowing_types_the_lab_lacks_is_kept(client: Client) -> None:
    gid = await group(client, "mixed", cryptographic_policy={"aes": {}, "rsa": {}, "ec": None})
    assert (await call(client, "GET", f"/sys/v1/groups/{gid}"))["cryptographic_policy"] == {
        "aes": {},
        "rsa": {},
    }
    await key(client, gid, "any-aes", key_size=128)
    await refused(
        client, "POST", "/sys/v1/groups", {"name": "g", "cryptographic_policy": {"aes": {"x": 1}}}, "x"
    )


# ------------------------------------------------------------------------ key metadata policy


async def test_key_metadata_policy_on_create_update_and_rotate(db_client: Client) -> None:
    client = db_client
    policy: dict[str, Any] = {
        "base": {
            "custom_metadata": {
                "owner": {"required": {"non_empty_after_trim": True}},
                "env": {"required": {"allowed_values": ["dev", "prod"]}},
                "secret-note": {"forbidden": {}},
            },
            "description": {"required": {}},
            "deactivation_date": {"forbidden": {}},
        },
        "for_obj_type": {"HMAC": {"custom_metadata": {}}},
        "legacy_objects": "allowed",
    }
    gid = await group(client, "governed", key_metadata_policy=policy)
    assert (await call(client, "GET", f"/sys/v1/groups/{gid}"))["key_metadata_policy"]["base"][
        "description"
    ] == {"required": {}}
    good: dict[str, Any] = {"custom_metadata": {"owner": "a", "env": "dev"}, "description": "d"}
    assert "owner" in (await key(client, gid, "k1", status=400))["message"]
    await key(client, gid, "k2", status=400, custom_metadata={"owner": "  ", "env": "dev"}, description="d")
    await key(client, gid, "k3", status=400, custom_metadata={"owner": "a", "env": "qa"}, description="d")
    noted = {"owner": "a", "env": "dev", "secret-note": "x"}
    await key(client, gid, "k4", status=400, custom_metadata=noted, description="d")
    await key(client, gid, "k5", status=400, custom_metadata=good["custom_metadata"])  # no description
    await key(client, gid, "k6", status=400, **good, deactivation_date="20991231T000000Z")
    kid = (await key(client, gid, "k7", **good))["kid"]
    # HMAC keys have their own (empty) item: nothing required of them.
    await call(
        client,
        "POST",
        "/crypto/v1/keys",
        {"name": "h", "obj_type": "HMAC", "key_size": 256, "group_id": gid},
        status=201,
    )

    await call(client, "PATCH", f"/crypto/v1/keys/{kid}", {"custom_metadata": {"env": "dev"}}, status=400)
    await call(client, "PATCH", f"/crypto/v1/keys/{kid}", {"custom_metadata": {"owner": "b", "env": "prod"}})

    # Tightened after the fact: the key stays, but rotating it would make a key that breaks the policy.
    tighter = {**policy, "base": {**policy["base"], "custom_metadata": {"cost-center": {"required": {}}}}}
    await call(client, "PATCH", f"/sys/v1/groups/{gid}", {"key_metadata_policy": tighter})
    assert (
        "cost-center"
        in (await call(client, "POST", "/crypto/v1/keys/rekey", {"kid": kid}, status=400))["message"]
    )


async def test_key_metadata_policy_parts_not_enforced_are_refused(client: Client) -> None:
    durations = {"base": {"activation_date": {"required": {"allowed_values": {"max": {"days": 30}}}}}}
    body = {"name": "g", "key_metadata_policy": durations}
    await refused(
        client, "POST", "/sys/v1/groups", body, "activation_date.required.allowed_values", "not implemented"
    )
    legacy = {"base": {}, "legacy_objects": "unprotect_only"}
    body = {"name": "g", "key_metadata_policy": legacy}
    await refused(client, "POST", "/sys/v1/groups", body, "legacy_objects", "not implemented")
    body = {"name": "g", "key_metadata_policy": {"base": {"custom_metadata": {"o": {"maybe": {}}}}}}
    await refused(client, "POST", "/sys/v1/groups", body, "custom_metadata.o")


# ------------------------------------------------------------------------------- export policy


async def test_export_policy_allows_only_wrapped_export(db_client: Client) -> None:
    client = db_client
    plain_gid = await group(client, "wrappers")
    wrapper = (await key(client, plain_gid, "allowed-wrapper", key_ops=["WRAPKEY", "ENCRYPT"]))["kid"]
    other = (await key(client, plain_gid, "other-wrapper", key_ops=["WRAPKEY"]))["kid"]
    only = {"$type": "Wrapped", "by": {"$type": "Only", "keys": [{"name": "allowed-wrapper"}]}}
    gid = await group(client, "guarded", export_policy=only)
    assert (await call(client, "GET", f"/sys/v1/groups/{gid}"))["export_policy"] == only
    subject = (await key(client, gid, "crown-jewel", key_ops=["EXPORT", "ENCRYPT"]))["kid"]

    assert (
        "export_policy"
        in (await call(client, "GET", f"/crypto/v1/keys/{subject}/export", status=400))["message"]
    )
    await call(client, "POST", "/crypto/v1/keys/export", {"kid": subject}, status=400)
    wrap = {"alg": "AES", "mode": "KW", "key": {"kid": other}, "subject": {"kid": subject}}
    assert "export_policy" in (await call(client, "POST", "/crypto/v1/wrapkey", wrap, status=400))["message"]
    wrapped = await call(client, "POST", "/crypto/v1/wrapkey", {**wrap, "key": {"kid": wrapper}})
    assert wrapped["wrapped_key"]

    await call(client, "PATCH", f"/sys/v1/groups/{gid}", {"export_policy": {"$type": "Unrestricted"}})
    assert "export_policy" not in await call(client, "GET", f"/sys/v1/groups/{gid}")
    assert (await call(client, "GET", f"/crypto/v1/keys/{subject}/export"))["value"]


async def test_export_policy_covers_transient_keys(client: Client) -> None:
    gid = await group(client, "wrapped-only", export_policy={"$type": "Wrapped", "by": {"$type": "Any"}})
    body = {
        "name": "dek",
        "obj_type": "AES",
        "key_size": 256,
        "group_id": gid,
        "transient": True,
        "key_ops": ["EXPORT"],
    }
    token = (await call(client, "POST", "/crypto/v1/keys", body, status=201))["transient_key"]
    await call(client, "POST", "/crypto/v1/keys/export", {"transient_key": token}, status=400)


async def test_export_policy_shapes_are_checked(client: Client) -> None:
    for bad in (
        {"$type": "Sometimes"},
        {"$type": "Wrapped"},
        {"$type": "Wrapped", "by": {"$type": "Only", "keys": []}},
    ):
        await refused(client, "POST", "/sys/v1/groups", {"name": "g", "export_policy": bad}, "export_policy")


async def test_rekey_takes_a_value_and_refuses_fields_it_would_drop(
    client: Client, env: SimpleNamespace
) -> None:
    gid = await group(client, "secrets")
    body = {"name": "api-token", "obj_type": "SECRET", "value": b64(b"first"), "group_id": gid}
    old = await call(client, "PUT", "/crypto/v1/keys", body, status=201)
    new = await call(client, "POST", "/crypto/v1/keys/rekey", {"name": "api-token", "value": b64(b"second!")})
    assert new["kid"] != old["kid"] and new["key_size"] == 56 and new["origin"] == "External"
    assert (await call(client, "GET", f"/crypto/v1/keys/{new['kid']}/export"))["value"] == b64(b"second!")
    message = await refused(
        client, "POST", "/crypto/v1/keys/rekey", {"name": "api-token", "key_ops": ["EXPORT"]}, "key_ops"
    )
    assert "not implemented by xkslab" in message
    aes = (await key(client, gid, "aes"))["kid"]
    await refused(client, "POST", "/crypto/v1/keys/rekey", {"kid": aes, "value": b64(bytes(7))}, "56 bits")
