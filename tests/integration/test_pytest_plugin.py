"""The pytest plugin as a user's suite meets it: pytest in a subprocess on a suite that uses only the
fixtures (fault helpers included), with the lab in child processes (`xkslab up`) or in the test process, on SQLite or on a fresh
PostgreSQL database; the example project on two xdist workers, one lab each; and the entry point, which
must not make the plugin load twice when a suite also names it."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests import deadlines
from tests.conftest import PG_ADMIN_DSN, pg_url
from tests.net import refused as port_refused

ROOT = Path(__file__).resolve().parents[2]

# A user's suite: only the plugin's fixtures. It writes what it saw to $LAB_SEEN for the checks after
# the run, when the lab must be gone.
SUITE = """
import json
import os
from pathlib import Path

import sdkms.v1 as sdk
from sdkms.v1.rest import ApiException

made = {}


def test_lab(xkslab_lab):
    lab = xkslab_lab
    assert lab.in_process == (os.environ["EXPECT_MODE"] == "in-process")
    assert (lab.data["pid"] == os.getpid()) == lab.in_process
    assert json.loads((lab.data_dir / "up.json").read_text()) == lab.data
    store = lab.kms.describe_custom_key_stores(CustomKeyStoreId=lab.custom_key_store_id)["CustomKeyStores"][0]
    assert store["ConnectionState"] == "CONNECTED"
    proxy = store["XksProxyConfiguration"]
    assert proxy["UriEndpoint"] + proxy["UriPath"] == lab.xks_uri
    assert (proxy["AccessKeyId"], lab.xks_uri_path) == (lab.xks_credential[0], lab.data["xks"]["uri_path"])
    assert lab.ca_file.read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert lab.settings.database_url.startswith(os.environ["EXPECT_DB"])
    blob = lab.kms.encrypt(KeyId=lab.key_id, Plaintext=b"lab key")["CiphertextBlob"]
    assert lab.kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"lab key"
    groups = sdk.GroupsApi(api_client=lab.sdkms_admin).get_groups()
    assert lab.data["dsm"]["group_id"] in [group.group_id for group in groups]
    seen = {"data_dir": str(lab.data_dir), "database_url": lab.settings.database_url, **lab.data}
    Path(os.environ["LAB_SEEN"]).write_text(json.dumps(seen))


def test_kms_key(xkslab_lab, xkslab_kms_key):
    key = xkslab_lab.kms.describe_key(KeyId=xkslab_kms_key)["KeyMetadata"]
    assert (key["Origin"], key["CustomKeyStoreId"]) == ("EXTERNAL_KEY_STORE", xkslab_lab.custom_key_store_id)
    assert xkslab_kms_key != xkslab_lab.key_id
    blob = xkslab_lab.kms.encrypt(KeyId=xkslab_kms_key, Plaintext=b"fresh key")["CiphertextBlob"]
    assert xkslab_lab.kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"fresh key"
    made["kms"] = xkslab_kms_key


def test_dsm_key(xkslab_lab, xkslab_dsm_key):
    crypto = sdk.EncryptionAndDecryptionApi(api_client=xkslab_lab.sdkms)
    plain = bytearray(b"dsm key")
    enc = crypto.encrypt(xkslab_dsm_key, sdk.EncryptRequest(alg="AES", plain=plain, mode="CBC"))
    dec = crypto.decrypt(xkslab_dsm_key, sdk.DecryptRequest(alg="AES", cipher=enc.cipher, mode="CBC", iv=enc.iv))
    assert bytes(dec.plain) == bytes(plain)
    made["dsm"] = xkslab_dsm_key


def test_fresh_keys_are_cleaned_up_after_their_test(xkslab_lab, xkslab_kms_key, xkslab_dsm_key):
    assert xkslab_kms_key != made["kms"] and xkslab_dsm_key != made["dsm"]
    state = xkslab_lab.kms.describe_key(KeyId=made["kms"])["KeyMetadata"]["KeyState"]
    assert state == "PendingDeletion"
    try:
        sdk.SecurityObjectsApi(api_client=xkslab_lab.sdkms).get_security_object(made["dsm"])
    except ApiException as exc:
        assert exc.status == 404
    else:
        raise AssertionError("the DSM key outlived its test")
"""

# The fault helpers, in the same session: a fault for a block, then for a whole test (the fixture), and
# tests that fail with faults set; none may reach the test after it.
FAULT_SUITE = """
import pytest
from botocore.exceptions import ClientError

KEY_NOT_FOUND = {"error_name": "KeyNotFoundException", "kms_operation": "Encrypt"}


def refused(call):
    with pytest.raises(ClientError) as caught:
        call()
    error = caught.value.response["Error"]
    return error["Code"], error["Message"]


def ids(lab):
    return [fault["id"] for fault in lab.faults_client().list_faults()]


