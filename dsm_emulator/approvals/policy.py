"""A group's ``approval_policy`` (Fortanix ``GroupApprovalPolicy``): parsed and checked once, stored as the
normalised JSON it shows back, and evaluated against a set of approvers.

What the lab enforces: ``quorum {n, members, require_password}`` with members that are users, apps or
nested quorums; ``protect_crypto_operations``; ``protect_permissions`` for the operations the lab has
routes for. Everything else the model has (``require_2fa: true``, ``protect_manage_operations``, the
account-level ``user``/``app`` rules, permissions with no route here) is refused with a 400 that names
it, never dropped.

Which operations a policy protects (the lab's reading, see README "Quorum approval"):

* key export (``/export``, and wrapping a key, which exports it) always;
* the management operations ``protect_permissions`` names; when it is absent, every one of them the lab
  enforces (the stricter reading of an unset list);
* encrypt, decrypt, wrap, unwrap, MAC and MAC verify when ``protect_crypto_operations`` is true.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from dsm_emulator.errors import BadRequest
from dsm_emulator.models import is_uuid

# Not QuorumGroupPermissions: the lab's names for what is always, or optionally, protected.
EXPORT = "EXPORT"
CRYPTO = "CRYPTO_OPERATIONS"
# Export and import by key components: only ever through an approval request (Fortanix refuses a direct
# call), approved by the group's quorum and by every custodian the request names.
COMPONENTS = "KEY_COMPONENTS"
# Changing or deleting a group that has a policy (its policy included): always held, or the policy
# could be dropped by one administrator and the quorum would protect nothing.
GROUP_CHANGE = "GROUP_CHANGE"

# QuorumGroupPermissions the lab enforces: each has a route here whose handler asks the quorum gate.
ENFORCED_PERMISSIONS = frozenset(
    {
        "ROTATE_SOBJECTS",
        "REVOKE_SOBJECTS",
        "DELETE_SOBJECTS",
        "DESTROY_SOBJECTS",
        "UPDATE_SOBJECTS_PROFILE",
        "UPDATE_SOBJECTS_ENABLED_STATE",
        "UPDATE_KEY_OPS",
        "ACTIVATE_SOBJECTS",
        "MOVE_SOBJECTS",
        "REVERT_SOBJECTS",
    }
)
# In Fortanix's model, but nothing here could be held for them: refused by name.
UNENFORCED_PERMISSIONS = frozenset(
    {
        "GET_SOBJECTS",
        "DELETE_KEY_MATERIAL",
        "CREATE_SOBJECTS",
        "UPDATE_SOBJECT_POLICIES",
    }
)
MAX_MEMBERS = 100
MAX_DEPTH = 4

_POLICY_FIELDS = frozenset({"quorum", "protect_crypto_operations", "protect_permissions"})
_UNSUPPORTED_POLICY_FIELDS = {
    "protect_manage_operations": "is deprecated in Fortanix's model; use protect_permissions",
    "user": "(an account-level approval rule) is not implemented by the lab",
    "app": "(an account-level approval rule) is not implemented by the lab",
}
_QUORUM_FIELDS = frozenset({"n", "members", "require_password", "require_2fa"})


def _no_unknown(obj: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    unknown = sorted(k for k, v in obj.items() if v is not None and k not in allowed)
    if unknown:
        names = ", ".join(str(k)[:40] for k in unknown)
        raise BadRequest(f"{where}: field(s) {names} are not implemented by the lab")


def _quorum(value: Any, where: str, depth: int) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest(f"{where} must be an object")
    if depth > MAX_DEPTH:
        raise BadRequest(f"{where}: quorums nest at most {MAX_DEPTH} deep")
    _no_unknown(value, _QUORUM_FIELDS, where)
    if value.get("require_2fa"):
        raise BadRequest(
            f"{where}.require_2fa: the lab has no second factor, so it cannot require one; "
            "leave require_2fa false"
        )
    if value.get("require_2fa") not in (None, False):
        raise BadRequest(f"{where}.require_2fa must be true or false")
    n = value.get("n")
    members = value.get("members")
    if not isinstance(members, list) or not members:
        raise BadRequest(f"{where}.members must be a non-empty list")
    if len(members) > MAX_MEMBERS:
        raise BadRequest(f"{where}.members: at most {MAX_MEMBERS} members")
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= len(members):
        raise BadRequest(f"{where}.n must be an integer from 1 to the number of members ({len(members)})")
    require_password = value.get("require_password")
    if require_password is not None and not isinstance(require_password, bool):
        raise BadRequest(f"{where}.require_password must be true or false")
    parsed: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for index, member in enumerate(members):
        at = f"{where}.members[{index}]"
        if not isinstance(member, dict):
            raise BadRequest(f"{at} must be an object")
        present = {k: v for k, v in member.items() if v is not None}
        if len(present) != 1 or next(iter(present)) not in ("user", "app", "quorum"):
            raise BadRequest(f"{at} must be exactly one of user, app or quorum")
        (kind, ident), *_ = present.items()
        if kind == "quorum":
            parsed.append({"quorum": _quorum(ident, f"{at}.quorum", depth + 1)})
            continue
        if not is_uuid(ident):
            raise BadRequest(f"{at}.{kind} must be a {kind} id")
        if (kind, ident) in seen:
            raise BadRequest(f"{at}: {kind} {ident} is a member twice")
        seen.add((kind, ident))
        parsed.append({kind: ident})
    return {"n": n, "members": parsed, "require_password": bool(require_password), "require_2fa": False}


def parse_policy(value: Any) -> dict[str, Any]:
    """The normalised policy, or BadRequest naming the first field the lab does not enforce."""
    if not isinstance(value, dict):
        raise BadRequest("approval_policy must be an object")
    for name, why in _UNSUPPORTED_POLICY_FIELDS.items():
        if value.get(name) not in (None, False):
            raise BadRequest(f"approval_policy.{name} {why}")
    _no_unknown(value, _POLICY_FIELDS | set(_UNSUPPORTED_POLICY_FIELDS), "approval_policy")
    if value.get("quorum") is None:
        raise BadRequest("approval_policy.quorum is required")
    crypto = value.get("protect_crypto_operations")
    if crypto is not None and not isinstance(crypto, bool):
        raise BadRequest("approval_policy.protect_crypto_operations must be true or false")
    policy: dict[str, Any] = {
        "quorum": _quorum(value["quorum"], "approval_policy.quorum", 1),
        "protect_crypto_operations": bool(crypto),
    }
    permissions = value.get("protect_permissions")
    if permissions is not None:
        if not isinstance(permissions, list) or not all(isinstance(x, str) for x in permissions):
            raise BadRequest("approval_policy.protect_permissions must be a list of permission names")
        unenforced = sorted(set(permissions) & UNENFORCED_PERMISSIONS)
        if unenforced:
            raise BadRequest(
                f"approval_policy.protect_permissions: {', '.join(unenforced)} not implemented by the lab "
                "(it has no operation to hold for approval there)"
            )
        unknown = sorted(set(permissions) - ENFORCED_PERMISSIONS)
        if unknown:
            names = ", ".join(x[:40] for x in unknown)
            raise BadRequest(f"approval_policy.protect_permissions: unknown permission(s) {names}")
        policy["protect_permissions"] = sorted(set(permissions))
    return policy


def parse_custodian_policy(value: Any, path: str = "custodian_policy") -> dict[str, Any] | None:
    """A group's key custodians (Fortanix ``custodian_policy``, a QuorumPolicy): ``{"quorum": {n, members,
    require_password}}`` whose members are users of the account (checked by the groups service), at least
    two of them; ``"remove"`` clears it. The lab's reading: ``n`` is how many custodians an export or import
    by components must name (each of whom holds one component and approves the request)."""
    if value == "remove":
        return None
    if not isinstance(value, dict):
        raise BadRequest(f"{path} must be an object")
    for kind in ("user", "app"):
        if value.get(kind) is not None:
            raise BadRequest(f"{path}.{kind}: a single custodian cannot split a key; use a quorum of users")
    _no_unknown(value, {"quorum", "user", "app"}, path)
    if value.get("quorum") is None:
        raise BadRequest(f"{path}.quorum is required")
    quorum = _quorum(value["quorum"], f"{path}.quorum", 1)
    for index, member in enumerate(quorum["members"]):
        if "user" not in member:
            kind = next(iter(member))
            raise BadRequest(
                f"{path}.quorum.members[{index}].{kind}: key custodians are users; "
                f"{'nested quorums' if kind == 'quorum' else 'apps'} are not custodians in the lab"
            )
    if len(quorum["members"]) < 2 or quorum["n"] < 2:
        raise BadRequest(f"{path}.quorum: a key splits between at least 2 custodians (n >= 2)")
    return {"quorum": quorum}


def members_of(quorum: Mapping[str, Any]) -> set[tuple[str, str]]:
    """Every (kind, id) named anywhere in ``quorum``, nested quorums included."""
    found: set[tuple[str, str]] = set()
    for member in quorum["members"]:
        if "quorum" in member:
            found |= members_of(member["quorum"])
        else:
            (kind, ident), *_ = member.items()
            found.add((kind, ident))
    return found


def protected(policy: Mapping[str, Any] | None) -> frozenset[str]:
    """The operation categories ``policy`` holds for approval (EXPORT, CRYPTO, QuorumGroupPermissions)."""
    if not policy:
        return frozenset()
    permissions = policy.get("protect_permissions")
    held = set(ENFORCED_PERMISSIONS if permissions is None else permissions)
    held |= {EXPORT, GROUP_CHANGE, COMPONENTS}
    if policy.get("protect_crypto_operations"):
        held.add(CRYPTO)
    return frozenset(held)


def requires_password(quorum: Mapping[str, Any]) -> bool:
    return bool(quorum.get("require_password")) or any(
        requires_password(m["quorum"]) for m in quorum["members"] if "quorum" in m
    )


def _consume(quorum: Mapping[str, Any], pool: set[tuple[str, str]]) -> set[tuple[str, str]] | None:
    """The approvers that satisfy ``quorum``, taken from ``pool`` (which loses them), or None. Each
    approver counts once across the whole tree, so no one identity (the requester included) can stand
    in for two members of a quorum; direct members are taken before nested quorums."""
    used: set[tuple[str, str]] = set()
    count = 0
    for member in sorted(quorum["members"], key=lambda m: "quorum" in m):
        if count >= quorum["n"]:
            break
        if "quorum" in member:
            trial = set(pool)
            taken = _consume(member["quorum"], trial)
            if taken is not None:
                pool -= taken
                used |= taken
                count += 1
            continue
        (kind, ident), *_ = member.items()
        if (kind, ident) in pool:
            pool.discard((kind, ident))
            used.add((kind, ident))
            count += 1
    return used if count >= quorum["n"] else None


def satisfied(quorum: Mapping[str, Any], approvers: Iterable[tuple[str, str]]) -> bool:
    return _consume(quorum, set(approvers)) is not None
