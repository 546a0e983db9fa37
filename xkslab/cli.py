"""The ``xkslab`` command line: set up a data directory and administer the key manager inside it.

Every command takes ``--data-dir`` (default ``./.xkslab``, or ``XKSLAB_DATA_DIR``) and reads that
directory's ``xkslab.toml``; admin commands take ``--json`` for scripts. Errors are one line on stderr
and exit status 1, never a traceback.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import secrets
import sys
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from sqlalchemy import func, select

from xkslab.certs import certs_command
from xkslab.config import CONFIG_FILE_NAME, ConfigError, Settings, load_settings, render_toml

T = TypeVar("T")

pass_settings = click.make_pass_decorator(Settings)


def _run(coro: Awaitable[T]) -> T:
    from dsm_emulator.errors import DsmError
    from dsm_emulator.sealing import SealError

    try:
        return asyncio.run(coro)  # type: ignore[arg-type]
    except (DsmError, SealError, ConfigError) as exc:
        raise click.ClickException(getattr(exc, "message", str(exc))) from None
    except OSError as exc:
        raise click.ClickException(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")) from None


def _emit(data: Any, as_json: bool, text: Callable[[Any], str]) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str) if as_json else text(data))


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


def _with_core(fn: Callable[..., Awaitable[T]]) -> Callable[..., T]:
    """Open the key manager for one command, act as the account administrator, close it again."""

    @functools.wraps(fn)
    def wrapper(settings: Settings, *args: Any, **kwargs: Any) -> T:
        async def main() -> T:
            from dsm_emulator.core import DsmCore

            async with await DsmCore.open(settings) as core:
                principal = await _operator(core)
                return await fn(core, principal, *args, **kwargs)

        return _run(main())

    return pass_settings(wrapper)


async def _operator(core: Any) -> Any:
    from dsm_emulator.authz import system_principal
    from dsm_emulator.models import Account

    async with core.sessions() as session:
        accounts = (await session.scalars(select(Account.acct_id))).all()
    if len(accounts) != 1:
        raise click.ClickException(f"expected one account in the data directory, found {len(accounts)}")
    return system_principal(accounts[0])


@click.group()
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="XKSLAB_DATA_DIR",
    default=Path(".xkslab"),
    show_default=True,
    help="Data directory (database, config file, sealing key).",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="NAME=VALUE",
    help="Override a setting for this command (e.g. --set dsm.port=9000); beats the file and XKSLAB_*.",
)
@click.pass_context
def main(ctx: click.Context, data_dir: Path, overrides: tuple[str, ...]) -> None:
    """xkslab: AWS KMS External Key Store testing without a cloud account."""
    if ctx.invoked_subcommand == "init":
        ctx.obj = data_dir
        return
    flags: dict[str, str] = {}
    for item in overrides:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.ClickException(f"--set takes NAME=VALUE, not {item!r}")
        flags[name.strip()] = value
    try:
        ctx.obj = load_settings(data_dir, overrides=flags)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


# ------------------------------------------------------------------------------------------ init


@main.command()
@click.option("--seal-backend", type=click.Choice(["software", "pkcs11"]), default=None)
@click.option(
    "--database-url", default=None, help="postgresql+asyncpg://... (default: SQLite in the data dir)"
)
@click.option("--account-name", default="xkslab", show_default=True)
@click.option("--admin-email", default="admin@xkslab.local", show_default=True)
@click.option(
    "--admin-password",
    envvar="XKSLAB_ADMIN_PASSWORD",
    default=None,
    help="Default: generated and printed once.",
)
@json_option
@click.pass_obj
def init(
    data_dir: Path,
    seal_backend: str | None,
    database_url: str | None,
    account_name: str,
    admin_email: str,
    admin_password: str | None,
    as_json: bool,
) -> None:
    """Create the data directory, config file, database, sealing key and keyring, the first account,
    its administrator and a default group."""
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o700)
    config_file = data_dir / CONFIG_FILE_NAME
    if not config_file.exists():
        values: dict[str, Any] = {"seal.backend": seal_backend or "software"}
        if database_url:
            values["database.url"] = database_url
        config_file.write_text(
            "# xkslab settings; XKSLAB_* variables and flags override these.\n" + render_toml(values)
        )
    elif seal_backend or database_url:
        raise click.ClickException(
            f"{config_file} exists already: edit it instead of passing settings to init"
        )
    try:
        settings = load_settings(data_dir)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    password = admin_password or secrets.token_urlsafe(18)
    result = _run(_init(settings, account_name, admin_email, password))
    result["admin_password"] = password if result["created"] and not admin_password else None
    _emit(result, as_json, _init_text)


async def _init(settings: Settings, account_name: str, admin_email: str, password: str) -> dict[str, Any]:
    from dsm_emulator import store
    from dsm_emulator.core import DsmCore, open_configured_sealer, seal_config
    from dsm_emulator.keyring import Keyring
    from dsm_emulator.models import Account

    _create_key_if_absent(seal_config(settings))
    await store.upgrade_async(settings.database_url)
    engine = store.create_engine(settings.database_url)
    try:
        sealer = open_configured_sealer(settings)
        try:
            await Keyring.initialize(store.session_factory(engine), sealer)
        finally:
            sealer.close()
    finally:
        await engine.dispose()
    async with await DsmCore.open(settings) as core:
        async with core.sessions() as session:
            existing = await session.scalar(select(Account).limit(1))
        created = existing is None
        if created:
            account, _user, group = await core.admin.bootstrap(account_name, admin_email, password)
        else:
            account, group = existing, None
    return {
        "data_dir": str(settings.data_dir.resolve()),
        "config_file": str(settings.config_file.resolve()),
        "database": settings.redacted()["database"]["url"] or settings.database_url,
        "seal_backend": settings.seal.backend,
        "created": created,
        "acct_id": account.acct_id,
        "admin_email": admin_email if created else None,
        "default_group_id": group.group_id if group is not None else None,
    }


def _create_key_if_absent(config: Any) -> None:
    """Create the sealing key on first use; an existing key is reused, never replaced."""
    from dsm_emulator.sealing import SealError, SoftwareSealConfig, create_sealing_key, open_sealer

    if isinstance(config, SoftwareSealConfig):
        if config.key_file is None or not config.key_file.exists():
            create_sealing_key(config)
        return
    try:
        open_sealer(config).close()
    except SealError:
        create_sealing_key(config)


def _init_text(r: dict[str, Any]) -> str:
    if not r["created"]:
        return f"{r['data_dir']} is already initialised (account {r['acct_id']})."
    lines = [
        f"Initialised {r['data_dir']}",
        f"  config:        {r['config_file']}",
        f"  database:      {r['database']}",
        f"  sealing:       {r['seal_backend']}",
        f"  account:       {r['acct_id']}",
        f"  default group: {r['default_group_id']}",
        f"  admin:         {r['admin_email']}",
    ]
    if r["admin_password"]:
        lines.append(f"  password:      {r['admin_password']}   (shown once; keep it)")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- db


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@pass_settings
def db_upgrade(settings: Settings) -> None:
    """Apply the migrations up to the newest schema."""
    from dsm_emulator import store

    _run(store.upgrade_async(settings.database_url))
    click.echo(f"database at revision {store.head_revision()}")


@db.command("current")
@pass_settings
def db_current(settings: Settings) -> None:
    """Print the database's schema revision and the one this xkslab needs."""
    from dsm_emulator import store

    async def current() -> str | None:
        engine = store.create_engine(settings.database_url)
        try:
            return await store.current_revision(engine)
        finally:
            await engine.dispose()

    click.echo(f"current: {_run(current()) or 'none'}  needed: {store.head_revision()}")


