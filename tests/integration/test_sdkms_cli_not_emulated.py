"""Fortanix's own ``sdkms-cli``, unchanged, reaching for what the lab does not emulate: each command gets
the 501 and prints the lab's answer that xkslab does not emulate it, rather than a 404 or a 405; and
``persist-key``, which once got a 405, works."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

from dsm_emulator.api.not_emulated import ATTESTATION, LDAP, PLUGINS
from tests.integration.test_sdkms_cli import dsm_https
from tests.integration.test_sdkms_cli_quorum import ADMIN, ADMIN_PW, SdkmsCli

__all__ = ["dsm_https"]  # the server fixture, shared with the other sdkms-cli tests


def test_sdkms_cli_commands_name_what_xkslab_does_not_emulate(
    dsm_https: tuple[str, Path], tmp_path: Path
) -> None:
    cli = SdkmsCli(dsm_https, tmp_path)

    def refused(feature: str, *args: str) -> None:
        proc = cli.run(*args)
        output = proc.stdout + proc.stderr
        assert proc.returncode != 0, output
        assert "501" in output and f"xkslab does not emulate {feature}" in output, output

    # Before any login, as sdkms-cli asks it: the LDAP discovery step is public in Fortanix.
    refused(LDAP, "ldap-auth", "--user-email", ADMIN, "--password", ADMIN_PW)

    cli.cli("user-login", "--username", ADMIN, "--password", ADMIN_PW)
    group_id = cli.cli("create-group", "--name", "ne-group").strip().split()[-1]
    app_id = cli.cli("create-app", "--name", "ne-app", "--default-group", group_id, "--groups", group_id)
    api_key = cli.cli("get-app-api-key", "--app-id", app_id.strip().split()[-1]).strip().split()[-1]
    cli.cli("app-login", "--api-key", api_key)
    transient = cli.cli(
        "create-key", "--obj-type", "AES", "--key-size", "256", "--name", "t", "--transient"
    ).strip()
    assert transient and not re.fullmatch(r"[0-9a-f-]{36}", transient)
    kid = cli.cli("create-key", "--obj-type", "AES", "--key-size", "256", "--name", "ne-key").strip()

    # persist-key is emulated: it once met a 405 (``persist`` taken as a kid).
    persisted = cli.cli("persist-key", "--name", "kept", "--transient-key", transient).strip()
    assert re.fullmatch(r"[0-9a-f-]{36}", persisted) and persisted != kid
    assert "kept" in cli.cli("list-keys")
    refused(ATTESTATION, "key-attestation", "--kid", kid)
    refused(PLUGINS, "invoke-plugin", "--id", str(uuid.uuid4()))
