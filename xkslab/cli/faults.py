"""``xkslab faults ...``: break the running XKS proxy on purpose (README: Breaking things on purpose).

The CLI talks to the proxy only over HTTP, on its admin endpoint (the client in ``xkslab.lab.faults``,
which the pytest plugin uses too): the proxy's URL comes from ``--url`` or the lab's
``<data-dir>/up.json``, the bearer token from ``xks.admin_token_file`` in the data directory.
Faults live in the proxy's memory: ``clear`` or a restart of the proxy removes them. A scenario file is
handed to the proxy whole (each fault with its ``start_s``), so ``load`` returns at once and the schedule
runs in the proxy, with no process of ours to keep alive in CI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from xkslab.cli.common import emit, json_option, pass_settings
from xkslab.lab.control import read_up_json
from xkslab.lab.faults import FaultsClient, FaultsError
from xkslab_shared.config import Settings
from xkslab_shared.faults_wire import (
    HEALTH_STATES,
    KINDS,
    OPERATIONS,
    FaultSpecError,
    parse_fault,
    parse_scenario,
)

url_option = click.option(
    "--url", default=None, help="The XKS proxy's base URL (default: the lab's, from <data-dir>/up.json)."
)


@click.group()
def faults() -> None:
    """Inject faults into the running XKS proxy: latency, XKS errors, throttling, per-node health,
    malformed or truncated answers, dropped connections, an expired or wrong-host TLS certificate. Faults
    live in the proxy's memory only."""


def _call(settings: Settings, url: str | None, method: str, path: str = "", body: Any = None) -> Any:
    if url is None:
        # up.json alone, not "is its up process alive": an in-process lab (pytest) writes it as well.
        data = read_up_json(settings.data_dir) or {}
        url = (data.get("xks") or {}).get("url")
        if not isinstance(url, str):
            raise click.ClickException(
                f"no xkslab lab is ready on {settings.data_dir} (no up.json): start one, or give --url"
            )
    try:
        return FaultsClient(url, settings.path(settings.xks.admin_token_file)).call(method, path, body)
    except FaultsError as exc:
        raise click.ClickException(str(exc)) from None


def _range_ms(value: str | None) -> tuple[int | None, int | None]:
    if value is None:
        return None, None
    low, dash, high = value.partition("-")
    try:
        return int(low), int(high) if dash else None
    except ValueError:
        raise click.BadParameter("MS or MIN-MAX, in milliseconds", param_hint="--latency-ms") from None


@faults.command("set")
@click.argument("kind", type=click.Choice(KINDS))
@click.option("--latency-ms", default=None, help="latency: MS, or MIN-MAX for a random time in that range.")
@click.option("--error", "error_name", default=None, help="error: the XKS errorName (its status follows).")
@click.option(
    "--health",
    default=None,
    help=f"health: one state per EKM node, comma-separated ({'/'.join(HEALTH_STATES)}).",
)
@click.option("--prefix", "uri_prefix", default=None, help="Only this URI path prefix (before /kms/xks/v1).")
@click.option("--key-id", default=None, help="Only this external key id.")
@click.option("--operation", type=click.Choice(OPERATIONS), default=None, help="Only this XKS operation.")
@click.option("--kms-operation", default=None, help="Only this requestMetadata.kmsOperation (e.g. Encrypt).")
@click.option("--count", type=int, default=None, help="Apply to this many requests, then end.")
@click.option("--duration", "duration_s", type=float, default=None, help="End after this many seconds.")
@click.option("--probability", type=float, default=None, help="Apply to a matching request with this chance.")
@click.option("--start", "start_s", type=float, default=None, help="Begin this many seconds from now.")
@url_option
@json_option
@pass_settings
def faults_set(
    settings: Settings, kind: str, latency_ms: str | None, url: str | None, as_json: bool, **given: Any
) -> None:
    """Add one fault of KIND (latency, error, throttle, health, malformed, truncated, drop, tls_expired,
    tls_wrong_host). The TLS kinds act on new handshakes on the HTTPS listener and take no filters."""
    low, high = _range_ms(latency_ms)
    spec = {"kind": kind, "latency_ms": low, "latency_max_ms": high, **given}
    try:
        fault = parse_fault({k: v for k, v in spec.items() if v is not None})
    except FaultSpecError as exc:
        raise click.ClickException(str(exc)) from None
    result = _call(settings, url, "POST", body={"faults": [fault.to_json()]})
    emit(result, as_json, lambda r: f"{r['ids'][0]}  {fault.describe()}")


@faults.command("list")
@url_option
@json_option
@pass_settings
def faults_list(settings: Settings, url: str | None, as_json: bool) -> None:
    """The faults set on the proxy: active, pending (not started yet), with what each has done."""
    result = _call(settings, url, "GET")

    def text(r: dict[str, Any]) -> str:
        rows = [
            f"{f['id']}  {f['state']:<7}  applied {f['applied']:<5}  {f['describe']}" for f in r["faults"]
        ]
        return "\n".join(rows) or "no faults"

    emit(result, as_json, text)


@faults.command("clear")
@click.argument("fault_id", required=False)
@url_option
@pass_settings
def faults_clear(settings: Settings, fault_id: str | None, url: str | None) -> None:
    """Remove FAULT_ID, or every fault (pending ones too)."""
    result = _call(settings, url, "DELETE", f"/{fault_id}" if fault_id else "")
    click.echo(f"cleared {result['cleared']} fault(s)")


@faults.command("load")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--replace", is_flag=True, help="Clear the faults set before loading these.")
@url_option
@json_option
@pass_settings
def faults_load(settings: Settings, file: Path, replace: bool, url: str | None, as_json: bool) -> None:
    """Hand a scenario FILE (TOML, [[fault]] tables with start_s) to the proxy, which runs the schedule
    from now; returns at once."""
    try:
        scenario = parse_scenario(file.read_text())
    except FaultSpecError as exc:
        raise click.ClickException(f"{file}: {exc}") from None
    if replace:
        _call(settings, url, "DELETE")
    result = _call(settings, url, "POST", body={"faults": [fault.to_json() for fault in scenario]})
    emit(
        result,
        as_json,
        lambda r: "\n".join(f"{i}  {f.describe()}" for i, f in zip(r["ids"], scenario, strict=True)),
    )