# ----------------------------------------------------------------------------------------- seal


@main.group()
def seal() -> None:
    """The sealing key and the keyring."""


@seal.command("status")
@json_option
@_with_core
async def seal_status(core: Any, _p: Any, as_json: bool) -> None:
    """Show the sealing backend, key id and keyring terms."""
    s = core.keyring.status()
    data = {
        "backend": s.sealer_kind,
        "sealer_key_id": s.sealer_key_id,
        "terms": s.terms,
        "active_term": s.active_term,
        "sealed": False,
    }
    _emit(data, as_json, lambda d: "\n".join(f"{k}: {v}" for k, v in d.items()))


@seal.command("rotate")
@json_option
@_with_core
async def seal_rotate(core: Any, _p: Any, as_json: bool) -> None:
    """Start a new keyring term: new material is sealed under it; old material stays readable."""
    term = await core.keyring.rotate()
    _emit({"active_term": term}, as_json, lambda d: f"keyring rotated: active term {d['active_term']}")


@seal.command("rewrap")
@click.option("--to", "target", type=click.Choice(["software", "pkcs11"]), required=True)
@json_option
@pass_settings
def seal_rewrap(settings: Settings, target: str, as_json: bool) -> None:
    """Move the keyring to another sealing backend (creating its key if needed) and record the new backend
    in the config file. Objects are not touched."""
    from dsm_emulator.core import DsmCore, open_configured_sealer, seal_config

    async def rewrap() -> int:
        _create_key_if_absent(seal_config(settings, target))
        async with await DsmCore.open(settings) as core:
            new_sealer = open_configured_sealer(settings, target)
            try:
                count = await core.keyring.rewrap(new_sealer)
            finally:
                new_sealer.close()
        return count

    count = _run(rewrap())
    _set_config_value(settings.config_file, "seal", "backend", target)
    _emit(
        {"terms": count, "backend": target},
        as_json,
        lambda d: f"rewrapped {d['terms']} keyring term(s) to {d['backend']}; {settings.config_file} updated",
    )


