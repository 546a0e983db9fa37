"""The ``xkslab`` command line: set up a data directory, administer the key manager inside it, and run
the services alone or together.

One module per command group; the helpers they share are in ``common`` (which imports none of them).
Every command takes ``--data-dir`` (default ``./.xkslab``, or ``XKSLAB_DATA_DIR``) and reads that
directory's ``xkslab.toml``; admin commands take ``--json`` for scripts. Errors are one line on stderr
and exit status 1, never a traceback.
"""

from __future__ import annotations

from pathlib import Path

import click

from xkslab.cli.apps import app
from xkslab.cli.audit import audit
from xkslab.cli.bench import bench
from xkslab.cli.certs import certs_command
from xkslab.cli.common import OVERRIDES
from xkslab.cli.database import db
from xkslab.cli.dsm import dsm
from xkslab.cli.groups import group
from xkslab.cli.init import init
from xkslab.cli.keys import key
from xkslab.cli.kms import kms
from xkslab.cli.lab import demo, up
from xkslab.cli.seal import seal
from xkslab.cli.xks import xks
from xkslab_shared.config import ConfigError, load_settings


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
    ctx.meta[OVERRIDES] = flags
    try:
        ctx.obj = load_settings(data_dir, overrides=flags)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


for command in (init, db, seal, audit, group, app, key, dsm, xks, kms, up, demo, certs_command, bench):
    main.add_command(command)
