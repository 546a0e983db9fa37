"""The command line answers at once: ``xkslab --help``, ``env``, ``wait`` and ``down`` import neither the
services nor their libraries (each command imports what it uses when it runs). Checked in a fresh
interpreter, by what it has imported, not by a stopwatch (scripts/cli_startup measures the time)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

# What made every command take 1.4-3.2 s (issue 20).
HEAVY = (
    "sqlalchemy",
    "aiohttp",
    "alembic",
    "dsm_emulator",
    "xks_frontend",
    "kms_emulator",
    "botocore",
    "boto3",
    "cryptography",
    "sdkms",
)

# Runs the command in-process (click's standalone mode off, its exit caught), then names the top-level
# packages imported.
PROBE = """
import json, sys
from xkslab.cli import main
args = json.loads(sys.argv[1])
if args:
    try:
        main.main(args, prog_name="xkslab", standalone_mode=False)
    except BaseException:
        pass
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


def imported_by(*args: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(list(args))],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return set(json.loads(done.stdout.splitlines()[-1]))


@pytest.mark.parametrize(
    "args",
    [[], ["--help"], ["env"], ["wait", "--timeout", "0"], ["down"], ["up", "--help"], ["bench", "--help"]],
    ids=lambda args: " ".join(args) or "import",
)
def test_commands_that_do_not_serve_import_no_service(args: list[str], tmp_path: Path) -> None:
    found = imported_by("--data-dir", str(tmp_path / "none"), *args) if args else imported_by()
    assert "xkslab" in found  # the probe ran
    assert sorted(found & set(HEAVY)) == []


def test_a_command_that_needs_a_service_still_gets_it(tmp_path: Path) -> None:
    """The other side: what a command uses is imported when it runs (the probe sees it)."""
    found = imported_by("--data-dir", str(tmp_path / "new"), "init", "--admin-password", "pw-for-a-test")
    assert {"dsm_emulator", "sqlalchemy"} <= found


def test_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "xkslab", "--version"], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.strip() == f"xkslab, version {version('xkslab')}"


def test_shell_completion_as_the_readme_gives_it() -> None:
    """click's completion, which README documents (`_XKSLAB_COMPLETE=bash_source xkslab`), completes a
    command and its options."""
    xkslab = str(Path(sys.executable).with_name("xkslab"))  # the console script: the name sets the variable
    script = subprocess.run(
        [xkslab],
        env={**os.environ, "_XKSLAB_COMPLETE": "bash_source"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "_xkslab_completion()" in script.stdout
    answer = subprocess.run(
        [xkslab],
        env={
            **os.environ,
            "_XKSLAB_COMPLETE": "bash_complete",
            "COMP_WORDS": "xkslab up --fr",
            "COMP_CWORD": "2",
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert answer.stdout.split() == ["plain,--free-ports"]


# What an admin command that opens the key manager (key list, app create, audit verify, ...) does not
# need, and once cost each of them ~0.4 s of CPU out of ~1 s: alembic (the schema check answers without
# it when the database is at head), aiohttp and the serving code (only `serve`/`up` run a server), the
# X.509 parser (only a certificate import), prometheus_client.
NOT_FOR_ADMIN = ("alembic", "aiohttp", "xkslab_shared.serve", "cryptography.x509", "prometheus_client")

# Like PROBE, but the command must succeed and every module name is printed.
ADMIN_PROBE = """
import json, sys
from xkslab.cli import main
main.main(json.loads(sys.argv[1]), prog_name="xkslab", standalone_mode=False)
print(json.dumps(sorted(sys.modules)))
"""


def _loaded(names: list[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if any(n == f or n.startswith(f + ".") for f in forbidden))


def test_an_admin_command_imports_neither_alembic_nor_the_server(tmp_path: Path) -> None:
    data_dir = str(tmp_path / "lab")
    subprocess.run(
        [sys.executable, "-m", "xkslab", "--data-dir", data_dir, "init", "--admin-password", "pw-for-a-test"],
        capture_output=True,
        check=True,
        timeout=300,
    )
    done = subprocess.run(
        [sys.executable, "-c", ADMIN_PROBE, json.dumps(["--data-dir", data_dir, "key", "list", "--json"])],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    *printed, modules_line = done.stdout.splitlines()
    assert json.loads("\n".join(printed)) == []  # the command ran: a fresh lab has no keys
    modules = json.loads(modules_line)
    assert {"dsm_emulator.core", "sqlalchemy.orm"} <= set(modules)  # it opened the key manager
    assert _loaded(modules, NOT_FOR_ADMIN) == []


def test_the_migrations_import_no_service_server_code() -> None:
    """`xkslab init` and `db upgrade` import every service's tables (migrations/metadata.py), not the
    code that serves them (the XKS proxy's fault book imports aiohttp and prometheus_client)."""
    probe = "import json, sys, migrations.metadata; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    modules = json.loads(done.stdout)
    assert "xks_frontend.fault_store" in modules
    assert _loaded(modules, ("aiohttp", "prometheus_client", "xks_frontend.faults")) == []
