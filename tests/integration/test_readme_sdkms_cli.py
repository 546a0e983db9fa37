"""README's sdkms-cli recipe, run as written: the block after its marker comment, with bash, in a fresh
directory (so the data directory is ``./.xkslab`` as the recipe assumes), with the real ``xkslab`` and the
real ``sdkms-cli`` of this environment, and nothing of ours in the environment but PATH and HOME (where
sdkms-cli keeps its token file)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests import deadlines

REPO = Path(__file__).resolve().parents[2]
MARKER = "<!-- sdkms-cli recipe:"
STEP_TIMEOUT_S = 600  # far above the recipe; only turns a hang into a failure


def readme_recipe() -> str:
    text = (REPO / "README.md").read_text()
    after = text[text.index(MARKER) :]
    match = re.search(r"```sh\n(.*?)```", after, re.S)
    assert match is not None, "no sh block after the marker"
    return match.group(1)


def test_the_readme_sdkms_cli_recipe(tmp_path: Path) -> None:
    recipe = readme_recipe()
    assert "user-login" in recipe and '--password "$(cat .xkslab/admin.password)"' in recipe
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    bin_dir = Path(sys.executable).parent  # this environment's xkslab and sdkms-cli
    env = {
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(home),
        # The labs the tests start get generous deadlines (tests/deadlines.py); the recipe does not care.
        **deadlines.environ(),
    }
    try:
        done = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", recipe],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=STEP_TIMEOUT_S,
        )
    finally:
        subprocess.run(
            [sys.executable, "-m", "xkslab", "down"], cwd=work, env=env, capture_output=True, check=False
        )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert "demo-key" in done.stdout  # list-keys, as the client app
    assert (home / ".token").exists()  # sdkms-cli's own token file: it logged in
    groups = subprocess.run(
        [sys.executable, "-m", "xkslab", "group", "list", "--json"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "demo" in [group["name"] for group in json.loads(groups.stdout)]  # made by the admin's login
