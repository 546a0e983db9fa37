"""``--workers N`` (issue 23): N processes of one service on one port (SO_REUSEPORT), each a node of its
own with its own audit chain, on SQLite and on PostgreSQL; and ``up --workers 2``.

Real processes, real ports: ``xkslab dsm serve --workers 2`` and ``xkslab up --workers 2``."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import boto3

from tests import deadlines
from tests.cli_runner import run_cli
from tests.fleet import REPO
from tests.integration.test_fleet_nodes import admin_headers, fleet_dir, until
from tests.net import port_of, refused, wait_ready
from xkslab.lab.process import lab_process


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_two_workers_share_one_port_each_a_node_with_its_own_audit_chain(
    tmp_path: Path, empty_db_url: str
) -> None:
    data_dir, facts = await fleet_dir(tmp_path, empty_db_url)
    ready, log = tmp_path / "dsm.ready", tmp_path / "dsm.log"
    process = await asyncio.to_thread(_serve_two_workers, data_dir, ready, log)
    try:
        urls = await asyncio.to_thread(wait_ready, ready, process, log)
        workers = json.loads(ready.read_text())["workers"]
        assert len(workers) == 2 and process.pid not in workers and all(alive(pid) for pid in workers)
        url = urls[0]
        auth = {"Authorization": f"Basic {facts['dsm_api_key']}"}
        body = {
            "key": {"kid": facts["root_kek_id"]},
            "alg": "AES",
            "mode": "GCM",
            "plain": base64.b64encode(b"\x02" * 16).decode(),
        }
        # A new connection each time: the kernel spreads them over the two listening workers.
        for _ in range(40):
            async with aiohttp.ClientSession() as session:
                async with session.post(url + "/crypto/v1/encrypt", headers=auth, json=body) as r:
                    assert r.status == 200, await r.text()
        async with aiohttp.ClientSession() as session:
            headers = await admin_headers(session, url)

            async def both_registered() -> bool:
                async with session.get(url + "/sys/v1/nodes", headers=headers) as r:
                    rows = {row["id"]: row for row in (await r.json())["nodes"]}
                return all(
                    rows.get(f"dsm-1-w{i}", {}).get("live") and rows[f"dsm-1-w{i}"]["urls"] == urls
                    for i in (1, 2)
                )

            await until(both_registered, "both workers in the registry, live, on the same URLs")
            async with session.get(url + "/sys/v1/logs?size=1000", headers=headers) as r:
                hits = (await r.json())["hits"]
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 60) == 0
        assert not any(alive(pid) for pid in workers) and refused(url)
        assert len(hits) >= 40
        chains = await asyncio.to_thread(_chains, data_dir)
        assert {"dsm-1-w1", "dsm-1-w2"} <= chains, chains  # both workers served, each on its own chain
        verify = await asyncio.to_thread(_xkslab, data_dir, "audit", "verify", "--json")
        assert verify.returncode == 0 and json.loads(verify.stdout)["ok"], verify.stdout + verify.stderr
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _serve_two_workers(data_dir: Path, ready: Path, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "xkslab", "--data-dir", str(data_dir), "--set", "fleet.heartbeat_s=0.2"]
    with log.open("wb") as out:
        return subprocess.Popen(
            [*command, "dsm", "serve", "--workers", "2", "--free-ports", "--ready-file", str(ready)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            start_new_session=True,
        )


def _xkslab(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in this process (tests/cli_runner.py), beside the lab's worker processes."""
    return run_cli(["--data-dir", str(data_dir), *args])


def _chains(data_dir: Path) -> set[str]:
    exported = _xkslab(data_dir, "audit", "export")
    assert exported.returncode == 0, exported.stderr
    return {json.loads(line)["chain"] for line in exported.stdout.splitlines() if line.strip()}


