"""Key policies: GetKeyPolicy, PutKeyPolicy, ListKeyPolicies, and the Policy that CreateKey takes.

Stored and returned exactly as given, after AWS's own checks on the document (policy_document.py);
never evaluated on calls. A key has one policy, named "default", as in AWS.
"""

from __future__ import annotations

from typing import Any

from kms_emulator.context import Call, KmsContext
from kms_emulator.errors import NotFound
from kms_emulator.lookup import find_key, require_not_pending_deletion
from kms_emulator.models import KmsKey
from kms_emulator.params import Params
from kms_emulator.policy_document import POLICY_NAME, check, default_policy

POLICY_PATTERN = r"[\u0009\u000A\u000D\u0020-\u00FF]+"
POLICY_MAX = 131072


def read_policy(ctx: KmsContext, call: Call, p: Params, *, required: bool) -> str | None:
    """Policy and BypassPolicyLockoutSafetyCheck of CreateKey or PutKeyPolicy, checked as AWS checks
    them; None when CreateKey gets no Policy (the caller then stores the default policy)."""
    policy = p.string("Policy", required=required, min_len=1, max_len=POLICY_MAX, pattern=POLICY_PATTERN)
    bypass = bool(p.boolean("BypassPolicyLockoutSafetyCheck"))
    if policy is not None:
        check(
            policy,
            caller_arn=call.principal_arn,
            account_id=ctx.settings.account_id,
            bypass_lockout_check=bypass,
        )
    return policy


def key_policy(ctx: KmsContext, key: KmsKey) -> str:
    return key.policy if key.policy is not None else default_policy(ctx.settings.account_id)


def _policy_name(p: Params) -> None:
    name = p.string("PolicyName", min_len=1, max_len=128, pattern=r"[\w]+") or POLICY_NAME
    if name != POLICY_NAME:
        raise NotFound(f"No such policy exists: {name}. A KMS key has one policy, named {POLICY_NAME}.")


async def get_key_policy(ctx: KmsContext, call: Call, p: Params) -> dict[str, Any]:
    ref = p.key_id()
    _policy_name(p)
    assert ref is not None
    async with ctx.sessions() as session:
        key, _store = await find_key(ctx, session, ref, allow_alias=False)
    return {"Policy": key_policy(ctx, key), "PolicyName": POLICY_NAME}


async def put_key_policy(ctx: KmsContext, call: Call, p: Params) -> dict[str, Any]:
    ref = p.key_id()
    _policy_name(p)
    policy = read_policy(ctx, call, p, required=True)
    assert ref is not None and policy is not None
    async with ctx.sessions.begin() as session:
        key, _store = await find_key(ctx, session, ref, allow_alias=False)
        require_not_pending_deletion(ctx, key)
        key.policy = policy
    return {}


async def list_key_policies(ctx: KmsContext, call: Call, p: Params) -> dict[str, Any]:
    """One name, always: a marker can only be past it (the model gives this operation no
    InvalidMarkerException)."""
    ref = p.key_id()
    p.limit(default=100, maximum=1000)
    marker = p.marker()
    assert ref is not None
    async with ctx.sessions() as session:
        await find_key(ctx, session, ref, allow_alias=False)
    return {"PolicyNames": [] if marker is not None else [POLICY_NAME], "Truncated": False}
