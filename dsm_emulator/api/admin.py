"""DSM REST API: groups and apps (``GroupsApi``, ``AppsApi``). A group field is enforced or refused
(GROUP_FIELDS); nulls are absent. App requests still ignore fields they do not know.

A group's key history policy arrives under either of Fortanix's names, ``key_undo_policy`` (sdkms 5.6)
or ``key_history_policy`` (the 2026 API, which may also be ``"remove"``), and is checked here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from dsm_emulator import policies
from dsm_emulator.api.context import (
    core_of,
    field,
    json_response,
    no_content,
    principal_of,
    read_json,
)
from dsm_emulator.approvals.policy import parse_custodian_policy
from dsm_emulator.errors import BadRequest
from dsm_emulator.keys import undo_window
from dsm_emulator.policies import not_implemented
from dsm_emulator.views import app_view, group_view

routes = web.RouteTableDef()

# ------------------------------------------------------------------------------------ groups

GroupField = Callable[[str, Any], Any]
"""A GroupRequest field's handler: (field name, non-null value) -> what the group's column of that name
stores (None clears it); raises BadRequest for a value it refuses."""


def _by_route(name: str, value: Any) -> Any:
    raise AssertionError(f"{name} is handled by the route")  # never called: see _group_settings


def _refused(why: str) -> GroupField:
    def refuse(name: str, value: Any) -> Any:
        # A value that asks for nothing the lab lacks (an empty list, false, "remove") is not a yes.
        if value is False or value in ([], {}, "remove"):
            return _NOTHING
        raise not_implemented(name, why)

    return refuse


def _custom_metadata(name: str, value: Any) -> Any:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise BadRequest(f"{name} must map strings to strings")
    return dict(value) or None


def _policy(parse: Callable[[Any, str], Any]) -> GroupField:
    return lambda name, value: parse(value, name)


_NOTHING = object()

# Every field of Fortanix's GroupRequest (the sdkms SDK's and the 2026 spec's): enforced (a handler that
# parses what the group then enforces) or refused with a 400 that names it. Making a refused field real
# is this one line plus its column.
GROUP_FIELDS: Mapping[str, GroupField] = {
    "name": _by_route,
    "description": _by_route,
    "acct_id": _by_route,  # must be the caller's account
    "cryptographic_policy": _policy(policies.parse_cryptographic_policy),
    "key_metadata_policy": _policy(policies.parse_key_metadata_policy),
    "export_policy": _policy(policies.parse_export_policy),
    "custom_metadata": _custom_metadata,
    "approval_policy": _by_route,  # parsed and checked by the groups service (dsm_emulator/approvals)
    "key_undo_policy": _by_route,  # the SDK's name of the key history window (_history_policy)
    "key_history_policy": _by_route,  # the 2026 API's name of it
    "custodian_policy": _policy(parse_custodian_policy),  # checked against the members by the groups service
    "add_hmg": _refused("xkslab keeps every key itself; no external HSM or KMS backs a group"),
    "mod_hmg": _refused("xkslab keeps every key itself; no external HSM or KMS backs a group"),
    "del_hmg": _refused("xkslab keeps every key itself; no external HSM or KMS backs a group"),
    "hmg_redundancy": _refused("no external HSM or KMS backs a group"),
    "hmg_segregation": _refused("no external HSM or KMS backs a group"),
    "hmg_sync": _refused("no external HSM or KMS backs a group"),
    "auto_scan": _refused("no external HSM or KMS backs a group"),
    "client_configurations": _refused("there are no PKCS#11, KMIP or TEP clients"),
    "wrapping_key_name": _refused("key material is sealed by the lab's keyring, not a group key"),
    "google_access_reason_policy": _refused("there is no Google EKM interface"),
}

# Fields sdkms-cli's create-group and update-group post beside GroupRequest's (its argparse namespace):
# not group fields, and what they ask for travels in approval_policy, which is judged above.
_CLI_LEFTOVERS = frozenset({"add_quorum_policy", "n", "users", "require_2fa", "require_password"})


def _group_settings(request: web.Request, body: Any, group_id: str | None = None) -> dict[str, Any]:
    """The group columns a GroupRequest sets. Nulls are absent (sdkms clients send null for every
    field left unset, so refusing them would refuse the real clients)."""
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    settings: dict[str, Any] = {}
    for name, value in body.items():
        if value is None or name in _CLI_LEFTOVERS:
            continue
        if name == "group_id" and group_id is not None:
            if value != group_id:  # update-group with --name and --group-id sends it along
                raise BadRequest("group_id in the body must be the group of the path")
            continue
        handler = GROUP_FIELDS.get(name)
        if handler is None:
            raise BadRequest(f"{name[:64]} is not a field of a group")
        if handler is _by_route:
            continue
        stored = handler(name, value)
        if stored is not _NOTHING:
            settings[name] = stored
    acct_id = field(body, "acct_id", str)
    if acct_id is not None and acct_id != principal_of(request).acct_id:
        raise BadRequest("acct_id must be the account of the session")
    return settings


def _history_policy(body: Any) -> tuple[bool, int | None]:
    """(given, window) from ``key_undo_policy`` (the SDK's name) and/or ``key_history_policy`` (2026's,
    which may also be ``"remove"``): window None with given True removes the policy."""
    given: dict[str, int | None] = {}
    for name in ("key_undo_policy", "key_history_policy"):
        value = body.get(name) if isinstance(body, dict) else None
        if value is not None:
            given[name] = undo_window(value, name)
    if not given:
        return False, None
    if len(set(given.values())) > 1:
        raise BadRequest("key_undo_policy and key_history_policy disagree: send one of them")
    return True, next(iter(given.values()))


@routes.post("/sys/v1/groups")
async def create_group(request: web.Request) -> web.Response:
    body = await read_json(request)
    name = field(body, "name", str, required=True)
    description = field(body, "description", str)
    settings = _group_settings(request, body)
    _, window = _history_policy(body)
    group = await core_of(request).admin.create_group(
        principal_of(request),
        name,
        description,
        settings,
        approval_policy=field(body, "approval_policy", dict),
        history_window_s=window,
    )
    return json_response(group_view(group))


@routes.get("/sys/v1/groups")
async def list_groups(request: web.Request) -> web.Response:
    groups = await core_of(request).admin.list_groups(principal_of(request))
    return json_response([group_view(g) for g in groups])


@routes.get("/sys/v1/groups/{group_id}")
async def get_group(request: web.Request) -> web.Response:
    group = await core_of(request).admin.get_group(principal_of(request), request.match_info["group_id"])
    return json_response(group_view(group))


@routes.patch("/sys/v1/groups/{group_id}")
async def update_group(request: web.Request) -> web.Response:
    body = await read_json(request, allow_empty=True)
    name = field(body, "name", str)
    description = field(body, "description", str)
    group_id = request.match_info["group_id"]
    settings = _group_settings(request, body, group_id)
    given, window = _history_policy(body)
    group = await core_of(request).admin.update_group(
        principal_of(request),
        group_id,
        name=name,
        description=description,
        settings=settings,
        approval_policy=field(body, "approval_policy", (dict, str)),
        history_window_s=window,
        remove_history_policy=given and window is None,
    )
    return json_response(group_view(group))


@routes.delete("/sys/v1/groups/{group_id}")
async def delete_group(request: web.Request) -> web.Response:
    await core_of(request).admin.delete_group(principal_of(request), request.match_info["group_id"])
    return no_content()


# -------------------------------------------------------------------------------------- apps


def _credential(body: Any) -> tuple[str, str | None, str | None]:
    """(kind, access_key_id, secret_key) from an ``AppCredential`` request field (default: secret)."""
    cred = field(body, "credential", dict)
    if cred is None:
        return "secret", None, None
    present = {k: v for k, v in cred.items() if v is not None}
    if not present:
        return "secret", None, None
    if len(present) != 1:
        raise BadRequest("credential must have exactly one kind")
    (kind, value), *_ = present.items()
    if kind == "secret":
        return "secret", None, None
    if kind == "awsxks":
        if not isinstance(value, dict):
            raise BadRequest("credential.awsxks must be an object")
        access_key_id = field(value, "access_key_id", str)
        secret_key = field(value, "secret_key", str)
        return "awsxks", access_key_id, secret_key
    raise BadRequest(f"unsupported credential kind {str(kind)[:32]}")


async def _app_response(request: web.Request, app: Any) -> web.Response:
    groups = await core_of(request).admin.app_groups(app.app_id)
    return json_response(app_view(app, groups))


@routes.post("/sys/v1/apps")
async def create_app(request: web.Request) -> web.Response:
    body = await read_json(request)
    name = field(body, "name", str, required=True)
    description = field(body, "description", str)
    add_groups = field(body, "add_groups", (dict, list), required=True)
    default_group = field(body, "default_group", str)
    app_type = field(body, "app_type", str) or "default"
    enabled = field(body, "enabled", bool)
    kind, access_key_id, secret_key = _credential(body)
    core = core_of(request)
    principal = principal_of(request)
    app, _secret = await core.admin.create_app(
        principal,
        name,
        groups=add_groups,
        default_group=default_group,
        description=description,
        app_type=app_type,
        credential_kind=kind,  # type: ignore[arg-type]
        awsxks_access_key_id=access_key_id,
        awsxks_secret=secret_key,
    )
    if enabled is False:
        app = await core.admin.update_app(principal, app.app_id, enabled=False)
    return await _app_response(request, app)


@routes.get("/sys/v1/apps")
async def list_apps(request: web.Request) -> web.Response:
    core = core_of(request)
    group_id = request.query.get("group_id") or None
    apps = await core.admin.list_apps(principal_of(request), group_id)
    views = [app_view(a, await core.admin.app_groups(a.app_id)) for a in apps]
    return json_response(views)


@routes.get("/sys/v1/apps/{app_id}")
async def get_app(request: web.Request) -> web.Response:
    app = await core_of(request).admin.get_app(principal_of(request), request.match_info["app_id"])
    return await _app_response(request, app)


@routes.patch("/sys/v1/apps/{app_id}")
async def update_app(request: web.Request) -> web.Response:
    body = await read_json(request, allow_empty=True)
    app = await core_of(request).admin.update_app(
        principal_of(request),
        request.match_info["app_id"],
        name=field(body, "name", str),
        description=field(body, "description", str),
        enabled=field(body, "enabled", bool),
        add_groups=field(body, "add_groups", (dict, list)),
        del_groups=field(body, "del_groups", (dict, list)),
        mod_groups=field(body, "mod_groups", (dict, list)),
        default_group=field(body, "default_group", str),
    )
    return await _app_response(request, app)


@routes.delete("/sys/v1/apps/{app_id}")
async def delete_app(request: web.Request) -> web.Response:
    await core_of(request).admin.delete_app(principal_of(request), request.match_info["app_id"])
    return no_content()


@routes.get("/sys/v1/apps/{app_id}/credential")
async def get_credential(request: web.Request) -> web.Response:
    app_id = request.match_info["app_id"]
    result = await core_of(request).admin.get_credential(principal_of(request), app_id)
    previous = result.pop("previous", None)
    response: dict[str, Any] = {"app_id": app_id, "credential": result}
    if previous is not None:
        response["previous_credential"] = previous
    return json_response(response)


@routes.post("/sys/v1/apps/{app_id}/reset_secret")
async def reset_secret(request: web.Request) -> web.Response:
    body = await read_json(request, allow_empty=True)
    secret_size = field(body, "secret_size", int)
    _kind, access_key_id, secret_key = _credential(body)
    app, _secret = await core_of(request).admin.reset_secret(
        principal_of(request),
        request.match_info["app_id"],
        secret_size=64 if secret_size is None else secret_size,
        access_key_id=access_key_id,
        secret_key=secret_key,
    )
    return await _app_response(request, app)
