"""``xkslab kms ...``: the AWS KMS emulator (the AWS side of the XKS double envelope) alone, and the
access keys its optional SigV4 check (``kms.verify_sigv4``) accepts."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from xkslab.cli.common import (
    emit,
    free_ports_option,
    json_option,
    log_options,
    overrides_of,
    pass_settings,
    ready_file_option,
    run,
    serve_service,
    workers_option,
)
from xkslab_shared.config import Settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from kms_emulator.sealing import KmsSealer

    Sessions = async_sessionmaker[AsyncSession]

T = TypeVar("T")


@click.group()
def kms() -> None:
    """The AWS KMS endpoint (AWS JSON 1.1): custom key stores, KMS keys, the inner envelope."""


@kms.command("serve")
@ready_file_option
@log_options
@free_ports_option
@workers_option
@pass_settings
def kms_serve(settings: Settings, ready_file: Path | None, workers: int) -> None:
    """Serve AWS KMS on kms.host:kms.port (plain HTTP, as `--endpoint-url http://...` expects); XKS proxies
    are called on the endpoints of the custom key stores. Stops cleanly on SIGINT or SIGTERM."""
    from kms_emulator.app import listener

    overrides = overrides_of(click.get_current_context())  # for the workers' command lines
    serve_service(settings, "kms", listener, ready_file, workers, overrides)


def _run_on_tables(settings: Settings, fn: Callable[[Sessions, KmsSealer], Awaitable[T]]) -> T:
    from kms_emulator import access_keys
    from kms_emulator.sealing import SealError

    async def main() -> T:
        async with access_keys.open_tables(settings) as (sessions, sealer):
            return await fn(sessions, sealer)

    try:
        return run(main())
    except (access_keys.AccessKeyError, SealError) as exc:
        raise click.ClickException(str(exc)) from None


def _access_keys() -> Any:
    from kms_emulator import access_keys

    return access_keys


@kms.group("access-key")
def access_key() -> None:
    """Callers' access keys, checked when kms.verify_sigv4 is on (awsPrincipalArn names their user)."""


@access_key.command("create")
@click.argument("user_name")
@json_option
@pass_settings
def access_key_create(settings: Settings, user_name: str, as_json: bool) -> None:
    """A new access key for USER_NAME; its secret is printed this once (stored sealed, never shown again)."""
    key, secret = _run_on_tables(settings, lambda s, sealer: _access_keys().create(s, sealer, user_name))
    data = {**key.as_dict(), "secret_access_key": secret}
    emit(
        data,
        as_json,
        lambda d: (
            f"user:                  {d['user_name']}\n"
            f"AWS_ACCESS_KEY_ID:     {d['access_key_id']}\n"
            f"AWS_SECRET_ACCESS_KEY: {d['secret_access_key']}   (shown once)"
        ),
    )


@access_key.command("list")
@json_option
@pass_settings
def access_key_list(settings: Settings, as_json: bool) -> None:
    """Every access key (never its secret), oldest first."""
    keys = _run_on_tables(settings, lambda s, _sealer: _access_keys().list_all(s))
    emit(
        [key.as_dict() for key in keys],
        as_json,
        lambda rows: "\n".join(f"{r['access_key_id']}  {r['user_name']}  {r['creation_date']}" for r in rows),
    )


@access_key.command("delete")
@click.argument("access_key_id")
@pass_settings
def access_key_delete(settings: Settings, access_key_id: str) -> None:
    """Delete ACCESS_KEY_ID: its signatures are refused (UnrecognizedClientException) from then on."""
    _run_on_tables(settings, lambda s, _sealer: _access_keys().remove(s, access_key_id))
    click.echo(f"deleted {access_key_id}")
