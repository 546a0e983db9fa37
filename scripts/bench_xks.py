"""Load an XKS proxy with Encrypt requests and report throughput and latency percentiles, beside a
ceiling measured in the same run on the same server (GET /ping: HTTP and the event loop, no DSM call).

    python scripts/bench_xks.py --data-dir .xkslab [--seconds 10] [--concurrency 32]

Run it against a lab started with `xkslab up` on the same data directory (it reads up.json). Requests
are signed once with botocore and replayed (SigV4 allows that within its 5-minute window), so the load
generator spends its CPU on sending, not signing. AWS asks an XKS proxy for 1800 requests/s per key
store, each answered within 250 ms; the report says how far this machine is from that.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import aiohttp
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials


def signed_encrypt(url: str, akid: str, secret: str, key_arn: str) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(
        {
            "requestMetadata": {
                "awsPrincipalArn": "arn:aws:iam::111122223333:user/bench",
                "kmsKeyArn": key_arn,
                "kmsOperation": "Encrypt",
                "kmsRequestId": "bench",
            },
            "plaintext": base64.b64encode(os.urandom(32)).decode(),
            "encryptionAlgorithm": "AES_GCM",
        }
    ).encode()
    request = AWSRequest(method="POST", url=url, data=body, headers={"Content-Type": "application/json"})
    SigV4Auth(Credentials(akid, secret), "kms-xks-proxy", "us-east-1").add_auth(request)
    return body, dict(request.headers.items())


async def load(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    body: bytes | None,
    headers: dict[str, str],
    seconds: float,
    concurrency: int,
) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            async with session.request(method, url, data=body, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    errors += 1
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    return {
        "requests": len(latencies),
        "errors": errors,
        "rps": len(latencies) / elapsed,
        "p50_ms": pct(0.50),
        "p95_ms": pct(0.95),
        "p99_ms": pct(0.99),
        "max_ms": latencies[-1] * 1000,
        "mean_ms": statistics.fmean(latencies) * 1000,
        "within_250ms": sum(1 for x in latencies if x <= 0.25) / len(latencies),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=Path(".xkslab"))
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    lab = json.loads((args.data_dir / "up.json").read_text())
    xks = lab["xks"]
    url = f"{xks['url']}{xks['uri_path']}/keys/{lab['dsm']['root_kek_id']}/encrypt"
    body, headers = signed_encrypt(url, xks["access_key_id"], xks["secret_access_key"], lab["kms"]["key_arn"])
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        ceiling = await load(session, "GET", f"{xks['url']}/ping", None, {}, args.seconds, args.concurrency)
        encrypt = await load(session, "POST", url, body, headers, args.seconds, args.concurrency)
    report = {
        "ceiling_ping": ceiling,
        "xks_encrypt": encrypt,
        "encrypt_to_ceiling_ratio": encrypt["rps"] / ceiling["rps"],
        "encrypt_to_aws_target_ratio": encrypt["rps"] / 1800,
        "concurrency": args.concurrency,
        "seconds": args.seconds,
        "cpus": os.cpu_count(),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
