"""Issue 11, item 13: the global options (``--data-dir``, ``--set``) are accepted after the subcommand at any
depth, and every error is one line on stderr with exit status 1 (click's usage errors keep 2), with a
traceback only under XKSLAB_DEBUG=1. The CLI in this process (tests/cli_runner.py), and in real
``python -m xkslab`` processes for the entry point's own exit statuses, a traceback and ``kms serve``, on
a real data directory, on SQLite and PostgreSQL where a database is involved."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli_runner import run_cli
from tests.integration.test_cli import REPO, init


def xkslab(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI with exactly these arguments (no --data-dir put in front, unlike test_cli.run), run in this
    process (tests/cli_runner.py)."""
    return run_cli(args, env={"XKSLAB_DATA_DIR": "", **(env or {})})


def xkslab_process(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """The same in a real ``python -m xkslab`` process: the entry point itself, its exit statuses and a
    traceback as the interpreter prints it, and the serve commands."""
    return subprocess.run(
        [sys.executable, "-m", "xkslab", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "XKSLAB_DATA_DIR": "", **(env or {})},
        cwd=REPO,
        timeout=timeout,
    )


def one_line_error(proc: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], proc.stderr


@pytest.fixture
def data_dir(tmp_path: Path, empty_db_url: str) -> Path:
    path = tmp_path / "data"
    init(path, empty_db_url)
    return path


def test_global_options_after_the_subcommand_at_any_depth(data_dir: Path, tmp_path: Path) -> None:
    d = str(data_dir)
    made = xkslab("key", "create", "after-leaf", "--data-dir", d, "--json")
    assert made.returncode == 0, made.stderr
    kid = json.loads(made.stdout)["kid"]
    for args in (
        ("key", "show", kid, f"--data-dir={d}", "--json"),  # after the leaf command, = form
        ("key", "--data-dir", d, "show", kid, "--json"),  # between group and command
        ("--data-dir", d, "key", "show", kid, "--json"),  # before, as always
    ):
        proc = xkslab(*args)
        assert proc.returncode == 0 and json.loads(proc.stdout)["kid"] == kid, (args, proc.stderr)
    # The one after the subcommand wins over the one before it (the last one given).
    elsewhere = tmp_path / "elsewhere"
    proc = xkslab("--data-dir", str(elsewhere), "key", "show", kid, "--data-dir", d, "--json")
    assert proc.returncode == 0, proc.stderr
    # --set after the subcommand is a command-line setting, and beats the environment; repeated --set
    # flags before and after the subcommand add up.
    proc = xkslab("key", "list", "--data-dir", d, "--set", "audit.batch_max=0")
    one_line_error(proc, "audit.batch_max (command line)")
    env = {"XKSLAB_AUDIT_BATCH_MAX": "lots"}
    assert xkslab("key", "list", "--data-dir", d, "--set", "audit.batch_max=64", env=env).returncode == 0
    proc = xkslab("--set", "audit.batch_max=64", "key", "list", "--data-dir", d, "--set", "audit.batch_max=0")
    one_line_error(proc, "audit.batch_max (command line)")
    one_line_error(xkslab("key", "list", "--data-dir", d, "--set", "nonsense"), "--set takes NAME=VALUE")
    # XKSLAB_DATA_DIR still works, and an explicit flag after the subcommand beats it.
    proc = xkslab("group", "list", "--json", env={"XKSLAB_DATA_DIR": d})
    assert proc.returncode == 0 and len(json.loads(proc.stdout)) == 1, proc.stderr
    proc = xkslab("group", "list", "--json", "--data-dir", d, env={"XKSLAB_DATA_DIR": str(elsewhere)})
    assert proc.returncode == 0 and len(json.loads(proc.stdout)) == 1, proc.stderr
    # init (which runs before a config exists) takes it there too.
    fresh = tmp_path / "fresh"
    proc = xkslab("init", "--data-dir", str(fresh), "--admin-password", "pw pw pw pw", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["created"] is True, proc.stderr
    assert (fresh / "xkslab.toml").exists()


def test_usage_errors_keep_click_exit_status_2(tmp_path: Path) -> None:
    # In real processes, as are the next two tests: the entry point and its exit statuses themselves.
    proc = xkslab_process("key", "create", "--data-dir", str(tmp_path))
    assert proc.returncode == 2 and "Missing argument" in proc.stderr and "Traceback" not in proc.stderr
    proc = xkslab_process("key", "list", "--data-dir")
    assert proc.returncode == 2 and "requires an argument" in proc.stderr


def test_unexpected_errors_are_one_line_unless_debugging(tmp_path: Path) -> None:
    lab = tmp_path / "lab"
    lab.mkdir()
    (lab / "up.json").write_text("{ not json")
    proc = xkslab_process("demo", "--data-dir", str(lab))
    one_line_error(proc, "JSONDecodeError")
    debug = xkslab_process("demo", "--data-dir", str(lab), env={"XKSLAB_DEBUG": "1"})
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "JSONDecodeError" in debug.stderr


def test_kms_serve_on_an_unusable_data_dir_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    proc = xkslab_process(
        "kms", "serve", "--data-dir", str(blocker / "data"), "--set", "kms.port=0", timeout=60
    )
    one_line_error(proc)


@pytest.fixture
def kms_server(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """``xkslab kms serve`` alone on a free port, and the data directory it uses."""
    data_dir = tmp_path / "kms"
    init(data_dir, f"sqlite+aiosqlite:///{data_dir / 'xkslab.db'}")
    ready = tmp_path / "kms.ready"
    args = ["kms", "serve", "--data-dir", str(data_dir), "--set", "kms.port=0", "--ready-file", str(ready)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "xkslab", *args],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "kms serve did not start"
            time.sleep(0.1)
        yield data_dir, json.loads(ready.read_text())["urls"][0]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def fake_up_file(data_dir: Path, kms_url: str) -> dict[str, Any]:
    """What a running `xkslab up` would have written, naming a KMS key that does not exist."""
    data = {
        "dsm": {"url": "http://127.0.0.1:9", "admin_email": "a@b.c", "admin_password": "x"},
        "kms": {"endpoint_url": kms_url, "region": "us-east-1", "alias": "alias/missing", "key_id": "k"},
        "aws_env": {"AWS_ACCESS_KEY_ID": "AKIAXKSLABEXAMPLE000", "AWS_SECRET_ACCESS_KEY": "s"},
    }
    (data_dir / "up.json").write_text(json.dumps(data))
    return data


def test_demo_kms_errors_are_one_line(kms_server: tuple[Path, str]) -> None:
    data_dir, kms_url = kms_server
    fake_up_file(data_dir, kms_url)
    proc = xkslab("demo", "--data-dir", str(data_dir))
    one_line_error(proc, "NotFoundException", "GenerateDataKey")
    # No KMS listening at all: botocore's connection error, one line too.
    fake_up_file(data_dir, "http://127.0.0.1:9")
    proc = xkslab("demo", "--data-dir", str(data_dir), env={"AWS_MAX_ATTEMPTS": "1"})
    one_line_error(proc, "EndpointConnectionError")
