"""Who may do what: permissions are data, and everything not granted is denied.

An app acts only on objects in its groups, with the permissions it holds in that group; an account
administrator (a user, or the local operator through the CLI) manages everything in the account. A key
acts only within its key_ops, its enabled flag and its lifecycle state. Refusals say "not found" where
the caller may not even know the object exists.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from dsm_emulator.errors import AccessDenied, InvalidState, KeyOpNotAllowed, NotFound, NotVisible
from dsm_emulator.models import SecurityObject

# Fortanix AppPermissions (SDK 5.6) plus the AUDIT permission of the 2026 model.
APP_PERMISSIONS = frozenset(
    {
        "ENCRYPT",
        "DECRYPT",
        "MASKDECRYPT",
        "WRAPKEY",
        "UNWRAPKEY",
        "DERIVEKEY",
        "MACGENERATE",
        "MACVERIFY",
        "MANAGE",
        "SIGN",
        "VERIFY",
        "AGREEKEY",
        "EXPORT",
        "AUDIT",
    }
)
# What an app gets in a group given as a plain list (sdkms-cli's create-app): Fortanix's default set.
DEFAULT_APP_PERMISSIONS = APP_PERMISSIONS - {"MASKDECRYPT"}
KEY_OPS = frozenset(
    {
        "SIGN",
        "VERIFY",
        "ENCRYPT",
        "DECRYPT",
        "WRAPKEY",
        "UNWRAPKEY",
        "DERIVEKEY",
        "AGREEKEY",
        "MACGENERATE",
        "MACVERIFY",
        "EXPORT",
        "APPMANAGEABLE",
    }
)
# States in which the material may be used to protect new data / to recover old data (NIST SP 800-57).
PROTECT_STATES = frozenset({"Active"})
PROCESS_STATES = frozenset({"Active", "Deactivated", "Compromised"})
# Operations that only recover data; they stay allowed on a Deactivated or Compromised key.
_RECOVER_OPS = frozenset({"DECRYPT", "UNWRAPKEY", "VERIFY", "MACVERIFY"})


@dataclass(frozen=True)
class Principal:
    kind: Literal["user", "app", "system"]
    id: str | None
    acct_id: str
    is_admin: bool = False
    # group_id -> permissions, for apps
    group_permissions: Mapping[str, frozenset[str]] = field(default_factory=lambda: MappingProxyType({}))
    # "xks-proxy" when the proxy acts for the app
    via: str | None = None
    # The kids an approved request lets this call touch past their groups' approval policies (set only
    # while the request's operation runs, for its requester).
    approved: frozenset[str] = frozenset()
    # Creating an approval request: operations stop at the quorum gate and report what they would touch.
    probe: bool = False

    @property
    def actor_type(self) -> str:
        return {"user": "User", "app": "App", "system": "System"}[self.kind]

    def groups(self) -> frozenset[str]:
        return frozenset(self.group_permissions)


def system_principal(acct_id: str) -> Principal:
    """The local operator using the CLI on the data directory: an administrator of the account."""
    return Principal(kind="system", id=None, acct_id=acct_id, is_admin=True)


def require_permission(principal: Principal, permission: str, group_id: str) -> None:
    if principal.is_admin:
        return
    if permission not in principal.group_permissions.get(group_id, frozenset()):
        raise AccessDenied(f"app lacks the {permission} permission in the group of this object")


def require_visible(principal: Principal, obj: SecurityObject) -> None:
    """Apps see only objects in their groups; a caller outside gets the same answer as for no object
    (a 403 would confirm that a name or kid exists). A caller inside the group who lacks a permission gets
    AccessDenied from require_permission: it can see the object anyway."""
    if principal.acct_id != obj.acct_id:
        raise NotFound("sobject does not exist")
    if not principal.is_admin and obj.group_id not in principal.group_permissions:
        raise NotVisible("sobject does not exist", obj.kid, obj.group_id)


def require_key_op(obj: SecurityObject, op: str, state: str | None = None) -> None:
    """The key itself must allow the operation: key_ops, enabled flag, lifecycle state (``state`` is the
    effective state when the caller has computed it from the activation and deactivation dates)."""
    state = obj.state if state is None else state
    if op not in obj.key_ops:
        raise KeyOpNotAllowed(f"operation {op} is not allowed by this key's key_ops")
    if not obj.enabled:
        raise InvalidState("the key is disabled")
    allowed_states = PROCESS_STATES if op in _RECOVER_OPS else PROTECT_STATES
    if state not in allowed_states:
        raise InvalidState(f"the key is in state {state}; {op} is not allowed")
