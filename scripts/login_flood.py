#!/usr/bin/env python
"""Measure what a flood of wrong logins does to the XKS path (issue 11 #6), by hand, not in CI.

Starts ``xkslab up`` in a temporary data directory, runs wrk's XKS Encrypt scenario alone, then again
beside a second process sending wrong ``Basic`` logins to the DSM at ``--rate`` per second, and prints
both runs and the ratio. Usage: ``PYTHONPATH=. python scripts/login_flood.py [--duration 10] [--rate 1000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from xkslab.bench import pools, wrk
from xkslab.bench.lab import Lab


async def flood(
    dsm_url: str, app_id: str, rate: float, duration_s: float, clients: int = 16
) -> dict[str, object]:
    """Wrong API keys for ``app_id`` at ``rate`` per second from ``clients`` concurrent connections."""
    import aiohttp

    statuses: Counter[int] = Counter()
    start = time.monotonic()
    sent = 0

    async def one(http: aiohttp.ClientSession) -> None:
        nonlocal sent
        while (now := time.monotonic() - start) < duration_s:
            if sent >= now * rate:  # paced: never ahead of the target rate
                await asyncio.sleep(0.001)
                continue
            sent += 1
            key = base64.b64encode(f"{app_id}:wrong-{sent}".encode()).decode()
            try:
                async with http.post(
                    dsm_url + "/sys/v1/session/auth", headers={"Authorization": f"Basic {key}"}
                ) as r:
                    await r.read()
                    statuses[r.status] += 1
            except aiohttp.ClientError as exc:
                statuses[type(exc).__name__] += 1  # type: ignore[index]

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as http:
        await asyncio.gather(*(one(http) for _ in range(clients)))
    elapsed = time.monotonic() - start
    return {"sent": sent, "per_s": round(sent / elapsed, 1), "statuses": dict(statuses)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--flood", nargs=4, metavar=("DSM_URL", "APP_ID", "RATE", "DURATION"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.flood:
        url, app_id, rate, duration = args.flood
        print(json.dumps(asyncio.run(flood(url, app_id, float(rate), float(duration)))))
        return
    settings = wrk.WrkSettings(duration_s=args.duration, connections=args.connections)
    with (
        tempfile.TemporaryDirectory(prefix="xkslab-flood-") as tmp,
        Lab(Path(tmp) / "data", Path(tmp) / "up.log") as lab,
    ):
        info = lab.info
        pool = pools.xks_encrypt(info, 64)
        app_id = base64.b64decode(info["dsm"]["api_key"]).decode().split(":")[0]
        alone = wrk.run(info["xks"]["url"], pool, settings)
        flooder = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--flood",
                info["dsm"]["url"],
                app_id,
                str(args.rate),
                str(args.duration + 2),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.0)  # the flood is at full rate before wrk starts
        beside = wrk.run(info["xks"]["url"], pool, settings)
        out, _ = flooder.communicate(timeout=120)
    report = {
        "xks_encrypt_alone": alone,
        "xks_encrypt_beside_flood": beside,
        "flood": json.loads(out),
        "ratio": round(beside["rps"] / alone["rps"], 3) if alone["rps"] else None,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
