"""``xkslab app``: apps, their credentials and their groups."""

from __future__ import annotations

import base64
from typing import Any

import click

from xkslab.cli.common import details, emit, json_option, with_core


@click.group()
def app() -> None:
    """Apps: API-key identities (secret) and AWS XKS SigV4 identities (awsxks)."""


@app.command("create")
@click.argument("name")
@click.option("--group", "groups", multiple=True, required=True, help="Group id; repeat for several.")
@click.option("--permissions", default=None, help="Comma list of permissions in each group (default: all).")
@click.option("--default-group", default=None)
@click.option("--credential", "credential_kind", type=click.Choice(["secret", "awsxks"]), default="secret")
@click.option("--description", default=None)
@json_option
@with_core
async def app_create(
    core: Any,
    p: Any,
    name: str,
    groups: tuple[str, ...],
    permissions: str | None,
    default_group: str | None,
    credential_kind: str,
    description: str | None,
    as_json: bool,
) -> None:
    """Create an app; prints its credential once."""

    group_spec: Any = (
        list(groups)
        if permissions is None
        else {g: [x.strip().upper() for x in permissions.split(",") if x.strip()] for g in groups}
    )
    created, secret = await core.admin.create_app(
        p,
        name,
        groups=group_spec,
        default_group=default_group,
        description=description,
        credential_kind=credential_kind,
    )
    view = app_view(created, await core.admin.app_groups(created.app_id))
    view["credential"] = await core.admin.get_credential(p, created.app_id)
    if credential_kind == "secret":
        view["api_key"] = _api_key(created.app_id, secret)
    emit(view, as_json, _app_created_text)


def app_view(a: Any, groups: dict[str, frozenset[str]] | None = None) -> dict[str, Any]:
    from dsm_emulator.views import app_view as view

    return view(a, groups)


def _app_created_text(v: dict[str, Any]) -> str:
    lines = [f"app {v['app_id']} ({v['name']})"]
    if "api_key" in v:
        lines.append(f"api key: {v['api_key']}")
    xks = v["credential"].get("awsxks") if isinstance(v.get("credential"), dict) else None
    if xks:
        lines += [
            f"access key id: {xks['access_key_id']}",
            f"secret key:    {xks['secret_key']}",
            f"XKS URI path:  /crypto/v1/apps/{v['app_id']}/aws/kms/xks/v1",
        ]
    return "\n".join(lines)


@app.command("list")
@json_option
@with_core
async def app_list(core: Any, p: Any, as_json: bool) -> None:

    views = [app_view(a, await core.admin.app_groups(a.app_id)) for a in await core.admin.list_apps(p)]
    emit(views, as_json, lambda vs: "\n".join(f"{v['app_id']}  {v['auth_type']:<7} {v['name']}" for v in vs))


@app.command("show")
@click.argument("app_id")
@json_option
@with_core
async def app_show(core: Any, p: Any, app_id: str, as_json: bool) -> None:

    a = await core.admin.get_app(p, app_id)
    emit(app_view(a, await core.admin.app_groups(a.app_id)), as_json, details)


@app.command("credential")
@click.argument("app_id")
@json_option
@with_core
async def app_credential(core: Any, p: Any, app_id: str, as_json: bool) -> None:
    """Print an app's credential (the API key, or the awsxks pair)."""
    cred = await core.admin.get_credential(p, app_id)
    emit(_with_api_key(app_id, cred), as_json, details)


@app.command("reset-secret")
@click.argument("app_id")
@json_option
@with_core
async def app_reset_secret(core: Any, p: Any, app_id: str, as_json: bool) -> None:
    """New secret; for awsxks apps the old pair stays valid as the previous credential."""
    await core.admin.reset_secret(p, app_id)
    cred = await core.admin.get_credential(p, app_id)
    emit(_with_api_key(app_id, cred), as_json, details)


@app.command("delete")
@click.argument("app_id")
@with_core
async def app_delete(core: Any, p: Any, app_id: str) -> None:
    await core.admin.delete_app(p, app_id)
    click.echo(f"deleted app {app_id}")


def _api_key(app_id: str, secret: str) -> str:
    return base64.b64encode(f"{app_id}:{secret}".encode()).decode()


def _with_api_key(app_id: str, cred: dict[str, Any]) -> dict[str, Any]:
    """A secret app's credential, with the Basic API key clients paste."""
    if cred.get("secret"):
        cred["api_key"] = _api_key(app_id, cred["secret"])
    return cred
