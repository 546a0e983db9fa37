"""``xkslab db``: the schema revision of the data directory's database."""

from __future__ import annotations

import click

from xkslab.cli.common import pass_settings, run
from xkslab_shared.config import Settings


@click.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@pass_settings
def db_upgrade(settings: Settings) -> None:
    """Apply the migrations up to the newest schema."""
    from dsm_emulator import store

    run(store.upgrade_async(settings.database_url))
    click.echo(f"database at revision {store.head_revision()}")


@db.command("current")
@pass_settings
def db_current(settings: Settings) -> None:
    """Print the database's schema revision and the one this xkslab needs."""
    from dsm_emulator import store

    async def current() -> str | None:
        engine = store.create_engine(settings.database_url)
        try:
            return await store.current_revision(engine)
        finally:
            await engine.dispose()

    click.echo(f"current: {run(current()) or 'none'}  needed: {store.head_revision()}")
