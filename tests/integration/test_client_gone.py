"""A client that hangs up while its request waits to be read, in the key manager (its REST API and the
internal endpoint XKS proxies call) and the KMS, as the XKS proxy (test_xks_overload.py): served by the
real runner (xkslab_shared/serve.py) on loopback, on SQLite and PostgreSQL. aiohttp raises
ConnectionResetError from ``request.read()`` then, even for a body it already holds; it used to reach
each service's catch-all: an ERROR traceback, a 500 in the metrics and on the access line, for an
answer nobody was sent. Now: no log line above INFO, 499 on the access line, and the request counted
as gone (the key manager's ``dsm_requests_total`` with status 499, KMS's ``kms_client_gone_total``).

And a request cut off by the body deadline (408) is counted by the proxy as the error it is.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web

from dsm_emulator.api.app import listener as dsm_listener
from dsm_emulator.api.xks import PROXY_TOKEN_KEY
from kms_emulator.app import listener as kms_listener
from tests.api_harness import init_data_dir
from tests.xks_harness import XksEnv, close_env, make_db_env
from xks_frontend.app import EDGE_KEY
from xks_frontend.app import listener as xks_listener
from xkslab_shared import logs
from xkslab_shared.config import load_settings
from xkslab_shared.proxy_link import CALL_PATH
from xkslab_shared.serve import start

WITHIN_S = 120.0  # for the server to get somewhere: generous, a stalled machine must not fail it
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ENTERED: web.AppKey[list[web.Request]] = web.AppKey("test_entered", list)
HOLD: web.AppKey[list[bool]] = web.AppKey("test_hold", list)


@web.middleware
async def probe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost, the test's own: tells the test a request's handling began, and when HOLD is set,
    holds it until its client has gone (a request queued behind others while its client hangs up)."""
    request.app[ENTERED].append(request)
    if request.app[HOLD]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WITHIN_S
        # aiohttp tells a handler of no lost connection but by its transport's going: polled.
        while request.transport is not None and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    return await handler(request)


def probed(app: web.Application) -> web.Application:
    app[ENTERED] = []
    app[HOLD] = []
    app.middlewares.insert(0, probe)
    return app


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WITHIN_S
    while not await check():
        assert loop.time() < deadline, what
        await asyncio.sleep(0.02)


