"""Which URI path prefixes the proxy serves, and for which app: the alias table.

The proxy routes on these prefixes and the request path checks that a signed path names one of the
app's own, so the table is administration with an audit trail of its own (adding or removing an alias is
an audited, validated change), not part of answering an XKS request. Any change here empties the
service's app cache so that the next request sees it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from dsm_emulator.admin import AUTH_TYPES, AdminService
from dsm_emulator.audit import AuditEvent, AuditLog
from dsm_emulator.authz import Principal
from dsm_emulator.errors import BadRequest, Conflict, NotFound
from dsm_emulator.models import App, XksPathPrefix
from dsm_emulator.xks.wire import canonical_prefix

if TYPE_CHECKING:
    from xkslab_shared.generation import GenerationCache

# An alias prefix: the XKS URI path before "/kms/xks/v1", from the characters the spec allows.
PREFIX_PATTERN = re.compile(r"(/[A-Za-z0-9_-]+)+")
_URI_SUFFIX = "/kms/xks/v1"
_MAX_URI_PATH = 128


@dataclass(frozen=True)
class AppAuth:
    """What the request path keeps per awsxks app: its credentials, who it acts as, and its prefixes."""

    credentials: tuple[tuple[str, str], ...] = field(repr=False)
    principal: Principal
    prefixes: frozenset[str]  # the URI path prefixes this app is served under


class XksPrefixes:
    """The alias-table part of XksService (which sets these attributes in its __init__)."""

    _sessions: async_sessionmaker[AsyncSession]
    _audit: AuditLog
    _admin: AdminService
    _apps: GenerationCache[str, AppAuth | None]  # the request path's app cache, emptied on every change

    async def prefixes(self) -> dict[str, str]:
        """Every URI path prefix the proxy should serve -> app id: the canonical prefix of each enabled
        app with an awsxks credential, and each alias."""
        async with self._sessions() as session:
            apps = (
                await session.scalars(
                    select(App.app_id).where(App.auth_type == AUTH_TYPES["awsxks"], App.enabled)
                )
            ).all()
            aliases = (await session.execute(select(XksPathPrefix.prefix, XksPathPrefix.app_id))).all()
        enabled = set(apps)
        table = {canonical_prefix(app_id): app_id for app_id in apps}
        table.update({prefix: app_id for prefix, app_id in aliases if app_id in enabled})
        return table

    async def add_alias(self, p: Principal, app_id: str, prefix: str) -> None:
        if not PREFIX_PATTERN.fullmatch(prefix) or len(prefix + _URI_SUFFIX) > _MAX_URI_PATH:
            raise BadRequest(
                "an XKS path prefix is /segment[/segment...] of A-Z a-z 0-9 _ -, at most "
                f"{_MAX_URI_PATH - len(_URI_SUFFIX)} characters"
            )
        if prefix.startswith("/crypto/v1/apps/") or prefix.endswith(_URI_SUFFIX):
            raise BadRequest("this XKS path prefix is reserved")
        app = await self._admin.get_app(p, app_id)
        if app.auth_type != AUTH_TYPES["awsxks"]:
            raise BadRequest("only an app with an awsxks credential can have an XKS path prefix")
        event = AuditEvent.by(
            p, "xks.alias.add", f"Added XKS path prefix {prefix} to app {app.name}", object_id=app.app_id
        )

        async def work(session: AsyncSession) -> tuple[None, AuditEvent]:
            if await session.get(XksPathPrefix, prefix) is not None:
                raise Conflict("this XKS path prefix is already in use")
            session.add(XksPathPrefix(prefix=prefix, app_id=app.app_id, created_at=datetime.now(UTC)))
            await session.flush()
            return None, event

        await self._audit.apply(work, event.refused)
        self._apps.clear()

    async def remove_alias(self, p: Principal, prefix: str) -> None:
        event = AuditEvent.by(p, "xks.alias.remove", f"Removed XKS path prefix {prefix}")

        async def work(session: AsyncSession) -> tuple[None, AuditEvent]:
            row = await session.get(XksPathPrefix, prefix)
            if row is None:
                raise NotFound("no such XKS path prefix")
            await self._admin.get_app(p, row.app_id)  # the caller must see the app
            await session.delete(row)
            return None, replace(event, object_id=row.app_id)

        await self._audit.apply(work, event.refused)
        self._apps.clear()

    async def aliases(self, p: Principal, app_id: str) -> list[str]:
        await self._admin.get_app(p, app_id)
        async with self._sessions() as session:
            rows = await session.scalars(select(XksPathPrefix.prefix).where(XksPathPrefix.app_id == app_id))
            return sorted(rows.all())
