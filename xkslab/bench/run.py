"""``xkslab bench`` (and ``scripts/bench``): drive a lab with wrk, scenario by scenario, beside the anchors
measured in the same run with the same wrk settings, and report requests/s, latency percentiles, non-2xx
answers, the ratio to the matching ceiling and to moto, and the peak memory of each process.

A speed figure is never a pass or a fail here: shared, noisy machines make absolute numbers meaningless,
which is why every figure stands beside a ceiling from the same run."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from xkslab.bench import SCENARIOS, auditlog, fleet, pools, wrk
from xkslab.bench.lab import Anchor, BenchError, Lab

POOL_SIZE = 64
# Which anchor each scenario is compared with: the chain of the same number of HTTP hops.
CEILING = {
    "xks-encrypt": "two-hop",
    "xks-decrypt": "two-hop",
    "xks-encrypt-postgres": "two-hop",
    "xks-decrypt-postgres": "two-hop",
    "kms-generate-data-key": "three-hop",
    "kms-decrypt": "three-hop",
    "dsm-encrypt": "one-hop",
    "fleet-xks-encrypt": fleet.FLEET_CEILING,
}
MOTO = "moto-generate-data-key"
ANCHORS = ("one-hop", "two-hop", "three-hop", MOTO)
HOPS = {"one-hop": 1, "two-hop": 2, "three-hop": 3}
# The targets, reported beside the figures (never enforced).
TARGETS = {
    "xks-encrypt": ("ceiling", 0.45),
    "kms-generate-data-key": ("moto", 3.0),
}
MOTO_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


@dataclass
class BenchOptions:
    wrk: wrk.WrkSettings = field(default_factory=wrk.WrkSettings)
    scenarios: tuple[str, ...] = SCENARIOS
    pool_size: int = POOL_SIZE
    target: Path | None = None  # the data dir of a running lab, instead of starting one
    postgres_dsn: str | None = "postgresql://postgres@127.0.0.1:5432/test"
    work_dir: Path | None = None
    # Each measurement is preceded by this much of the same load, not recorded: the first requests of a
    # fresh process fill caches and connection pools, which is start-up, not steady state.
    warmup_s: float = 2.0
    # Audit rows each lab's log is filled with before its scenarios (xkslab/bench/auditlog.py); 0: none.
    audit_rows: int = 0


def _pool_for(scenario: str, lab: dict[str, Any], size: int) -> tuple[str, list[wrk.Request]]:
    base = scenario.removesuffix("-postgres")
    kms = lab["kms"]
    if base == "xks-encrypt":
        return lab["xks"]["url"], pools.xks_encrypt(lab, size)
    if base == "xks-decrypt":
        return lab["xks"]["url"], pools.xks_decrypt(lab, size)
    if base == "kms-generate-data-key":
        pool = pools.kms_generate_data_key(
            kms["endpoint_url"], kms["region"], kms["key_arn"], size, lab["aws_env"]
        )
        return kms["endpoint_url"], pool
    if base == "kms-decrypt":
        pool = pools.kms_decrypt(kms["endpoint_url"], kms["region"], kms["key_arn"], size, lab["aws_env"])
        return kms["endpoint_url"], pool
    if base == "dsm-encrypt":
        return lab["dsm"]["url"], pools.dsm_encrypt(lab, size)
    raise BenchError(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")


def _measure(
    name: str, url: str, pool: list[wrk.Request], options: BenchOptions, echo: Callable[[str], None]
) -> dict[str, Any]:
    echo(f"  {name}: wrk -t{options.wrk.threads} -c{options.wrk.connections} -d{options.wrk.duration_s:g}s")
    if options.warmup_s > 0:
        wrk.run(url, pool, replace(options.wrk, duration_s=options.warmup_s))
    return {"scenario": name, **wrk.run(url, pool, options.wrk)}


def _anchors(
    options: BenchOptions, echo: Callable[[str], None]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    results, memory = [], {}
    request = [
        wrk.Request("/", {"Content-Type": "application/json", "Host": "127.0.0.1"}, b'{"plaintext":"x"}')
    ]
    for kind in ANCHORS:
        if kind == MOTO:
            with Anchor("moto") as moto:
                key_id = pools.moto_key(moto.url, "us-east-1", MOTO_ENV)
                pool = pools.kms_generate_data_key(moto.url, "us-east-1", key_id, options.pool_size, MOTO_ENV)
                results.append(_measure(kind, moto.url, pool, options, echo))
                memory[kind] = moto.memory()
            continue
        with Anchor(kind, hops=HOPS[kind]) as anchor:
            results.append(_measure(kind, anchor.url, request, options, echo))
            memory[kind] = anchor.memory()
    return results, memory


def _pg_admin(dsn: str, statement: str) -> None:
    import asyncpg  # the postgres extra

    async def execute() -> None:
        conn = await asyncpg.connect(dsn, timeout=5)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(execute())


def _create_pg_database(dsn: str) -> tuple[str, str]:
    name = f"xkslab_bench_{uuid.uuid4().hex[:12]}"
    _pg_admin(dsn, f'CREATE DATABASE "{name}"')
    base = dsn.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    return name, f"{base}/{name}"


def _drop_pg_database(dsn: str, name: str) -> None:
    _pg_admin(dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _run_lab_scenarios(
    lab: dict[str, Any],
    names: list[str],
    options: BenchOptions,
    echo: Callable[[str], None],
    data_dir: Path | None = None,
    overrides: dict[str, str] | None = None,
    audit: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The scenarios on one lab; with ``options.audit_rows``, its audit log filled first and measured
    (into ``audit``) before and after them."""
    filled = options.audit_rows > 0 and data_dir is not None and audit is not None
    if filled:
        assert data_dir is not None and audit is not None
        audit.update(auditlog.fill_and_measure(data_dir, overrides or {}, options.audit_rows, echo))
    results = []
    for name in names:
        url, pool = _pool_for(name, lab, options.pool_size)
        results.append(_measure(name, url, pool, options, echo))
    if filled:
        assert data_dir is not None and audit is not None
        audit.update(auditlog.after_scenarios(data_dir, overrides or {}, lab["dsm"]["url"], echo))
    return results


