"""Issue 19 #7: past the connection limits a new connection is answered (503 in the service's shape),
not reset, on the event loop the services really run on (uvloop, whose transport is not an asyncio
WriteTransport); refusals are logged as one counted line per interval, without a traceback; and one
client address's idle sockets cannot take every slot (``http.max_connections_per_client``).

Clients come from distinct loopback addresses (127.0.0.2, 127.0.0.3, ...: all of 127.0.0.0/8 reaches
the loopback interface on Linux) by binding each client socket's source address."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import threading
from collections.abc import Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvloop

from dsm_emulator.api.app import listener as dsm_listener
from kms_emulator.app import listener as kms_listener
from tests.api_harness import init_data_dir
from xks_frontend.app import listener as xks_listener
from xkslab_shared import serve
from xkslab_shared.config import load_settings

PER_CLIENT = 4
TOTAL = 10


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    return init_data_dir(tmp_path_factory.mktemp("gate") / "data")


@dataclass
class Served:
    ports: dict[str, int]


@pytest.fixture
def served(
    template: tuple[Path, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Served]:
    """The three services through the real runner, on uvloop in a thread of their own."""
    monkeypatch.setattr(serve, "REFUSAL_LOG_INTERVAL_S", 0.5)
    data_dir = tmp_path / "data"
    shutil.copytree(template[0], data_dir)
    settings = load_settings(
        data_dir,
        overrides={
            "dsm.port": 0,
            "dsm.https_port": 0,
            "xks.port": 0,
            "xks.https_port": 0,
            "kms.port": 0,
            "http.max_connections": TOTAL,
            "http.max_connections_per_client": PER_CLIENT,
            "http.keepalive_timeout_s": 60,
        },
        environ={},
    )
    ready: dict[str, int] = {}
    started, stop = threading.Event(), threading.Event()
    failure: list[BaseException] = []

    async def main() -> None:
        async with AsyncExitStack() as stack:
            for name, make in (("dsm", dsm_listener), ("xks", xks_listener), ("kms", kms_listener)):
                urls = await serve.start(stack, make(settings), lambda _: None)
                ready[name] = int(urls[0].rsplit(":", 1)[1])
            started.set()
            await asyncio.to_thread(stop.wait)

    def run() -> None:
        try:
            uvloop.run(main())
        except BaseException as exc:  # reported to the test below
            failure.append(exc)
            started.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(60), "the services did not start"
    assert not failure, failure
    try:
        yield Served(ready)
    finally:
        stop.set()
        thread.join(30)


async def connect(port: int, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def answer(port: int, source: str, request: bytes = b"") -> bytes:
    """Everything the server sends on a new connection from ``source`` (until it closes)."""
    reader, writer = await connect(port, source)
    try:
        if request:
            writer.write(request)
        return await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()


def health(path: str = "/sys/v1/health") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()


def split(raw: bytes) -> tuple[bytes, dict[str, Any]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return head, json.loads(body) if body else {}


async def test_one_client_cannot_hold_every_slot_and_refusals_are_answered_in_shape(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    port = served.ports["dsm"]
    # One client opens more idle sockets than it may hold: the first PER_CLIENT are kept open, each one
    # past them is answered 503 in the DSM's shape (not reset).
    held = [await connect(port, "127.0.0.2") for _ in range(PER_CLIENT)]
    refused = [await answer(port, "127.0.0.2") for _ in range(6)]
    for raw in refused:
        head, body = split(raw)
        assert head.startswith(b"HTTP/1.1 503 "), raw[:80]
        assert b"Connection: close" in head
        assert set(body) == {"message"} and "too many open connections" in body["message"]
    # A request sent at once on a refused connection is not met with a reset either.
    head, _ = split(await answer(port, "127.0.0.2", health()))
    assert head.startswith(b"HTTP/1.1 503 ")
    # Other clients are served meanwhile.
    for source in ("127.0.0.3", "127.0.0.4"):
        head, _ = split(await answer(port, source, health()))
        assert head.startswith(b"HTTP/1.1 204 "), (source, head)
    # Past the total, every client is refused, and a slot freed is a slot served again.
    others = [await connect(port, "127.0.0.5") for _ in range(PER_CLIENT)]
    others += [await connect(port, "127.0.0.6") for _ in range(TOTAL - 2 * PER_CLIENT)]
    await asyncio.sleep(0.2)  # the server has accepted them all
    head, _ = split(await answer(port, "127.0.0.7", health()))
    assert head.startswith(b"HTTP/1.1 503 "), head
    for _, writer in held:
        writer.close()
    for _ in range(100):  # the server notices the closed sockets within a moment
        head, _ = split(await answer(port, "127.0.0.7", health()))
        if head.startswith(b"HTTP/1.1 204 "):
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("no slot was freed by closing a client's sockets")
    for _, writer in others:
        writer.close()
    await asyncio.sleep(0.7)  # past the (shortened) log interval: the counted line is written

    records = [r for r in caplog.records if r.name == "xkslab.serve"]
    assert records, "refusals were not logged"
    assert all(r.exc_info is None for r in records)
    assert len(records) <= 4, [r.getMessage() for r in records]  # a line per interval, not per refusal
    assert not [r for r in caplog.records if r.name == "asyncio" or "Traceback" in r.getMessage()]
    refused_per_client = sum(
        int(r.getMessage().split("), ")[1].split(" ")[0]) for r in records if "refus" in r.getMessage()
    )
    assert refused_per_client == 7, [r.getMessage() for r in records]


async def test_the_proxy_and_kms_refuse_in_their_own_shapes(served: Served) -> None:
    for name, expected in (
        ("xks", (b"HTTP/1.1 429 ", "errorName", "ThrottlingException")),
        ("kms", (b"HTTP/1.1 400 ", "__type", "ThrottlingException")),
    ):
        port = served.ports[name]
        held = [await connect(port, "127.0.0.8") for _ in range(PER_CLIENT)]
        head, body = split(await answer(port, "127.0.0.8"))
        status, key, value = expected
        assert head.startswith(status), (name, head)
        assert body[key] == value, (name, body)
        for _, writer in held:
            writer.close()
