"""What every command module of the CLI uses: running a coroutine with one-line errors, printing text or
JSON, the ``--json`` flag, the settings of the global options, and opening the key manager as the
account's operator. It imports no command module, so each command module can import it without a circle.

Nothing here, and nothing a command module imports at its top, brings in the services, SQLAlchemy or
aiohttp: each command imports what it uses when it runs, so `xkslab --help`, `env`, `wait` and `down`
answer in a tenth of the time (scripts/cli_startup measures it; tests/unit/test_cli_imports.py keeps it so).

The global options (``--data-dir``, ``--set``) are accepted on every command and group, not only before the
subcommand: they are recorded on the root context as they are parsed, and the settings are loaded only
when a command asks for them, after all of its arguments are known."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from xkslab.lab.files import LabError
from xkslab_shared.config import (
    LOG_FORMATS,
    LOG_LEVELS,
    PORT_SETTINGS,
    ConfigError,
    Settings,
    load_settings,
)

if TYPE_CHECKING:
    from dsm_emulator.authz import Principal
    from dsm_emulator.core import DsmCore
    from xkslab_shared.serve import Listener

ready_file_option = click.option(
    "--ready-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help='Write {"pid", "urls"} here once listening (for supervisors; ports really bound).',
)

T = TypeVar("T")

# Where the root context keeps the global options as parsed so far, wherever they were given.
GLOBALS = "xkslab.globals"
DEBUG_ENV = "XKSLAB_DEBUG"
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


def run(coro: Coroutine[Any, Any, T], *, server: bool = False) -> T:
    """Run one command's coroutine (a server's on uvloop when installed); known failures become one line
    on stderr and exit status 1."""
    import asyncio

    from dsm_emulator.errors import DsmError
    from dsm_emulator.sealing import SealError
    from xkslab_shared.ports import ListenError

    try:
        if server:
            # Only a server needs serve (and with it aiohttp): importing it costs an admin command
            # about 0.15 s of CPU.
            from xkslab_shared import serve

            return serve.run(coro)
        return asyncio.run(coro)
    except (DsmError, SealError, ConfigError) as exc:
        raise click.ClickException(getattr(exc, "message", str(exc))) from None
    except ListenError as exc:
        raise click.ClickException(str(exc)) from None
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
            from dsm_emulator.core import DsmCore

            async with await DsmCore.open(settings) as core:
                principal = await operator(core)
                return await fn(core, principal, *args, **kwargs)

        return run(main())

    return pass_settings(wrapper)


async def operator(core: DsmCore) -> Principal:
    from sqlalchemy import select

    from dsm_emulator.authz import system_principal
    from dsm_emulator.models import Account

    async with core.sessions() as session:
        accounts = (await session.scalars(select(Account.acct_id))).all()
    if len(accounts) != 1:
        raise click.ClickException(f"expected one account in the data directory, found {len(accounts)}")
    return system_principal(accounts[0])


# ------------------------------------------------------------------------------ global options


def _record(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """Note a global option where the command that needs the settings will look. An absent option on a
    subcommand (None, or no --set) must not undo what was given before it."""
    state = ctx.find_root().meta.setdefault(GLOBALS, {"data_dir": Path(".xkslab"), "sets": []})
    if param.name == "data_dir" and value is not None:
        state["data_dir"] = Path(value)
    elif param.name == "overrides":
        state["sets"].extend(value or ())
    elif param.name == "free_ports" and value:
        state["free_ports"] = True


# On `up` and each `serve`: every port setting 0, whatever the file, the environment or --set say, so
# the system picks free ports; the ports really bound are in the banner, up.json and `xkslab env`.
free_ports_option = click.option(
    "--free-ports",
    is_flag=True,
    expose_value=False,
    callback=_record,
    help="Let the system choose every port (each port setting 0); the ports bound are printed, and for "
    "up written to up.json (`xkslab env`).",
)


def global_options(*, root: bool) -> list[click.Option]:
    """``--data-dir`` and ``--set``. Only the root's have a default and read XKSLAB_DATA_DIR: on a
    subcommand a default would silently replace the value given before it."""
    return [
        click.Option(
            ["--data-dir"],
            type=click.Path(file_okay=False, path_type=Path),
            envvar="XKSLAB_DATA_DIR" if root else None,
            default=Path(".xkslab") if root else None,
            show_default=root,
            expose_value=False,
            callback=_record,
            help="Data directory (database, config file, sealing key); before or after the subcommand.",
        ),
        click.Option(
            ["--set", "overrides"],
            multiple=True,
            metavar="NAME=VALUE",
            expose_value=False,
            callback=_record,
            help="Override a setting for this command (e.g. --set dsm.port=9000); beats the file and "
            "XKSLAB_*.",
        ),
    ]


def add_global_options(group: click.Group) -> None:
    """Give every command under ``group``, at any depth, the global options (each its own copy)."""
    for command in group.commands.values():
        command.params.extend(global_options(root=False))
        if isinstance(command, click.Group):
            add_global_options(command)


def _globals(ctx: click.Context) -> dict[str, Any]:
    found: dict[str, Any] = ctx.find_root().meta.get(GLOBALS, {"data_dir": Path(".xkslab"), "sets": []})
    return found


def data_dir_of(ctx: click.Context) -> Path:
    return Path(_globals(ctx)["data_dir"])


def overrides_of(ctx: click.Context) -> dict[str, str]:
    """The --set flags, in the order given (a later one for the same name wins)."""
    flags: dict[str, str] = {}
    for item in _globals(ctx)["sets"]:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise click.ClickException(f"--set takes NAME=VALUE, not {item!r}")
        flags[name.strip()] = value
    if _globals(ctx).get("free_ports"):
        flags.update(dict.fromkeys(PORT_SETTINGS, "0"))
    return flags


def settings_of(ctx: click.Context) -> Settings:
    """The settings of this invocation, loaded once. A Settings object already on the context (a caller
    embedding a command, or a test) is used as it is."""
    found = ctx.find_object(Settings)
    if found is not None:
        return found
    try:
        settings = load_settings(data_dir_of(ctx), overrides=overrides_of(ctx))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    ctx.find_root().obj = settings
    return settings


def _settings_passer(*, existing: bool) -> Callable[[Callable[..., T]], Callable[..., T]]:
    def decorator(fn: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> T:
            settings = settings_of(click.get_current_context())
            # Said plainly here: otherwise the first symptom is the database driver failing to open a
            # file deep inside a server's start-up.
            if existing and not settings.data_dir.is_dir():
                raise click.ClickException(
                    f"data directory {settings.data_dir} does not exist: run `xkslab init` or `xkslab up` "
                    "first, or pass --data-dir"
                )
            return fn(settings, *args, **kwargs)

        return wrapper

    return decorator


# Like click's pass_obj, for the settings (the first argument of the command). Most commands need a data
# directory that exists; ``up``, ``certs`` and ``demo`` make it or explain its absence themselves.
pass_settings = _settings_passer(existing=True)
pass_settings_creating = _settings_passer(existing=False)


def _as_setting(name: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    """A flag that is a shortcut for ``--set NAME=VALUE``: recorded with the --set flags, so the settings
    see it (a later --set of the same name, or a later flag, wins) and ``up`` passes it to its services."""

    def record(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value is not None:
            state = ctx.find_root().meta.setdefault(GLOBALS, {"data_dir": Path(".xkslab"), "sets": []})
            state["sets"].append(f"{name}={value}")

    return record


def log_options(fn: Callable[..., T]) -> Callable[..., T]:
    """``--log-level`` and ``--log-format``: the settings log.level and log.format."""
    fn = click.option(
        "--log-format",
        type=click.Choice(LOG_FORMATS),
        default=None,
        expose_value=False,
        callback=_as_setting("log.format"),
        help="Log lines as text or JSON (the setting log.format; default text).",
    )(fn)
    return click.option(
        "--log-level",
        type=click.Choice(LOG_LEVELS),
        default=None,
        expose_value=False,
        callback=_as_setting("log.level"),
        help="The lowest level logged (the setting log.level; default info, which logs each request).",
    )(fn)


def start_logging(settings: Settings, service: str) -> Callable[[str], None]:
    """Log as the settings say, for ``service``; what tells the service's start and stop."""
    from xkslab_shared import logs

    logs.configure(settings.log.level, settings.log.format, service)
    return logs.announcer(service)


