"""``xkslab audit``: verify the hash chains, export the rows, show the newest."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from xkslab.cli.common import emit, json_option, pass_settings, run
from xkslab_shared.config import Settings


@click.group()
def audit() -> None:
    """The tamper-evident audit log."""


@audit.command("verify")
@json_option
@pass_settings
def audit_verify(settings: Settings, as_json: bool) -> None:
    """Walk every hash chain and name the first bad row of each. Exit status 1 when any is bad."""
    from sqlalchemy import func, select

    from dsm_emulator import audit as audit_log
    from dsm_emulator.core import DsmCore
    from dsm_emulator.models import AuditRow

    async def verify() -> tuple[int, list[Any]]:
        async with await DsmCore.open(settings) as core:
            problems = await audit_log.verify(core.sessions, core.keyring)
            async with core.sessions() as session:
                rows = await session.scalar(select(func.count()).select_from(AuditRow))
        return rows or 0, problems

    rows, problems = run(verify())
    data = {
        "ok": not problems,
        "rows": rows,
        "problems": [
            {"chain": p.chain, "seq": p.seq, "row_id": p.row_id, "reason": p.reason} for p in problems
        ],
    }
    emit(
        data,
        as_json,
        lambda d: (
            "audit log intact"
            if d["ok"]
            else "\n".join(
                f"BAD chain {p['chain']} seq {p['seq']} row {p['row_id']}: {p['reason']}"
                for p in d["problems"]
            )
        ),
    )
    if problems:
        sys.exit(1)


@audit.command("export")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Default: stdout.")
@pass_settings
def audit_export(settings: Settings, out: Path | None) -> None:
    """Write every audit row as JSON lines, oldest first."""
    from dsm_emulator import audit as audit_log
    from dsm_emulator.core import DsmCore

    async def export() -> int:
        count = 0
        stream = out.open("w") if out else sys.stdout
        try:
            async with await DsmCore.open(settings) as core:
                async for row in audit_log.export(core.sessions):
                    stream.write(json.dumps(row, sort_keys=True, default=str) + "\n")
                    count += 1
        finally:
            if out:
                stream.close()
        return count

    count = run(export())
    if out:
        click.echo(f"exported {count} rows to {out}", err=True)


@audit.command("tail")
@click.option("-n", "--lines", "limit", type=click.IntRange(1, 100000), default=20, show_default=True)
@json_option
@pass_settings
def audit_tail(settings: Settings, limit: int, as_json: bool) -> None:
    """Show the newest audit rows, newest first."""
    from dsm_emulator import audit as audit_log
    from dsm_emulator.core import DsmCore

    async def tail() -> list[dict[str, Any]]:
        async with await DsmCore.open(settings) as core:
            return await audit_log.tail(core.sessions, limit)

    rows = run(tail())
    emit(
        rows,
        as_json,
        lambda rs: "\n".join(
            f"{r['time']} {r['severity']:<7} {r['outcome']:<8} {r['actor_type']}:{r['actor_id'] or '-'} "
            f"{r['operation']} {r['object_id'] or ''} {r['message']}"
            for r in rs
        ),
    )