def _set_config_value(config_file: Path, section: str, key: str, value: str) -> None:
    tree: dict[str, Any] = tomllib.loads(config_file.read_text()) if config_file.exists() else {}
    tree.setdefault(section, {})[key] = value
    flat: dict[str, Any] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for k, v in node.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                flat[f"{prefix}{k}"] = v

    walk(tree, "")
    config_file.write_text(
        "# xkslab settings; XKSLAB_* variables and flags override these.\n" + render_toml(flat)
    )


# ---------------------------------------------------------------------------------------- audit


@main.group()
def audit() -> None:
    """The tamper-evident audit log."""


@audit.command("verify")
@json_option
@pass_settings
def audit_verify(settings: Settings, as_json: bool) -> None:
    """Walk every hash chain and name the first bad row of each. Exit status 1 when any is bad."""
    from dsm_emulator import audit as audit_log
    from dsm_emulator.core import DsmCore
    from dsm_emulator.models import AuditRow

    async def verify() -> tuple[int, list[Any]]:
        async with await DsmCore.open(settings) as core:
            problems = await audit_log.verify(core.sessions, core.keyring)
            async with core.sessions() as session:
                rows = await session.scalar(select(func.count()).select_from(AuditRow))
        return rows or 0, problems

    rows, problems = _run(verify())
    data = {
        "ok": not problems,
        "rows": rows,
        "problems": [
            {"chain": p.chain, "seq": p.seq, "row_id": p.row_id, "reason": p.reason} for p in problems
        ],
    }
    _emit(
        data,
        as_json,
        lambda d: (
            "audit log intact"
            if d["ok"]
            else "\n".join(
                f"BAD chain {p['chain']} seq {p['seq']} row {p['row_id']}: {p['reason']}"
                for p in d["problems"]
            )
        ),
    )
    if problems:
        sys.exit(1)


@audit.command("export")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Default: stdout.")
@pass_settings
def audit_export(settings: Settings, out: Path | None) -> None:
    """Write every audit row as JSON lines, oldest first."""
    from dsm_emulator import audit as audit_log
    from dsm_emulator.core import DsmCore

    async def export() -> int:
        count = 0
        stream = out.open("w") if out else sys.stdout
        try:
            async with await DsmCore.open(settings) as core:
                async for row in audit_log.export(core.sessions):
                    stream.write(json.dumps(row, sort_keys=True, default=str) + "\n")
                    count += 1
        finally:
            if out:
                stream.close()
        return count

    count = _run(export())
    if out:
        click.echo(f"exported {count} rows to {out}", err=True)


@audit.command("tail")
@click.option("-n", "--lines", "limit", type=click.IntRange(1, 100000), default=20, show_default=True)
@json_option
@pass_settings
def audit_tail(settings: Settings, limit: int, as_json: bool) -> None:
    """Show the newest audit rows, newest first."""
    from dsm_emulator import audit as audit_log
    from dsm_emulator.core import DsmCore

    async def tail() -> list[dict[str, Any]]:
        async with await DsmCore.open(settings) as core:
            return await audit_log.tail(core.sessions, limit)

    rows = _run(tail())
    _emit(
        rows,
        as_json,
        lambda rs: "\n".join(
            f"{r['time']} {r['severity']:<7} {r['outcome']:<8} {r['actor_type']}:{r['actor_id'] or '-'} "
            f"{r['operation']} {r['object_id'] or ''} {r['message']}"
            for r in rs
        ),
    )


