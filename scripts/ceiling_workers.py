#!/usr/bin/env python
"""The two-hop ceiling with N processes per hop, the shape of ``xkslab up --workers N``'s XKS path: N leaves
sharing one port and N forwarders sharing another (SO_REUSEPORT, as the workers share theirs), each
forwarder spreading over the leaves' port, driven by wrk as ``xkslab bench`` drives its anchors.

    python scripts/ceiling_workers.py 2 --seconds 10

Prints the run as JSON (requests/s, p99). ``xkslab bench``'s ``two-hop`` is this with N = 1, except that
its processes do not share a port. One process of the chain is this script run as
``ceiling_workers.py serve leaf|forward PORT [URL]`` (PORT 0: a free one); it prints ``{"port": N}``
once listening and serves until its standard input closes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys

from aiohttp import web

from xkslab.bench import wrk
from xkslab.bench.anchors import _forwarder, _leaf
from xkslab_shared.serve import run


async def _serve(app: web.Application, port: int) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, reuse_port=True).start()
    print(json.dumps({"port": int(runner.addresses[0][1])}), flush=True)
    try:
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    finally:
        await runner.cleanup()


def _chain(per_hop: int, seconds: float) -> dict[str, float | int]:
    processes: list[subprocess.Popen[str]] = []

    def start(*args: str) -> int:
        process = subprocess.Popen(
            [sys.executable, __file__, "serve", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        processes.append(process)
        assert process.stdout is not None
        return int(json.loads(process.stdout.readline())["port"])

    try:
        leaf = start("leaf", "0")
        for _ in range(per_hop - 1):
            start("leaf", str(leaf))
        front = start("forward", "0", f"http://127.0.0.1:{leaf}/")
        for _ in range(per_hop - 1):
            start("forward", str(front), f"http://127.0.0.1:{leaf}/")
        headers = {"Content-Type": "application/json", "Host": "127.0.0.1"}
        pool = [wrk.Request("/", headers, b'{"plaintext":"x"}')]
        url = f"http://127.0.0.1:{front}"
        wrk.run(url, pool, wrk.WrkSettings(duration_s=2))  # warm-up, as bench does
        result = wrk.run(url, pool, wrk.WrkSettings(duration_s=seconds))
        return {"per_hop": per_hop, "rps": result["rps"], "p99_ms": result["p99_ms"]}
    finally:
        for process in reversed(processes):  # the front first: nothing forwards to a leaf gone
            assert process.stdin is not None
            process.stdin.close()
            process.wait(30)


def main() -> None:
    if sys.argv[1:2] == ["serve"]:
        kind, port = sys.argv[2], int(sys.argv[3])
        run(_serve(_leaf() if kind == "leaf" else _forwarder(sys.argv[4]), port))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("per_hop", type=int, help="processes per hop")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    print(json.dumps(_chain(args.per_hop, args.seconds)))


if __name__ == "__main__":
    main()
