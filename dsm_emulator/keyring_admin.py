"""Changes to the keyring itself (a new term, a move to another sealing key), made as every other
change to the key manager is: in the audit writer's transaction, with their audit row (actor System),
raising the cache generation so that every process learns of them. The keyring does the work inside
that transaction; this module is only what joins it to the audit log (the audit log needs the keyring
for its own chain key, so the keyring cannot hold the audit log)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from dsm_emulator.audit import AuditEvent, AuditLog
from dsm_emulator.keyring import Keyring
from dsm_emulator.sealing import Sealer


def _system_event(operation: str, message: str) -> AuditEvent:
    return AuditEvent(operation=operation, action_type="ADMINISTRATIVE", message=message, actor_type="System")


class KeyringAdmin:
    def __init__(self, keyring: Keyring, audit: AuditLog) -> None:
        self._keyring = keyring
        self._audit = audit

    async def rotate(self) -> int:
        """Start a new term (the database's next); this process seals under it from now on, old blobs
        still open, and other processes open its blobs on demand (dsm_emulator/keyring.py)."""

        async def work(session: AsyncSession) -> tuple[int, AuditEvent]:
            term = await self._keyring.add_term(session)
            return term, _system_event("keyring.rotate", f"Started keyring term {term}")

        term = await self._audit.apply(work, _system_event("keyring.rotate", "Start a keyring term").refused)
        await self._keyring.activate(term)
        return term

    async def rewrap(self, new_sealer: Sealer) -> int:
        """Every term re-wrapped under ``new_sealer`` in one transaction; the number of terms."""
        to = f"{new_sealer.kind} sealing key {new_sealer.key_id}"

        async def work(session: AsyncSession) -> tuple[int, AuditEvent]:
            count = await self._keyring.rewrap_terms(session, new_sealer)
            return count, _system_event("keyring.rewrap", f"Rewrapped {count} keyring term(s) to {to}")

        count = await self._audit.apply(
            work, _system_event("keyring.rewrap", f"Rewrap the keyring to {to}").refused
        )
        self._keyring.use_sealer(new_sealer)
        return count
