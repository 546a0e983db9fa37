"""``xkslab group``: groups of security objects and apps."""

from __future__ import annotations

from typing import Any

import click

from xkslab.cli.common import details, emit, json_option, with_core


@click.group()
def group() -> None:
    """Groups of security objects and apps."""


def group_view(g: Any) -> dict[str, Any]:
    from dsm_emulator.views import group_view as view

    return view(g)


def _group_line(g: dict[str, Any]) -> str:
    return f"{g['group_id']}  {g['name']}"


@group.command("create")
@click.argument("name")
@click.option("--description", default=None)
@json_option
@with_core
async def group_create(core: Any, p: Any, name: str, description: str | None, as_json: bool) -> None:

    emit(group_view(await core.admin.create_group(p, name, description)), as_json, _group_line)


@group.command("list")
@json_option
@with_core
async def group_list(core: Any, p: Any, as_json: bool) -> None:

    views = [group_view(g) for g in await core.admin.list_groups(p)]
    emit(views, as_json, lambda vs: "\n".join(map(_group_line, vs)))


@group.command("show")
@click.argument("group_id")
@json_option
@with_core
async def group_show(core: Any, p: Any, group_id: str, as_json: bool) -> None:

    emit(group_view(await core.admin.get_group(p, group_id)), as_json, details)


@group.command("delete")
@click.argument("group_id")
@with_core
async def group_delete(core: Any, p: Any, group_id: str) -> None:
    await core.admin.delete_group(p, group_id)
    click.echo(f"deleted group {group_id}")
