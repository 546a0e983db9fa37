"""The web console (README: Console): static pages under ``/console`` served by the DSM on its own
port, which sign in with the DSM's users and act through the same REST API as every client, and a few
routes under ``/console/api`` for what lives in the other two services (routes.py, lab_link.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from dsm_emulator.console import pages, routes
from dsm_emulator.console.lab_link import LabLink
from xkslab_shared.config import Settings

__all__ = ["add_console", "is_public"]


def is_public(method: str, path: str) -> bool:
    """The console's static files are served without credentials (they hold none); its API is not."""
    return pages.is_asset(method, path)


def add_console(app: web.Application, settings: Settings) -> None:
    link = LabLink(settings)
    app[routes.LINK_KEY] = link
    app[routes.ACTIVE_KEY] = {}

    async def http_client(app: web.Application) -> AsyncIterator[None]:
        await link.open()
        try:
            yield
        finally:
            await link.close()

    app.cleanup_ctx.append(http_client)
    app.add_routes(routes.routes)
    app.add_routes(pages.routes)
