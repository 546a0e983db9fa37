"""The fleet as issue 23's Done-when asks: ``xkslab up --fleet 2,2`` (two DSM nodes, two proxies, one
PostgreSQL database, HAProxy in front of both tiers, the KMS on the proxies' balancer), a bounded mixed
load through the balancer (boto3 against the KMS: Encrypt, Decrypt, GenerateDataKey), a key disabled
through node 1 refused by node 2 within a second, node 1 killed with SIGKILL while the load runs: the load
goes on, no acknowledged operation is lost (every ciphertext the fleet gave decrypts afterwards), the
proxies' health turns DEGRADED (one ekmFleetDetails entry UNAVAILABLE, one ACTIVE), the killed node
stops being live in the node registry, and every audit chain verifies.

Everything is real: HAProxy from Debian, the services as processes, PostgreSQL, boto3, HTTP on loopback."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from tests import deadlines
from tests.conftest import PG_ADMIN_DSN
from tests.fleet import REPO
from tests.xks_harness import metadata, sign
from xkslab.lab.info import LabInfo
from xkslab.lab.process import fresh_database, lab_process

FLEET_SETTINGS = {
    **deadlines.GENEROUS,
    "fleet.heartbeat_s": "0.5",
    "fleet.node_timeout_s": "2",
    # The poll is far slower than the second a disable must take to reach every node: NOTIFY does it.
    "database.cache_poll_ms": "5000",
}
LOAD_THREADS = 3
MAX_OPS_PER_THREAD = 400  # the load's bound; it normally stops well before, when the test has seen enough


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[LabInfo]:
    server = PG_ADMIN_DSN.replace("postgresql://", "postgresql+asyncpg://", 1)
    with (
        fresh_database(server, "fleet") as url,
        lab_process(
            tmp_path / "lab", {**FLEET_SETTINGS, "database.url": url}, up_args=["--fleet", "2,2"]
        ) as lab,
    ):
        yield lab


@dataclass
class Load:
    """Mixed KMS traffic from a few threads until ``stop`` or the bound: every acknowledged result kept."""

    kms: Any
    key_id: str
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    acknowledged: list[tuple[bytes, bytes, float]] = field(default_factory=list)  # plaintext, blob, when
    failures: list[tuple[str, float]] = field(default_factory=list)

    def successes_since(self, moment: float) -> int:
        with self.lock:
            return sum(1 for _, _, when in self.acknowledged if when > moment)

    def run(self, index: int) -> None:
        for n in range(MAX_OPS_PER_THREAD):
            if self.stop.is_set():
                return
            plaintext = f"thread {index} op {n}".encode()
            try:
                if n % 3 == 0:
                    blob = self.kms.encrypt(KeyId=self.key_id, Plaintext=plaintext)["CiphertextBlob"]
                elif n % 3 == 1:
                    blob = self.kms.encrypt(KeyId=self.key_id, Plaintext=plaintext)["CiphertextBlob"]
                    assert self.kms.decrypt(CiphertextBlob=blob)["Plaintext"] == plaintext
                else:
                    answer = self.kms.generate_data_key(KeyId=self.key_id, KeySpec="AES_256")
                    plaintext, blob = answer["Plaintext"], answer["CiphertextBlob"]
            except (ClientError, BotoCoreError) as exc:
                with self.lock:
                    self.failures.append((type(exc).__name__ + ": " + str(exc)[:200], time.monotonic()))
                continue
            with self.lock:
                self.acknowledged.append((plaintext, blob, time.monotonic()))


def until(predicate: Any, what: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.1)


def xks_health(lab: LabInfo) -> dict[str, Any]:
    """The XKS GetHealthStatus through the proxies' balancer (plain HTTP), signed as KMS signs it."""
    xks = lab.data["xks"]
    url = f"{xks['url']}{xks['uri_path']}/health"
    body = json.dumps({"requestMetadata": metadata("KmsHealthCheck")}).encode()
    headers = sign(url, body, xks["access_key_id"], xks["secret_access_key"])
    answer = requests.post(url, data=body, headers=headers, timeout=60)
    assert answer.status_code == 200, answer.text
    health: dict[str, Any] = answer.json()
    return health


