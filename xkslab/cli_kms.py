"""``xkslab kms ...``: serve the AWS KMS emulator (the AWS side of the XKS double envelope)."""

from __future__ import annotations

from typing import Any

import click

from xkslab.cli import _run, pass_settings
from xkslab.config import Settings


@click.group()
def kms() -> None:
    """The AWS KMS endpoint (AWS JSON 1.1): custom key stores, KMS keys, the inner envelope."""


@kms.command("serve")
@pass_settings
def kms_serve(settings: Settings) -> None:
    """Serve AWS KMS on kms.host:kms.port (plain HTTP, as `--endpoint-url http://...` expects); XKS proxies
    are called on the endpoints of the custom key stores. Stops cleanly on SIGINT or SIGTERM."""
    _run(_serve_kms(settings))


async def _serve_kms(settings: Settings) -> None:
    from kms_emulator.app import create_app
    from xkslab.serve import serve

    await serve([kms_listener(settings, create_app(settings))], click.echo)


def kms_listener(settings: Settings, app: Any) -> Any:
    from xkslab.serve import Listener

    # Plain HTTP, as `--endpoint-url http://...` and AWS_ENDPOINT_URL_KMS expect.
    return Listener("AWS KMS", app, settings.kms.host, settings.kms.port)
