"""``xkslab bench``: the benchmark (xkslab.bench) from the command line; ``scripts/bench`` runs this."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import click

from xkslab.bench import FLEET_SCENARIOS, SCENARIOS


@click.command("bench")
@click.option("--duration", type=float, default=10.0, show_default=True, help="Seconds per scenario.")
@click.option("--connections", type=int, default=32, show_default=True)
@click.option("--threads", type=int, default=2, show_default=True, help="wrk threads.")
@click.option(
    "--scenario",
    "scenarios",
    multiple=True,
    type=click.Choice(SCENARIOS + FLEET_SCENARIOS),
    help="Repeat to pick; default: all but fleet-xks-encrypt (HAProxy and PostgreSQL: up --fleet 2,2).",
)
@click.option("--pool-size", type=int, default=64, show_default=True, help="Distinct requests per scenario.")
@click.option(
    "--warmup",
    type=float,
    default=2.0,
    show_default=True,
    help="Seconds of the same load before each measurement, not recorded.",
)
@click.option(
    "--target",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Data dir of a running `xkslab up` (default: start one in a temporary dir on free ports).",
)
@click.option(
    "--postgres-dsn",
    default="postgresql://postgres@127.0.0.1:5432/test",
    show_default=True,
    help="Where the *-postgres scenarios make a scratch database ('' to skip them).",
)
@click.option(
    "--audit-rows",
    type=click.IntRange(0, 100_000_000),
    default=0,
    show_default=True,
    help="Fill each lab's audit log with this many rows first; measure /sys/v1/logs filters, audit verify "
    "(full, then resumed) and the audit commit percentiles at that size.",
)
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("bench.json"), show_default=True
)
def bench(
    duration: float,
    connections: int,
    threads: int,
    scenarios: tuple[str, ...],
    pool_size: int,
    warmup: float,
    target: Path | None,
    postgres_dsn: str,
    audit_rows: int,
    out: Path,
) -> None:
    """Drive xkslab with wrk (XKS Encrypt/Decrypt, KMS GenerateDataKey/Decrypt, DSM encrypt, the XKS pair on
    PostgreSQL) beside anchors measured in the same run (bare aiohttp, two- and three-hop aiohttp chains,
    moto_server's GenerateDataKey); print a table and write it as JSON."""
    if importlib.util.find_spec("moto") is None:  # an anchor of every run, and not a dependency of xkslab's
        raise click.ClickException(
            "xkslab bench needs moto (its KMS is the benchmark's anchor): pip install 'xkslab[bench]'"
        )
    from xkslab.bench.lab import BenchError
    from xkslab.bench.run import BenchOptions, render_table, run_bench
    from xkslab.bench.wrk import WrkSettings

    options = BenchOptions(
        wrk=WrkSettings(duration_s=duration, connections=connections, threads=threads),
        scenarios=scenarios or SCENARIOS,
        pool_size=pool_size,
        warmup_s=warmup,
        target=target,
        postgres_dsn=postgres_dsn or None,
        audit_rows=audit_rows,
    )
    try:
        report = run_bench(options, lambda line: click.echo(line, err=True))
    except (BenchError, RuntimeError) as exc:
        raise click.ClickException(str(exc)) from None
    out.write_text(json.dumps(report, indent=2) + "\n")
    click.echo(render_table(report))
    click.echo(f"\n(written to {out})")