@pytest.fixture
async def data_dir(empty_db_url: str, tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """A data directory by the real ``xkslab init`` (and what it printed), its key manager and KMS
    tables in ``empty_db_url``."""
    return await asyncio.to_thread(init_data_dir, tmp_path / "data", empty_db_url)


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as opened:
        yield opened


def head(method: str, path: str, headers: dict[str, str], length: int) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {length}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def hang_up_during_the_body(app: web.Application, url: str, request: bytes, body: bytes) -> None:
    """Headers and half the body; once the handler has begun (it waits for the rest), hang up."""
    parts = urlsplit(url)
    before = len(app[ENTERED])
    _, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(request + body[: len(body) // 2])
    await writer.drain()

    async def entered() -> bool:
        return len(app[ENTERED]) > before

    await eventually(entered, "the server never began to handle the request")
    writer.close()
    await writer.wait_closed()


async def hang_up_after_the_body(app: web.Application, url: str, request: bytes, body: bytes) -> None:
    """The whole request, then hang up; the server reads it only once the client is gone (HOLD)."""
    parts = urlsplit(url)
    app[HOLD].append(True)
    try:
        _, writer = await asyncio.open_connection(parts.hostname, parts.port)
        before = len(app[ENTERED])
        writer.write(request + body)
        await writer.drain()

        async def entered() -> bool:
            return len(app[ENTERED]) > before

        await eventually(entered, "the server never began to handle the request")
        writer.close()
        await writer.wait_closed()
    finally:
        app[HOLD].clear()


HANG_UPS = {"during": hang_up_during_the_body, "after": hang_up_after_the_body}


async def metric_lines(http: aiohttp.ClientSession, url: str, prefix: str) -> dict[str, float]:
    async with http.get(url + "/metrics") as response:
        text = await response.text()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(prefix)
    }


def access_statuses(caplog: pytest.LogCaptureFixture) -> list[tuple[str, int]]:
    formatter = logs.LineFormatter("json", "default")
    found = [json.loads(formatter.format(r)) for r in caplog.records if r.name == logs.ACCESS_LOGGER.name]
    return [(f["route"], f["status"]) for f in found]


def loud(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("when", sorted(HANG_UPS))
async def test_the_key_manager_counts_a_client_gone_as_499(
    data_dir: tuple[Path, dict[str, Any]], stack: AsyncExitStack, caplog: pytest.LogCaptureFixture, when: str
) -> None:
    caplog.set_level(logging.INFO)
    settings = load_settings(data_dir[0], overrides={"dsm.port": 0}, environ={})
    listener = dsm_listener(settings)
    app = probed(listener.app)
    url, *_ = await start(stack, listener, lambda _: None)
    body = json.dumps({"acct_id": "0" * 36, "padding": "x" * 200}).encode()
    async with aiohttp.ClientSession() as http:
        async with http.post(
            url + "/sys/v1/session/auth",
            headers={"Authorization": aiohttp.encode_basic_auth(data_dir[1]["admin_email"], "pw")},
        ) as r:
            assert r.status == 200, await r.text()
            token = (await r.json())["access_token"]
        json_type = {"Content-Type": "application/json"}
        rest = head(
            "POST",
            "/sys/v1/session/select_account",
            {"Authorization": f"Bearer {token}", **json_type},
            len(body),
        )
        internal = head(
            "POST", CALL_PATH, {"Authorization": f"Bearer {app[PROXY_TOKEN_KEY]}", **json_type}, len(body)
        )
        await HANG_UPS[when](app, url, rest, body)
        await HANG_UPS[when](app, url, internal, body)
        gone = {
            f'dsm_requests_total{{method="POST",route="{route}",status="499"}}': 1.0
            for route in ("/sys/v1/session/select_account", CALL_PATH)
        }

        async def counted() -> bool:
            samples = await metric_lines(http, url, "dsm_requests_total{")
            return all(samples.get(name) == n for name, n in gone.items())

        await eventually(counted, "the key manager never counted the requests")
        samples = await metric_lines(http, url, "dsm_requests_total{")
        assert not [s for s in samples if 'status="500"' in s], samples
        # It goes on answering, on both paths.
        async with http.post(
            url + CALL_PATH, headers={"Authorization": f"Bearer {app[PROXY_TOKEN_KEY]}"}, json={}
        ) as r:
            assert r.status == 400, await r.text()
    statuses = access_statuses(caplog)
    assert ("/sys/v1/session/select_account", 499) in statuses, statuses
    assert (CALL_PATH, 499) in statuses, statuses
    assert not [s for s in statuses if s[1] == 500], statuses
    assert not loud(caplog), loud(caplog)


@pytest.mark.parametrize("when", sorted(HANG_UPS))
async def test_kms_counts_a_client_gone_as_gone(
    data_dir: tuple[Path, dict[str, Any]], stack: AsyncExitStack, caplog: pytest.LogCaptureFixture, when: str
) -> None:
    caplog.set_level(logging.INFO)
    settings = load_settings(data_dir[0], overrides={"kms.port": 0}, environ={})
    listener = kms_listener(settings)
    app = probed(listener.app)
    (url,) = await start(stack, listener, lambda _: None)
    body = json.dumps({"Limit": 10, "Marker": "x" * 200}).encode()
    headers = {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "TrentService.ListKeys"}
    await HANG_UPS[when](app, url, head("POST", "/", headers, len(body)), body)
    async with aiohttp.ClientSession() as http:

        async def counted() -> bool:
            samples = await metric_lines(http, url, "kms_client_gone_total{")
            return samples.get('kms_client_gone_total{operation="ListKeys"}') == 1.0

        await eventually(counted, "KMS never counted the request as gone")
        answered = await metric_lines(http, url, "kms_requests_total{")
        assert answered == {}, answered  # no outcome for an answer nobody was sent
    statuses = access_statuses(caplog)
    assert [s for s in statuses if s[0] == "/"] == [("/", 499)], statuses
    assert not loud(caplog), loud(caplog)


@pytest.fixture
async def lab(empty_db_url: str, tmp_path: Path) -> AsyncIterator[XksEnv]:
    env = await make_db_env(empty_db_url, tmp_path)
    try:
        yield env
    finally:
        await close_env(env)


async def counted_after_a_body_cut_off(
    lab: XksEnv, stack: AsyncExitStack, op: str, lookup_stall_s: float = 0.0
) -> dict[str, float]:
    """A proxy served by the real runner with a 200 ms body deadline in front of the lab's key manager,
    sent a request to ``op``'s URI whose body never ends (its prefix lookup stalled ``lookup_stall_s``
    first, if set): the 408 it answers, then its requests/errors counters."""
    overrides = {
        "xks.dsm_urls": lab.link_url,
        "xks.port": 0,
        "xks.prefix_cache_s": 0.0,
        "xks.dsm_timeout_ms": 5000,
        "http.body_timeout_ms": 200,
    }
    listener = xks_listener(load_settings(lab.data_dir, overrides=overrides, environ={}))
    if lookup_stall_s:
        prefixes = listener.app[EDGE_KEY].prefixes
        lookup = prefixes.resolve

        async def stalled(prefix: str) -> str | None:
            await asyncio.sleep(lookup_stall_s)  # past the body deadline, which cancels it
            return await lookup(prefix)

        prefixes.resolve = stalled  # type: ignore[method-assign]
    url, *_ = await start(stack, listener, lambda _: None)
    path = urlsplit(lab.url(op, lab.kek_id)).path
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(head("POST", path, {"Content-Type": "application/json"}, 100) + b'{"requestMeta')
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), WITHIN_S)  # until the proxy closes
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:80]
    async with aiohttp.ClientSession() as http:
        samples = await metric_lines(http, url, "xks_proxy_")
    return {s: n for s, n in samples.items() if re.match(r"xks_proxy_(requests|errors)_total\{", s)}


async def test_the_proxy_counts_a_body_cut_off_by_its_deadline_as_an_error(
    lab: XksEnv, stack: AsyncExitStack
) -> None:
    """The 408 of the shared body deadline used to be counted as a success."""
    counted = await counted_after_a_body_cut_off(lab, stack, "encrypt")
    assert counted == {
        'xks_proxy_requests_total{operation="Encrypt",outcome="RequestTimeout"}': 1.0,
        'xks_proxy_errors_total{error_name="RequestTimeout",operation="Encrypt"}': 1.0,
    }, counted


async def test_a_body_deadline_that_cuts_into_the_prefix_lookup_still_names_the_operation(
    lab: XksEnv, stack: AsyncExitStack
) -> None:
    """The deadline can expire while the proxy is still resolving the URI path prefix (a busy key manager
    on a loaded machine: it did in CI); the path names the operation, so the 408 is counted under it, not
    under "Unknown". The stall is made here (a slow lookup on demand is what no real part gives)."""
    counted = await counted_after_a_body_cut_off(lab, stack, "decrypt", lookup_stall_s=WITHIN_S)
    assert counted == {
        'xks_proxy_requests_total{operation="Decrypt",outcome="RequestTimeout"}': 1.0,
        'xks_proxy_errors_total{error_name="RequestTimeout",operation="Decrypt"}': 1.0,
    }, counted
