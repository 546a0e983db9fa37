"""Grants: CreateGrant, ListGrants, ListRetirableGrants, RetireGrant, RevokeGrant.

Grants are stored, listed, retired and revoked as AWS does it, with AWS's checks on their input; like key
policies they are not evaluated on calls (README, KMS emulator). A grant token is the grant id sealed under
the KMS sealing key (``sealing.GRANT_TOKEN``): every CreateGrant answers a fresh one, any token this KMS
issued opens and names its grant, and none is stored. Grant ids are 64 hex digits, as AWS's.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from kms_emulator.context import Call, KmsContext, epoch, utcnow
from kms_emulator.errors import DisabledError, InvalidState, KmsError, NotFound, ValidationError
from kms_emulator.lookup import DISABLED, PENDING_DELETION, find_key
from kms_emulator.models import KmsGrant, KmsKey
from kms_emulator.params import Params, constraint_error
from kms_emulator.sealing import GRANT_TOKEN, SealError

MAX_GRANTS_PER_KEY = 50_000
MAX_GRANT_TOKENS = 10
MAX_CONTEXT_PAIRS = 8
MAX_CONTEXT_CHARS = 384
GRANT_TOKEN_ROW = "kms-grant-token"
PRINCIPAL = r"^[\w+=,.@:/-]+$"
SERVICE_PRINCIPAL = r"^([A-Za-z0-9\-]+)\.([A-Za-z0-9\-]+)(\.[A-Za-z0-9\-]+)+$"
GRANT_NAME = r"^[a-zA-Z0-9:/_-]+$"
SOURCE_ARN = r"^arn:aws[a-z0-9-]*:[a-z0-9-]+:[a-z0-9-]*:[0-9]{12}:.+$"
GRANT_OPERATIONS = [
    "Decrypt", "Encrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext", "ReEncryptFrom",
    "ReEncryptTo", "Sign", "Verify", "GetPublicKey", "CreateGrant", "RetireGrant", "DescribeKey",
    "GenerateDataKeyPair", "GenerateDataKeyPairWithoutPlaintext", "GenerateMac", "VerifyMac",
    "DeriveSharedSecret", "Encapsulate", "Decapsulate",
]  # fmt: skip
# What a grant on a symmetric encryption key may allow (AWS: the others need asymmetric or HMAC keys).
SYMMETRIC_OPERATIONS = frozenset(
    {
        "Decrypt", "Encrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext", "ReEncryptFrom",
        "ReEncryptTo", "CreateGrant", "RetireGrant", "DescribeKey", "GenerateDataKeyPair",
        "GenerateDataKeyPairWithoutPlaintext",
    }
)  # fmt: skip
_GRANT_ID_LEN = 64


def _dry_run(p: Params) -> None:
    if p.boolean("DryRun"):
        raise KmsError.named(
            "DryRunOperationException", "The request would have succeeded, but the DryRun option is set."
        )


def issue_token(ctx: KmsContext, grant_id: str) -> str:
    sealed = ctx.sealer.seal(grant_id.encode(), purpose=GRANT_TOKEN, row_id=GRANT_TOKEN_ROW)
    return base64.urlsafe_b64encode(sealed).decode("ascii").rstrip("=")


def open_token(ctx: KmsContext, token: str) -> str:
    """The grant id a token names; InvalidGrantTokenException for anything this KMS did not issue."""
    try:
        sealed = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        grant_id = ctx.sealer.unseal(sealed, purpose=GRANT_TOKEN, row_id=GRANT_TOKEN_ROW).decode("ascii")
    except (binascii.Error, ValueError, SealError, UnicodeDecodeError):
        raise KmsError.named("InvalidGrantTokenException", "The grant token is not valid.") from None
    return grant_id


def check_grant_tokens(ctx: KmsContext, p: Params) -> None:
    """GrantTokens of any operation that takes them: at most 10, each one this KMS issued (grants are
    not evaluated, so a valid token changes nothing else)."""
    tokens = p.string_list("GrantTokens") or []
    if len(tokens) > MAX_GRANT_TOKENS:
        raise constraint_error(
            "grantTokens", tokens, f"Member must have length less than or equal to {MAX_GRANT_TOKENS}"
        )
    for token in tokens:
        if not 1 <= len(token) <= 8192:
            raise constraint_error("grantTokens", "***", "Member must have length between 1 and 8192")
        open_token(ctx, token)


def _grant_id(p: Params, *, required: bool) -> str | None:
    grant_id = p.string("GrantId", required=required, min_len=1, max_len=128)
    if grant_id is not None and (
        len(grant_id) != _GRANT_ID_LEN or any(c not in "0123456789abcdef" for c in grant_id)
    ):
        raise KmsError.named("InvalidGrantIdException", f"Invalid grant ID {grant_id}.")
    return grant_id


def _constraints(p: Params) -> dict[str, Any] | None:
    given = p.struct("Constraints")
    if given is None:
        return None
    found: dict[str, Any] = {}
    for name in ("EncryptionContextSubset", "EncryptionContextEquals"):
        context = given.string_map(name)
        if context is None:
            continue
        if len(context) > MAX_CONTEXT_PAIRS:
            raise ValidationError(f"{name} can have at most {MAX_CONTEXT_PAIRS} encryption context pairs.")
        if sum(len(k) + len(v) for k, v in context.items()) > MAX_CONTEXT_CHARS:
            raise ValidationError(f"{name} cannot exceed {MAX_CONTEXT_CHARS} characters.")
        found[name] = context
    source_arn = given.string("SourceArn", min_len=20, max_len=512, pattern=SOURCE_ARN)
    if source_arn is not None:
        found["SourceArn"] = source_arn
    return found or None


def _operations(p: Params) -> list[str]:
    operations = p.string_list("Operations", required=True)
    assert operations is not None
    if not operations:
        raise constraint_error("operations", "[]", "Member must have length greater than or equal to 1")
    for i, operation in enumerate(operations):
        if operation not in GRANT_OPERATIONS:
            raise constraint_error(
                f"operations.{i + 1}.member",
                operation,
                f"Member must satisfy enum value set: [{', '.join(GRANT_OPERATIONS)}]",
            )
    refused = [o for o in operations if o not in SYMMETRIC_OPERATIONS]
    if refused:
        raise ValidationError(
            f"Grant operations {', '.join(refused)} are not valid for a SYMMETRIC_DEFAULT KMS key."
        )
    return list(dict.fromkeys(operations))


def grant_entry(ctx: KmsContext, grant: KmsGrant) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "KeyId": ctx.key_arn(grant.key_id),
        "GrantId": grant.grant_id,
        "CreationDate": epoch(grant.creation_date),
        "IssuingAccount": grant.issuing_account,
        "Operations": grant.operations,
    }
    optional = {
        "Name": grant.name,
        "GranteePrincipal": grant.grantee_principal,
        "GranteeServicePrincipal": grant.grantee_service_principal,
        "RetiringPrincipal": grant.retiring_principal,
        "RetiringServicePrincipal": grant.retiring_service_principal,
        "Constraints": grant.constraints,
    }
    entry.update({k: v for k, v in optional.items() if v is not None})
    return entry


def _same(grant: KmsGrant, wanted: KmsGrant) -> bool:
    fields = (
        "grantee_principal", "grantee_service_principal", "retiring_principal",
        "retiring_service_principal", "operations", "constraints",
    )  # fmt: skip
    return all(getattr(grant, f) == getattr(wanted, f) for f in fields)


async def create_grant(ctx: KmsContext, call: Call, p: Params) -> dict[str, Any]:
    ref = p.key_id()
    grantee = p.string("GranteePrincipal", min_len=1, max_len=256, pattern=PRINCIPAL)
    grantee_service = p.string("GranteeServicePrincipal", min_len=1, max_len=128, pattern=SERVICE_PRINCIPAL)
    retiring = p.string("RetiringPrincipal", min_len=1, max_len=256, pattern=PRINCIPAL)
    retiring_service = p.string("RetiringServicePrincipal", min_len=1, max_len=128, pattern=SERVICE_PRINCIPAL)
    operations = _operations(p)
    constraints = _constraints(p)
    name = p.string("Name", min_len=1, max_len=256, pattern=GRANT_NAME)
    check_grant_tokens(ctx, p)
    if (grantee is None) == (grantee_service is None):
        raise ValidationError("Specify exactly one of GranteePrincipal and GranteeServicePrincipal.")
    if retiring is not None and retiring_service is not None:
        raise ValidationError("Specify at most one of RetiringPrincipal and RetiringServicePrincipal.")
    assert ref is not None
    wanted = KmsGrant(
        grant_id=secrets.token_hex(32),
        name=name,
        grantee_principal=grantee,
        grantee_service_principal=grantee_service,
        retiring_principal=retiring,
        retiring_service_principal=retiring_service,
        issuing_account=f"arn:aws:iam::{ctx.settings.account_id}:root",
        operations=operations,
        constraints=constraints,
        creation_date=utcnow(),
    )
    async with ctx.sessions.begin() as session:
        key, _store = await find_key(ctx, session, ref, allow_alias=False)
        _require_grantable(ctx, key)
        wanted.key_id = key.key_id
        existing = await _same_named(session, wanted)
        if existing is not None:
            _dry_run(p)
            return {"GrantToken": issue_token(ctx, existing.grant_id), "GrantId": existing.grant_id}
        count = await session.scalar(select(func.count()).where(KmsGrant.key_id == key.key_id))
        if (count or 0) >= MAX_GRANTS_PER_KEY:
            raise KmsError.named(
                "LimitExceededException",
                f"{ctx.key_arn(key.key_id)} already has {MAX_GRANTS_PER_KEY} grants (the limit).",
            )
        _dry_run(p)
        session.add(wanted)
    return {"GrantToken": issue_token(ctx, wanted.grant_id), "GrantId": wanted.grant_id}


def _require_grantable(ctx: KmsContext, key: KmsKey) -> None:
    arn = ctx.key_arn(key.key_id)
    if key.key_state == DISABLED:
        raise DisabledError(f"{arn} is disabled.")
    if key.key_state == PENDING_DELETION:
        raise InvalidState(f"{arn} is pending deletion.")


async def _same_named(session: AsyncSession, wanted: KmsGrant) -> KmsGrant | None:
    """CreateGrant with a Name is idempotent: the same name and parameters on the same key answer the
    existing grant's id (with a new token) instead of a second grant."""
    if wanted.name is None:
        return None
    named = await session.scalars(
        select(KmsGrant).where(KmsGrant.key_id == wanted.key_id, KmsGrant.name == wanted.name)
    )
    return next((g for g in named if _same(g, wanted)), None)