# --------------------------------------------------------------------------------------- groups


@main.group()
def group() -> None:
    """Groups of security objects and apps."""


def _group_line(g: dict[str, Any]) -> str:
    return f"{g['group_id']}  {g['name']}"


@group.command("create")
@click.argument("name")
@click.option("--description", default=None)
@json_option
@_with_core
async def group_create(core: Any, p: Any, name: str, description: str | None, as_json: bool) -> None:
    from dsm_emulator.views import group_view

    _emit(group_view(await core.admin.create_group(p, name, description)), as_json, _group_line)


@group.command("list")
@json_option
@_with_core
async def group_list(core: Any, p: Any, as_json: bool) -> None:
    from dsm_emulator.views import group_view

    views = [group_view(g) for g in await core.admin.list_groups(p)]
    _emit(views, as_json, lambda vs: "\n".join(map(_group_line, vs)))


@group.command("show")
@click.argument("group_id")
@json_option
@_with_core
async def group_show(core: Any, p: Any, group_id: str, as_json: bool) -> None:
    from dsm_emulator.views import group_view

    _emit(group_view(await core.admin.get_group(p, group_id)), as_json, _details)


@group.command("delete")
@click.argument("group_id")
@_with_core
async def group_delete(core: Any, p: Any, group_id: str) -> None:
    await core.admin.delete_group(p, group_id)
    click.echo(f"deleted group {group_id}")


def _details(d: dict[str, Any]) -> str:
    return "\n".join(f"{k}: {json.dumps(v) if isinstance(v, dict | list) else v}" for k, v in d.items())


# ----------------------------------------------------------------------------------------- apps


@main.group()
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
@_with_core
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
    from dsm_emulator.views import app_view

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
        view["api_key"] = base64.b64encode(f"{created.app_id}:{secret}".encode()).decode()
    _emit(view, as_json, _app_created_text)


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
@_with_core
async def app_list(core: Any, p: Any, as_json: bool) -> None:
    from dsm_emulator.views import app_view

    views = [app_view(a, await core.admin.app_groups(a.app_id)) for a in await core.admin.list_apps(p)]
    _emit(views, as_json, lambda vs: "\n".join(f"{v['app_id']}  {v['auth_type']:<7} {v['name']}" for v in vs))


@app.command("show")
@click.argument("app_id")
@json_option
@_with_core
async def app_show(core: Any, p: Any, app_id: str, as_json: bool) -> None:
    from dsm_emulator.views import app_view

    a = await core.admin.get_app(p, app_id)
    _emit(app_view(a, await core.admin.app_groups(a.app_id)), as_json, _details)


@app.command("credential")
@click.argument("app_id")
@json_option
@_with_core
async def app_credential(core: Any, p: Any, app_id: str, as_json: bool) -> None:
    """Print an app's credential (the API key, or the awsxks pair)."""
    cred = await core.admin.get_credential(p, app_id)
    if cred.get("secret"):
        cred["api_key"] = base64.b64encode(f"{app_id}:{cred['secret']}".encode()).decode()
    _emit(cred, as_json, _details)


@app.command("reset-secret")
@click.argument("app_id")
@json_option
@_with_core
async def app_reset_secret(core: Any, p: Any, app_id: str, as_json: bool) -> None:
    """New secret; for awsxks apps the old pair stays valid as the previous credential."""
    await core.admin.reset_secret(p, app_id)
    cred = await core.admin.get_credential(p, app_id)
    if cred.get("secret"):
        cred["api_key"] = base64.b64encode(f"{app_id}:{cred['secret']}".encode()).decode()
    _emit(cred, as_json, _details)


@app.command("delete")
@click.argument("app_id")
@_with_core
async def app_delete(core: Any, p: Any, app_id: str) -> None:
    await core.admin.delete_app(p, app_id)
    click.echo(f"deleted app {app_id}")


# ----------------------------------------------------------------------------------------- keys


@main.group()
def key() -> None:
    """Security objects: root KEKs and other keys."""


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
@_with_core
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
    from dsm_emulator.views import sobject_view

    spec = KeySpec(
        name=name,
        obj_type=obj_type,
        key_size=key_size,
        group_id=group_id,
        key_ops=_ops(key_ops),
        description=description,
        state="PreActive" if pre_active else None,
    )
    _emit(sobject_view(await core.keys.create(p, spec)), as_json, _key_line)


