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
@click.option(
    "--full",
    is_flag=True,
    help="Walk every chain from its first row, ignoring the checkpoints (finds a row altered before one).",
)
@json_option
@pass_settings
def audit_verify(settings: Settings, full: bool, as_json: bool) -> None:
    """Walk every hash chain and name the first bad row of each. Exit status 1 when any is bad.

    Each chain resumes after its signed checkpoint (the last row a verify found intact) unless --full;
    a chain found intact gets a new checkpoint at its last row."""
    from sqlalchemy import func, select

    from dsm_emulator import audit as audit_log
    from dsm_emulator.core import DsmCore
    from dsm_emulator.models import AuditRow

    async def verify() -> tuple[int, audit_log.VerifyResult]:
        async with await DsmCore.open(settings) as core:
            result = await audit_log.verify_chains(
                core.sessions, core.keyring, resume=not full, checkpoint=True
            )
            async with core.sessions() as session:
                rows = await session.scalar(select(func.count()).select_from(AuditRow))
        return rows or 0, result

    rows, result = run(verify())
    problems = result.problems
    data = {
        "ok": not problems,
        "rows": rows,
        "checked": result.checked,
        "full": full,
        "resumed_after": result.resumed,
        "checkpoints": result.saved,
        "problems": [
            {"chain": p.chain, "seq": p.seq, "row_id": p.row_id, "reason": p.reason} for p in problems
        ],
    }

    def text(d: dict[str, Any]) -> str:
        if d["ok"]:
            how = "from the first row" if full or not d["resumed_after"] else "after the checkpoints"
            return f"audit log intact ({d['rows']} rows; {d['checked']} checked {how})"
        return "\n".join(
            f"BAD chain {p['chain']} seq {p['seq']} row {p['row_id'] or '-'}: {p['reason']}"
            for p in d["problems"]
        )

    emit(data, as_json, text)
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
