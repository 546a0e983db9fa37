"""The anchors a benchmark measures beside xkslab, in the same run and with the same wrk settings, so that
a figure reads as "how close to what this machine can do" rather than as an absolute that a noisy,
shared machine makes meaningless:

- ``one-hop``: a bare aiohttp handler answering JSON (the ceiling of one Python HTTP service);
- ``two-hop``: a front aiohttp handler that calls a back handler over a keep-alive pool (the ceiling of
  the XKS path, proxy -> key manager);
- ``three-hop``: the same chain one hop longer (the ceiling of KMS -> proxy -> key manager);
- ``fleet-two-hop``: HAProxy in front of two forwarders, each spreading over two leaves (the ceiling of
  ``xkslab up --fleet 2,2``'s XKS path; xkslab/bench/fleet.py);
- ``moto``: moto_server's KMS (a single-layer mock users already know), for GenerateDataKey on a plain key.

Each hop of a chain is its own process, as each xkslab service is under ``xkslab up``, so a chain is the
ceiling of the same shape. One process is ``python -m xkslab.bench.anchors leaf|forward URL[,URL...]|moto``:
it binds port 0 on 127.0.0.1, prints ``{"port": N}`` on one line once it is listening, then serves until
its standard input closes or it is killed. A chain runs on the event loop the services run on (uvloop when
installed, xkslab_shared/serve.py ``run``): on asyncio's own loop it was about 8 % slower, which flattered
every ratio to it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys

import aiohttp
from aiohttp import web

from xkslab_shared.serve import run

BODY = json.dumps({"ciphertext": "x" * 44, "iv": "y" * 16, "authenticationTag": "z" * 24}).encode()


def _leaf() -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=BODY, content_type="application/json")

    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", handle)
    return app


def _forwarder(next_urls: str) -> web.Application:
    """Forwards each request to the next URL of ``next_urls`` (comma-separated), in turn."""
    session_key = web.AppKey("session", aiohttp.ClientSession)
    turn = itertools.cycle(next_urls.split(","))

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        async with request.app[session_key].post(next(turn), data=body) as answer:
            data = await answer.read()
        return web.Response(body=data, content_type="application/json")

    async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        app[session_key] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        yield
        await app[session_key].close()

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("POST", "/{tail:.*}", handle)
    return app


async def _listen(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, int(runner.addresses[0][1])


async def _serve(app: web.Application) -> None:
    runner, port = await _listen(app)
    print(json.dumps({"port": port}), flush=True)
    try:
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    finally:
        await runner.cleanup()


def _serve_moto() -> None:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    _host, port = server.get_host_and_port()
    print(json.dumps({"port": port}), flush=True)
    try:
        sys.stdin.read()  # until our parent closes the pipe or kills us
    finally:
        server.stop()


def main(argv: list[str]) -> None:
    kind = argv[0] if argv else ""
    if kind == "moto":
        _serve_moto()
    elif kind == "leaf":
        run(_serve(_leaf()))
    elif kind == "forward" and len(argv) == 2:
        run(_serve(_forwarder(argv[1])))
    else:
        raise SystemExit("usage: python -m xkslab.bench.anchors leaf | forward URL[,URL...] | moto")


if __name__ == "__main__":
    main(sys.argv[1:])
