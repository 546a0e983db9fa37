"""Fortanix-shaped JSON views of the stored objects, shared by the REST API and the CLI's ``--json``.

Object timestamps are Fortanix's compact ``YYYYMMDDTHHMMSSZ``; bytes are standard padded base64.
Nothing secret is ever part of a view: material appears only in an explicit export.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

from dsm_emulator.keys import effective_state
from dsm_emulator.models import App, Group, KeyHistoryItem, SecurityObject


def fortanix_time(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _creator(kind: str, ident: str) -> dict[str, str]:
    return {"app": ident} if kind == "app" else {"user": ident}


def sobject_view(
    obj: SecurityObject,
    *,
    value: bytes | None = None,
    compliant: bool = True,
    history: list[KeyHistoryItem] | None = None,
) -> dict[str, Any]:
    """The KeyObject. ``compliant``: whether the object meets its group's policies today
    (KeyService.noncompliant); objects just made or changed met them, or they would not have been.
    ``history`` (KeyService.history) for a key under a history policy."""
    links: dict[str, str] = {}
    if obj.replacement_kid:
        links["replacement"] = obj.replacement_kid
    if obj.replaced_kid:
        links["replaced"] = obj.replaced_kid
    view: dict[str, Any] = {
        "kid": obj.kid,
        "name": obj.name,
        "description": obj.description,
        "acct_id": obj.acct_id,
        "group_id": obj.group_id,
        "obj_type": obj.obj_type,
        # Fortanix: "not returned for elliptic curves" (sdkms-cli list-keys then prints the curve).
        "key_size": None if obj.elliptic_curve is not None else obj.key_size,
        "key_ops": list(obj.key_ops),
        "enabled": obj.enabled,
        "state": effective_state(obj),
        "origin": obj.origin,
        "creator": _creator(obj.creator_type, obj.creator_id),
        "created_at": fortanix_time(obj.created_at),
        "lastused_at": fortanix_time(obj.lastused_at) or "19700101T000000Z",
        "activation_date": fortanix_time(obj.activation_date),
        "deactivation_date": fortanix_time(obj.deactivation_date),
        "compromise_date": fortanix_time(obj.compromise_date),
        "destruction_date": fortanix_time(obj.destruction_date),
        "deletion_date": fortanix_time(obj.deletion_date),
        "revocation_reason": obj.revocation_reason,
        "custom_metadata": dict(obj.custom_metadata),
        "kcv": obj.kcv,
        "links": links,
        "version": obj.version,
        "never_exportable": "EXPORT" not in obj.key_ops,
        "public_only": obj.public_only,
        "compliant_with_policies": compliant,
    }
    if obj.pub_key is not None:
        view["pub_key"] = b64(obj.pub_key)
    if obj.elliptic_curve is not None:
        view["elliptic_curve"] = obj.elliptic_curve
    if value is not None:
        view["value"] = b64(value)
    if history is not None:
        view["history"] = [history_view(item) for item in history]
    return view


# The group columns a GroupRequest sets (dsm_emulator/api/admin.py GROUP_FIELDS), shown when set.
GROUP_SETTINGS = (
    "cryptographic_policy",
    "key_metadata_policy",
    "export_policy",
    "custodian_policy",
    "custom_metadata",
)


def history_view(item: KeyHistoryItem) -> dict[str, Any]:
    """A Fortanix HistoryItem. ``revocation_reason`` is the code alone, as HistoryItemState types it."""
    state = dict(item.state)
    for name in (
        "activation_date",
        "deactivation_date",
        "compromise_date",
        "destruction_date",
        "deletion_date",
    ):
        text = state.get(name)
        state[name] = fortanix_time(datetime.fromisoformat(text)) if isinstance(text, str) else None
    reason = state.get("revocation_reason")
    state["revocation_reason"] = reason.get("code") if isinstance(reason, dict) else None
    return {
        "id": item.id,
        "state": state,
        "created_at": fortanix_time(item.created_at),
        "expiry": fortanix_time(item.expiry),
    }


def group_view(group: Group) -> dict[str, Any]:
    view: dict[str, Any] = {
        "group_id": group.group_id,
        "name": group.name,
        "description": group.description,
        "acct_id": group.acct_id,
        "creator": _creator(group.creator_type, group.creator_id),
        "created_at": fortanix_time(group.created_at),
        **({"approval_policy": group.approval_policy} if group.approval_policy is not None else {}),
    }
    for column in GROUP_SETTINGS:
        value = getattr(group, column)
        if value is not None:
            view[column] = value
    if group.key_history_window_s is not None:
        # One policy under both of Fortanix's names: the SDK's and the 2026 API's.
        policy = {"undo_time_window": group.key_history_window_s}
        view["key_undo_policy"] = policy
        view["key_history_policy"] = dict(policy)
    return view


def app_view(app: App, groups: dict[str, frozenset[str]] | None = None) -> dict[str, Any]:
    group_map = {gid: sorted(perms) for gid, perms in (groups or {}).items()}
    return {
        "app_id": app.app_id,
        "name": app.name,
        "description": app.description,
        "acct_id": app.acct_id,
        "app_type": app.app_type,
        "auth_type": app.auth_type,
        "groups": group_map,
        "default_group": app.default_group_id,
        "enabled": app.enabled,
        "creator": _creator(app.creator_type, app.creator_id),
        "created_at": fortanix_time(app.created_at),
        "lastused_at": fortanix_time(app.lastused_at),
    }
