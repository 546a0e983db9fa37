"""The framed link's nodes over time (see test_framed_link.py for the set-up): a key manager that goes away
and comes back, its socket file, a node that never answers, fail-over within the one deadline, and the
link's settings."""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_framed_link import MAX_PAYLOAD, TIMEOUT_S, TOKEN, Node, _call, _client
from xks_frontend.dsm_client import DsmClient, DsmUnreachable
from xks_frontend.link_client import LinkDown, LinkNode
from xkslab_shared.link_frames import LinkAddress


async def test_calls_in_flight_fail_when_the_dsm_goes_away_and_the_link_reconnects_after_it_restarts(
    tmp_path: Path,
) -> None:
    address = LinkAddress(path=tmp_path / "dsm-link.sock")
    first = await Node(address).start()
    first.held["held"] = asyncio.Event()
    client = _client([first.url], connections=2)
    try:
        assert await client.call(_call("before")) == {"key": "before"}
        in_flight = asyncio.create_task(client.call(_call("held")))
        await first.started.setdefault("held", asyncio.Event()).wait()
        await first.stop()
        with pytest.raises(DsmUnreachable):  # at once: at the deadline it would be DsmTimeout
            await in_flight
        with pytest.raises(DsmUnreachable):  # nothing listens: refused
            await client.call(_call("down"))
        second = await Node(address).start()  # the same socket path, as a restarted DSM
        try:
            assert await client.call(_call("again")) == {"key": "again"}
        finally:
            await second.stop()
    finally:
        await client.close()


async def test_a_live_socket_is_not_taken_over_and_a_stale_one_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "dsm-link.sock"

    probed = asyncio.Event()

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()
        probed.set()

    live = await asyncio.start_unix_server(hang_up, str(path))  # another process serving the path
    try:
        with pytest.raises(OSError, match="served by another process"):
            await Node(LinkAddress(path=path)).start()
        # (asyncio 3.11 leaks a connection accepted while its server closes: let the probe's be served)
        await asyncio.wait_for(probed.wait(), TIMEOUT_S)
    finally:
        live.close()
        await live.wait_closed()
    path.unlink()
    with socket.socket(socket.AF_UNIX) as dead:  # a socket file left by a process that died
        dead.bind(str(path))
    assert path.exists()
    again = await Node(LinkAddress(path=path)).start()
    try:
        client = _client([again.url])
        try:
            assert await client.call(_call()) == {"key": "k1"}
        finally:
            await client.close()
        assert path.stat().st_mode & 0o777 == 0o600
    finally:
        await again.stop()
    assert not path.exists()  # removed on a clean stop


async def test_a_socket_path_longer_than_sun_path_still_works(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    node = await Node(LinkAddress(path=deep / "dsm-link.sock")).start()
    try:
        assert len(node.url) > 120
        client = _client([node.url])
        try:
            assert await client.call(_call()) == {"key": "k1"}
        finally:
            await client.close()
    finally:
        await node.stop()


async def test_a_node_that_never_answers_the_token_is_given_up(tmp_path: Path) -> None:
    """A stalled key manager: it accepts and reads, and answers nothing (not even the token)."""

    held: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        while await reader.read(65536):
            pass

    server = await asyncio.start_unix_server(swallow, str(tmp_path / "stalled.sock"))
    node = LinkNode(LinkAddress(path=tmp_path / "stalled.sock"), TOKEN, size=1, max_payload=MAX_PAYLOAD)
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await node.request({"op": "prefixes"})
    finally:
        await node.close()
        for writer in held:
            writer.close()
        server.close()
        await asyncio.sleep(0)
    with pytest.raises(LinkDown):  # nothing listens any more: refused, at once
        await LinkNode(LinkAddress(path=tmp_path / "absent.sock"), TOKEN, size=1, max_payload=10).request({})


# ------------------------------------------------------------------------------------------ settings


def test_link_settings_are_checked_at_load(tmp_path: Path) -> None:
    from xkslab_shared.config import ConfigError, load_settings

    ok = load_settings(
        tmp_path,
        {"xks.dsm_urls": "link+unix:///x/dsm-link.sock, link://10.0.0.2:8501, https://dsm:8443"},
        environ={"XKSLAB_DSM_LINK": "tcp:0.0.0.0:0", "XKSLAB_XKS_DSM_LINK_CONNECTIONS": "3"},
    )
    assert ok.dsm.link == "tcp:0.0.0.0:0" and ok.xks.dsm_link_connections == 3
    assert load_settings(tmp_path, environ={}).dsm.link == "run/dsm-link.sock"
    for overrides, named in [
        ({"xks.dsm_urls": "link://127.0.0.1"}, "xks.dsm_urls"),
        ({"xks.dsm_urls": "link+unix://relative.sock"}, "xks.dsm_urls"),
        ({"xks.dsm_urls": "ftp://dsm"}, "xks.dsm_urls"),
        ({"xks.dsm_link_connections": "0"}, "xks.dsm_link_connections"),
        ({"xks.dsm_link_connections": "65"}, "xks.dsm_link_connections"),
        ({"dsm.link": "tcp:nohost"}, "dsm.link"),
        ({"dsm.link": "tcp:h:99999"}, "dsm.link"),
    ]:
        with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
            load_settings(tmp_path, overrides, environ={})


async def test_fail_over_from_a_stalled_link_node_keeps_the_one_deadline(tmp_path: Path) -> None:
    """As over HTTP (test_dsm_client.py): the first node accepts and never answers, the second is given only
    what is left of the one deadline, and told so in its budget. A Decrypt: an Encrypt is not asked
    again after a timeout (dsm_client.py)."""
    held: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        while await reader.read(65536):
            pass

    stalled = await asyncio.start_unix_server(swallow, str(tmp_path / "stalled.sock"))
    answering = await Node(LinkAddress(path=tmp_path / "answering.sock")).start()
    seen: list[tuple[float, int]] = []  # (monotonic time of arrival, budget_ms it was given)
    handle = answering.server.handle

    async def recording(request: dict[str, Any]) -> dict[str, Any]:
        seen.append((time.monotonic(), int(request["call"]["budget_ms"])))
        return await handle(request)

    answering.server.handle = recording
    timeout_ms = 2000
    client = DsmClient(
        [f"link+unix://{tmp_path / 'stalled.sock'}", answering.url],
        TOKEN,
        timeout_s=timeout_ms / 1000,
        ssl_context=None,
        link_max_answer_bytes=MAX_PAYLOAD,
    )
    try:
        started = time.monotonic()
        assert await client.call(replace(_call(), operation="decrypt")) == {"key": "k1"}
    finally:
        await client.close()
        await answering.stop()
        for writer in held:
            writer.close()
        stalled.close()
        await asyncio.sleep(0)
    [(arrived, budget_ms)] = seen
    # What was spent on the stalled node plus the second node's budget fit in the one deadline ...
    assert (arrived - started) * 1000 + budget_ms <= timeout_ms
    # ... and the stalled node did not get all of it: the second one had a real turn.
    assert budget_ms >= timeout_ms / 4