def test_a_fault_for_a_block(xkslab_lab, xkslab_kms_key):
    kms, admin = xkslab_lab.kms, xkslab_lab.faults_client()
    blob = kms.encrypt(KeyId=xkslab_kms_key, Plaintext=b"before")["CiphertextBlob"]
    [other] = admin.add([{"kind": "drop", "start_s": 3600}])  # someone else's: not the block's to clear
    with xkslab_lab.fault("error", **KEY_NOT_FOUND) as fault_id:
        code, message = refused(lambda: kms.encrypt(KeyId=xkslab_kms_key, Plaintext=b"during"))
        assert code == "KMSInvalidStateException" and "could not find the external key" in message
        assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"before"  # kms_operation=Encrypt only
        assert ids(xkslab_lab) == [other, fault_id]
    assert kms.encrypt(KeyId=xkslab_kms_key, Plaintext=b"after")["CiphertextBlob"]
    assert ids(xkslab_lab) == [other]
    assert admin.clear(other) == 1


def test_the_fixture(xkslab_lab, xkslab_kms_key, xkslab_fault):
    kms = xkslab_lab.kms
    first = xkslab_fault("error", **KEY_NOT_FOUND)
    second = xkslab_fault("throttle", operation="Decrypt", count=1)
    assert ids(xkslab_lab) == [first, second]
    code, message = refused(lambda: kms.encrypt(KeyId=xkslab_kms_key, Plaintext=b"x"))
    assert code == "KMSInvalidStateException" and "could not find the external key" in message
    with pytest.raises(ValueError, match="error_name"):  # checked before anything is sent
        xkslab_fault("error", error_name="NoSuchError")
    assert ids(xkslab_lab) == [first, second]


def test_no_fault_outlived_the_fixture(xkslab_lab, xkslab_kms_key):
    assert ids(xkslab_lab) == []
    assert xkslab_lab.kms.encrypt(KeyId=xkslab_kms_key, Plaintext=b"x")["CiphertextBlob"]


@pytest.mark.xfail(strict=True, raises=ClientError, reason="fails with faults set, on purpose")
def test_failing_with_faults_set(xkslab_lab, xkslab_kms_key, xkslab_fault):
    xkslab_fault("drop", operation="Encrypt")
    with xkslab_lab.fault("error", **KEY_NOT_FOUND):
        xkslab_lab.kms.encrypt(KeyId=xkslab_kms_key, Plaintext=b"x")


def test_no_fault_outlived_the_failed_test(xkslab_lab, xkslab_kms_key):
    assert ids(xkslab_lab) == []
    assert xkslab_lab.kms.encrypt(KeyId=xkslab_kms_key, Plaintext=b"x")["CiphertextBlob"]
"""


def run_pytest(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 420) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=cwd,
        # The labs the inner suites start get generous deadlines (tests/deadlines.py) unless a test says.
        env={**os.environ, **deadlines.environ(), **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    return proc.stdout


def gone(pid: int) -> bool:
    try:
        return "zombie" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


def check_nothing_left(seen: dict[str, Any]) -> None:
    assert not (Path(seen["data_dir"]) / "up.json").exists()
    for url in (seen["dsm"]["url"], seen["xks"]["url"], seen["kms"]["endpoint_url"]):
        assert port_refused(url), url
    if seen["pid"] != os.getpid():
        assert all(gone(pid) for pid in (seen["pid"], *seen["service_pids"].values()))


async def database_exists(name: str) -> bool:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        return bool(await conn.fetchval("SELECT count(*) FROM pg_database WHERE datname = $1", name))
    finally:
        await conn.close()


def write_suite(tmp_path: Path) -> Path:
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_with_lab.py").write_text(textwrap.dedent(SUITE))
    (suite / "test_with_faults.py").write_text(textwrap.dedent(FAULT_SUITE))
    return suite


def test_in_process_lab_on_sqlite(tmp_path: Path) -> None:
    suite, seen_file = write_suite(tmp_path), tmp_path / "seen.json"
    env = {"LAB_SEEN": str(seen_file), "EXPECT_MODE": "in-process", "EXPECT_DB": "sqlite+aiosqlite:///"}
    out = run_pytest(["-p", "xkslab.pytest_plugin", "--xkslab-in-process", "-q", str(suite)], tmp_path, env)
    assert "8 passed, 1 xfailed" in out and "unclosed" not in out
    seen = json.loads(seen_file.read_text())
    assert seen["service_pids"] == {"dsm": seen["pid"], "xks": seen["pid"], "kms": seen["pid"]}
    check_nothing_left(seen)


@pytest.mark.postgres
def test_lab_processes_on_a_fresh_postgres_database(tmp_path: Path) -> None:
    suite, seen_file = write_suite(tmp_path), tmp_path / "seen.json"
    server = pg_url("postgres")
    env = {"LAB_SEEN": str(seen_file), "EXPECT_MODE": "processes", "EXPECT_DB": "postgresql+asyncpg://"}
    args = ["-p", "xkslab.pytest_plugin", "--xkslab-database-url", server, "-q", str(suite)]
    out = run_pytest(args, tmp_path, env)
    assert "8 passed, 1 xfailed" in out
    seen = json.loads(seen_file.read_text())
    assert len({seen["pid"], *seen["service_pids"].values()}) == 4
    database = seen["database_url"].rsplit("/", 1)[1]
    assert database.startswith("xkslab_main_")
    check_nothing_left(seen)
    assert not asyncio.run(database_exists(database))  # dropped at the end of the session


def test_example_project_on_two_workers_gets_two_labs(tmp_path: Path) -> None:
    """The example project's own suite, as its README runs it, on two xdist workers."""
    records = tmp_path / "records"
    args = ["-n", "2", "examples/envelope-app/tests", "-p", "xkslab.pytest_plugin", "-q"]
    out = run_pytest(args, ROOT, {"ENVELOPE_APP_LAB_RECORDS": str(records)})
    assert "8 passed" in out
    labs = [json.loads(path.read_text()) for path in sorted(records.glob("lab-*.json"))]
    assert [lab["worker"] for lab in labs] == ["gw0", "gw1"]
    assert len({lab["kms_endpoint"] for lab in labs}) == 2 and len({lab["data_dir"] for lab in labs}) == 2
    assert all(gone(pid) for lab in labs for pid in lab["pids"])
    assert all(port_refused(lab["kms_endpoint"]) for lab in labs)


