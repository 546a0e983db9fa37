"""Quorum approval with Fortanix's own ``sdkms-cli``, unchanged, against ``xkslab dsm serve`` over HTTPS:
``create-group --add-quorum-policy``, a protected ``export-object`` refused, the same with ``--quorum``
making a request, approvals through the REST API by the requester and a second user, and ``task-result``
fetching the exported key. A denied request never runs, and ``xkslab approval`` lists and denies."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
from pathlib import Path

import requests

from tests.cli_runner import run_cli
from tests.integration.sdkms_cli_exe import SDKMS_CLI
from tests.integration.test_sdkms_cli import dsm_https

__all__ = ["dsm_https"]  # the server fixture, shared with the other sdkms-cli tests

ADMIN, ADMIN_PW = "admin@example.com", "s3cret-pass"
BOB, BOB_PW = "bob@example.com", "bob-s3cret-pass"


def xkslab(data_dir: Path, *args: str) -> str:
    """The CLI in this process (tests/cli_runner.py)."""
    proc = run_cli(["--data-dir", str(data_dir), *args])
    assert proc.returncode == 0, f"xkslab {args}: {proc.stdout} {proc.stderr}"
    return proc.stdout


class SdkmsCli:
    """The real sdkms-cli against the HTTPS DSM, with its own token file, and the REST API beside it."""

    def __init__(self, dsm_https: tuple[str, Path], tmp_path: Path) -> None:
        self.endpoint, self.ca, self.cwd = dsm_https[0], dsm_https[1], tmp_path
        self.env = {**os.environ, "SDKMS_CLI_TOKEN_FILE": str(tmp_path / "tokens"), "HOME": str(tmp_path)}
        self.env.pop("FORTANIX_API_KEY", None)
        self.env.pop("SDKMS_API_KEY", None)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [SDKMS_CLI, "--api-endpoint", self.endpoint, "--ssl-ca-cert", str(self.ca), *args],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.cwd,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )

    def cli(self, *args: str) -> str:
        proc = self.run(*args)
        assert proc.returncode == 0, f"sdkms-cli {args}: {proc.stdout} {proc.stderr}"
        return proc.stdout

    def api(self, who: tuple[str, str], method: str, path: str, body: object = None) -> requests.Response:
        ca = str(self.ca)
        auth = requests.post(f"{self.endpoint}/sys/v1/session/auth", auth=who, verify=ca, timeout=30)
        assert auth.status_code == 200, auth.text
        headers = {"Authorization": f"Bearer {auth.json()['access_token']}"}
        return requests.request(
            method, self.endpoint + path, json=body, headers=headers, verify=ca, timeout=30
        )


def test_quorum_with_sdkms_cli(dsm_https: tuple[str, Path], tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    sdkms = SdkmsCli(dsm_https, tmp_path)
    run, cli, api = sdkms.run, sdkms.cli, sdkms.api

    bob_id = json.loads(xkslab(data_dir, "user", "create", BOB, "--password", BOB_PW, "--json"))["user_id"]
    cli("user-login", "--username", ADMIN, "--password", ADMIN_PW)
    users = {
        email: uid for uid, email in (line.split() for line in cli("list-users").splitlines() if line.strip())
    }
    admin_id = users[ADMIN]
    assert users[BOB] == bob_id

    group_id = (
        cli(
            "create-group",
            "--name",
            "vault",
            "--add-quorum-policy",
            "--n",
            "2",
            "--users",
            f"{admin_id},{bob_id}",
        )
        .strip()
        .split()[-1]
    )
    policy = api((ADMIN, ADMIN_PW), "GET", f"/sys/v1/groups/{group_id}").json()["approval_policy"]
    assert policy["quorum"]["n"] == 2 and {"user": bob_id} in policy["quorum"]["members"]
    kid = (
        cli(
            "create-key",
            "--obj-type",
            "AES",
            "--key-size",
            "256",
            "--name",
            "qk",
            "--group-id",
            group_id,
            "--exportable",
            "-f",
        )
        .strip()
        .split()[-1]
    )

    # Called directly, the export and the delete are refused, and say why.
    refused = run("export-object", "--kid", kid)
    assert refused.returncode != 0 and "requires quorum approval" in refused.stdout + refused.stderr
    assert run("delete-key", "--kid", kid).returncode != 0

    out = cli("export-object", "--kid", kid, "--quorum")
    match = re.search(r"request_id: ([0-9a-f-]{36}) Status: PENDING", out)
    assert match, out
    rid = match.group(1)
    assert json.loads(cli("task-result", "--request-id", rid))["status"] == "PENDING"

    # The requester's own approval is one of the two.
    mine = api((ADMIN, ADMIN_PW), "POST", f"/sys/v1/approval_requests/{rid}/approve", {})
    assert mine.status_code == 200 and mine.json()["status"] == "PENDING"
    theirs = api((BOB, BOB_PW), "POST", f"/sys/v1/approval_requests/{rid}/approve", {})
    assert theirs.status_code == 200 and theirs.json()["status"] == "APPROVED"

    shown = cli("task-result", "--request-id", rid, "--out", str(tmp_path / "key.bin"))
    assert json.loads(shown)["status"] == 200
    value = (tmp_path / "key.bin").read_bytes()
    assert len(value) == 32
    assert base64.b64decode(json.loads(shown)["body"]["value"]) == value
    assert run("task-result", "--request-id", rid).returncode != 0  # runs once

    # update-object --quorum; denied by the administrator's CLI as bob: it never runs.
    out = cli("update-object", "--kid", kid, "--description", "changed", "--quorum")
    rid2 = re.search(r"request_id: ([0-9a-f-]{36})", out).group(1)  # type: ignore[union-attr]
    pending = xkslab(data_dir, "approval", "list", "--status", "PENDING")
    assert rid2 in pending and rid not in pending
    assert "PATCH" in xkslab(data_dir, "approval", "show", rid2)
    assert "DENIED" in xkslab(data_dir, "approval", "deny", rid2, "--as", BOB)
    assert json.loads(cli("task-result", "--request-id", rid2))["status"] == "DENIED"
    key = api((ADMIN, ADMIN_PW), "GET", f"/crypto/v1/keys/{kid}").json()
    assert key["description"] != "changed"

    # The same change approved from the administrator's command line, by both members: it runs.
    out = cli("update-object", "--kid", kid, "--description", "changed", "--quorum")
    rid3 = re.search(r"request_id: ([0-9a-f-]{36})", out).group(1)  # type: ignore[union-attr]
    assert "PENDING" in xkslab(data_dir, "approval", "approve", rid3)  # the administrator, by default
    assert "APPROVED" in xkslab(data_dir, "approval", "approve", rid3, "--as", BOB)
    assert json.loads(cli("task-result", "--request-id", rid3))["status"] == 200
    key = api((ADMIN, ADMIN_PW), "GET", f"/crypto/v1/keys/{kid}").json()
    assert key["description"] == "changed"


def test_wrap_and_unwrap_key_with_quorum_through_sdkms_cli(
    dsm_https: tuple[str, Path], tmp_path: Path
) -> None:
    """``wrap-key --quorum`` and ``unwrap-key --quorum``, each approved by the requester and a second user
    through the REST API and fetched with ``task-result``: the wrapped key lands in ``--out`` and unwraps
    into a key with the original's KCV; called without ``--quorum`` both are refused."""
    data_dir = tmp_path / "data"
    sdkms = SdkmsCli(dsm_https, tmp_path)
    run, cli, api = sdkms.run, sdkms.cli, sdkms.api

    def approved_by_both(out: str) -> str:
        match = re.search(r"request_id: ([0-9a-f-]{36}) Status: PENDING", out)
        assert match, out
        rid = match.group(1)
        mine = api((ADMIN, ADMIN_PW), "POST", f"/sys/v1/approval_requests/{rid}/approve", {})
        assert mine.status_code == 200 and mine.json()["status"] == "PENDING", mine.text
        theirs = api((BOB, BOB_PW), "POST", f"/sys/v1/approval_requests/{rid}/approve", {})
        assert theirs.status_code == 200 and theirs.json()["status"] == "APPROVED", theirs.text
        return rid

    bob_id = json.loads(xkslab(data_dir, "user", "create", BOB, "--password", BOB_PW, "--json"))["user_id"]
    cli("user-login", "--username", ADMIN, "--password", ADMIN_PW)
    users = {
        email: uid for uid, email in (line.split() for line in cli("list-users").splitlines() if line.strip())
    }
    admin_id = users[ADMIN]
    policy = {
        "quorum": {"n": 2, "members": [{"user": admin_id}, {"user": bob_id}]},
        "protect_crypto_operations": True,  # unwrap is a crypto operation; wrapping exports, so is held anyway
    }
    made = api((ADMIN, ADMIN_PW), "POST", "/sys/v1/groups", {"name": "wrapped", "approval_policy": policy})
    assert made.status_code == 200, made.text
    group_id = made.json()["group_id"]

    def create_key(name: str, *extra: str) -> str:
        args = [
            "create-key",
            "--obj-type",
            "AES",
            "--key-size",
            "256",
            "--name",
            name,
            "--group-id",
            group_id,
        ]
        return cli(*args, *extra).strip().split()[-1]

    kek = create_key("kek")
    subject = create_key("subject", "--exportable", "-f")
    wrapped = tmp_path / "wrapped.bin"
    wrap = ("wrap-key", "--wrapping-kid", kek, "--kid", subject, "--alg", "AES", "--mode", "KW")
    refused = run(*wrap, "--out", str(wrapped))
    assert refused.returncode != 0 and "requires quorum approval" in refused.stdout + refused.stderr
    assert not wrapped.exists()

    rid = approved_by_both(cli(*wrap, "--quorum"))
    shown = json.loads(cli("task-result", "--request-id", rid, "--out", str(wrapped)))
    assert shown["status"] == 200
    assert wrapped.read_bytes() == base64.b64decode(shown["body"]["wrapped_key"])
    assert len(wrapped.read_bytes()) == 40  # AES-256 under KW: the key and its 8-byte check block
    assert run("task-result", "--request-id", rid).returncode != 0  # runs once

    unwrap = ("unwrap-key", "--in", str(wrapped), "--wrapping-kid", kek, "--alg", "AES", "--mode", "KW")
    unwrap += ("--obj-type", "AES", "--name", "unwrapped")
    refused = run(*unwrap)
    assert refused.returncode != 0 and "requires quorum approval" in refused.stdout + refused.stderr
    rid = approved_by_both(cli(*unwrap, "--quorum"))
    shown = json.loads(cli("task-result", "--request-id", rid))
    assert shown["status"] == 200 and shown["body"]["name"] == "unwrapped"
    original = api((ADMIN, ADMIN_PW), "GET", f"/crypto/v1/keys/{subject}").json()
    copy = api((ADMIN, ADMIN_PW), "GET", f"/crypto/v1/keys/{shown['body']['kid']}").json()
    assert copy["kcv"] == original["kcv"]  # the same key material, in the requester's default group
