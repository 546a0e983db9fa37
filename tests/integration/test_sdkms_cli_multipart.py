"""Fortanix's own ``sdkms-cli``, unchanged, encrypting and decrypting a 5 MiB file against ``xkslab dsm
serve``: past 350 KiB the CLI switches to ``/crypto/v1/{encrypt,decrypt}/{init,update,final}``, one update
per 350 KiB. The key is imported from a known value, so the result is checked against ``cryptography``'s
one-shot AES of the same key and IV; the explicit ``encrypt-init``/``-update``/``-final`` commands, which
keep the state in a file between processes, are checked the same way."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from tests.integration.sdkms_cli_exe import SDKMS_CLI
from tests.integration.test_sdkms_cli import dsm_https

__all__ = ["dsm_https"]  # the fixture, used by name

KEY = os.urandom(32)
IV = os.urandom(16)
FIVE_MIB = 5 * 1024 * 1024


def one_shot(mode: str, plain: bytes) -> bytes:
    if mode == "CTR":
        ctx = Cipher(algorithms.AES(KEY), modes.CTR(IV)).encryptor()
        return ctx.update(plain) + ctx.finalize()
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plain) + padder.finalize()
    ctx = Cipher(algorithms.AES(KEY), modes.CBC(IV)).encryptor()
    return ctx.update(padded) + ctx.finalize()


Cli = Callable[..., str]


@pytest.fixture
def cli(dsm_https: tuple[str, Path], tmp_path: Path) -> Cli:
    endpoint, ca = dsm_https
    env = {**os.environ, "SDKMS_CLI_TOKEN_FILE": str(tmp_path / "tokens"), "HOME": str(tmp_path)}
    env.pop("FORTANIX_API_KEY", None)
    env.pop("SDKMS_API_KEY", None)

    def run(*args: str, stdin: bytes | None = None, ok: bool = True) -> str:
        proc = subprocess.run(
            [SDKMS_CLI, "--api-endpoint", endpoint, "--ssl-ca-cert", str(ca), *args],
            capture_output=True,
            env=env,
            cwd=tmp_path,
            timeout=300,  # a generous bound on a shared machine, not a performance budget
            input=stdin,
        )
        assert (proc.returncode == 0) == ok, f"sdkms-cli {args}: {proc.stdout!r} {proc.stderr!r}"
        return (proc.stdout if ok else proc.stdout + proc.stderr).decode()

    run("user-login", "--username", "admin@example.com", "--password", "s3cret-pass")
    group_id = run("create-group", "--name", "mp-group").strip().split()[-1]
    app_id = run("create-app", "--name", "mp-app", "--default-group", group_id, "--groups", group_id)
    api_key = run("get-app-api-key", "--app-id", app_id.strip().split()[-1]).strip().split()[-1]
    run("app-login", "--api-key", api_key)
    return run


@pytest.mark.parametrize(("mode", "size"), [("CBC", FIVE_MIB), ("CTR", FIVE_MIB + 7)])
def test_five_mib_file_round_trips_and_equals_one_shot(
    cli: Cli, tmp_path: Path, mode: str, size: int
) -> None:
    (tmp_path / "key.hex").write_text(KEY.hex())
    kid = cli("import-key", "--obj-type", "AES", "--name", f"mp-{mode}", "--in", str(tmp_path / "key.hex"))
    kid = kid.strip().split()[-1]
    plain = os.urandom(size)
    (tmp_path / "plain").write_bytes(plain)
    common = ("--alg", "AES", "--mode", mode, "--iv", IV.hex())
    cli("encrypt", "--kid", kid, *common, "--in", str(tmp_path / "plain"), "--out", str(tmp_path / "ct"))
    cipher = (tmp_path / "ct").read_bytes()
    assert cipher == one_shot(mode, plain)
    # Decrypt by name: the descriptor in every update and final names the key the state is bound to.
    cli(
        "decrypt",
        "--name",
        f"mp-{mode}",
        *common,
        "--in",
        str(tmp_path / "ct"),
        "--out",
        str(tmp_path / "pt"),
    )
    assert (tmp_path / "pt").read_bytes() == plain


def test_explicit_init_update_final_commands(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "key.hex").write_text(KEY.hex())
    kid = cli("import-key", "--obj-type", "AES", "--name", "mp-steps", "--in", str(tmp_path / "key.hex"))
    kid = kid.strip().split()[-1]
    state, out = str(tmp_path / "state"), str(tmp_path / "ct")
    cli("encrypt-init", "--kid", kid, "--alg", "AES", "--mode", "CBC", "--iv", IV.hex(), "--state", state)
    pieces = [os.urandom(1000), os.urandom(5), os.urandom(4096)]
    for piece in pieces:
        cli("encrypt-update", "--kid", kid, "--state", state, "--out", out, stdin=piece)
    used = (tmp_path / "state").read_bytes()
    cli("encrypt-final", "--kid", kid, "--state", state, "--out", out)
    assert (tmp_path / "ct").read_bytes() == one_shot("CBC", b"".join(pieces))
    (tmp_path / "state").write_bytes(used)  # a state that final has consumed is refused
    refusal = cli("encrypt-final", "--kid", kid, "--state", state, "--out", out, ok=False)
    assert "multipart state is not valid" in refusal and "400" in refusal