def test_the_entry_point_and_an_explicit_name_load_the_plugin_once(tmp_path: Path) -> None:
    """Installed, the plugin comes from its pytest11 entry point; a suite that also names it (``-p``,
    ``pytest_plugins``) must not have it registered twice. The entry point is the one pyproject.toml
    declares, installed here as a bare .dist-info on PYTHONPATH."""
    entry_points = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["pytest11"]
    assert list(entry_points.values()) == ["xkslab.pytest_plugin"]
    dist = tmp_path / "site" / "xkslab_plugin_check-0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: xkslab-plugin-check\nVersion: 0\n")
    (dist / "entry_points.txt").write_text(
        "[pytest11]\n" + "".join(f"{name} = {value}\n" for name, value in entry_points.items())
    )
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "conftest.py").write_text('pytest_plugins = ["xkslab.pytest_plugin"]\n')
    (suite / "test_loaded.py").write_text(
        "import xkslab.pytest_plugin\n\n\n"
        "def test_loaded(request):\n"
        "    manager = request.config.pluginmanager\n"
        "    names = [name for name, p in manager.list_name_plugin() if p is xkslab.pytest_plugin]\n"
        "    assert names == ['xkslab.pytest_plugin']\n"
    )
    path = os.pathsep.join(filter(None, [str(dist.parent), os.environ.get("PYTHONPATH")]))
    for extra in ([], ["-p", "xkslab.pytest_plugin"]):
        out = run_pytest([*extra, "-q", str(suite)], tmp_path, {"PYTHONPATH": path})
        assert "1 passed" in out


def requirement_closure(name: str, extras: set[str]) -> set[str]:
    """The normalized names of the installed distributions that installing ``name[extras]`` brings."""
    seen: set[str] = set()
    todo = [(name, extras)]
    while todo:
        dist_name, wanted = todo.pop()
        dist = importlib.metadata.distribution(dist_name)
        key = canonicalize_name(dist.metadata["Name"])
        if key in seen and not wanted:
            continue
        seen.add(key)
        for line in dist.requires or []:
            req = Requirement(line)
            environments = [{"extra": extra} for extra in wanted] or [{"extra": ""}]
            if req.marker is None or any(req.marker.evaluate(env) for env in environments):
                todo.append((req.name, set(req.extras)))
    return seen


def test_a_project_that_turns_warnings_into_errors_starts_with_only_xkslab_pytest(tmp_path: Path) -> None:
    """A user's project whose pytest settings are only ``filterwarnings = ["error"]``, with what
    ``xkslab[pytest]`` brings: every pytest plugin installed here that the extra does not bring is
    blocked, as it would be absent. pytest-asyncio is one of them: xkslab's fixtures do not need it, and
    where it is installed it warns at start-up about a setting of its own (README: In your test suite)."""
    brought = requirement_closure("xkslab", {"pytest"})
    assert {"pytest", "sdkms"} <= brought and "pytest-asyncio" not in brought
    blocked = sorted(
        entry.name
        for entry in importlib.metadata.entry_points(group="pytest11")
        if entry.dist is not None and canonicalize_name(entry.dist.metadata["Name"]) not in brought
    )
    assert "asyncio" in blocked
    project = tmp_path / "project"
    (project / "tests").mkdir(parents=True)
    (project / "pyproject.toml").write_text('[tool.pytest.ini_options]\nfilterwarnings = ["error"]\n')
    (project / "tests" / "test_key.py").write_text(
        "def test_key(xkslab_lab, xkslab_kms_key):\n"
        "    blob = xkslab_lab.kms.encrypt(KeyId=xkslab_kms_key, Plaintext=b'hi')['CiphertextBlob']\n"
        "    assert xkslab_lab.kms.decrypt(CiphertextBlob=blob)['Plaintext'] == b'hi'\n"
    )
    blocks = [arg for name in blocked for arg in ("-p", f"no:{name}")]
    out = run_pytest([*blocks, "--xkslab-in-process", "-q"], project, {})
    assert "1 passed" in out and "warning" not in out.lower()
