"""A DSM core on a data directory made once per module by the real ``xkslab init`` and copied per test,
for handler tests that mount one route table on a bare aiohttp app."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from dsm_emulator.authz import system_principal
from dsm_emulator.core import DsmCore
from xkslab.config import load_settings


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    data_dir = tmp_path_factory.mktemp("dsm") / "data"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "xkslab",
            "--data-dir",
            str(data_dir),
            "init",
            "--admin-password",
            "pw",
            "--json",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return data_dir, json.loads(out.stdout)


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
