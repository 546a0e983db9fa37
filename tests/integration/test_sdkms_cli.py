"""Fortanix's own ``sdkms-cli``, unchanged, against ``xkslab dsm serve`` over HTTPS with the local CA.

The server runs as a real process; the CLI runs as a real process with its token file in the test's
directory, exactly as a user would run it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.sdkms_cli_exe import SDKMS_CLI
from tests.net import port_of, wait_ready
from xkslab_shared.certs import make_local_ca, make_server_cert

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def dsm_https(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    data_dir = tmp_path / "data"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "xkslab",
            "--data-dir",
            str(data_dir),
            "init",
            "--admin-email",
            "admin@example.com",
            "--admin-password",
            "s3cret-pass",
        ],
        check=True,
        capture_output=True,
        cwd=REPO,
        timeout=120,
    )
    tls = data_dir / "tls"
    ca_crt, ca_key = make_local_ca(tls)
    crt, key = make_server_cert(tls, ca_crt, ca_key, "dsm", ["localhost"])
    assert (crt, key) == (tls / "dsm.crt", tls / "dsm.key")  # where dsm serve looks for them
    ready = tmp_path / "dsm.ready"
    log_path = tmp_path / "dsm.log"
    log = log_path.open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "xkslab",
            "--data-dir",
            str(data_dir),
            "dsm",
            "serve",
            "--free-ports",
            "--ready-file",
            str(ready),
        ],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        https_url = next(url for url in wait_ready(ready, proc, log_path) if url.startswith("https:"))
        yield f"https://localhost:{port_of(https_url)}", ca_crt
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            assert proc.wait(timeout=20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()


def test_sdkms_cli_full_flow_over_https(dsm_https: tuple[str, Path], tmp_path: Path) -> None:
    endpoint, ca = dsm_https
    env = {**os.environ, "SDKMS_CLI_TOKEN_FILE": str(tmp_path / "tokens"), "HOME": str(tmp_path)}
    env.pop("FORTANIX_API_KEY", None)
    env.pop("SDKMS_API_KEY", None)

    def cli(*args: str) -> str:
        proc = subprocess.run(
            [SDKMS_CLI, "--api-endpoint", endpoint, "--ssl-ca-cert", str(ca), *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert proc.returncode == 0, f"sdkms-cli {args}: {proc.stdout} {proc.stderr}"
        return proc.stdout

    # Plain HTTP is refused by the CLI itself; HTTPS with our CA is what makes it work at all.
    cli("user-login", "--username", "admin@example.com", "--password", "s3cret-pass")
    group_id = cli("create-group", "--name", "cli-group").strip().split()[-1]
    assert re.fullmatch(r"[0-9a-f-]{36}", group_id)
    assert "cli-group" in cli("list-groups")
    app_id = (
        cli("create-app", "--name", "cli-app", "--default-group", group_id, "--groups", group_id)
        .strip()
        .split()[-1]
    )
    api_key = cli("get-app-api-key", "--app-id", app_id).strip().split()[-1]
    cli("app-login", "--api-key", api_key)

    kid = cli("create-key", "--obj-type", "AES", "--key-size", "256", "--name", "cli-key").strip().split()[-1]
    assert re.fullmatch(r"[0-9a-f-]{36}", kid)
    plain = tmp_path / "plain.txt"
    plain.write_bytes(b"attack at dawn" * 10)
    cli(
        "encrypt",
        "--kid",
        kid,
        "--alg",
        "AES",
        "--mode",
        "GCM",
        "--tag-len",
        "128",
        "--in",
        str(plain),
        "--out",
        str(tmp_path / "ct"),
    )
    iv = (tmp_path / "ct.iv").read_text().strip()
    cli(
        "decrypt",
        "--kid",
        kid,
        "--alg",
        "AES",
        "--mode",
        "GCM",
        "--in",
        str(tmp_path / "ct"),
        "--out",
        str(tmp_path / "pt"),
        "--iv",
        iv,
        "--tag",
        str(tmp_path / "ct.tag"),
    )
    assert (tmp_path / "pt").read_bytes() == plain.read_bytes()
    assert "cli-key" in cli("list-keys")
    new_kid = cli("rotate-key", "--name", "cli-key").strip().split()[-1]
    assert new_kid != kid and re.fullmatch(r"[0-9a-f-]{36}", new_kid)

    cli("user-login", "--username", "admin@example.com", "--password", "s3cret-pass")
    limited = tmp_path / "limited.csv"
    cli("audit-log", "--limit", "3", "--out", str(limited))
    assert 2 <= len(limited.read_text().strip().splitlines()) <= 4
    everything = tmp_path / "all.csv"
    cli("audit-log", "--out", str(everything))  # must end: previous_id paging reaches an empty page
    text = everything.read_text()
    for needle in ("cli-key", "cli-group"):
        assert needle in text