def run_bench(options: BenchOptions, echo: Callable[[str], None]) -> dict[str, Any]:
    wrk.wrk_binary()  # fail early, with the install hint
    known = SCENARIOS + fleet.FLEET_SCENARIOS
    unknown = set(options.scenarios) - set(known)
    if unknown:
        raise BenchError(f"unknown scenario(s) {', '.join(sorted(unknown))}; known: {', '.join(known)}")
    on_fleet = [s for s in options.scenarios if s in fleet.FLEET_SCENARIOS]
    plain = [s for s in options.scenarios if not s.endswith("-postgres") and s not in on_fleet]
    on_pg = [s for s in options.scenarios if s.endswith("-postgres")]
    results: list[dict[str, Any]] = []
    memory: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    audit: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="xkslab-bench-", dir=options.work_dir) as tmp:
        work = Path(tmp)
        echo("anchors")
        anchor_results, memory = _anchors(options, echo)
        if options.target is not None:
            echo(f"lab at {options.target}")
            lab = json.loads((options.target / "up.json").read_text())
            audit["target"] = {}
            results += _run_lab_scenarios(lab, plain, options, echo, options.target, {}, audit["target"])
        elif plain:
            echo("lab on SQLite (embedded defaults)")
            with Lab(work / "sqlite", work / "sqlite.log") as lab_process:
                audit["sqlite"] = {}
                results += _run_lab_scenarios(
                    lab_process.info, plain, options, echo, lab_process.data_dir, {}, audit["sqlite"]
                )
                memory["lab (sqlite)"] = lab_process.memory()
        if on_pg and options.target is None:
            try:
                if not options.postgres_dsn:
                    raise BenchError("no --postgres-dsn")
                db_name, url = _create_pg_database(options.postgres_dsn)
            except Exception as exc:
                for name in on_pg:
                    skipped[name] = f"PostgreSQL not reachable: {type(exc).__name__}"
            else:
                echo("lab on PostgreSQL")
                try:
                    pg_settings = {"database.url": url}
                    with Lab(work / "pg", work / "pg.log", pg_settings) as lab_process:
                        audit["postgres"] = {}
                        results += _run_lab_scenarios(
                            lab_process.info,
                            on_pg,
                            options,
                            echo,
                            lab_process.data_dir,
                            pg_settings,
                            audit["postgres"],
                        )
                        memory["lab (postgres)"] = lab_process.memory()
                finally:
                    _drop_pg_database(options.postgres_dsn, db_name)
        if on_fleet and options.target is None:
            found, ceilings, fleet_memory, fleet_skipped = fleet.run_fleet(
                on_fleet,
                options.postgres_dsn,
                work,
                lambda name, url, pool: _measure(name, url, pool, options, echo),
                lambda name, lab: _pool_for(name, lab, options.pool_size),
                (_create_pg_database, _drop_pg_database),
                echo,
            )
            results += found
            anchor_results += ceilings
            memory.update(fleet_memory)
            skipped.update(fleet_skipped)
        elif on_fleet:
            skipped.update({name: "not with --target (it starts its own fleet)" for name in on_fleet})
    report = _report(results, anchor_results, memory, skipped, options)
    if options.audit_rows > 0:
        report["audit_log"] = {lab: figures for lab, figures in audit.items() if figures}
    return report


