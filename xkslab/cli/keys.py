"""``xkslab key``: security objects (root KEKs and other keys) and their lifecycle."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import click

from xkslab.cli.common import details, emit, json_option, with_core


@click.group()
def key() -> None:
    """Security objects: root KEKs and other keys."""


def sobject_view(obj: Any, **options: Any) -> dict[str, Any]:
    from dsm_emulator.views import sobject_view as view

    return view(obj, **options)


def _key_line(v: dict[str, Any]) -> str:
    flag = "" if v["enabled"] else " (disabled)"
    return f"{v['kid']}  {v['obj_type']}-{v['key_size']}  {v['state']}{flag}  {v['name']}"


def _ops(value: str | None) -> list[str] | None:
    return None if value is None else [x.strip().upper() for x in value.split(",") if x.strip()]


@key.command("create")
@click.argument("name")
@click.option(
    "--type", "obj_type", type=click.Choice(["AES", "HMAC", "SECRET"]), default="AES", show_default=True
)
@click.option("--size", "key_size", type=int, default=256, show_default=True, help="Bits.")
@click.option("--group", "group_id", default=None, help="Default: the account's first group.")
@click.option("--key-ops", default=None, help="Comma list, e.g. ENCRYPT,DECRYPT (default: Fortanix's).")
@click.option("--description", default=None)
@click.option("--pre-active", is_flag=True, help="Create in state PreActive.")
@json_option
@with_core
async def key_create(
    core: Any,
    p: Any,
    name: str,
    obj_type: str,
    key_size: int,
    group_id: str | None,
    key_ops: str | None,
    description: str | None,
    pre_active: bool,
    as_json: bool,
) -> None:
    """Generate a key."""
    from dsm_emulator.keys import KeySpec

    spec = KeySpec(
        name=name,
        obj_type=obj_type,
        key_size=key_size,
        group_id=group_id,
        key_ops=_ops(key_ops),
        description=description,
        state="PreActive" if pre_active else None,
    )
    emit(sobject_view(await core.keys.create(p, spec)), as_json, _key_line)


@key.command("import")
@click.argument("name")
@click.option("--type", "obj_type", type=click.Choice(["AES", "HMAC", "SECRET", "OPAQUE"]), default="AES")
@click.option("--value-file", type=click.File("rb"), required=True, help="Raw key bytes ('-' for stdin).")
@click.option("--group", "group_id", default=None)
@click.option("--key-ops", default=None)
@json_option
@with_core
async def key_import(
    core: Any,
    p: Any,
    name: str,
    obj_type: str,
    value_file: Any,
    group_id: str | None,
    key_ops: str | None,
    as_json: bool,
) -> None:
    """Import key material from a file of raw bytes."""
    from dsm_emulator.keys import KeySpec

    spec = KeySpec(name=name, obj_type=obj_type, group_id=group_id, key_ops=_ops(key_ops))
    emit(sobject_view(await core.keys.create(p, spec, value=value_file.read())), as_json, _key_line)


@key.command("list")
@click.option("--group", "group_id", default=None)
@click.option("--all", "show_destroyed", is_flag=True, help="Include destroyed objects.")
@json_option
@with_core
async def key_list(core: Any, p: Any, group_id: str | None, show_destroyed: bool, as_json: bool) -> None:

    objs = await core.keys.list(
        p, group_id=group_id, show_destroyed=show_destroyed, limit=1000, sort="name:asc"
    )
    broken = await core.keys.noncompliant(objs)
    views = [sobject_view(o, compliant=o.kid not in broken) for o in objs]
    emit(views, as_json, lambda vs: "\n".join(map(_key_line, vs)))


def _ident(ident: str) -> dict[str, str]:

    from dsm_emulator.models import is_uuid

    return {"kid": ident} if is_uuid(ident) else {"name": ident}


@key.command("show")
@click.argument("ident", metavar="KID_OR_NAME")
@json_option
@with_core
async def key_show(core: Any, p: Any, ident: str, as_json: bool) -> None:

    obj = await core.keys.get(p, **_ident(ident))
    compliant = obj.kid not in await core.keys.noncompliant([obj])
    emit(sobject_view(obj, compliant=compliant), as_json, details)


def _key_action(name: str, help_text: str, act: Callable[[Any, Any, str], Awaitable[Any]]) -> None:
    @key.command(name, help=help_text)
    @click.argument("ident", metavar="KID_OR_NAME")
    @json_option
    @with_core
    async def command(core: Any, p: Any, ident: str, as_json: bool) -> None:

        kid = (await core.keys.get(p, **_ident(ident))).kid
        result = await act(core, p, kid)
        if result is None:
            emit({"kid": kid, "deleted": True}, as_json, lambda d: f"deleted {d['kid']}")
        else:
            emit(sobject_view(result), as_json, _key_line)


_key_action(
    "enable",
    "Allow crypto operations with the key.",
    lambda core, p, kid: core.keys.update(p, kid, enabled=True),
)
_key_action(
    "disable",
    "Refuse crypto operations with the key (state unchanged).",
    lambda core, p, kid: core.keys.update(p, kid, enabled=False),
)
_key_action("activate", "Move a PreActive key to Active.", lambda core, p, kid: core.keys.activate(p, kid))
_key_action(
    "destroy",
    "Destroy the material of a revoked key (metadata kept).",
    lambda core, p, kid: core.keys.destroy(p, kid),
)
_key_action("delete", "Delete the object and its material.", lambda core, p, kid: core.keys.delete(p, kid))
_key_action(
    "rekey",
    "Replace the key with a new one that takes its name; the old one stays for decryption.",
    lambda core, p, kid: core.keys.rekey(p, kid=kid),
)


@key.command("revoke")
@click.argument("ident", metavar="KID_OR_NAME")
@click.option(
    "--code",
    default="Unspecified",
    show_default=True,
    help="Unspecified, KeyCompromise, Superseded, CessationOfOperation, ...",
)
@click.option("--message", default=None)
@json_option
@with_core
async def key_revoke(core: Any, p: Any, ident: str, code: str, message: str | None, as_json: bool) -> None:
    """Deactivate (or mark Compromised) a key: it still decrypts, it no longer encrypts."""

    kid = (await core.keys.get(p, **_ident(ident))).kid
    emit(sobject_view(await core.keys.revoke(p, kid, code, message)), as_json, _key_line)