# ------------------------------------------------------------------------------ serving


def serve_service(
    settings: Settings,
    service: str,
    listener: Callable[[Settings], Listener],
    ready_file: Path | None,
    workers: int = 1,
    overrides: dict[str, str] | None = None,
) -> None:
    """``xkslab <service> serve``: one service until SIGINT or SIGTERM. Under ``up`` (a supervisor that
    reads ``ready_file``), a start-up failure is written there for ``up`` to report as its own one line,
    instead of a second line on the terminal. ``workers`` > 1: that many processes on the service's
    ports, each a node (xkslab/lab/workers.py), started with the command's ``overrides``."""
    from xkslab.lab.supervisor import hold_service
    from xkslab.lab.workers import is_worker, serve_workers
    from xkslab_shared import parent
    from xkslab_shared.serve import serve, write_ready_file

    supervised = ready_file is not None and parent.PARENT_FD_ENV in os.environ
    # A worker's supervisor holds the service's lock for all its workers.
    embedded = settings.database_url.startswith("sqlite") and not is_worker()
    try:
        with hold_service(settings.data_dir, service, embedded=embedded):
            echo = start_logging(settings, service)
            if workers > 1:
                # asyncio's own loop: the supervisor serves nothing, and uvloop cannot start a child in
                # a process group of its own.
                run(serve_workers(settings, service, overrides or {}, workers, ready_file, echo))
            else:
                run(serve([listener(settings)], echo, ready_file), server=True)
    except (click.ClickException, LabError) as exc:
        if ready_file is None:
            raise
        message = exc.format_message() if isinstance(exc, click.ClickException) else str(exc)
        write_ready_file(ready_file, {"pid": os.getpid(), "error": one_line(message)})
        if not supervised:
            raise
        raise click.exceptions.Exit(1) from None