def xkslab(lab: LabInfo, *args: str) -> subprocess.CompletedProcess[str]:
    database = f"database.url={lab.settings.database.url}"  # given to up with --set, not in its file
    return subprocess.run(
        [sys.executable, "-m", "xkslab", "--data-dir", str(lab.data_dir), "--set", database, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=300,
    )


def test_a_fleet_behind_haproxy_survives_a_killed_node_and_loses_nothing(fleet: LabInfo) -> None:
    lab = fleet.data
    nodes = lab["fleet"]["dsm_nodes"]
    assert set(nodes) == {"dsm-1", "dsm-2"} and set(lab["fleet"]["proxies"]) == {"xks-1", "xks-2"}
    assert set(lab["service_pids"]) >= {"dsm-1", "dsm-2", "xks-1", "xks-2", "haproxy", "kms"}
    config = (fleet.data_dir / "haproxy.cfg").read_text().splitlines()
    assert sum(line.startswith("    server ") for line in config) == 8  # 2 nodes x 2 tiers x HTTP, HTTPS

    # The DSM tier's balancer serves the REST API; each node is also reachable on its own.
    app = {"Authorization": f"Basic {lab['dsm']['api_key']}"}
    assert requests.get(lab["dsm"]["url"] + "/sys/v1/version", timeout=60).status_code == 200
    health = xks_health(fleet)  # any proxy: both are live in the registry, and both DSM nodes answer
    assert health["xksProxyFleetSize"] == 2
    assert sorted(d["healthStatus"] for d in health["ekmFleetDetails"]) == ["ACTIVE", "ACTIVE"]

    kms = boto3.client(
        "kms",
        endpoint_url=lab["kms"]["endpoint_url"],
        region_name=lab["kms"]["region"],
        aws_access_key_id=lab["aws_env"]["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=lab["aws_env"]["AWS_SECRET_ACCESS_KEY"],
        config=Config(retries={"max_attempts": 1}, read_timeout=60, connect_timeout=10),
    )
    load = Load(kms, lab["kms"]["key_id"])
    threads = [threading.Thread(target=load.run, args=(i,), daemon=True) for i in range(LOAD_THREADS)]
    for thread in threads:
        thread.start()
    try:
        until(lambda: load.successes_since(0) >= 15, "the load under way through the balancer")

        # A key disabled through node 1 is refused by node 2 within a second (NOTIFY; the poll is 5 s).
        node1, node2 = nodes["dsm-1"][0], nodes["dsm-2"][0]
        created = requests.post(
            node1 + "/crypto/v1/keys",
            headers=app,
            json={
                "name": "fleet-probe",
                "obj_type": "AES",
                "key_size": 256,
                "key_ops": ["ENCRYPT", "DECRYPT", "APPMANAGEABLE"],
            },
            timeout=60,
        )
        assert created.status_code in (200, 201), created.text
        kid = created.json()["kid"]
        body = {
            "key": {"kid": kid},
            "alg": "AES",
            "mode": "GCM",
            "plain": base64.b64encode(b"probe").decode(),
        }
        for _ in range(3):  # node 2 serves it from its cache from now on
            assert (
                requests.post(node2 + "/crypto/v1/encrypt", headers=app, json=body, timeout=60).status_code
                == 200
            )
        disabled = requests.patch(
            node1 + f"/crypto/v1/keys/{kid}", headers=app, json={"enabled": False}, timeout=60
        )
        assert disabled.status_code == 200 and disabled.json()["enabled"] is False
        committed = time.monotonic()
        while (
            refusal := requests.post(node2 + "/crypto/v1/encrypt", headers=app, json=body, timeout=60)
        ).status_code == 200:
            assert time.monotonic() - committed < 30, "node 2 never refused the key disabled through node 1"
        delay = time.monotonic() - committed
        assert refusal.status_code == 400 and "disabled" in refusal.json()["message"]
        assert delay < 1.0, f"node 2 refused the disabled key {delay:.3f} s after node 1 committed"

        # SIGKILL node 1 while the load runs: the load goes on through node 2.
        os.kill(lab["service_pids"]["dsm-1"], signal.SIGKILL)
        killed = time.monotonic()
        until(lambda: load.successes_since(killed) >= 30, "the load going on after node 1 was killed")

        # The proxies' health: node 1 UNAVAILABLE, node 2 ACTIVE, which KMS reads as DEGRADED.
        def degraded() -> bool:
            details = xks_health(fleet)["ekmFleetDetails"]
            return sorted(d["healthStatus"] for d in details) == ["ACTIVE", "UNAVAILABLE"]

        until(degraded, "the proxies' health DEGRADED: one key manager UNAVAILABLE, one ACTIVE")

        # Node 1's heartbeat has stopped: the registry (read through node 2) no longer counts it live.
        def node1_not_live() -> bool:
            admin = requests.post(
                node2 + "/sys/v1/session/auth",
                auth=(lab["dsm"]["admin_email"], lab["dsm"]["admin_password"]),
                timeout=60,
            ).json()["access_token"]
            bearer = {"Authorization": f"Bearer {admin}"}
            (acct_id,) = requests.get(node2 + "/sys/v1/users/accounts", headers=bearer, timeout=60).json()
            requests.post(
                node2 + "/sys/v1/session/select_account",
                headers=bearer,
                json={"acct_id": acct_id},
                timeout=60,
            )
            rows = {
                n["id"]: n
                for n in requests.get(node2 + "/sys/v1/nodes", headers=bearer, timeout=60).json()["nodes"]
            }
            return not rows["dsm-1"]["live"] and rows["dsm-2"]["live"] and rows["xks-1"]["live"]

        until(node1_not_live, "node 1 not live in the registry once its heartbeat stopped")
    finally:
        load.stop.set()
        for thread in threads:
            thread.join(300)

    # No acknowledged operation lost: every ciphertext the fleet gave (before, during and after the kill)
    # decrypts now, through the fleet that is left.
    with load.lock:
        acknowledged = list(load.acknowledged)
        failures = list(load.failures)
    assert len(acknowledged) >= 45
    for plaintext, blob, _ in acknowledged:
        assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == plaintext
    # Failed calls were never acknowledged, so none is lost. There should be none at all (HAProxy and the
    # proxies fail over to node 2 within the call's deadline); a stalled machine may fail a call in
    # flight at the kill, but none away from it.
    assert len(failures) <= 3 and all(abs(when - killed) < 5 for _, when in failures), failures
    print(
        f"fleet load: {len(acknowledged)} acknowledged, {len(failures)} failed; disable seen by node 2 in {delay:.3f} s"
    )

    # Every audit chain verifies, node 1's (killed mid-load) included, and both nodes wrote theirs.
    verified = xkslab(fleet, "audit", "verify", "--json")
    assert verified.returncode == 0 and json.loads(verified.stdout)["ok"] is True, (
        verified.stdout + verified.stderr
    )
    exported = xkslab(fleet, "audit", "export")
    assert exported.returncode == 0, exported.stderr
    chains = {json.loads(line)["chain"] for line in exported.stdout.splitlines() if line.strip()}
    assert {"dsm-1", "dsm-2"} <= chains, chains


def test_up_fleet_without_postgresql_or_with_a_bad_shape_is_one_clear_line(tmp_path: Path) -> None:
    data_dir = tmp_path / "lab"

    def up(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "xkslab", "--data-dir", str(data_dir), "up", "--free-ports", *args],
            capture_output=True,
            text=True,
            cwd=REPO,
            env={k: v for k, v in os.environ.items() if k != "XKSLAB_DATABASE_URL"}
            | {"PYTHONPATH": str(REPO)},
            timeout=120,
        )

    sqlite = up("--fleet", "2,2")
    assert sqlite.returncode == 1 and sqlite.stderr.startswith(
        "Error: --fleet needs database.url on PostgreSQL"
    )
    assert len(sqlite.stderr.strip().splitlines()) == 1 and not data_dir.exists()  # refused before any start
    bad = up("--fleet", "2")
    assert bad.returncode == 1 and "--fleet must be DSM_NODES,PROXIES" in bad.stderr
    too_many = up("--fleet", "11,1")
    assert too_many.returncode == 1 and "each count must be 1 to 10" in too_many.stderr
