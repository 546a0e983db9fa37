"""``xkslab init``: a new data directory, or the check that one is ready."""

from __future__ import annotations

import secrets
from typing import Any

import click

from xkslab.cli.common import data_dir_of, emit, json_option, run
from xkslab_shared.config import CONFIG_FILE_NAME, ConfigError, load_settings


@click.command()
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
def init(
    seal_backend: str | None,
    database_url: str | None,
    account_name: str,
    admin_email: str,
    admin_password: str | None,
    as_json: bool,
) -> None:
    """Create the data directory, config file, database, sealing key and keyring, the first account,
    its administrator and a default group."""
    from xkslab.lab.datadir import init_data_dir, write_config_if_missing

    # The data directory only: the settings cannot be loaded before the config file exists.
    data_dir = data_dir_of(click.get_current_context())
    values: dict[str, Any] = {"seal.backend": seal_backend or "software"}
    if database_url:
        values["database.url"] = database_url
    if not write_config_if_missing(data_dir, values) and (seal_backend or database_url):
        raise click.ClickException(
            f"{data_dir / CONFIG_FILE_NAME} exists already: edit it instead of passing settings to init"
        )
    try:
        settings = load_settings(data_dir)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    password = admin_password or secrets.token_urlsafe(18)
    result = run(init_data_dir(settings, account_name, admin_email, password))
    result["admin_password"] = password if result["created"] and not admin_password else None
    emit(result, as_json, _init_text)


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