def workers_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--workers",
        type=click.IntRange(1, 64),
        default=1,
        show_default=True,
        help="Processes serving this service's ports (SO_REUSEPORT); a DSM or proxy worker is a node of "
        "its own (<node id>-w<i>: its own audit chain). See README, Deployment.",
    )(f)


# ------------------------------------------------------------------------------ one-line errors


def one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


class XkslabGroup(click.Group):
    """The root group: whatever a command raises ends as one line on stderr and exit status 1. Click's
    usage errors keep their own output and status 2; XKSLAB_DEBUG=1 lets unexpected errors through
    with their traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError:
            raise
        except click.ClickException as exc:
            # A new exception rather than an edited message: click declares `message` Final.
            raise click.ClickException(one_line(exc.format_message())) from None
        except (click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt:
            # Ctrl-C: whatever was running has stopped what it started (each command cleans up in its
            # finally blocks); one line instead of click's "Aborted!" or a traceback, and the shell's 130.
            click.echo("xkslab: interrupted", err=True)
            raise click.exceptions.Exit(130) from None
        except (LabError, ConfigError) as exc:
            # Ours, written for the user: the message alone (a class name is no help to anyone).
            raise click.ClickException(one_line(str(exc))) from None
        except Exception as exc:
            if os.environ.get(DEBUG_ENV, "").strip() not in ("", "0"):
                raise
            # botocore's and the database driver's errors are the likely ones here; their class names
            # (ClientError, EndpointConnectionError, OperationalError) say what kind of failure it was.
            raise click.ClickException(one_line(f"{type(exc).__name__}: {exc}")) from None
