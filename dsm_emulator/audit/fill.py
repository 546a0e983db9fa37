"""Filling the audit log fast, for measuring how costs grow with it (``xkslab bench --audit-rows N``).

The rows go through the raw writer (raw.py) in large batches, each chained with chain.py's hash exactly
as the live writer chains them, on a chain of their own (``FILL_CHAIN``) so that a running lab's chain
is never touched: ``xkslab audit verify`` walks them like any other rows. Their content is a mix shaped
like a lab's log (mostly crypto operations by apps, some logins, administration and refusals, a few
errors), in the account given, so that every filter of ``/sys/v1/logs`` has rows to find.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from dsm_emulator.audit.chain import AUDIT_KEY_PURPOSE
from dsm_emulator.audit.events import AuditEvent, chained_rows
from dsm_emulator.audit.raw import Head, open_raw_writer
from dsm_emulator.audit.writer import advisory_key
from dsm_emulator.keyring import Keyring

FILL_CHAIN = "bulk-fill"
BATCH = 5000
# Per 1,000 rows: what a lab's log is made of.
_MIX = (
    (900, "crypto.encrypt", "CRYPTOOPERATION", "INFO", "success", "App"),
    (50, "session.auth", "AUTH", "INFO", "success", "App"),
    (30, "sobject.create", "ADMINISTRATIVE", "INFO", "success", "User"),
    (15, "crypto.decrypt", "CRYPTOOPERATION", "WARNING", "refused", "App"),
    (4, "session.auth", "AUTH", "ERROR", "failed", "App"),
    (1, "keyring.rotate", "ADMINISTRATIVE", "CRITICAL", "success", "System"),
)


def sample_events(acct_id: str, actors: int = 20, objects: int = 200) -> list[AuditEvent]:
    """1,000 events in the proportions of ``_MIX``, over ``actors`` apps and ``objects`` keys."""
    actor_ids = [str(uuid.uuid4()) for _ in range(actors)]
    object_ids = [str(uuid.uuid4()) for _ in range(objects)]
    events: list[AuditEvent] = []
    for count, operation, action, severity, outcome, actor_type in _MIX:
        for _ in range(count):
            i = len(events)
            events.append(
                AuditEvent(
                    operation=operation,
                    action_type=action,
                    message=f"{operation} ({outcome}) with key {object_ids[i % objects]}",
                    actor_type=actor_type,
                    actor_id=None if actor_type == "System" else actor_ids[i % actors],
                    acct_id=acct_id,
                    severity=severity,
                    outcome=outcome,
                    object_id=object_ids[i % objects],
                    client_ip="127.0.0.1",
                    response_time_us=100 + i,
                )
            )
    # Interleaved, so that any slice of the log has every kind: a stride coprime with 1,000.
    return [events[(i * 7) % len(events)] for i in range(len(events))]


async def fill(
    engine: AsyncEngine,
    keyring: Keyring,
    rows: int,
    acct_id: str,
    *,
    chain: str = FILL_CHAIN,
    batch: int = BATCH,
    progress: Callable[[int], None] | None = None,
) -> float:
    """Append ``rows`` rows to ``chain`` (continuing it if it exists); returns the seconds it took."""
    events = sample_events(acct_id)
    term = keyring.active_term
    key = keyring.derive(AUDIT_KEY_PURPOSE, term)
    raw = open_raw_writer(engine)
    started = time.monotonic()
    head: Head | None = None  # read under the lock by the first batch
    done = 0
    try:
        while done < rows:
            n = min(batch, rows - done)
            chunk = [events[(done + i) % len(events)] for i in range(n)]

            def build(h: Head, chunk: list[AuditEvent] = chunk) -> tuple[list[dict[str, object]], Head]:
                now = max(datetime.now(UTC), h.time or datetime.now(UTC))
                made = chained_rows(key, term, chain, chunk, h.seq, h.row_hash, now)
                return made, Head(h.seq + len(made), made[-1]["row_hash"], now)

            head = await raw.commit(advisory_key(chain), chain, head, build)
            done += n
            if progress is not None:
                progress(done)
    finally:
        await raw.close()
    return time.monotonic() - started
