"""``xkslab up`` and ``xkslab demo``: the whole lab in one command, and the seed's workflow against it."""

from __future__ import annotations

import json
from pathlib import Path

import click

from xkslab.cli.common import json_option, overrides_of, pass_settings_creating, run
from xkslab.lab.demo import DemoError, run_demo
from xkslab.lab.up import LabError, run_up
from xkslab_shared.config import Settings


@click.command("up")
@click.option(
    "--admin-password",
    envvar="XKSLAB_ADMIN_PASSWORD",
    default=None,
    help="The administrator's password: set on a new data directory (default: generated), changed on an "
    "existing one; printed and kept in <data-dir>/admin.password.",
)
@pass_settings_creating
def up(settings: Settings, admin_password: str | None) -> None:
    """Start the DSM, the XKS proxy and the KMS emulator on embedded defaults (SQLite, software sealing,
    loopback ports), bootstrap them on first start, print the settings to paste and write them to
    <data-dir>/up.json. A second start reuses the data directory; Ctrl-C stops all three."""
    try:
        overrides = overrides_of(click.get_current_context())
        run(run_up(settings, admin_password, click.echo, overrides))
    except LabError as exc:
        raise click.ClickException(str(exc)) from None


@click.command("demo")
@click.option("--file", "input_file", type=click.Path(dir_okay=False, path_type=Path), default=None)
@json_option
@pass_settings_creating
def demo(settings: Settings, input_file: Path | None, as_json: bool) -> None:
    """Run the double-envelope workflow against a running `xkslab up` (same --data-dir) with boto3."""
    try:
        result = run_demo(settings, input_file, (lambda _: None) if as_json else click.echo)
    except DemoError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