@key.command("import")
@click.argument("name")
@click.option("--type", "obj_type", type=click.Choice(["AES", "HMAC", "SECRET", "OPAQUE"]), default="AES")
@click.option("--value-file", type=click.File("rb"), required=True, help="Raw key bytes ('-' for stdin).")
@click.option("--group", "group_id", default=None)
@click.option("--key-ops", default=None)
@json_option
@_with_core
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
    from dsm_emulator.views import sobject_view

    spec = KeySpec(name=name, obj_type=obj_type, group_id=group_id, key_ops=_ops(key_ops))
    _emit(sobject_view(await core.keys.create(p, spec, value=value_file.read())), as_json, _key_line)


@key.command("list")
@click.option("--group", "group_id", default=None)
@click.option("--all", "show_destroyed", is_flag=True, help="Include destroyed objects.")
@json_option
@_with_core
async def key_list(core: Any, p: Any, group_id: str | None, show_destroyed: bool, as_json: bool) -> None:
    from dsm_emulator.views import sobject_view

    objs = await core.keys.list(
        p, group_id=group_id, show_destroyed=show_destroyed, limit=1000, sort="name:asc"
    )
    _emit([sobject_view(o) for o in objs], as_json, lambda vs: "\n".join(map(_key_line, vs)))


def _ident(ident: str) -> dict[str, str]:
    from dsm_emulator.models import is_uuid

    return {"kid": ident} if is_uuid(ident) else {"name": ident}


@key.command("show")
@click.argument("ident", metavar="KID_OR_NAME")
@json_option
@_with_core
async def key_show(core: Any, p: Any, ident: str, as_json: bool) -> None:
    from dsm_emulator.views import sobject_view

    _emit(sobject_view(await core.keys.get(p, **_ident(ident))), as_json, _details)


def _key_action(name: str, help_text: str, act: Callable[[Any, Any, str], Awaitable[Any]]) -> None:
    @key.command(name, help=help_text)
    @click.argument("ident", metavar="KID_OR_NAME")
    @json_option
    @_with_core
    async def command(core: Any, p: Any, ident: str, as_json: bool) -> None:
        from dsm_emulator.views import sobject_view

        kid = (await core.keys.get(p, **_ident(ident))).kid
        result = await act(core, p, kid)
        if result is None:
            _emit({"kid": kid, "deleted": True}, as_json, lambda d: f"deleted {d['kid']}")
        else:
            _emit(sobject_view(result), as_json, _key_line)


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
@_with_core
async def key_revoke(core: Any, p: Any, ident: str, code: str, message: str | None, as_json: bool) -> None:
    """Deactivate (or mark Compromised) a key: it still decrypts, it no longer encrypts."""
    from dsm_emulator.views import sobject_view

    kid = (await core.keys.get(p, **_ident(ident))).kid
    _emit(sobject_view(await core.keys.revoke(p, kid, code, message)), as_json, _key_line)


# ------------------------------------------------------------------------------------------ dsm


@main.group()
def dsm() -> None:
    """The Fortanix-DSM-compatible REST API."""


@dsm.command("serve")
@pass_settings
def dsm_serve(settings: Settings) -> None:
    """Serve the DSM REST API on dsm.host:dsm.port (HTTP), and on dsm.https_port too when dsm.tls_cert
    and dsm.tls_key exist; stops cleanly on SIGINT or SIGTERM."""
    _run(_serve(settings))


async def _serve(settings: Settings) -> None:
    from dsm_emulator.api.app import create_app
    from xkslab.serve import serve

    await serve([dsm_listener(settings, create_app(settings))], click.echo)


def dsm_listener(settings: Settings, app: Any) -> Any:
    from xkslab.serve import Listener

    dsm = settings.dsm
    return Listener(
        "DSM REST API",
        app,
        dsm.host,
        dsm.port,
        dsm.https_port,
        settings.path(dsm.tls_cert),
        settings.path(dsm.tls_key),
    )


main.add_command(certs_command)

# Registered last: the XKS commands reuse this module's helpers.
from xkslab.cli_lab import demo, up  # noqa: E402
from xkslab.cli_xks import xks  # noqa: E402

main.add_command(xks)
main.add_command(up)
main.add_command(demo)
from xkslab.cli_kms import kms  # noqa: E402

main.add_command(kms)
