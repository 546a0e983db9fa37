"""Aliases: CreateAlias, DeleteAlias, ListAliases, UpdateAlias.

Names are ``alias/<name>``; ``alias/aws/`` is reserved for AWS managed keys, which this KMS has none of.
An alias targets a key by key id or key ARN (not by another alias), and goes away with its key.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from kms_emulator.context import Call, KmsContext, epoch, utcnow
from kms_emulator.errors import KmsError, NotFound
from kms_emulator.lookup import find_key, purge_expired, require_not_pending_deletion
from kms_emulator.models import KmsAlias
from kms_emulator.params import Params

ALIAS_NAME = r"^[a-zA-Z0-9:/_-]+$"


def _alias_name(ctx: KmsContext, p: Params) -> str:
    name = p.string("AliasName", required=True, min_len=1, max_len=256, pattern=ALIAS_NAME)
    assert name is not None
    if not name.startswith("alias/") or len(name) == len("alias/"):
        raise KmsError.named("InvalidAliasNameException", f"Alias {name} must begin with alias/.")
    if name.startswith("alias/aws/"):
        raise KmsError.named(
            "InvalidAliasNameException", f"Alias {name} cannot begin with alias/aws/: it is reserved for AWS."
        )
    return name


def _entry(ctx: KmsContext, alias: KmsAlias) -> dict[str, Any]:
    return {
        "AliasName": alias.alias_name,
        "AliasArn": ctx.alias_arn(alias.alias_name),
        "TargetKeyId": alias.target_key_id,
        "CreationDate": epoch(alias.creation_date),
        "LastUpdatedDate": epoch(alias.last_updated_date),
    }


async def create_alias(ctx: KmsContext, call: Call, p: Params) -> dict[str, Any]:
    name = _alias_name(ctx, p)
    target = p.key_id("TargetKeyId")
    assert target is not None
    async with ctx.sessions.begin() as session:
        key, _store = await find_key(ctx, session, target, allow_alias=False)
        require_not_pending_deletion(ctx, key)
        if await session.get(KmsAlias, name) is not None:
            raise KmsError.named(
                "AlreadyExistsException", f"An alias with the name {ctx.alias_arn(name)} already exists"
            )
        now = utcnow()
        session.add(
            KmsAlias(alias_name=name, target_key_id=key.key_id, creation_date=now, last_updated_date=now)
        )
    return {}


async def delete_alias(ctx: KmsContext, call: Call, p: Params) -> dict[str, Any]:
    name = _alias_name(ctx, p)
    async with ctx.sessions.begin() as session:
        alias = await session.get(KmsAlias, name)
        if alias is None:
            raise NotFound(f"Alias {ctx.alias_arn(name)} is not found.")
        await session.delete(alias)
    return {}


async def update_alias(ctx: KmsContext, call: Call, p: Params) -> dict[str, Any]:
    name = _alias_name(ctx, p)
    target = p.key_id("TargetKeyId")
    assert target is not None
    async with ctx.sessions.begin() as session:
        alias = await session.get(KmsAlias, name)
        if alias is None:
            raise NotFound(f"Alias {ctx.alias_arn(name)} is not found.")
        key, _store = await find_key(ctx, session, target, allow_alias=False)
        require_not_pending_deletion(ctx, key)
        alias.target_key_id = key.key_id
        alias.last_updated_date = utcnow()
    return {}


async def list_aliases(ctx: KmsContext, call: Call, p: Params) -> dict[str, Any]:
    ref = p.key_id(required=False)
    limit = p.limit(default=50, maximum=1000)
    marker = p.marker()
    query = select(KmsAlias).order_by(KmsAlias.alias_name)
    if marker is not None:
        query = query.where(KmsAlias.alias_name > marker)
    async with ctx.sessions.begin() as session:
        await purge_expired(session)
        if ref is not None:
            key, _store = await find_key(ctx, session, ref, allow_alias=False)
            query = query.where(KmsAlias.target_key_id == key.key_id)
        aliases = (await session.scalars(query.limit(limit + 1))).all()
    page = aliases[:limit]
    result: dict[str, Any] = {"Aliases": [_entry(ctx, a) for a in page], "Truncated": len(aliases) > limit}
    if len(aliases) > limit:
        result["NextMarker"] = page[-1].alias_name
    return result
