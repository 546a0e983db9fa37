"""``xkslab kms serve --workers N`` through ``xkslab up --workers 2``: two KMS processes on one port
(SO_REUSEPORT) that answer as one KMS: a key disabled through one is refused by both, and an external key
store's quota (``kms.xks_store_rps``) is the service's, each worker taking half.

Real processes, real ports, boto3 on a fresh connection per call so that the kernel spreads the calls."""

from __future__ import annotations

import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from tests import deadlines
from tests.net import port_of
from xkslab.lab.info import LabInfo
from xkslab.lab.process import lab_process

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


def test_two_kms_workers_answer_as_one_kms(tmp_path: Path) -> None:
    quota = {**deadlines.GENEROUS, "kms.xks_store_rps": str(RATE)}
    with lab_process(tmp_path / "lab", quota, up_args=["--workers", "2"]) as lab:
        workers = lab.data["worker_pids"]["kms"]
        assert len(workers) == 2
        # Both workers take connections on the one port.
        assert _accepting_pids(port_of(lab.kms_endpoint)) == set(workers)

        # An external key store's quota is the service's: each worker's bucket holds half of it.
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
