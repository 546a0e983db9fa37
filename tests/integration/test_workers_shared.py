"""What a user observes of a service run as several workers (``serve --workers 2``, issue 23) is the
service's, not the answering worker's: the proxy's fault book (counted faults counted fleet-wide),
/metrics, the DSM's failed-login budget and the proxy's request quota. On SQLite and PostgreSQL where the
database is involved.

Real processes on real ports; a new connection per request, so the kernel spreads them over both
workers (SO_REUSEPORT). Waits poll for the effect with a generous bound; no fixed sleeps."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import aiohttp

from tests.fleet import REPO, nodes, start_node
from tests.integration.test_fleet_nodes import FAST_BEATS, fleet_dir, until
from tests.net import wait_ready
from tests.xks_harness import metadata, sign
from xkslab_shared.config import load_settings
from xkslab_shared.faults_wire import FAULTS_PATH


@contextmanager
def serve_workers(data_dir: Path, service: str, settings: dict[str, str]) -> Iterator[list[str]]:
    """``xkslab <service> serve --workers 2`` on free ports; its URLs, the plain HTTP one first."""
    run = data_dir.parent / "run"
    run.mkdir(exist_ok=True)
    ready, log = run / f"{service}.ready", run / f"{service}.log"
    sets = [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
    command = [sys.executable, "-m", "xkslab", "--data-dir", str(data_dir), *sets, service, "serve"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*command, "--workers", "2", "--free-ports", "--ready-file", str(ready)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            start_new_session=True,
        )
    try:
        urls = wait_ready(ready, process, log)
        yield sorted(urls, key=lambda url: not url.startswith("http://"))
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@asynccontextmanager
async def proxy_workers(
    tmp_path: Path, db_url: str, settings: dict[str, str] | None = None
) -> AsyncIterator[tuple[str, dict[str, Any], Path]]:
    """One DSM node and two proxy workers in front of it: (the proxies' URL, the bootstrap facts)."""
    data_dir, facts = await fleet_dir(tmp_path, db_url)
    with nodes() as fleet:
        dsm_settings = {**FAST_BEATS, "audit.node_id": "dsm-1"}
        fleet.append(await asyncio.to_thread(start_node, data_dir, "dsm", "dsm-1", dsm_settings))
        proxy_settings = {**FAST_BEATS, "xks.dsm_urls": fleet[0].url, **(settings or {})}
        with serve_workers(data_dir, "xks", proxy_settings) as urls:
            yield urls[0], facts, data_dir


async def post(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """One request on a connection of its own (so either worker may take it)."""
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=body, headers=headers or {}) as r:
            text = await r.text()
            return r.status, json.loads(text) if text.startswith("{") else text


def admin_token(data_dir: Path) -> dict[str, str]:
    settings = load_settings(data_dir)
    token = settings.path(settings.xks.admin_token_file).read_text().strip()
    return {"Authorization": f"Bearer {token}"}


async def admin(proxy: str, data_dir: Path, method: str, body: Any = None, path: str = "") -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.request(
            method, proxy + FAULTS_PATH + path, json=body, headers=admin_token(data_dir)
        ) as r:
            return r.status, await r.json()


async def scrape(url: str) -> dict[str, float]:
    """Every sample of one /metrics scrape: ``name{labels}`` -> value."""
    async with aiohttp.ClientSession() as session:
        async with session.get(url + "/metrics") as r:
            assert r.status == 200
            text = await r.text()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def total(samples: dict[str, float], name: str, *labels: str) -> float:
    return sum(v for k, v in samples.items() if k.split("{")[0] == name and all(x in k for x in labels))


async def test_a_fault_set_through_one_proxy_worker_holds_on_every_worker_and_counts_fleet_wide(
    tmp_path: Path, empty_db_url: str
) -> None:
    async with proxy_workers(tmp_path, empty_db_url) as (proxy, facts, data_dir):
        base = proxy + facts["xks_uri_path"] + "/keys/k1/"
        encrypt = {
            "requestMetadata": metadata("Encrypt"),
            "plaintext": "AAAA",
            "encryptionAlgorithm": "AES_GCM",
        }
        lookup = {"requestMetadata": metadata("DescribeKey")}
        sent = 0

        async def statuses(op: str, body: dict[str, Any], times: int) -> list[int]:
            nonlocal sent
            found = []
            for _ in range(times):
                found.append((await post(base + op, body))[0])
                sent += 1
            return found

        before = await statuses("metadata", lookup, 10)  # unsigned: the key manager refuses them
        assert 500 not in before and 429 not in before, before
        faults = [
            {"kind": "error", "error_name": "InternalException", "operation": "GetKeyMetadata"},
            {"kind": "throttle", "operation": "Encrypt", "count": 5},
        ]
        status, answer = await admin(proxy, data_dir, "POST", {"faults": faults})
        assert status == 200, answer

        async def everywhere() -> bool:  # on PostgreSQL NOTIFY wakes the other worker; SQLite polls
            return set(await statuses("metadata", lookup, 20)) == {500}

        await until(everywhere, "the fault applied by both workers")
        # Both workers hold both faults (set in one call, loaded together): the count is the fleet's.
        throttled = Counter(await statuses("encrypt", encrypt, 30))
        assert throttled[429] == 5, throttled
        status, listed = await admin(proxy, data_dir, "GET")
        assert status == 200 and [f["fault"]["kind"] for f in listed["faults"]] == ["error"], listed
        samples = await scrape(proxy)
        # One scrape counts what both workers served: every request, every injected fault.
        assert total(samples, "xks_proxy_requests_total") == sent
        assert total(samples, "xks_proxy_faults_injected_total", 'kind="throttle"') == 5
        status, cleared = await admin(proxy, data_dir, "DELETE")
        assert (status, cleared) == (200, {"cleared": 1})

        async def gone_everywhere() -> bool:
            return 500 not in await statuses("metadata", lookup, 20)

        await until(gone_everywhere, "the clear applied by both workers")


async def test_one_scrape_of_dsm_workers_counts_every_worker(tmp_path: Path) -> None:
    data_dir, facts = await fleet_dir(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'xkslab.db'}")
    with serve_workers(data_dir, "dsm", {**FAST_BEATS}) as urls:
        url = urls[0]
        auth = {"Authorization": f"Basic {facts['dsm_api_key']}"}
        body = {
            "key": {"kid": facts["root_kek_id"]},
            "alg": "AES",
            "mode": "GCM",
            "plain": base64.b64encode(b"\x02" * 16).decode(),
        }
        for _ in range(30):
            status, answer = await post(url + "/crypto/v1/encrypt", body, auth)
            assert status == 200, answer
        for _ in range(5):  # whichever worker answers the scrape, it counts both
            samples = await scrape(url)
            assert total(samples, "dsm_requests_total", 'route="/crypto/v1/encrypt"', 'status="200"') == 30


async def test_the_failed_login_budget_is_the_fleets(tmp_path: Path, empty_db_url: str) -> None:
    data_dir, facts = await fleet_dir(tmp_path, empty_db_url)
    settings = {**FAST_BEATS, "dsm.login_max_failures": "3", "dsm.link": ""}
    with serve_workers(data_dir, "dsm", settings) as urls:
        url = urls[0]
        wrong = base64.b64encode(f"{facts['client_app_id']}:not-the-secret".encode()).decode()
        found = []
        for _ in range(12):
            async with aiohttp.ClientSession() as session:
                headers = {"Authorization": f"Basic {wrong}"}
                async with session.post(url + "/sys/v1/session/auth", headers=headers) as r:
                    found.append(r.status)
        assert found == [401] * 3 + [429] * 9, found  # per worker, up to 3 each would be 401
        right = {"Authorization": f"Basic {facts['dsm_api_key']}"}
        async with aiohttp.ClientSession() as session:
            async with session.post(url + "/sys/v1/session/auth", headers=right) as r:
                assert r.status == 429  # the right secret waits for the window, on every worker


async def test_the_request_quota_is_the_fleets(tmp_path: Path) -> None:
    """xks.rate_limit_rps=2, burst 4 for the fleet: each of the two workers takes 1/s and 2."""
    db_url = f"sqlite+aiosqlite:///{tmp_path / 'xkslab.db'}"
    quota = {"xks.rate_limit_rps": "2", "xks.rate_limit_burst": "4"}
    async with proxy_workers(tmp_path, db_url, quota) as (proxy, facts, _):
        url = proxy + facts["xks_uri_path"] + "/health"
        health = json.dumps({"requestMetadata": metadata("KmsHealthCheck")}).encode()
        akid, secret = facts["xks_access_key_id"], facts["xks_secret_access_key"]
        agreed: list[int] = []

        async def both_count_two() -> bool:  # each worker's share is read from the node registry
            async with aiohttp.ClientSession() as session:
                async with session.post(url, data=health, headers=sign(url, health, akid, secret)) as r:
                    if r.status == 200:
                        agreed.append((await r.json())["xksProxyFleetSize"])
            return agreed[-6:] == [2] * 6

        await until(both_count_two, "both workers count a fleet of two proxies")
        started = time.monotonic()
        found = Counter()
        # Long enough for the rate to matter against the bursts: per worker, twice the rate would pass.
        while time.monotonic() - started < 5.0:
            async with aiohttp.ClientSession() as session:
                async with session.post(url, data=health, headers=sign(url, health, akid, secret)) as r:
                    found[r.status] += 1
        elapsed = time.monotonic() - started
        allowed = found[200]
        # The fleet's burst plus its rate over the time taken (each worker's bucket holds at most its
        # share); with a quota per worker it would be twice that.
        assert 0 < allowed <= 4 + 2 * elapsed + 1, (found, elapsed)
        assert found[429] > 0 and set(found) <= {200, 429}, found
