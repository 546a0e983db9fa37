"""Quorum approval (Fortanix's approval policies and approval requests): a group's ``approval_policy``
(``policy``), the gate every protected key and group operation asks (``gate``), and the approval
requests with their reviews, expiry and single run of the approved operation (``service``, imported
from its module: it builds on the admin service, which itself asks the gate)."""

from __future__ import annotations

from dsm_emulator.approvals.gate import ApprovalProbe, QuorumGate, QuorumRequired, Touch
from dsm_emulator.approvals.policy import parse_policy, protected

__all__ = [
    "ApprovalProbe",
    "QuorumGate",
    "QuorumRequired",
    "Touch",
    "parse_policy",
    "protected",
]