def _page(ctx: KmsContext, grants: list[KmsGrant], p: Params) -> dict[str, Any]:
    limit = p.limit(default=50, maximum=1000)
    marker = p.marker()
    start = 0
    if marker is not None:
        if not (marker.isascii() and marker.isdigit()):
            raise KmsError.named("InvalidMarkerException", "The marker is not one this operation returned.")
        start = int(marker)
    page = grants[start : start + limit]
    result: dict[str, Any] = {
        "Grants": [grant_entry(ctx, g) for g in page],
        "Truncated": start + limit < len(grants),
    }
    if result["Truncated"]:
        result["NextMarker"] = str(start + limit)
    return result


_ORDER = (KmsGrant.creation_date, KmsGrant.grant_id)


async def list_grants(ctx: KmsContext, call: Call, p: Params) -> dict[str, Any]:
    ref = p.key_id()
    grant_id = _grant_id(p, required=False)
    grantee = p.string("GranteePrincipal", min_len=1, max_len=256, pattern=PRINCIPAL)
    grantee_service = p.string("GranteeServicePrincipal", min_len=1, max_len=128, pattern=SERVICE_PRINCIPAL)
    assert ref is not None
    async with ctx.sessions() as session:
        key, _store = await find_key(ctx, session, ref, allow_alias=False)
        query = select(KmsGrant).where(KmsGrant.key_id == key.key_id)
        if grant_id is not None:
            query = query.where(KmsGrant.grant_id == grant_id)
        if grantee is not None:
            query = query.where(KmsGrant.grantee_principal == grantee)
        if grantee_service is not None:
            query = query.where(KmsGrant.grantee_service_principal == grantee_service)
        grants = list((await session.scalars(query.order_by(*_ORDER))).all())
    return _page(ctx, grants, p)