def _report(
    results: list[dict[str, Any]],
    anchors: list[dict[str, Any]],
    memory: dict[str, Any],
    skipped: dict[str, str],
    options: BenchOptions,
) -> dict[str, Any]:
    by_name = {a["scenario"]: a for a in anchors}
    moto_rps = by_name.get(MOTO, {}).get("rps") or 0.0
    for r in results:
        ceiling = by_name.get(CEILING[r["scenario"]], {})
        r["ceiling"] = CEILING[r["scenario"]]
        r["x_ceiling"] = round(r["rps"] / ceiling["rps"], 3) if ceiling.get("rps") else None
        r["x_moto"] = round(r["rps"] / moto_rps, 2) if moto_rps else None
        target = TARGETS.get(r["scenario"])
        if target is not None:
            kind, value = target
            got = r["x_ceiling"] if kind == "ceiling" else r["x_moto"]
            r["target"] = f">= {value:g} x {'the ceiling' if kind == 'ceiling' else 'moto'}"
            r["target_met"] = (
                got is not None and got >= value and r["non2xx"] == 0 and r["socket_errors"] == 0
            )
    for a in anchors:
        a["x_moto"] = round(a["rps"] / moto_rps, 2) if moto_rps else None
    return {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "wrk": {
            "threads": options.wrk.threads,
            "connections": options.wrk.connections,
            "duration_s": options.wrk.duration_s,
            "timeout_s": options.wrk.timeout_s,
            "pool_size": options.pool_size,
        },
        "scenarios": results,
        "anchors": anchors,
        "skipped": skipped,
        "peak_rss_mb": memory,
    }


def render_table(report: dict[str, Any]) -> str:
    head = (
        f"{'scenario':<24}{'req/s':>9}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}"
        f"{'non2xx':>8}{'sockerr':>8}  {'x ceiling':<20}{'x moto':>7}"
    )
    lines = [head, "-" * len(head)]

    def row(r: dict[str, Any], ceiling: str) -> str:
        x_moto = f"{r['x_moto']:.2f}" if r.get("x_moto") is not None else "-"
        return (
            f"{r['scenario']:<24}{r['rps']:>9.0f}{r['p50_ms']:>9.1f}{r['p90_ms']:>9.1f}{r['p99_ms']:>9.1f}"
            f"{r['max_ms']:>9.1f}{r['non2xx']:>8}{r['socket_errors']:>8}  {ceiling:<20}{x_moto:>7}"
        )

    for r in report["scenarios"]:
        ceiling = f"{r['x_ceiling']:.3f} ({r['ceiling']})" if r.get("x_ceiling") is not None else "-"
        lines.append(row(r, ceiling))
    lines.append("")
    for a in report["anchors"]:
        lines.append(row(a, "(anchor)"))
    for name, why in report["skipped"].items():
        lines.append(f"{name:<24}skipped: {why}")
    targets = [r for r in report["scenarios"] if "target" in r]
    if targets:
        lines.append("")
        for r in targets:
            verdict = "met" if r["target_met"] else "NOT met"
            lines.append(f"target {r['scenario']}: {r['target']} with no errors: {verdict}")
    lines += auditlog.render(report.get("audit_log", {}))
    lines.append("")
    lines.append("peak RSS (MB):")
    for group, procs in report["peak_rss_mb"].items():
        for proc, mb in procs.items():
            lines.append(f"  {group:<24}{proc:<40}{mb if mb is not None else '-':>8}")
    w = report["wrk"]
    lines.append("")
    lines.append(
        f"wrk -t{w['threads']} -c{w['connections']} -d{w['duration_s']:g}s, "
        f"pools of {w['pool_size']} requests; {report['machine']['cpus']} CPUs, "
        f"{report['machine']['platform']}, Python {report['machine']['python']}"
    )
    return "\n".join(lines)
