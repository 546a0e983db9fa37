"""What more than one integration module needs: a wheel built from this checkout (what a user outside the
repository installs), and fresh virtual environments to install it in."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONSTRAINTS = REPO / "constraints.txt"
BUILD_TIMEOUT_S = 900  # far above a build or an install from the cache; only turns a hang into a failure


@pytest.fixture(scope="session")
def xkslab_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip wheel --no-deps`` of this checkout's tracked files (the working tree's versions of them),
    copied out first so that the build leaves nothing in the checkout."""
    base = tmp_path_factory.mktemp("wheel")
    source, out = base / "source", base / "dist"
    tracked = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True, timeout=60
    ).stdout.split(b"\0")
    for name in filter(None, (raw.decode() for raw in tracked)):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)],
        check=True,
        capture_output=True,
        timeout=BUILD_TIMEOUT_S,
    )
    (wheel,) = out.glob("xkslab-*.whl")
    return wheel


@pytest.fixture
def fresh_venv(tmp_path: Path) -> Callable[[str], Path]:
    """``fresh_venv(name)``: a new virtual environment (pip only) under the test's directory; its bin/."""

    def make(name: str) -> Path:
        where = tmp_path / name
        subprocess.run([sys.executable, "-m", "venv", str(where)], check=True, timeout=BUILD_TIMEOUT_S)
        return where / "bin"

    return make


@pytest.fixture
async def dsm_on_a_port(empty_db_url: str, tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    """The DSM REST API on a port of its own (HTTP), on a data directory made by the real ``xkslab
    init`` on the parametrised database: its URL and the data directory."""
    from aiohttp import web

    from dsm_emulator.api.app import create_app
    from tests.integration.test_cli import init
    from xkslab_shared.config import load_settings

    data_dir = tmp_path / "data"
    await asyncio.to_thread(init, data_dir, empty_db_url)
    runner = web.AppRunner(create_app(load_settings(data_dir)))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", data_dir
    finally:
        await runner.cleanup()
