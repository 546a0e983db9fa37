"""DSM REST API: the users of an account and the account itself (Fortanix's UsersApi and AccountsApi).

The lab sends no e-mail and has no system administrator: the calls built on those (sign-up, e-mail
confirmation, invitation acceptance and resending, password reset by mail, account creation and deletion)
are in the table of what it does not emulate (dsm_emulator.api.not_emulated). An invitation creates the
user at once, with the password the inviter gives.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlalchemy import select

from dsm_emulator.admin import AccountChanges, UserChanges, parse_roles, person_name
from dsm_emulator.api.context import PRINCIPAL, core_of, json_response, no_content, principal_of, read_json
from dsm_emulator.api.context import field as body_field
from dsm_emulator.api.session import CLAIMS
from dsm_emulator.errors import AuthFailed, BadRequest, NotFound
from dsm_emulator.models import Account, User
from dsm_emulator.views import fortanix_time

routes = web.RouteTableDef()

# UserRequest fields the lab does not model, and why (a 400 that names them, never a silent yes).
_USER_REFUSED = {
    "user_email": "a user's email is their login name here; invite a new user instead",
    "user_password": "a password changes through POST /sys/v1/users/change_password with the current one",
    "enabled": "a user of the lab is always enabled in their account; remove them instead",
    "add_groups": "xkslab does not model users' group roles (account administrators manage every group)",
    "del_groups": "xkslab does not model users' group roles (account administrators manage every group)",
    "mod_groups": "xkslab does not model users' group roles (account administrators manage every group)",
    "add_u2f_devices": "xkslab does not emulate two-factor authentication",
    "del_u2f_devices": "xkslab does not emulate two-factor authentication",
    "rename_u2f_devices": "xkslab does not emulate two-factor authentication",
}
_USER_FIELDS = frozenset({"first_name", "last_name", "account_role"})
_INVITE_FIELDS = _USER_FIELDS | {"user_email", "user_password"}
_ACCOUNT_FIELDS = frozenset({"name", "description", "enabled", "acct_id"})


def user_view(user: User, roles: list[str], acct_id: str) -> dict[str, Any]:
    return {
        "user_id": user.user_id,
        "user_email": user.email,
        # The lab sends no confirmation mail: the administrator who created the user vouched for it.
        "email_verified": True,
        "has_password": True,
        "first_name": user.first_name,
        "last_name": user.last_name,
        "acct_id": acct_id,
        "account_role": roles,
        "groups": {},
        "u2f_devices": [],
        "created_at": fortanix_time(user.created_at),
        "last_logged_in_at": fortanix_time(user.last_logged_in_at),
    }


def account_view(account: Account) -> dict[str, Any]:
    return {
        "acct_id": account.acct_id,
        "name": account.name,
        "description": account.description,
        "enabled": account.enabled,
        # sdkms-cli list-accounts prints state.name (Fortanix AccountState); without it the CLI crashes.
        "state": "Activated" if account.enabled else "Disabled",
        "auth_type": "Password",
        "created_at": fortanix_time(account.created_at),
    }


def _checked_body(body: Any, allowed: frozenset[str], what: str, refused: dict[str, str]) -> dict[str, Any]:
    """The non-null fields of a request body, every one of them a field the lab honours."""
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    present = {k: v for k, v in body.items() if v is not None}
    for name in present:
        if name in allowed:
            continue
        if name in refused:
            raise BadRequest(f"{name}: {refused[name]}")
        raise BadRequest(f"{name[:64]} is not a field of {what}")
    return present


def _user_changes(body: dict[str, Any]) -> UserChanges:
    role = body.get("account_role")
    return UserChanges(
        first_name=_optional_name(body, "first_name"),
        last_name=_optional_name(body, "last_name"),
        role=parse_roles(role) if role is not None else None,
    )


def _optional_name(body: dict[str, Any], name: str) -> str | None:
    if name not in body:
        return None
    return person_name(body[name], name) or ""


# ------------------------------------------------------------------------------------- users


@routes.get("/sys/v1/users")
async def list_users(request: web.Request) -> web.Response:
    principal = principal_of(request)
    unsupported = sorted(set(request.query) & {"group_id", "sort", "start", "limit", "offset"})
    if unsupported:
        raise BadRequest(f"{', '.join(unsupported)}: xkslab lists every user of the account at once")
    rows = await core_of(request).admin.list_users(principal)
    return json_response([user_view(user, roles, principal.acct_id) for user, roles in rows])


@routes.get("/sys/v1/users/{user_id}")
async def get_user(request: web.Request) -> web.Response:
    principal = principal_of(request)
    user, roles = await core_of(request).admin.get_user(principal, request.match_info["user_id"])
    return json_response(user_view(user, roles, principal.acct_id))


@routes.patch("/sys/v1/users/{user_id}")
async def update_user(request: web.Request) -> web.Response:
    principal = principal_of(request)
    body = _checked_body(await read_json(request), _USER_FIELDS, "a user update", _USER_REFUSED)
    changes = _user_changes(body)
    user, roles = await core_of(request).admin.update_user(principal, request.match_info["user_id"], changes)
    return json_response(user_view(user, roles, principal.acct_id))


@routes.delete("/sys/v1/users/{user_id}")
@routes.delete("/sys/v1/users/{user_id}/accounts")
async def remove_user(request: web.Request) -> web.Response:
    await core_of(request).admin.remove_user(principal_of(request), request.match_info["user_id"])
    return no_content()


@routes.delete("/sys/v1/users")
async def delete_own_user(request: web.Request) -> web.Response:
    await core_of(request).admin.delete_self(principal_of(request))
    return no_content()


@routes.post("/sys/v1/users/change_password")
async def change_password(request: web.Request) -> web.Response:
    principal = principal_of(request)
    body = _checked_body(
        await read_json(request), frozenset({"current_password", "new_password"}), "a password change", {}
    )
    source = request.remote or "unknown"
    await core_of(request).admin.change_password(
        principal, body.get("current_password"), body.get("new_password"), source
    )
    return no_content()


@routes.post("/sys/v1/users/invite")
async def invite_user(request: web.Request) -> web.Response:
    principal = principal_of(request)
    body = _checked_body(await read_json(request), _INVITE_FIELDS, "an invitation", _USER_REFUSED)
    email = body_field(body, "user_email", str, required=True)
    password = body.get("user_password")
    if password is None:
        raise BadRequest(
            "user_password: xkslab sends no invitation e-mail, so the inviter sets the new user's password"
        )
    changes = _user_changes(body)
    names = (changes.first_name or None, changes.last_name or None)
    user = await core_of(request).admin.create_user(
        principal, email, password, changes.role or "ACCOUNTMEMBER", names
    )
    return json_response(user_view(user, [changes.role or "ACCOUNTMEMBER"], principal.acct_id))


# ------------------------------------------------------------------------------------ accounts


async def _caller_account_ids(request: web.Request) -> list[str]:
    claims = request.get(CLAIMS)
    principal = request.get(PRINCIPAL)
    if claims is not None and claims["kind"] == "user":
        return list(await core_of(request).admin.user_accounts(str(claims["sub"])))
    if principal is not None:
        return [principal.acct_id]
    raise AuthFailed("authentication required")


@routes.get("/sys/v1/accounts")
async def list_accounts(request: web.Request) -> web.Response:
    ids = await _caller_account_ids(request)
    async with core_of(request).sessions() as session:
        rows = (await session.scalars(select(Account).where(Account.acct_id.in_(ids)))).all() if ids else []
    return json_response([account_view(a) for a in rows])


@routes.get("/sys/v1/accounts/{acct_id}")
async def get_account(request: web.Request) -> web.Response:
    acct_id = request.match_info["acct_id"]
    if acct_id not in await _caller_account_ids(request):
        raise NotFound("account does not exist")
    async with core_of(request).sessions() as session:
        account = await session.get(Account, acct_id)
    if account is None:
        raise NotFound("account does not exist")
    return json_response(account_view(account))


@routes.patch("/sys/v1/accounts/{acct_id}")
async def update_account(request: web.Request) -> web.Response:
    principal = principal_of(request)
    acct_id = request.match_info["acct_id"]
    refused = {"state": "an account's state follows enabled (Activated or Disabled)"}
    body = _checked_body(await read_json(request), _ACCOUNT_FIELDS, "an account update", refused)
    if body.get("acct_id", acct_id) != acct_id:
        raise BadRequest("acct_id in the body must be the account of the path")
    changes = AccountChanges(
        name=body_field(body, "name", str),
        description=body_field(body, "description", str),
        enabled=body_field(body, "enabled", bool),
    )
    account = await core_of(request).admin.update_account(principal, acct_id, changes)
    return json_response(account_view(account))
