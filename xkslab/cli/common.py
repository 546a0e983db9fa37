"""What every command module of the CLI uses: running a coroutine with one-line errors, printing text or
JSON, the ``--json`` flag, and opening the key manager as the account's operator. It imports no command
module, so each command module can import it without a circle."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click
from sqlalchemy import select

from dsm_emulator.authz import Principal, system_principal
from dsm_emulator.core import DsmCore
from dsm_emulator.errors import DsmError
from dsm_emulator.models import Account
from dsm_emulator.sealing import SealError
from xkslab_shared import serve
from xkslab_shared.config import ConfigError, Settings

ready_file_option = click.option(
    "--ready-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help='Write {"pid", "urls"} here once listening (for supervisors; ports really bound).',
)

T = TypeVar("T")

pass_settings = click.make_pass_decorator(Settings)
# Where the root command keeps its --set flags, for commands that start other xkslab processes.
OVERRIDES = "xkslab.overrides"
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


def run(coro: Coroutine[Any, Any, T], *, server: bool = False) -> T:
    """Run one command's coroutine (a server's on uvloop when installed); known failures become one line
    on stderr and exit status 1."""
    try:
        return serve.run(coro) if server else asyncio.run(coro)
    except (DsmError, SealError, ConfigError) as exc:
        raise click.ClickException(getattr(exc, "message", str(exc))) from None
    except OSError as exc:
        raise click.ClickException(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": ")) from None


def emit(data: Any, as_json: bool, text: Callable[[Any], str]) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str) if as_json else text(data))


def details(d: dict[str, Any]) -> str:
    """One ``key: value`` line per field, nested values as JSON."""
    return "\n".join(f"{k}: {json.dumps(v) if isinstance(v, dict | list) else v}" for k, v in d.items())


def with_core(fn: Callable[..., Awaitable[T]]) -> Callable[..., T]:
    """Open the key manager for one command, act as the account administrator, close it again."""

    @functools.wraps(fn)
    def wrapper(settings: Settings, *args: Any, **kwargs: Any) -> T:
        async def main() -> T:
            async with await DsmCore.open(settings) as core:
                principal = await operator(core)
                return await fn(core, principal, *args, **kwargs)

        return run(main())

    return pass_settings(wrapper)


async def operator(core: DsmCore) -> Principal:
    async with core.sessions() as session:
        accounts = (await session.scalars(select(Account.acct_id))).all()
    if len(accounts) != 1:
        raise click.ClickException(f"expected one account in the data directory, found {len(accounts)}")
    return system_principal(accounts[0])
