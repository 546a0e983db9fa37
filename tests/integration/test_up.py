"""`xkslab up` as a user runs it: a subprocess on an empty data directory, the settings file it writes,
`xkslab demo` against it, SIGINT, and a second start that keeps every key."""

from __future__ import annotations

import base64
import json
import os
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests import deadlines

PORTS = ("dsm.port", "dsm.https_port", "xks.port", "xks.https_port", "kms.port")


def start_up(
    data_dir: Path, log: Path, *, before: bool = True, extra: list[str] | None = None
) -> subprocess.Popen[bytes]:
    """On free ports: every port setting 0, the ports really bound are in up.json. The global options go
    before the subcommand, or after it when ``before`` is false."""
    flags = [
        "--data-dir", str(data_dir), *(arg for name in PORTS for arg in ("--set", f"{name}=0")),
        *deadlines.set_args(),
    ]  # fmt: skip
    args = [*flags, "up", *(extra or [])] if before else ["up", *flags, *(extra or [])]
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "xkslab", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wait_for_settings(
    proc: subprocess.Popen[bytes], path: Path, log: Path, timeout: float = 90
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"xkslab up exited early ({proc.returncode}):\n{log.read_text()}")
        if path.exists():
            data = json.loads(path.read_text())
            if "kms" in data and "Ctrl-C" in log.read_text():
                return data
        time.sleep(0.2)
    raise AssertionError(f"xkslab up did not finish starting:\n{log.read_text()}")


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def kms_client(data: dict[str, Any]) -> Any:
    env = data["aws_env"]
    return boto3.client(
        "kms",
        endpoint_url=env["AWS_ENDPOINT_URL_KMS"],
        region_name=env["AWS_DEFAULT_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )


@pytest.fixture
def lab_dir(tmp_path: Path) -> Path:
    return tmp_path / "lab"


def test_up_demo_sigint_and_restart(lab_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "up.log"
    proc = start_up(lab_dir, log)
    try:
        data = wait_for_settings(proc, lab_dir / "up.json", log)
        assert stat.S_IMODE((lab_dir / "up.json").stat().st_mode) == 0o600
        assert f"kms: listening on {data['kms']['endpoint_url']}" in log.read_text()
        assert not data["kms"]["endpoint_url"].endswith(":0")
        # Each service runs in its own process, under up.
        assert sorted(data["service_pids"]) == ["dsm", "kms", "xks"]
        assert len({data["pid"], *data["service_pids"].values()}) == 4
        assert datetime.fromisoformat(data["ready"]).tzinfo is not None  # when the lab became ready
        # A second key manager on this (SQLite) data directory is refused, naming the one that serves it.
        free = ["--set", "dsm.port=0", "--set", "dsm.https_port=0"]
        second = subprocess.run(
            [sys.executable, "-m", "xkslab", "--data-dir", str(lab_dir), *free, "dsm", "serve"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 1, second.stderr
        assert len(second.stderr.strip().splitlines()) == 1, second.stderr
        assert f"pid {data['service_pids']['dsm']}" in second.stderr
        assert data["xks"]["uri_path"] == f"/crypto/v1/apps/{data['xks']['app_id']}/aws/kms/xks/v1"
        assert data["dsm"]["admin_password"] and data["dsm"]["api_key"]
        printed = log.read_text()
        for value in (data["kms"]["key_id"], data["xks"]["access_key_id"], "export AWS_ENDPOINT_URL_KMS="):
            assert value in printed

        kms = kms_client(data)
        key = kms.describe_key(KeyId=data["kms"]["alias"])["KeyMetadata"]
        assert (key["Origin"], key["KeyState"], key["XksKeyConfiguration"]["Id"]) == (
            "EXTERNAL_KEY_STORE",
            "Enabled",
            data["dsm"]["root_kek_id"],
        )
        store = kms.describe_custom_key_stores(CustomKeyStoreId=data["kms"]["custom_key_store_id"])
        assert store["CustomKeyStores"][0]["ConnectionState"] == "CONNECTED"
        kept = kms.encrypt(KeyId=data["kms"]["alias"], Plaintext=b"kept across restarts")["CiphertextBlob"]

        demo = subprocess.run(
            [sys.executable, "-m", "xkslab", "--data-dir", str(lab_dir), "demo", "--json"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert demo.returncode == 0, demo.stderr
        result = json.loads(demo.stdout)
        generate_id, decrypt_id = result["request_ids"]
        rows = {row["client_provided_context"]["kmsRequestId"]: row for row in result["audit_rows"]}
        assert set(rows) == {generate_id, decrypt_id}
        assert rows[generate_id]["client_provided_context"]["kmsOperation"] == "GenerateDataKey"
        assert rows[decrypt_id]["client_provided_context"]["kmsOperation"] == "Decrypt"
        assert all(row["object_id"] == data["dsm"]["root_kek_id"] for row in rows.values())
        flow = [row["client_provided_context"]["kmsOperation"] for row in result["audit_rows"]]
        assert flow == ["GenerateDataKey", "Decrypt"]  # printed in the order the flow ran
        assert Path(result["encrypted"]).read_bytes() != Path(result["file"]).read_bytes()
    finally:
        code = stop(proc)
    assert code == 0, log.read_text()
    assert "Traceback" not in log.read_text()
    # Each stop is named (it used to be "stopping" four times, naming no service).
    stops = [line.split(" ", 2)[-1] for line in log.read_text().splitlines() if line.endswith("stopped")]
    assert sorted(stops) == ["dsm: stopped", "kms: stopped", "lab: stopped", "xks: stopped"], stops
    assert not (lab_dir / "up.json").exists()  # up.json means a ready lab, and this one has stopped
    for pid in data["service_pids"].values():
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()

    # A second start reuses the data directory: same key store, same key, and old ciphertexts decrypt,
    # although every port (the proxy's too) is a new one: the key store follows the proxy.
    log2 = tmp_path / "up2.log"
    proc = start_up(lab_dir, log2)
    try:
        again = wait_for_settings(proc, lab_dir / "up.json", log2)
        for section, field in (("kms", "key_id"), ("kms", "custom_key_store_id"), ("dsm", "root_kek_id")):
            assert again[section][field] == data[section][field]
        assert again["dsm"]["admin_password"] == data["dsm"]["admin_password"]
        kms = kms_client(again)
        assert kms.decrypt(CiphertextBlob=kept)["Plaintext"] == b"kept across restarts"
        assert [k["KeyId"] for k in kms.list_keys()["Keys"]] == [data["kms"]["key_id"]]
        stores = kms.describe_custom_key_stores()["CustomKeyStores"]
        assert [s["XksProxyConfiguration"]["UriEndpoint"] for s in stores] == [
            again["xks"]["https_url"].replace("127.0.0.1", "localhost")
        ]

        # A second lab on the same data directory is refused while this one runs, and changes nothing.
        second = subprocess.run(
            [sys.executable, "-m", "xkslab", "--data-dir", str(lab_dir), "--set", "kms.port=0", "up"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 1 and len(second.stderr.strip().splitlines()) == 1, second.stderr
        assert f"another xkslab up (pid {proc.pid})" in second.stderr and "Traceback" not in second.stderr
        assert json.loads((lab_dir / "up.json").read_text()) == again

        # Administrative commands in a second terminal beside the running lab (issue 11 #1): they work,
        # the lab's next requests do not fail, and the audit chain stays whole.
        for command in (["key", "create", "beside-up"], ["key", "disable", "beside-up"]):
            done = subprocess.run(
                [sys.executable, "-m", "xkslab", "--data-dir", str(lab_dir), *command],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 0, done.stderr
            data_key = kms.generate_data_key(KeyId=again["kms"]["alias"], KeySpec="AES_256")
            assert (
                kms.decrypt(CiphertextBlob=data_key["CiphertextBlob"])["Plaintext"] == data_key["Plaintext"]
            )
        verify = subprocess.run(
            [sys.executable, "-m", "xkslab", "--data-dir", str(lab_dir), "audit", "verify"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert verify.returncode == 0, verify.stdout + verify.stderr
    finally:
        assert stop(proc) == 0, log2.read_text()


def test_demo_without_a_running_lab_says_what_to_do(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "xkslab", "--data-dir", str(tmp_path / "none"), "demo"],
        capture_output=True,
        text=True,
        env={**os.environ, "XKSLAB_DATA_DIR": ""},
        timeout=60,
    )
    assert proc.returncode == 1
    assert "start `xkslab up` first" in proc.stderr and "Traceback" not in proc.stderr


def dsm_login(url: str, email: str, password: str) -> int:
    """The status of a password login on the lab's DSM."""
    basic = base64.b64encode(f"{email}:{password}".encode()).decode()
    request = urllib.request.Request(
        f"{url}/sys/v1/session/auth", method="POST", headers={"Authorization": f"Basic {basic}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:  # a hang guard, not a budget
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_admin_password_on_an_existing_data_dir_changes_it(
    lab_dir: Path, tmp_path: Path, empty_db_url: str
) -> None:
    """Issue 11, item 4. On SQLite the data directory is made by a first `up` (generated password); on
    PostgreSQL by `xkslab init` (a password up never saw). Either way `up --admin-password P` then makes P
    the password (and the old one stops working), keeps it in admin.password (0600), and audits it."""
    if empty_db_url.startswith("sqlite"):
        proc = start_up(lab_dir, tmp_path / "first.log")
        try:
            old = wait_for_settings(proc, lab_dir / "up.json", tmp_path / "first.log")["dsm"][
                "admin_password"
            ]
        finally:
            assert stop(proc) == 0
    else:
        old = "the password init was given"
        args = ["init", "--data-dir", str(lab_dir), "--database-url", empty_db_url, "--admin-password", old]
        init = subprocess.run(
            [sys.executable, "-m", "xkslab", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert init.returncode == 0, init.stderr
    new = "a new password, chosen by the user"
    log = tmp_path / "second.log"
    # --data-dir and --set after the subcommand (item 13), as the README shows them.
    proc = start_up(lab_dir, log, before=False, extra=["--admin-password", new])
    try:
        data = wait_for_settings(proc, lab_dir / "up.json", log)
        assert data["dsm"]["admin_password"] == new and new in log.read_text()
        url, email = data["dsm"]["url"], data["dsm"]["admin_email"]
        assert dsm_login(url, email, new) == 200
        assert dsm_login(url, email, old) == 401
    finally:
        assert stop(proc) == 0, log.read_text()
    saved = lab_dir / "admin.password"
    assert saved.read_text().strip() == new and stat.S_IMODE(saved.stat().st_mode) == 0o600
    audit = subprocess.run(
        [sys.executable, "-m", "xkslab", "audit", "tail", "-n", "1000", "--json", "--data-dir", str(lab_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert audit.returncode == 0, audit.stderr
    changes = [r for r in json.loads(audit.stdout) if r["operation"] == "user.password"]
    assert [(r["outcome"], r["actor_type"]) for r in changes] == [("success", "System")]
    assert new not in audit.stdout and old not in audit.stdout

    # Giving the password that already works again changes nothing (and audits nothing).
    log = tmp_path / "third.log"
    proc = start_up(lab_dir, log, extra=["--admin-password", new])
    try:
        data = wait_for_settings(proc, lab_dir / "up.json", log)
        assert data["dsm"]["admin_password"] == new
        assert dsm_login(data["dsm"]["url"], data["dsm"]["admin_email"], new) == 200
    finally:
        assert stop(proc) == 0, log.read_text()
    again = subprocess.run(
        [sys.executable, "-m", "xkslab", "--data-dir", str(lab_dir), "audit", "tail", "-n", "1000", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert [r["operation"] for r in json.loads(again.stdout)].count("user.password") == 1
