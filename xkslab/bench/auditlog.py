"""``xkslab bench --audit-rows N``: the lab's audit log filled with N rows before the scenarios, and what
a large log costs: each documented filter of ``/sys/v1/logs``, ``audit verify`` in full and resumed
after its checkpoint, and the 90th percentile of an audit commit while the scenarios ran.

The fill goes through the raw audit writer in large batches on a chain of its own (dsm_emulator/audit/
fill.py), from this process with the lab's own settings and keyring, beside the running lab. The filters
are the route's own query (dsm_emulator.api.logs.LogQuery) run against the lab's database as an
administrator sees it, timed from this process; the commit percentile is the key manager's own
(``dsm_audit_commit_seconds`` on its /metrics)."""

from __future__ import annotations

import asyncio
import statistics
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

FILTER_REPEATS = 5


def filters(actor_id: str, object_id: str) -> dict[str, dict[str, Any]]:
    """Each documented filter, alone, with a value the filled log has (common and rare ones)."""
    return {
        "none": {},
        "action_type=CRYPTOOPERATION": {"action_types": ["CRYPTOOPERATION"]},
        "action_type=AUTH": {"action_types": ["AUTH"]},
        "severity=WARNING": {"severities": ["WARNING"]},
        "severity=ERROR": {"severities": ["ERROR"]},
        "severity=ERROR,CRITICAL": {"severities": ["ERROR", "CRITICAL"]},
        "actor_type=system": {"actor_types": ["System"]},
        "actor_id": {"actor_id": actor_id},
        "object_id": {"object_id": object_id},
        "range_from/range_to (a day)": {"range_from": time.time() - 86400, "range_to": time.time()},
    }


async def _prepare(settings: Any, rows: int, echo: Callable[[str], None]) -> dict[str, Any]:
    from sqlalchemy import func, select, text

    from dsm_emulator.api.logs import LogQuery
    from dsm_emulator.audit import verify_chains
    from dsm_emulator.audit.fill import fill
    from dsm_emulator.core import DsmCore
    from dsm_emulator.models import Account, AuditRow

    out: dict[str, Any] = {"rows_filled": rows}
    async with await DsmCore.open(settings) as core:
        async with core.sessions() as session:
            acct = await session.scalar(select(Account.acct_id).order_by(Account.created_at).limit(1))
        if acct is None:
            raise RuntimeError("the lab has no account to fill the audit log of")
        step = max(rows // 10, 1)
        seconds = await fill(
            core.writer_engine or core.engine,
            core.keyring,
            rows,
            acct,
            progress=lambda n: echo(f"    {n:,} rows") if n % step < 5000 else None,
        )
        out["fill_s"] = round(seconds, 1)
        if core.engine.dialect.name == "postgresql":
            # What autovacuum does by itself within a minute of a change this size; without the table's
            # statistics the planner takes a million rows for a few dozen and sorts instead of paging.
            async with core.engine.connect() as conn:
                await conn.execute(text("ANALYZE audit_log"))
                await conn.commit()
        async with core.sessions() as session:
            out["rows_total"] = await session.scalar(select(func.count()).select_from(AuditRow))
            sample = (
                await session.execute(
                    select(AuditRow.actor_id, AuditRow.object_id)
                    .where(AuditRow.acct_id == acct, AuditRow.actor_type == "App")
                    .limit(1)
                )
            ).one()
        echo(f"  filled {rows:,} audit rows in {seconds:.1f} s; the filters of /sys/v1/logs (size 100):")
        timings: dict[str, float] = {}
        for name, values in filters(sample.actor_id, sample.object_id).items():
            query = LogQuery(acct_id=acct, **values).page(100)
            spent = []
            for _ in range(FILTER_REPEATS + 1):  # the first one warms the page cache: not counted
                started = time.perf_counter()
                async with core.sessions() as session:
                    (await session.scalars(query)).all()
                spent.append(time.perf_counter() - started)
            timings[name] = round(statistics.median(spent[1:]) * 1000, 2)
            echo(f"    {name:<32}{timings[name]:>9.2f} ms")
        out["filters_ms"] = timings
        started = time.perf_counter()
        full = await verify_chains(core.sessions, core.keyring, resume=False, checkpoint=True)
        out["verify_full_s"] = round(time.perf_counter() - started, 2)
        out["verify_full_rows"] = full.checked
        out["verify_ok"] = not full.problems
        echo(f"  audit verify --full: {full.checked:,} rows in {out['verify_full_s']} s")
    return out


async def _resumed(settings: Any) -> dict[str, Any]:
    from dsm_emulator.audit import verify_chains
    from dsm_emulator.core import DsmCore

    async with await DsmCore.open(settings) as core:
        started = time.perf_counter()
        result = await verify_chains(core.sessions, core.keyring, resume=True, checkpoint=True)
        return {
            "verify_resumed_s": round(time.perf_counter() - started, 3),
            "verify_resumed_rows": result.checked,
            "verify_resumed_ok": not result.problems,
        }


def _settings(data_dir: Path, overrides: dict[str, str]) -> Any:
    from xkslab_shared.config import load_settings

    return load_settings(data_dir, {k: v for k, v in overrides.items() if k == "database.url"})


def fill_and_measure(
    data_dir: Path, overrides: dict[str, str], rows: int, echo: Callable[[str], None]
) -> dict[str, Any]:
    """Fill the lab's log (before its scenarios) and measure the filters and a full verify."""
    return asyncio.run(_prepare(_settings(data_dir, overrides), rows, echo))


def after_scenarios(
    data_dir: Path, overrides: dict[str, str], dsm_url: str, echo: Callable[[str], None]
) -> dict[str, Any]:
    """After the scenarios: a verify resumed after the checkpoints (the scenarios' rows only) and the key
    manager's audit commit percentiles."""
    out = asyncio.run(_resumed(_settings(data_dir, overrides)))
    echo(f"  audit verify (resumed): {out['verify_resumed_rows']:,} rows in {out['verify_resumed_s']} s")
    with urllib.request.urlopen(dsm_url + "/metrics", timeout=10) as resp:  # noqa: S310 (the lab's own)
        text = resp.read().decode()
    for line in text.splitlines():
        if line.startswith("dsm_audit_commit_seconds{"):
            quantile = line.split('quantile="', 1)[1].split('"', 1)[0]
            out[f"audit_commit_p{round(float(quantile) * 100)}_ms"] = round(float(line.split()[-1]) * 1000, 2)
    echo(f"  audit commit: p50 {out.get('audit_commit_p50_ms')} ms, p90 {out.get('audit_commit_p90_ms')} ms")
    return out


def render(audit: dict[str, dict[str, Any]]) -> list[str]:
    """The report's audit-log lines (none without --audit-rows)."""
    lines = []
    for lab, f in audit.items():
        lines.append("")
        lines.append(
            f"audit log ({lab}): {f.get('rows_total', 0):,} rows, {f['rows_filled']:,} of them filled"
        )
        for name, ms in f.get("filters_ms", {}).items():
            lines.append(f"  /sys/v1/logs {name:<32}{ms:>9.2f} ms")
        lines.append(f"  verify --full: {f.get('verify_full_rows', 0):,} rows in {f.get('verify_full_s')} s")
        lines.append(
            f"  verify resumed: {f.get('verify_resumed_rows', 0):,} rows in {f.get('verify_resumed_s')} s"
        )
        lines.append(
            f"  audit commit: p50 {f.get('audit_commit_p50_ms')} ms, p90 {f.get('audit_commit_p90_ms')} ms, "
            f"p99 {f.get('audit_commit_p99_ms')} ms"
        )
    return lines
