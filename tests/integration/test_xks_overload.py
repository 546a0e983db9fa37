"""What the XKS proxy answers under a flood of badly signed calls (issue 19 #6), end to end on loopback
with the key manager behind its framed link, on SQLite and PostgreSQL: 401 for each bad signature, 503
DependencyTimeoutException when the key manager cannot answer in time, and never a 500, which would
tell KMS (and whoever reads the metrics) that something broke.

The 500s seen under ``scripts/login_flood.py --kinds bad-signature`` (26-44 a run) were requests whose
client had closed its connection before the proxy read the body (wrk ends its run with requests still
queued): aiohttp raises ConnectionResetError from ``request.read()`` then, even for a body it already
has, and the proxy counted an InternalException and logged a traceback for an answer nobody was sent.
A body the client stops sending and then hangs up on gets there deterministically: the client is
counted as gone, and no errorName is.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.xks_harness import XksEnv, b64, close_env, db_env, make_db_env, metadata, sign

__all__ = ["db_env"]  # a fixture used by name

BAD_SECRET = "not-the-apps-secret-not-the-apps-secret0"
SENT = 60  # badly signed Encrypts, all at once
LEFT = 20  # requests whose client hangs up halfway through the body, among them
WITHIN_S = 120.0  # for the proxy to count what it did: generous, a stalled machine must not fail it


@pytest.fixture
async def tight_env(empty_db_url: str, tmp_path: Path) -> AsyncIterator[XksEnv]:
    """A proxy that gives the key manager 40 ms (KMS gives the proxy 250, the lab's default is 200):
    a burst of calls on this machine outlasts it, so some are answered as the timeouts they are. Which
    ones depends on the machine, and is not asserted."""
    env = await make_db_env(empty_db_url, tmp_path, overrides={"xks.dsm_timeout_ms": 40})
    try:
        yield env
    finally:
        await close_env(env)


def encrypt_body(n: int) -> bytes:
    body = {
        "requestMetadata": metadata("Encrypt", kmsRequestId=f"00000000-0000-4000-8000-{n:012d}"),
        "plaintext": b64(b"p" * 32),
        "encryptionAlgorithm": "AES_GCM",
    }
    return json.dumps(body).encode()


def raw_request(env: XksEnv, body: bytes) -> bytes:
    """The HTTP/1.1 request botocore would send, signed with a secret that is not the app's."""
    url = env.url("encrypt")
    headers = sign(url, body, env.akid, BAD_SECRET)
    parts = urlsplit(url)
    head = [f"POST {parts.path} HTTP/1.1", f"Host: {parts.netloc}", f"Content-Length: {len(body)}"]
    head += [f"{name}: {value}" for name, value in headers.items() if name.lower() != "host"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def handled(env: XksEnv) -> int:
    """Requests the proxy's HTTP server has begun to handle (aiohttp's own count, read in-process)."""
    server = env.runners[0].server
    assert server is not None
    return server.requests_count


async def half_sent(env: XksEnv, requests: list[bytes]) -> list[asyncio.StreamWriter]:
    """Each request's headers and half its body, on a connection of its own, returned once the proxy's
    handler of each has started (it then waits for the rest, which never comes)."""
    parts = urlsplit(env.proxy_url)
    before = handled(env)
    writers = []
    for request in requests:
        _, writer = await asyncio.open_connection(parts.hostname, parts.port)
        head = request.index(b"\r\n\r\n") + 4
        writer.write(request[: head + (len(request) - head) // 2])
        await writer.drain()
        writers.append(writer)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WITHIN_S
    while handled(env) < before + len(requests):
        assert loop.time() < deadline, "the proxy never began to handle the requests"
        await asyncio.sleep(0.01)
    # aiohttp counts a request just before it makes the handler's task: let the tasks begin.
    for _ in range(3):
        await asyncio.sleep(0)
    return writers


async def hang_up(writers: list[asyncio.StreamWriter]) -> None:
    for writer in writers:
        writer.close()
    for writer in writers:
        await writer.wait_closed()


async def send_and_read(env: XksEnv, request: bytes) -> tuple[int, str]:
    parts = urlsplit(env.proxy_url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = re.search(rb"(?i)content-length: *(\d+)", head)
        assert length is not None, head
        answer = json.loads(await reader.readexactly(int(length[1])))
        return status, answer["errorName"]
    finally:
        writer.close()


async def proxy_metrics(env: XksEnv) -> dict[str, float]:
    """The proxy's request counters by sample (name and labels), from its own /metrics."""
    async with env.http.get(env.proxy_url + "/metrics") as response:
        text = await response.text()
    found = {}
    for line in text.splitlines():
        if line.startswith(("xks_proxy_requests_total{", "xks_proxy_client_gone_total{")):
            sample, value = line.rsplit(" ", 1)
            found[sample] = float(value)
    return found


def outcome(sample: str) -> str:
    found = re.search(r'outcome="(\w+)"', sample)
    assert found is not None
    return found[1]


async def counted(env: XksEnv, total: int) -> dict[str, float]:
    """The counters once the proxy has counted ``total`` requests (answered or gone)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WITHIN_S
    while True:
        samples = await proxy_metrics(env)
        if sum(samples.values()) >= total or loop.time() > deadline:
            return samples
        await asyncio.sleep(0.05)


async def test_a_client_that_hangs_up_before_its_body_is_read_is_not_an_internal_error(
    db_env: XksEnv, caplog: pytest.LogCaptureFixture
) -> None:
    env = db_env
    caplog.set_level(logging.WARNING, logger="xks_frontend")
    await hang_up(await half_sent(env, [raw_request(env, encrypt_body(0))]))
    samples = await counted(env, 1)
    assert samples == {'xks_proxy_client_gone_total{operation="Encrypt"}': 1.0}, samples
    assert not [r for r in caplog.records if r.name.startswith("xks_frontend")], caplog.text
    # The proxy goes on answering: the app's own signature, then a bad one, each as what it is.
    status, _ = await env.encrypt(b"still served")
    assert status == 200
    assert await send_and_read(env, raw_request(env, encrypt_body(1))) == (
        401,
        "AuthenticationFailedException",
    )


async def test_a_burst_of_bad_signatures_with_clients_leaving_is_answered_401_or_503_never_500(
    tight_env: XksEnv, caplog: pytest.LogCaptureFixture
) -> None:
    """All at once, as wrk's flood arrives: the ones whose client stays get 401 (the key manager
    refused the signature) or 503 DependencyTimeoutException (it could not say within the budget);
    those whose client hangs up get nothing and are counted as gone."""
    env = tight_env
    caplog.set_level(logging.WARNING, logger="xks_frontend")
    requests = [raw_request(env, encrypt_body(n)) for n in range(SENT)]
    leaving = await half_sent(env, requests[:LEFT])
    # The burst, and the clients that leave hanging up in the middle of it.
    answers, _ = await asyncio.gather(
        asyncio.gather(*(send_and_read(env, r) for r in requests[LEFT:])), hang_up(leaving)
    )
    allowed = {(401, "AuthenticationFailedException"), (503, "DependencyTimeoutException")}
    assert set(answers) <= allowed, answers
    samples = await counted(env, SENT)
    assert samples.get('xks_proxy_client_gone_total{operation="Encrypt"}') == LEFT, samples
    outcomes = {outcome(s): n for s, n in samples.items() if "outcome=" in s}
    assert set(outcomes) <= {name for _, name in allowed}, outcomes
    assert sum(outcomes.values()) == SENT - LEFT, outcomes
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
