"""``xkslab kms serve``: the AWS KMS emulator (the AWS side of the XKS double envelope) alone."""

from __future__ import annotations

from pathlib import Path

import click

from kms_emulator.app import listener
from xkslab.cli.common import pass_settings, ready_file_option, run
from xkslab_shared.config import Settings
from xkslab_shared.serve import serve


@click.group()
def kms() -> None:
    """The AWS KMS endpoint (AWS JSON 1.1): custom key stores, KMS keys, the inner envelope."""


@kms.command("serve")
@ready_file_option
@pass_settings
def kms_serve(settings: Settings, ready_file: Path | None) -> None:
    """Serve AWS KMS on kms.host:kms.port (plain HTTP, as `--endpoint-url http://...` expects); XKS proxies
    are called on the endpoints of the custom key stores. Stops cleanly on SIGINT or SIGTERM."""
    run(serve([listener(settings)], click.echo, ready_file), server=True)
