"""Crash safety (issue 11): the DSM process is SIGKILLed in the middle of a load, then restarted on the
same data (the SQLite file, or the PostgreSQL database).

The DSM runs as ``xkslab dsm serve`` in a subprocess; the XKS proxy runs in the test's event loop and
reaches it over loopback, as KMS's proxy would. The load creates keys over the DSM REST API and
encrypts over the XKS proxy. An operation is *acknowledged* when its success reached the client; the
DSM answers only after the mutation and its audit row are committed, so after the restart every
acknowledged key must be listed and usable, every acknowledged ciphertext must decrypt to its
plaintext, every acknowledged operation must have its audit row, and the audit chain must verify.
Requests in flight at the kill may or may not have happened: they are counted, not judged.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.api_harness import init_data_dir
from tests.xks_harness import b64, metadata, sign, start_runner
from xks_frontend.app import create_app as create_xks_app
from xkslab_shared.config import load_settings

REPO = Path(__file__).resolve().parents[2]
ADMIN = "Basic " + base64.b64encode(b"admin@xkslab.local:pw").decode()
KEY_WORKERS = 3
ENCRYPT_WORKERS = 5
OPS_PER_WORKER = 60
# The kill comes once this many operations were acknowledged: well inside the load, so requests of
# every kind are in flight when it lands.
KILL_AFTER = 80
# Polls of the ready file (0.05 s apart); generous so that a slow machine fails only a real hang.
READY_POLLS = 2400


@dataclass
class Dsm:
    process: asyncio.subprocess.Process
    url: str


async def start_dsm(data_dir: Path, tag: str, workers: int = 1) -> Dsm:
    """``xkslab dsm serve`` (with ``workers`` > 1: ``--workers``, its workers die with it when it is
    killed, each on its own audit chain)."""
    ready = data_dir.parent / f"ready-{tag}.json"
    log = data_dir.parent / f"dsm-{tag}.log"
    serve = ["--set", "dsm.port=0", "--set", "dsm.https_port=0", "dsm", "serve", "--ready-file", str(ready)]
    serve += ["--workers", str(workers)]
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        process = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "xkslab", "--data-dir", str(data_dir), *serve],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
    try:
        for _ in range(READY_POLLS):
            if process.returncode is not None:
                raise AssertionError(f"dsm serve exited ({process.returncode}):\n{log.read_text()}")
            if ready.exists():  # written atomically, with the port really bound
                return Dsm(process, json.loads(ready.read_text())["urls"][0])
            await asyncio.sleep(0.05)
        raise AssertionError(f"dsm serve did not get ready:\n{log.read_text()}")
    except BaseException:
        await stop_dsm(Dsm(process, ""))
        raise


async def stop_dsm(dsm: Dsm) -> None:
    if dsm.process.returncode is None:
        dsm.process.kill()
    await dsm.process.wait()


async def start_proxy(data_dir: Path, dsm_url: str) -> tuple[web.AppRunner, str]:
    overrides = {"xks.dsm_urls": dsm_url, "xks.prefix_cache_s": 0.0, "xks.dsm_timeout_ms": 5000}
    runner, port = await start_runner(create_xks_app(load_settings(data_dir, overrides, environ={})))
    return runner, f"http://127.0.0.1:{port}"


async def xkslab_json(data_dir: Path, *args: str) -> str:
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "xkslab", "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    assert proc.returncode == 0, f"xkslab {' '.join(args)}: {proc.stderr}"
    return proc.stdout


@dataclass
class Client:
    http: aiohttp.ClientSession
    dsm_url: str
    token: str = ""
    proxy_url: str = ""
    app_id: str = ""
    akid: str = ""
    secret: str = ""

    async def dsm(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {"Authorization": ADMIN}
        async with self.http.request(method, self.dsm_url + path, json=body, headers=headers) as r:
            text = await r.text()
            return r.status, json.loads(text) if text else None

    async def login(self) -> None:
        self.token = ""
        status, body = await self.dsm("POST", "/sys/v1/session/auth")
        assert status == 200, body
        self.token = body["access_token"]

    async def xks(self, kid: str, op: str, body: dict[str, Any]) -> tuple[int, Any]:
        url = f"{self.proxy_url}/crypto/v1/apps/{self.app_id}/aws/kms/xks/v1/keys/{kid}/{op}"
        raw = json.dumps(body).encode()
        async with self.http.post(url, data=raw, headers=sign(url, raw, self.akid, self.secret)) as r:
            text = await r.text()
            return r.status, json.loads(text) if text else None


@dataclass
class Load:
    keys: dict[str, str] = field(default_factory=dict)  # acknowledged: name -> kid
    # acknowledged: kmsRequestId -> (plaintext, the proxy's answer)
    ciphertexts: dict[str, tuple[bytes, dict[str, Any]]] = field(default_factory=dict)
    in_flight_keys: list[str] = field(default_factory=list)  # names whose answer the kill cut off
    in_flight_encrypts: list[str] = field(default_factory=list)  # kmsRequestIds likewise
    failures_before_kill: list[Any] = field(default_factory=list)
    enough: asyncio.Event = field(default_factory=asyncio.Event)
    killed: bool = False

    def acknowledged(self) -> None:
        if len(self.keys) + len(self.ciphertexts) >= KILL_AFTER:
            self.enough.set()


async def create_keys(client: Client, load: Load, group_id: str, worker: int) -> None:
    for i in range(OPS_PER_WORKER):
        name = f"crash-{worker}-{i}"
        body = {"name": name, "obj_type": "AES", "key_size": 256, "group_id": group_id}
        try:
            status, answer = await client.dsm("POST", "/crypto/v1/keys", body)
        except aiohttp.ClientError as exc:
            status, answer = 0, repr(exc)
        if status == 201:
            load.keys[name] = answer["kid"]
            load.acknowledged()
        elif load.killed:
            load.in_flight_keys.append(name)
            return
        else:
            load.failures_before_kill.append((name, status, answer))
            return


async def encrypt(client: Client, load: Load, kek: str) -> None:
    for _ in range(OPS_PER_WORKER):
        request_id, plaintext = str(uuid.uuid4()), os.urandom(32)
        body = {
            "requestMetadata": metadata("Encrypt", kmsRequestId=request_id),
            "plaintext": b64(plaintext),
            "encryptionAlgorithm": "AES_GCM",
        }
        try:
            status, answer = await client.xks(kek, "encrypt", body)
        except aiohttp.ClientError as exc:
            status, answer = 0, repr(exc)
        if status == 200:
            load.ciphertexts[request_id] = (plaintext, answer)
            load.acknowledged()
        elif load.killed:
            load.in_flight_encrypts.append(request_id)
            return
        else:
            load.failures_before_kill.append((request_id, status, answer))
            return


async def kill_when_enough(dsm: Dsm, load: Load, workers: list[asyncio.Task[None]]) -> None:
    enough = asyncio.create_task(load.enough.wait())
    try:
        # The workers ending first (each did its bounded share) would also end the wait: kill anyway.
        await asyncio.wait([*workers, enough], return_when=asyncio.FIRST_COMPLETED)
        while not enough.done() and not all(w.done() for w in workers):
            await asyncio.wait([*workers, enough], return_when=asyncio.FIRST_COMPLETED)
    finally:
        enough.cancel()
    load.killed = True  # first: any failure seen from now on may be the kill's
    dsm.process.send_signal(signal.SIGKILL)
    await dsm.process.wait()
    await asyncio.gather(*workers)


async def prepare(client: Client, group_id: str) -> str:
    """An awsxks app and a root KEK, made over the REST API as an operator would; returns the KEK."""
    await client.login()
    app_body = {
        "name": "kms-xks",
        "add_groups": {group_id: ["ENCRYPT", "DECRYPT"]},
        "credential": {"awsxks": {}},
    }
    status, app = await client.dsm("POST", "/sys/v1/apps", app_body)
    assert status == 200, app
    status, cred = await client.dsm("GET", f"/sys/v1/apps/{app['app_id']}/credential")
    assert status == 200, cred
    client.app_id = app["app_id"]
    client.akid = cred["credential"]["awsxks"]["access_key_id"]
    client.secret = cred["credential"]["awsxks"]["secret_key"]
    status, kek = await client.dsm(
        "POST",
        "/crypto/v1/keys",
        {"name": "root-kek", "obj_type": "AES", "key_size": 256, "group_id": group_id},
    )
    assert status == 201, kek
    return str(kek["kid"])


async def check_after_restart(client: Client, load: Load, kek: str, data_dir: Path) -> dict[str, int]:
    await client.login()
    status, listed = await client.dsm("GET", "/crypto/v1/keys?limit=1000")
    assert status == 200, listed
    by_name = {k["name"]: k["kid"] for k in listed}
    lost_keys = [name for name, kid in load.keys.items() if by_name.get(name) != kid]
    for kid in load.keys.values():  # usable, not merely listed: the material survived too
        body = {"alg": "AES", "mode": "CBC", "plain": b64(b"after the crash")}
        status, answer = await client.dsm("POST", f"/crypto/v1/keys/{kid}/encrypt", body)
        assert status == 200, (kid, answer)
    lost_ciphertexts = []
    for request_id, (plaintext, answer) in load.ciphertexts.items():
        body = {
            "requestMetadata": metadata("Decrypt", kmsRequestId=f"check-{request_id}"),
            "encryptionAlgorithm": "AES_GCM",
            **{k: answer[k] for k in ("ciphertext", "initializationVector", "authenticationTag")},
            "ciphertextMetadata": answer["ciphertextMetadata"],
        }
        status, plain = await client.xks(kek, "decrypt", body)
        if status != 200 or plain["plaintext"] != b64(plaintext):
            lost_ciphertexts.append((request_id, status, plain))
    rows = [json.loads(line) for line in (await xkslab_json(data_dir, "audit", "export")).splitlines()]
    created = {r["object_id"] for r in rows if r["operation"] == "key.create" and r["outcome"] == "success"}
    encrypted = {
        r["kms_request_id"] for r in rows if r["operation"] == "xks.encrypt" and r["outcome"] == "success"
    }
    lost_rows = [kid for kid in load.keys.values() if kid not in created]
    lost_rows += [rid for rid in load.ciphertexts if rid not in encrypted]
    verified = json.loads(await xkslab_json(data_dir, "audit", "verify", "--json"))
    assert verified["ok"] is True, verified
    counts = {
        "acknowledged keys": len(load.keys),
        "acknowledged ciphertexts": len(load.ciphertexts),
        "lost keys": len(lost_keys),
        "lost ciphertexts": len(lost_ciphertexts),
        "lost audit rows": len(lost_rows),
        "in flight at the kill": len(load.in_flight_keys) + len(load.in_flight_encrypts),
        "of which present": sum(n in by_name for n in load.in_flight_keys)
        + sum(rid in encrypted for rid in load.in_flight_encrypts),
        "audit rows verified": verified["rows"],
    }
    print("crash:", ", ".join(f"{k} {v}" for k, v in counts.items()))
    assert not lost_keys and not lost_ciphertexts and not lost_rows, (lost_keys, lost_ciphertexts, lost_rows)
    return counts


@pytest.mark.parametrize(("dsm_workers", "writer"), [(1, "orm"), (2, "orm"), (1, "raw"), (2, "raw")])
async def test_a_sigkilled_dsm_loses_no_acknowledged_key_ciphertext_or_audit_row(
    empty_db_url: str, tmp_path: Path, dsm_workers: int, writer: str
) -> None:
    """With ``--workers 2`` the load reaches both workers (one port), the kill takes the supervisor and
    with it both workers at once, and every chain (one per worker) must verify. With either audit writer
    (audit.writer): the ORM's, or the raw driver's (dsm_emulator/audit/raw.py)."""
    data_dir, info = await asyncio.to_thread(init_data_dir, tmp_path / "data", empty_db_url)
    config = data_dir / "xkslab.toml"
    assert "[audit]" not in config.read_text()
    config.write_text(config.read_text() + f'\n[audit]\nwriter = "{writer}"\n')
    group_id = info["default_group_id"]
    dsm = await start_dsm(data_dir, "first", dsm_workers)
    runners: list[web.AppRunner] = []
    try:
        async with aiohttp.ClientSession() as http:
            client = Client(http, dsm.url)
            kek = await prepare(client, group_id)
            runner, client.proxy_url = await start_proxy(data_dir, dsm.url)
            runners.append(runner)
            load = Load()
            workers = [
                asyncio.create_task(create_keys(client, load, group_id, w)) for w in range(KEY_WORKERS)
            ]
            workers += [asyncio.create_task(encrypt(client, load, kek)) for _ in range(ENCRYPT_WORKERS)]
            await kill_when_enough(dsm, load, workers)
            assert not load.failures_before_kill, load.failures_before_kill[:3]
            assert dsm.process.returncode == -signal.SIGKILL

            dsm = await start_dsm(data_dir, "second", dsm_workers)
            client.dsm_url = dsm.url
            runner, client.proxy_url = await start_proxy(data_dir, dsm.url)
            runners.append(runner)
            counts = await check_after_restart(client, load, kek, data_dir)
            assert counts["acknowledged keys"] > 0 and counts["acknowledged ciphertexts"] > 0
            if dsm_workers > 1:  # the load reached both workers, each writing (and verifying) its chain
                exported = await xkslab_json(data_dir, "audit", "export")
                chains = {json.loads(line)["chain"] for line in exported.splitlines() if line.strip()}
                assert {"dsm-1-w1", "dsm-1-w2"} <= chains, chains
    finally:
        for runner in runners:
            await runner.cleanup()
        await stop_dsm(dsm)
