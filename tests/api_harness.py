"""A DSM core on a data directory made once per module by the real ``xkslab init`` and copied per test,
for handler tests that mount some route tables on an app with the service's own error middleware."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web

from dsm_emulator.api.app import error_middleware
from dsm_emulator.api.context import CORE_KEY, PRINCIPAL
from dsm_emulator.authz import Principal, system_principal
from dsm_emulator.core import DsmCore
from tests.cli_runner import run_cli
from xkslab_shared.config import load_settings


def init_data_dir(data_dir: Path, database_url: str | None = None) -> tuple[Path, dict[str, Any]]:
    """A data directory made by the real ``xkslab init``, and what it printed. ``database_url``: a
    PostgreSQL database for it (written to its xkslab.toml, so every later command and server uses it).
    Run in this process (tests/cli_runner.py)."""
    args = ["--data-dir", str(data_dir), "init", "--admin-password", "pw"]
    if database_url and not database_url.startswith("sqlite"):
        args += ["--database-url", database_url]
    out = run_cli([*args, "--json"], check=True)
    return data_dir, json.loads(out.stdout)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    return init_data_dir(tmp_path_factory.mktemp("dsm") / "data")


@pytest.fixture
async def env(template: tuple[Path, dict[str, Any]], tmp_path: Path) -> AsyncIterator[SimpleNamespace]:
    source, info = template
    data_dir = tmp_path / "data"
    shutil.copytree(source, data_dir)
    core = await DsmCore.open(load_settings(data_dir, environ={}))
    try:
        yield SimpleNamespace(
            core=core,
            acct_id=info["acct_id"],
            group_id=info["default_group_id"],
            system=system_principal(info["acct_id"]),
        )
    finally:
        await core.close()


APPS_KEY: web.AppKey[dict[str, Principal]] = web.AppKey("test_apps", dict)
ACCT_KEY: web.AppKey[str] = web.AppKey("test_acct_id", str)


@web.middleware
async def pick_principal(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Act as the app a test names in X-Test-App (registered in ``env.apps``), else as the administrator."""
    app_name = request.headers.get("X-Test-App")
    if app_name is not None:
        request[PRINCIPAL] = request.app[APPS_KEY][app_name]
    else:
        request[PRINCIPAL] = system_principal(request.app[ACCT_KEY])
    return await handler(request)


def route_app(env: SimpleNamespace, *routes: web.RouteTableDef) -> web.Application:
    """Some route tables on an app around ``env.core`` with the service's own error mapper (status and
    message, Retry-After on a 429, the 413, a masked 500) and body limit; only authentication is the
    test's (``pick_principal`` in place of the DSM's session check)."""
    app = web.Application(
        client_max_size=env.core.settings.dsm.max_body_bytes, middlewares=[error_middleware, pick_principal]
    )
    app[CORE_KEY] = env.core
    app[APPS_KEY] = {}
    app[ACCT_KEY] = env.acct_id
    for table in routes:
        app.add_routes(table)
    env.apps = app[APPS_KEY]
    return app


async def route_client(env: SimpleNamespace, aiohttp_client: Any, *routes: web.RouteTableDef) -> Any:
    """A test client for ``route_app``."""
    return await aiohttp_client(route_app(env, *routes))
