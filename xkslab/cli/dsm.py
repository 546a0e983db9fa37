"""``xkslab dsm serve``: the Fortanix-DSM-compatible REST API alone."""

from __future__ import annotations

from pathlib import Path

import click

from xkslab.cli.common import (
    free_ports_option,
    log_options,
    overrides_of,
    pass_settings,
    ready_file_option,
    serve_service,
    workers_option,
)
from xkslab_shared.config import Settings


@click.group()
def dsm() -> None:
    """The Fortanix-DSM-compatible REST API."""


@dsm.command("serve")
@ready_file_option
@log_options
@free_ports_option
@workers_option
@pass_settings
def dsm_serve(settings: Settings, ready_file: Path | None, workers: int) -> None:
    """Serve the DSM REST API on dsm.host:dsm.port (HTTP), and on dsm.https_port too when dsm.tls_cert
    and dsm.tls_key exist; stops cleanly on SIGINT or SIGTERM."""
    from dsm_emulator.api.app import listener

    overrides = overrides_of(click.get_current_context())  # for the workers' command lines
    serve_service(settings, "dsm", listener, ready_file, workers, overrides)
