"""The tamper-evident, fail-closed audit log.

Every audited operation answers only after its row is durably committed. To keep that affordable, ONE
writer task per node owns the chain head and commits rows in groups (``record``), or together with the
mutation they describe (``apply``). Because that task is the only code path that inserts audit rows and
handles items strictly in arrival order, the chain of a node is a simple sequence: seq 1, 2, 3... each
row keyed-hashed over the previous row's hash and every column of its own, so verify() can name the first
altered, deleted or reordered row. The hash key comes from the keyring (purpose ``audit-chain``), so the
database alone is not enough to forge a chain.

The package is split by concern: ``events`` (what a row may hold), ``chain`` (the row hash), ``writer``
(AuditLog) and ``reader`` (verify, export, tail). Import from here; the names below are the public API.
"""

from dsm_emulator.audit.chain import AUDIT_KEY_PURPOSE, HASHED_COLUMNS, ZERO_HASH, canonical, row_hash
from dsm_emulator.audit.checkpoints import CHECKPOINT_KEY_PURPOSE
from dsm_emulator.audit.events import ACTION_TYPES, ACTOR_TYPES, OUTCOMES, SEVERITIES, AuditEvent
from dsm_emulator.audit.reader import (
    PAGE_SIZE,
    ChainProblem,
    VerifyResult,
    export,
    row_to_dict,
    tail,
    verify,
    verify_chains,
)
from dsm_emulator.audit.writer import UNAVAILABLE, AuditLog, AuditStats

__all__ = [
    "ACTION_TYPES",
    "ACTOR_TYPES",
    "AUDIT_KEY_PURPOSE",
    "CHECKPOINT_KEY_PURPOSE",
    "HASHED_COLUMNS",
    "OUTCOMES",
    "PAGE_SIZE",
    "SEVERITIES",
    "UNAVAILABLE",
    "ZERO_HASH",
    "AuditEvent",
    "AuditLog",
    "AuditStats",
    "ChainProblem",
    "VerifyResult",
    "canonical",
    "export",
    "row_hash",
    "row_to_dict",
    "tail",
    "verify",
    "verify_chains",
]
