"""Users and the account through the real Fortanix ``sdkms`` SDK (UsersApi, AccountsApi), unchanged,
against a listening DSM on SQLite and PostgreSQL: invite, read, rename, change roles, change one's own
password, remove, delete oneself; the account's name and description; what a plain member and an app are
refused; the last administrator kept; the e-mail flows and account creation answering 501. Each change
is in the audit log, and no password is in it or in the database in the clear."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.integration.test_dsm_api import EMAIL, PASSWORD
from tests.integration.test_sdkms_sdk import login_admin, login_app
from tests.integration.test_sdkms_sdk_approvals import login_user

BOB, BOB_PW, BOB_NEW_PW = "bob@xkslab.local", "bob's first password", "bob's second password"
CAROL, CAROL_PW = "carol@xkslab.local", "carol's password"
SECRETS = (PASSWORD, BOB_PW, BOB_NEW_PW, CAROL_PW)


@pytest.fixture
def lab(dsm_on_a_port: tuple[str, Path]) -> tuple[str, Path]:
    return dsm_on_a_port


def status_of(call: Callable[[], Any]) -> tuple[int, str]:
    """The HTTP status and message of a refused SDK call (the test fails if it succeeds)."""
    from sdkms.v1.rest import ApiException

    try:
        call()
    except ApiException as exc:
        return exc.status, json.loads(exc.body)["message"]
    raise AssertionError("the call was not refused")


def raw(method: Callable[..., Any], *args: Any) -> Any:
    """The JSON an SDK call received: the SDK reads enum lists (account_role) as empty objects."""
    return json.loads(method(*args, _preload_content=False).data)


def users_flow(url: str) -> dict[str, Any]:
    import sdkms.v1 as sdk

    r: dict[str, Any] = {}
    admin = login_admin(sdk, url)
    users = sdk.UsersApi(api_client=admin)
    accounts = sdk.AccountsApi(api_client=admin)
    admin_id = next(u.user_id for u in users.get_users() if u.user_email == EMAIL)
    acct_id = next(iter(users.get_user_account()))

    bob = users.invite_user(
        sdk.UserRequest(
            user_email=BOB, user_password=BOB_PW, first_name="Bob", account_role=["ACCOUNTMEMBER"]
        )
    )
    r["invited"] = (bob.user_email, bob.first_name)
    r["invite_no_password"] = status_of(lambda: users.invite_user(sdk.UserRequest(user_email=CAROL)))
    r["invite_again"] = status_of(
        lambda: users.invite_user(
            sdk.UserRequest(user_email=BOB, user_password="x", account_role=["ACCOUNTMEMBER"])
        )
    )
    users.invite_user(
        sdk.UserRequest(user_email=CAROL, user_password=CAROL_PW, account_role=["ACCOUNTAUDITOR"])
    )
    got = users.get_user(bob.user_id)
    r["got"] = (
        got.user_id == bob.user_id,
        got.user_email,
        got.first_name,
        got.groups,
        raw(users.get_user, bob.user_id),
    )
    r["listed"] = sorted(u.user_email for u in users.get_users())
    r["unknown"] = status_of(lambda: users.get_user("3f7d6c1e-0000-4000-8000-000000000000"))

    # bob, a plain member: renames himself, and is refused everything an administrator does
    as_bob = sdk.UsersApi(api_client=login_user(sdk, url, BOB, BOB_PW))
    r["bob_renamed"] = as_bob.update_user(bob.user_id, sdk.UserRequest(last_name="Builder")).last_name
    r["bob_reads_admin"] = as_bob.get_user(admin_id).user_email
    r["bob_promotes"] = status_of(
        lambda: as_bob.update_user(bob.user_id, sdk.UserRequest(account_role=["ACCOUNTADMINISTRATOR"]))
    )
    r["bob_renames_admin"] = status_of(lambda: as_bob.update_user(admin_id, sdk.UserRequest(first_name="X")))
    r["bob_removes"] = status_of(lambda: as_bob.delete_user(admin_id))
    r["bob_invites"] = status_of(
        lambda: as_bob.invite_user(sdk.UserRequest(user_email="eve@xkslab.local", user_password="eve pass"))
    )
    r["bob_account"] = status_of(
        lambda: sdk.AccountsApi(api_client=as_bob.api_client).update_account(
            acct_id, sdk.AccountRequest(description="mine")
        )
    )
    r["email_change"] = status_of(
        lambda: as_bob.update_user(bob.user_id, sdk.UserRequest(user_email="b@x.y"))
    )
    r["wrong_current"] = status_of(
        lambda: as_bob.change_password(sdk.PasswordChangeRequest(current_password="nope", new_password="n"))
    )
    as_bob.change_password(sdk.PasswordChangeRequest(current_password=BOB_PW, new_password=BOB_NEW_PW))
    r["old_password"] = status_of(lambda: login_user(sdk, url, BOB, BOB_PW))
    bob_again = sdk.UsersApi(api_client=login_user(sdk, url, BOB, BOB_NEW_PW))
    r["new_password"] = bob_again.get_user(bob.user_id).user_id

    # an app is no user
    group = sdk.GroupsApi(api_client=admin).get_groups()[0]
    apps = sdk.AppsApi(api_client=admin)
    app = apps.create_app(
        sdk.AppRequest(
            name="users-app", default_group=group.group_id, add_groups={group.group_id: ["ENCRYPT"]}
        )
    )
    secret = apps.get_credential(app.app_id).credential.secret
    app_client, _ = login_app(sdk, url, base64.b64encode(f"{app.app_id}:{secret}".encode()).decode())
    r["app_reads"] = status_of(lambda: sdk.UsersApi(api_client=app_client).get_user(admin_id))
    r["app_removes"] = status_of(lambda: sdk.UsersApi(api_client=app_client).delete_user(bob.user_id))
    r["app_lists"] = status_of(lambda: sdk.UsersApi(api_client=app_client).get_users())

    # the last administrator stays one
    r["demote_last"] = status_of(
        lambda: users.update_user(admin_id, sdk.UserRequest(account_role=["ACCOUNTMEMBER"]))
    )
    r["remove_last"] = status_of(lambda: users.delete_user(admin_id))
    promoted = users.update_user(
        bob.user_id, sdk.UserRequest(account_role=["ACCOUNTADMINISTRATOR", "STATEENABLED"])
    )
    r["promoted"] = (promoted.user_id == bob.user_id, raw(users.get_user, bob.user_id)["account_role"])
    r["pending"] = status_of(
        lambda: users.update_user(bob.user_id, sdk.UserRequest(account_role=["PENDINGINVITE"]))
    )
    r["u2f"] = status_of(
        lambda: users.update_user(bob.user_id, sdk.UserRequest(del_u2f_devices=[{"key_handle": "k"}]))
    )

    # the account
    changed = accounts.update_account(
        acct_id, sdk.AccountRequest(name="renamed", description="the lab's account")
    )
    r["account"] = (changed.name, changed.description, accounts.get_account(acct_id).description)
    r["disable"] = status_of(lambda: accounts.update_account(acct_id, sdk.AccountRequest(enabled=False)))
    r["create_account"] = status_of(lambda: accounts.create_account(sdk.AccountRequest(name="second")))

    # what needs e-mail
    r["forgot"] = status_of(lambda: users.forgot_password(sdk.ForgotPasswordRequest(user_email=BOB)))
    r["resend"] = status_of(lambda: users.resend_invitation(bob.user_id))
    r["process"] = status_of(lambda: users.process_invitations(sdk.ProcessInviteRequest(accepts=[acct_id])))
    r["signup"] = status_of(
        lambda: users.create_user(sdk.SignupRequest(user_email="x@y.z", user_password="p"))
    )

    # removal: bob by the administrator, carol by herself
    users.delete_user(bob.user_id)
    r["bob_gone"] = status_of(lambda: users.get_user(bob.user_id))
    r["bob_login"] = status_of(lambda: login_user(sdk, url, BOB, BOB_NEW_PW))
    r["bob_session"] = status_of(lambda: bob_again.get_users())
    sdk.UsersApi(api_client=login_user(sdk, url, CAROL, CAROL_PW)).delete_user_account()
    r["left"] = sorted(u.user_email for u in users.get_users())

    token = admin.configuration.api_key["Authorization"]
    logs = requests.get(
        f"{url}/sys/v1/logs?size=200", headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    r["audit"] = [hit["_source"] for hit in logs.json()["hits"]]
    return r


async def test_users_and_account_through_the_sdk(lab: tuple[str, Path], db_backend: str) -> None:
    url, data_dir = lab
    r = await asyncio.to_thread(users_flow, url)

    assert r["invited"] == (BOB, "Bob")
    assert r["invite_no_password"][0] == 400 and "user_password" in r["invite_no_password"][1]
    assert r["invite_again"][0] == 409
    assert r["got"][:4] == (True, BOB, "Bob", {})
    assert r["got"][4]["account_role"] == ["ACCOUNTMEMBER"] and r["got"][4]["email_verified"] is True
    assert r["listed"] == sorted([EMAIL, BOB, CAROL])
    assert r["unknown"][0] == 404

    assert r["bob_renamed"] == "Builder"
    assert r["bob_reads_admin"] == EMAIL
    for refused in ("bob_promotes", "bob_renames_admin", "bob_removes", "bob_invites", "bob_account"):
        assert r[refused][0] == 403, refused
    assert r["email_change"][0] == 400 and "user_email" in r["email_change"][1]
    assert r["wrong_current"][0] == 401
    assert r["old_password"][0] == 401
    assert r["new_password"]
    assert r["app_reads"][0] == r["app_removes"][0] == r["app_lists"][0] == 403

    assert r["demote_last"][0] == 409 and "last administrator" in r["demote_last"][1]
    assert r["remove_last"][0] == 409
    assert r["promoted"] == (True, ["ACCOUNTADMINISTRATOR"])
    assert r["pending"][0] == 400 and "PENDINGINVITE" in r["pending"][1]
    assert r["u2f"][0] == 400 and "del_u2f_devices" in r["u2f"][1]

    assert r["account"] == ("renamed", "the lab's account", "the lab's account")
    assert r["disable"][0] == 400 and "enabled" in r["disable"][1]
    assert r["create_account"][0] == 501
    for mail in ("forgot", "resend", "process", "signup"):
        assert r[mail][0] == 501 and "xkslab does not emulate" in r[mail][1], mail

    assert r["bob_gone"][0] == 404 and r["bob_login"][0] == 401 and r["bob_session"][0] == 401
    assert r["left"] == [EMAIL]

    messages = [row["message"] for row in r["audit"]]
    for expected in (
        f"Created user {BOB} (ACCOUNTMEMBER)",
        f"Updated user {BOB}: last name",
        f"User {BOB} changed their password",
        f"Updated user {BOB}: role ACCOUNTADMINISTRATOR",
        "Updated account renamed: name renamed, description",
        f"Removed user {BOB} from the account",
        f"User {CAROL} deleted their own user",
    ):
        assert expected in messages, expected
    refusals = [m for m in messages if "refused" in m]
    assert any("Update user" in m and "only an account administrator" in m for m in refusals)
    assert any("last administrator" in m for m in refusals)
    app_refusals = [
        row for row in r["audit"] if row["actor_type"] == "App" and "only users" in row["message"]
    ]
    assert sorted(row["message"].split(":")[0] for row in app_refusals) == ["List users", "Read a user"]
    dumped = json.dumps(r["audit"])
    assert not any(secret in dumped for secret in SECRETS)
    if db_backend == "sqlite":
        raw = b"".join(p.read_bytes() for p in data_dir.glob("*.db*"))
        assert raw and not any(secret.encode() in raw for secret in SECRETS)
