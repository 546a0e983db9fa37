"""``xkslab up`` and ``xkslab demo``: the whole lab in one command, and the seed's workflow against it; and
for scripts and CI ``up --detach``, ``down``, ``wait`` and ``env``."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from xkslab.cli.common import (
    data_dir_of,
    free_ports_option,
    json_option,
    log_options,
    overrides_of,
    pass_settings_creating,
    run,
    settings_of,
    start_logging,
)
from xkslab.lab.control import log_file, require_ready, wait_ready
from xkslab.lab.detach import start_detached, stop_lab
from xkslab.lab.envfmt import FORMATS, format_env
from xkslab.lab.files import LabError, lab_env
from xkslab_shared.config import Settings


@click.command("up")
@click.option(
    "--admin-password",
    envvar="XKSLAB_ADMIN_PASSWORD",
    default=None,
    help="The administrator's password: set on a new data directory (default: generated), changed on an "
    "existing one; printed and kept in <data-dir>/admin.password.",
)
@click.option(
    "--detach",
    is_flag=True,
    help="Run in the background (output in <data-dir>/run/up.log, each service's log in "
    "run/<service>.log, pid in run/up.pid); return once the lab is ready and print the path of "
    "up.json. `xkslab down` stops it.",
)
@click.option(
    "--mtls",
    is_flag=True,
    help="Mutual TLS as AWS recommends (the setting xks.mtls): the proxy requires the client certificate "
    "KMS presents, cks.kms.<region>.amazonaws.com from the local CA (tls/kms-client.crt).",
)
@click.option(
    "--log-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write each service's log to DIR/<service>.log instead of this terminal (--detach: <data-dir>/run).",
)
@click.option(
    "--open",
    "open_console",
    is_flag=True,
    help="Open the web console (the DSM's /console) in a browser once the lab is ready.",
)
@click.option(
    "--fleet",
    metavar="DSM_NODES,PROXIES",
    default=None,
    help="Several DSM nodes and XKS proxies on one PostgreSQL database (database.url) behind HAProxy "
    "(apt-get install haproxy), which listens on the ports the services would; e.g. --fleet 2,2.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Processes per DSM, per proxy and for the KMS (serve --workers: one port, SO_REUSEPORT).",
)
@log_options
@free_ports_option
@click.pass_context
def up(
    ctx: click.Context,
    admin_password: str | None,
    detach: bool,
    mtls: bool,
    log_dir: Path | None,
    open_console: bool,
    fleet: str | None,
    workers: int,
) -> None:
    """Start the DSM, the XKS proxy and the KMS emulator on embedded defaults (SQLite, software sealing,
    loopback ports), bootstrap them on first start, print the settings to paste and write them to
    <data-dir>/up.json. A second start reuses the data directory; Ctrl-C stops all three."""
    try:
        settings = settings_of(ctx)
        overrides = overrides_of(ctx)
        if mtls:
            # Passed on as a setting like any other, so each service's process (and a detached up) has it.
            overrides["xks.mtls"] = "true"
            settings = replace(settings, xks=replace(settings.xks, mtls=True))
        from xkslab.lab.fleet import check_fleet, parse_shape

        shape = None
        if fleet is not None:
            shape = parse_shape(fleet)
            check_fleet(settings)
        if detach:
            path, pid = start_detached(
                settings.data_dir, overrides, admin_password, log_dir, fleet=fleet, workers=workers
            )
            log = log_file(path.parent)
            click.echo(f"xkslab up is running (pid {pid}, log {log}); `xkslab down` stops it", err=True)
            click.echo(str(path))
            if open_console:
                _open_console(json.loads(path.read_text()))
            return
        if log_dir is not None:
            log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        start_logging(settings, "lab")
        from xkslab.lab.up import first_start, run_up

        with first_start(settings) as ready:
            on_ready = _open_console if open_console else None
            run(
                run_up(
                    settings, admin_password, click.echo, overrides, log_dir, ready, shape, workers, on_ready
                )
            )
    except LabError as exc:
        raise click.ClickException(str(exc)) from None


def _open_console(data: dict[str, Any]) -> None:
    """The console's URL in the user's browser (the standard library's webbrowser: $BROWSER, else the
    desktop's default); where none can be opened, say so (the URL is printed anyway)."""
    import webbrowser

    url = str(data["console"]["url"])
    if not webbrowser.open(url):
        click.echo(f"could not open a browser: open {url} yourself", err=True)


def _lab_dir() -> Path:
    """The data directory alone: these commands read no settings, so a broken config file cannot keep
    `down` from stopping a lab."""
    ctx = click.get_current_context()
    found = ctx.find_object(Settings)
    return found.data_dir if found is not None else data_dir_of(ctx)


@click.command("down")
def down() -> None:
    """Stop the lab running on the data directory (whoever started it), and any service still running
    on it without its lab, and wait until their processes are gone. Nothing running is not an error."""
    data_dir = _lab_dir()
    try:
        stopped = stop_lab(data_dir)
    except LabError as exc:
        raise click.ClickException(str(exc)) from None
    if stopped.lab is not None:
        click.echo(f"stopped the xkslab lab on {data_dir} (pid {stopped.lab})")
    if stopped.services:
        pids = ", ".join(map(str, stopped.services))
        click.echo(f"stopped xkslab service(s) left running on {data_dir} without their lab (pid {pids})")
    if stopped.lab is None and not stopped.services:
        click.echo(f"no xkslab lab is running on {data_dir}")


@click.command("wait")
@click.option("--timeout", type=click.FloatRange(min=0), default=300.0, show_default=True, help="Seconds.")
@click.option(
    "--health",
    is_flag=True,
    help="Also wait until GET /health of the DSM, the proxy and the KMS answers 200 (each service and "
    "what it needs: the database, the key manager).",
)
def wait(timeout: float, health: bool) -> None:
    """Wait until a lab started elsewhere on the data directory is ready (up.json written by a running
    `xkslab up`); exit status 1 on timeout."""
    try:
        wait_ready(_lab_dir(), timeout, health)
    except LabError as exc:
        raise click.ClickException(str(exc)) from None


@click.command("env")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="shell", show_default=True)
def env(fmt: str) -> None:
    """Print what an AWS client needs to reach the running lab: `export` lines (shell, for eval), K=V
    (dotenv, and github for appending to $GITHUB_ENV) or a JSON object."""
    try:
        data = require_ready(_lab_dir())
    except LabError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(format_env(lab_env(data), fmt))


@click.command("demo")
@click.option("--file", "input_file", type=click.Path(dir_okay=False, path_type=Path), default=None)
@json_option
@pass_settings_creating
def demo(settings: Settings, input_file: Path | None, as_json: bool) -> None:
    """Run the double-envelope workflow against a running `xkslab up` (same --data-dir) with boto3."""
    from xkslab.lab.demo import DemoError, run_demo

    try:
        result = run_demo(settings, input_file, (lambda _: None) if as_json else click.echo)
    except DemoError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
