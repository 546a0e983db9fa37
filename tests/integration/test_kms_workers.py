"""``xkslab kms serve --workers N`` through ``xkslab up --workers 2``: two KMS processes on one port
(SO_REUSEPORT) that answer as one KMS: a key disabled through one is refused by both, and an external key
store's quota (``kms.xks_store_rps``) is the service's, each worker taking half, and its failures are
counted by both together (``kms.xks_failure_threshold``).

Real processes, real ports, boto3 on a fresh connection per call so that the kernel spreads the calls."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from collections import Counter
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from tests import deadlines
from tests.net import port_of
from xkslab.lab.info import LabInfo
from xkslab.lab.process import lab_process
from xkslab_shared.faults_wire import FAULTS_PATH

RATE = 2  # kms.xks_store_rps for the service: each of the two workers takes 1 request per second


def _client(lab: LabInfo) -> object:
    return boto3.client(
        "kms",
        endpoint_url=lab.kms_endpoint,
        region_name=lab.region,
        aws_access_key_id=lab.data["aws_env"]["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=lab.data["aws_env"]["AWS_SECRET_ACCESS_KEY"],
        config=Config(retries={"total_max_attempts": 1}),  # a ThrottlingException is counted, not retried
    )


def _accepting_pids(port: int, connections: int = 16) -> set[int]:
    """Which processes the kernel gives ``connections`` new connections on ``port`` to."""
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(connections)]
    try:
        time.sleep(0.5)  # accepted by the workers' loops
        listing = subprocess.run(
            ["ss", "-Htnp", "state", "established", f"( sport = :{port} )"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        for sock in held:
            sock.close()
    return {int(part.split("pid=")[1].split(",")[0]) for part in listing.split() if "pid=" in part}


def test_two_kms_workers_answer_as_one_kms(tmp_path: Path, empty_db_url: str) -> None:
    """On SQLite and PostgreSQL (where a change reaches the other worker by NOTIFY)."""
    quota = {**deadlines.GENEROUS, "kms.xks_store_rps": str(RATE), "database.url": empty_db_url}
    with lab_process(tmp_path / "lab", quota, up_args=["--workers", "2"]) as lab:
        workers = lab.data["worker_pids"]["kms"]
        assert len(workers) == 2
        # Only the first worker runs the periodic KmsHealthCheck: once per interval, as KMS checks.
        args = [Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") for pid in workers]
        assert b"kms.xks_health_check_s=0" not in args[0] and b"kms.xks_health_check_s=0" in args[1]
        # Both workers take connections on the one port.
        assert _accepting_pids(port_of(lab.kms_endpoint)) == set(workers)

        # An external key store's quota is the service's: each worker's bucket holds half of it.
        encrypts_before = _encrypts_counted(lab)
        started = time.monotonic()
        found: Counter[str] = Counter()
        while time.monotonic() - started < 4.0:
            try:
                _client(lab).encrypt(KeyId=lab.key_id, Plaintext=b"q")  # type: ignore[attr-defined]
                found["ok"] += 1
            except ClientError as exc:
                found[exc.response["Error"]["Code"]] += 1
        elapsed = time.monotonic() - started
        # The service's burst (RATE) plus its rate over the time taken; a full quota per worker would
        # allow twice that.
        assert 0 < found["ok"] <= RATE + RATE * elapsed + 1, (found, elapsed)
        assert found["ThrottlingException"] > 0 and set(found) <= {"ok", "ThrottlingException"}, found
        # /metrics through the shared port is the service's: every worker's requests, summed.
        assert _encrypts_counted(lab) - encrypts_before == sum(found.values())

        # A key disabled through one worker is refused by every worker at once (the cache generation).
        key_id = _client(lab).create_key()["KeyMetadata"]["KeyId"]  # type: ignore[attr-defined]
        _client(lab).disable_key(KeyId=key_id)  # type: ignore[attr-defined]
        codes = Counter[str]()
        for _ in range(12):
            try:
                _client(lab).encrypt(KeyId=key_id, Plaintext=b"d")  # type: ignore[attr-defined]
                codes["ok"] += 1
            except ClientError as exc:
                codes[exc.response["Error"]["Code"]] += 1
        assert codes == Counter({"DisabledException": 12}), codes


def test_two_kms_workers_count_a_stores_failures_together(tmp_path: Path) -> None:
    """kms.xks_failure_threshold=3 and no periodic health check: three failed calls in all, whichever
    worker each lands on, turn the store FAILED (the count is the store row's); a worker's own count
    would need three on one worker."""
    settings = {**deadlines.GENEROUS, "kms.xks_failure_threshold": "3", "kms.xks_timeout_ms": "2000"}
    with lab_process(tmp_path / "lab", settings, up_args=["--workers", "2"]) as lab:
        store_id = lab.data["kms"]["custom_key_store_id"]
        _client(lab).encrypt(KeyId=lab.key_id, Plaintext=b"ok")  # type: ignore[attr-defined]
        _set_fault(lab, {"kind": "drop"})
        # The proxy's two workers apply the fault within a cache poll of each other: a success on the
        # one that has not yet resets the count, so count from the last success.
        outcomes: list[str] = []
        while "not connected" not in outcomes:
            assert len(outcomes) < 40, outcomes
            try:
                _client(lab).encrypt(KeyId=lab.key_id, Plaintext=b"x")  # type: ignore[attr-defined]
                outcomes.append("ok")
            except ClientError as exc:
                outcomes.append(_outcome(exc))
        since = outcomes[len(outcomes) - outcomes[::-1].index("ok") :] if "ok" in outcomes else outcomes
        # Three counted failures turn the store FAILED; the other worker may still try once more before
        # its cache poll brings it the FAILED state (that call fails as "cannot reach" and counts nothing:
        # the row is no longer CONNECTED). A count per worker would need three on one worker.
        assert since[:3] == ["cannot reach"] * 3 and since[-1] == "not connected", outcomes
        assert len(since) <= 5, outcomes
        stores = _client(lab).describe_custom_key_stores(CustomKeyStoreId=store_id)  # type: ignore[attr-defined]
        (described,) = stores["CustomKeyStores"]
        assert described["ConnectionState"] == "FAILED", described
        assert described["ConnectionErrorCode"] == "XKS_PROXY_NOT_REACHABLE", described


def _encrypts_counted(lab: LabInfo) -> float:
    """Encrypt requests answered, in all outcomes, as one scrape of /metrics says."""
    with urllib.request.urlopen(lab.kms_endpoint + "/metrics", timeout=30) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("kms_requests_total{") and 'operation="Encrypt"' in line
    )


def _outcome(exc: ClientError) -> str:
    """A failed call as KMS tells it: KMSInvalidStateException both for a proxy it cannot reach and for
    a key whose store is not connected; the message tells which."""
    error = exc.response["Error"]
    for said in ("cannot reach", "not connected"):
        if error["Code"] == "KMSInvalidStateException" and said in error["Message"]:
            return said
    return f"{error['Code']}: {error['Message']}"


def _set_fault(lab: LabInfo, fault: dict[str, object]) -> None:
    token = (lab.data_dir / "xks-admin.token").read_text().strip()
    request = urllib.request.Request(
        lab.data["xks"]["url"] + FAULTS_PATH,
        data=json.dumps({"faults": [fault]}).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
