"""The quorum gate: the one place a key operation asks whether a group's approval policy holds it.

Every operation the lab can hold for approval calls :meth:`QuorumGate.check` once, after its permission
and state checks and before it changes or reveals anything, with every object it touches and what it does
to each. Three outcomes:

* no policy holds the operation, or the caller runs an approved request that names these objects: go on;
* the caller is probing (an approval request being created): :class:`ApprovalProbe` carries the objects
  and categories back to the request, and nothing runs;
* otherwise :class:`QuorumRequired` (403, Fortanix's ``{"message"}``).

Group policies are read through the generation-checked cache, so a policy set in one process holds in
every other within the cache poll interval.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dsm_emulator.approvals.policy import protected
from dsm_emulator.authz import Principal
from dsm_emulator.errors import AccessDenied
from dsm_emulator.models import Group, SecurityObject
from xkslab_shared.generation import Generation, GenerationCache


class QuorumRequired(AccessDenied):
    """A protected operation called directly. The real DSM's status for this is not documented; the lab
    answers 403 (it refuses, never runs the operation) and says how to ask for approval."""


@dataclass(frozen=True)
class Touch:
    """One thing an operation touches (a security object, or a group itself), the group whose policy
    applies, and the protection categories of what it does to it."""

    kind: str  # "sobject" | "group" (Fortanix ApprovalSubject)
    ident: str
    group_id: str
    categories: frozenset[str]

    @classmethod
    def sobject(cls, obj: SecurityObject, *categories: str) -> Touch:
        return cls("sobject", obj.kid, obj.group_id, frozenset(categories))

    @classmethod
    def group(cls, group_id: str, *categories: str) -> Touch:
        return cls("group", group_id, group_id, frozenset(categories))


class ApprovalProbe(Exception):
    """Raised instead of running a probed operation: what it would touch, and which of it is held."""

    def __init__(self, touched: Sequence[Touch], held: Mapping[str, frozenset[str]]) -> None:
        super().__init__("approval probe")
        self.touched = tuple(touched)
        # group_id -> categories its policy holds, for the groups that hold something of this operation
        self.held = dict(held)


class QuorumGate:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        generation: Generation | None,
        max_age_s: float,
    ) -> None:
        self._sessions = sessions
        self._policies: GenerationCache[str, dict[str, Any] | None] | None = (
            None if generation is None else GenerationCache(generation, max_age_s)
        )

    async def policy(self, group_id: str) -> dict[str, Any] | None:
        async def load() -> dict[str, Any] | None:
            async with self._sessions() as session:
                return await session.scalar(select(Group.approval_policy).where(Group.group_id == group_id))

        if self._policies is None:
            return await load()
        return await self._policies.get(group_id, load)

    async def check(self, p: Principal, touched: Iterable[Touch]) -> None:
        touched = list(touched)
        held: dict[str, frozenset[str]] = {}
        for touch in touched:
            categories = touch.categories & protected(await self.policy(touch.group_id))
            if categories and touch.ident not in p.approved:
                held[touch.group_id] = held.get(touch.group_id, frozenset()) | categories
        if p.probe:
            raise ApprovalProbe(touched, held)
        if held:
            what = ", ".join(sorted(set().union(*held.values())))
            raise QuorumRequired(
                f"this operation ({what}) requires quorum approval under the approval policy of group "
                f"{', '.join(sorted(held))}: create an approval request (POST /sys/v1/approval_requests) "
                "and fetch its result once it is approved"
            )