async def list_retirable_grants(ctx: KmsContext, call: Call, p: Params) -> dict[str, Any]:
    retiring = p.string("RetiringPrincipal", min_len=1, max_len=256, pattern=PRINCIPAL)
    retiring_service = p.string("RetiringServicePrincipal", min_len=1, max_len=128, pattern=SERVICE_PRINCIPAL)
    if (retiring is None) == (retiring_service is None):
        raise ValidationError("Specify exactly one of RetiringPrincipal and RetiringServicePrincipal.")
    column = KmsGrant.retiring_principal if retiring is not None else KmsGrant.retiring_service_principal
    async with ctx.sessions() as session:
        query = select(KmsGrant).where(column == (retiring or retiring_service)).order_by(*_ORDER)
        grants = list((await session.scalars(query)).all())
    return _page(ctx, grants, p)


async def retire_grant(ctx: KmsContext, call: Call, p: Params) -> dict[str, Any]:
    """By GrantToken, or by KeyId and GrantId together."""
    token = p.string("GrantToken", min_len=1, max_len=8192)
    ref = p.key_id(required=False)
    grant_id = _grant_id(p, required=False)
    if token is None and (ref is None or grant_id is None):
        raise ValidationError("Specify GrantToken, or both KeyId and GrantId.")
    if token is not None:
        from_token = open_token(ctx, token)
        if grant_id is not None and grant_id != from_token:
            raise KmsError.named("InvalidGrantIdException", "The GrantId does not match the grant token.")
        grant_id = from_token
    assert grant_id is not None
    async with ctx.sessions.begin() as session:
        key_id = None
        if ref is not None:
            key_id = (await find_key(ctx, session, ref, allow_alias=False))[0].key_id
        grant = await session.get(KmsGrant, grant_id)
        if grant is None or (key_id is not None and grant.key_id != key_id):
            raise NotFound(f"Grant {grant_id} does not exist.")
        _dry_run(p)
        await session.delete(grant)
    return {}


async def revoke_grant(ctx: KmsContext, call: Call, p: Params) -> dict[str, Any]:
    ref = p.key_id()
    grant_id = _grant_id(p, required=True)
    assert ref is not None and grant_id is not None
    async with ctx.sessions.begin() as session:
        key, _store = await find_key(ctx, session, ref, allow_alias=False)
        grant = await session.get(KmsGrant, grant_id)
        if grant is None or grant.key_id != key.key_id:
            raise NotFound(f"Grant {grant_id} does not exist on {ctx.key_arn(key.key_id)}.")
        _dry_run(p)
        await session.delete(grant)
    return {}
