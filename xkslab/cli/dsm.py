"""``xkslab dsm serve``: the Fortanix-DSM-compatible REST API alone."""

from __future__ import annotations

from pathlib import Path

import click

from dsm_emulator.api.app import listener
from xkslab.cli.common import log_options, pass_settings, ready_file_option, run, start_logging
from xkslab.lab.supervisor import hold_service
from xkslab_shared.config import Settings
from xkslab_shared.serve import serve


@click.group()
def dsm() -> None:
    """The Fortanix-DSM-compatible REST API."""


@dsm.command("serve")
@ready_file_option
@log_options
@pass_settings
def dsm_serve(settings: Settings, ready_file: Path | None) -> None:
    """Serve the DSM REST API on dsm.host:dsm.port (HTTP), and on dsm.https_port too when dsm.tls_cert
    and dsm.tls_key exist; stops cleanly on SIGINT or SIGTERM."""
    with hold_service(settings.data_dir, "dsm", embedded=settings.database_url.startswith("sqlite")):
        run(serve([listener(settings)], start_logging(settings, "dsm"), ready_file), server=True)