def test_up_with_two_workers_per_service_serves_kms_and_lists_every_pid(tmp_path: Path) -> None:
    with lab_process(tmp_path / "lab", deadlines.GENEROUS, up_args=["--workers", "2"]) as lab:
        workers = lab.data["worker_pids"]
        assert set(workers) == {"dsm", "xks", "kms"} and all(len(pids) == 2 for pids in workers.values())
        every = [pid for pids in workers.values() for pid in pids]
        assert all(alive(pid) for pid in every)
        kms = boto3.client(
            "kms",
            endpoint_url=lab.kms_endpoint,
            region_name=lab.region,
            aws_access_key_id=lab.data["aws_env"]["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=lab.data["aws_env"]["AWS_SECRET_ACCESS_KEY"],
        )
        for n in range(20):
            blob = kms.encrypt(KeyId=lab.key_id, Plaintext=b"w%d" % n)["CiphertextBlob"]
            assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"w%d" % n
        assert port_of(lab.data["dsm"]["url"]) > 0
        # The proxies reach the DSM workers over the framed link, on a loopback TCP port they share (one
        # Unix socket could not be), and both workers took the proxies' calls (each its audit chain).
        link = lab.data["dsm"]["link_url"]
        assert link.startswith("link://127.0.0.1:") and port_of(link.replace("link://", "http://")) > 0
        exported = _xkslab(lab.data_dir, "audit", "export")
        rows = [json.loads(line) for line in exported.stdout.splitlines() if line.strip()]
        proxied = {row["chain"] for row in rows if row.get("kms_request_id")}
        assert proxied == {"dsm-1-w1", "dsm-1-w2"}, proxied
    deadline = time.monotonic() + 60
    while any(alive(pid) for pid in every):  # up stopped its services, and they their workers
        assert time.monotonic() < deadline, "a worker outlived its lab"
        time.sleep(0.1)


async def test_a_key_disabled_by_the_cli_is_refused_by_every_worker_once_the_command_returns(
    tmp_path: Path, empty_db_url: str
) -> None:
    """The CLI in a second terminal beside two workers that both serve the key from their caches: when
    `xkslab key disable` returns, every worker refuses it (each reads the cache generation, and on
    PostgreSQL is told by NOTIFY)."""
    data_dir, facts = await fleet_dir(tmp_path, empty_db_url)
    ready, log = tmp_path / "dsm.ready", tmp_path / "dsm.log"
    process = await asyncio.to_thread(_serve_two_workers, data_dir, ready, log)
    try:
        url = (await asyncio.to_thread(wait_ready, ready, process, log))[0]
        auth = {"Authorization": f"Basic {facts['dsm_api_key']}"}
        body = {
            "key": {"kid": facts["root_kek_id"]},
            "alg": "AES",
            "mode": "GCM",
            "plain": base64.b64encode(b"k").decode(),
        }

        async def statuses(times: int) -> list[int]:
            found = []
            for _ in range(times):  # a new connection each: both workers answer some
                async with aiohttp.ClientSession() as session:
                    async with session.post(url + "/crypto/v1/encrypt", headers=auth, json=body) as r:
                        await r.read()
                        found.append(r.status)
            return found

        assert set(await statuses(20)) == {200}
        disabled = await asyncio.to_thread(_xkslab, data_dir, "key", "disable", facts["root_kek_id"])
        assert disabled.returncode == 0, disabled.stderr
        assert set(await statuses(20)) == {400}
        chains = await asyncio.to_thread(_chains, data_dir)
        assert {"dsm-1-w1", "dsm-1-w2"} <= chains, chains  # both workers served (and refused) the key
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(process.wait, 60)


async def test_admin_commands_beside_a_load_on_two_workers_fail_no_request_and_keep_every_chain(
    tmp_path: Path, empty_db_url: str
) -> None:
    """Issue 23's many writers: the CLI in a second terminal writes keys and audit rows while a load runs
    over both workers, each worker committing its own chain into the same database (SQLite: one write
    lock for three writers). No request may fail, every success has its audit row, and every chain,
    the CLI's and each worker's, verifies."""
    data_dir, facts = await fleet_dir(tmp_path, empty_db_url)
    ready, log = tmp_path / "dsm.ready", tmp_path / "dsm.log"
    process = await asyncio.to_thread(_serve_two_workers, data_dir, ready, log)
    statuses: list[int] = []
    stop = asyncio.Event()
    try:
        url = (await asyncio.to_thread(wait_ready, ready, process, log))[0]
        auth = {"Authorization": f"Basic {facts['dsm_api_key']}"}
        body = {
            "key": {"kid": facts["root_kek_id"]},
            "alg": "AES",
            "mode": "GCM",
            "plain": base64.b64encode(b"\x03" * 16).decode(),
        }

        async def load() -> None:
            while not stop.is_set():  # a new connection each: the kernel spreads them over both workers
                async with aiohttp.ClientSession() as session:
                    async with session.post(url + "/crypto/v1/encrypt", headers=auth, json=body) as r:
                        await r.read()
                        statuses.append(r.status)

        loads = [asyncio.create_task(load()) for _ in range(6)]
        try:
            for i in range(3):
                created = await asyncio.to_thread(_xkslab, data_dir, "key", "create", f"beside-{i}")
                assert created.returncode == 0, created.stderr
                disabled = await asyncio.to_thread(_xkslab, data_dir, "key", "disable", f"beside-{i}")
                assert disabled.returncode == 0, disabled.stderr
        finally:
            stop.set()
            await asyncio.gather(*loads)
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 60) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert statuses and set(statuses) == {200}, sorted(set(statuses))
    exported = await asyncio.to_thread(_xkslab, data_dir, "audit", "export")
    assert exported.returncode == 0, exported.stderr
    rows = [json.loads(line) for line in exported.stdout.splitlines() if line.strip()]
    served = [
        r for r in rows if r["chain"] in ("dsm-1-w1", "dsm-1-w2") and r["operation"] == "crypto.encrypt"
    ]
    assert {r["chain"] for r in served} == {"dsm-1-w1", "dsm-1-w2"}  # the load reached both workers
    assert sum(1 for r in served if r["outcome"] == "success") == len(statuses)
    by_cli = [r for r in rows if not r["chain"].startswith("dsm-1-w") and r["outcome"] == "success"]
    assert sum(1 for r in by_cli if r["operation"] == "key.create" and "beside-" in r["message"]) == 3
    assert sum(1 for r in by_cli if r["operation"] == "key.update") >= 3  # the three disables
    verify = await asyncio.to_thread(_xkslab, data_dir, "audit", "verify", "--json")
    assert verify.returncode == 0 and json.loads(verify.stdout)["ok"], verify.stdout + verify.stderr
