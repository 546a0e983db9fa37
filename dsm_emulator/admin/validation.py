"""Checks on what callers send (names, descriptions, emails, passwords, group and permission specs):
pure functions with no database or service state, so that every operation refuses bad input with the same
BadRequest and the same limits before it opens a transaction or spends scrypt work, whichever concern
accepts the value.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from dsm_emulator.authz import APP_PERMISSIONS, DEFAULT_APP_PERMISSIONS
from dsm_emulator.errors import BadRequest
from dsm_emulator.models import is_uuid

MAX_NAME = 200
MAX_DESCRIPTION = 4096
MAX_EMAIL = 320
MAX_PASSWORD = 1024
MAX_APP_TYPE = 64


def _name(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{field} must be a string")
    name = value.strip()
    if not 0 < len(name) <= MAX_NAME:
        raise BadRequest(f"{field} must be 1 to {MAX_NAME} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise BadRequest(f"{field} must not contain control characters")
    return name


def _description(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest("description must be a string")
    if len(value) > MAX_DESCRIPTION:
        raise BadRequest(f"description must be at most {MAX_DESCRIPTION} characters")
    return value


def _email(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{field} must be a string")
    email = value.strip().lower()
    local, at, domain = email.partition("@")
    if not at or not local or not domain or len(email) > MAX_EMAIL or any(c.isspace() for c in email):
        raise BadRequest(f"{field} must be an email address")
    return email


def _password(value: object, field: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_PASSWORD:
        raise BadRequest(f"{field} must be 1 to {MAX_PASSWORD} characters")
    return value


def _parse_groups(spec: object, field: str, *, ids_only: bool = False) -> dict[str, frozenset[str]]:
    """group_id -> permissions from a map (group_id -> permission list; null means the defaults) or a
    plain list of group ids (the defaults). Order is kept: the first group is the default default."""
    if isinstance(spec, str | bytes) or spec is None:
        raise BadRequest(f"{field} must be a list of group ids or a map of group id to permissions")
    result: dict[str, frozenset[str]] = {}
    if isinstance(spec, Mapping) and not ids_only:
        items: Iterable[tuple[object, object]] = spec.items()
    elif isinstance(spec, Iterable):
        items = ((gid, None) for gid in spec)
    else:
        raise BadRequest(f"{field} must be a list of group ids or a map of group id to permissions")
    for gid, perms in items:
        if not is_uuid(gid):
            raise BadRequest(f"{field}: {str(gid)[:64]!r} is not a valid group id")
        assert isinstance(gid, str)
        if perms is None:
            result[gid] = DEFAULT_APP_PERMISSIONS
            continue
        if isinstance(perms, str | bytes) or not isinstance(perms, Iterable):
            raise BadRequest(f"{field}: the permissions of group {gid} must be a list")
        perm_list = list(perms)
        unknown = sorted(
            {str(x)[:32] for x in perm_list if not isinstance(x, str) or x not in APP_PERMISSIONS}
        )
        if unknown:
            raise BadRequest(f"{field}: unknown permission(s) {', '.join(unknown)}")
        result[gid] = frozenset(perm_list)
    return result
