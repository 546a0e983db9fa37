"""The sdkms-cli executable the tests run: the one installed beside this Python (its venv's, or the base
installation's for a venv with system site-packages) rather than a version manager's shim on PATH, which
would start a second Python process (the shim's) before each call; PATH's one where neither exists."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def sdkms_cli() -> str:
    for where in (Path(sys.executable).parent, Path(sys.base_prefix) / "bin"):
        if (where / "sdkms-cli").is_file():
            return str(where / "sdkms-cli")
    return shutil.which("sdkms-cli") or "sdkms-cli"


SDKMS_CLI = sdkms_cli()
