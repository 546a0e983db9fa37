"""The access line on a real server (xkslab_shared.serve on loopback), in both formats: the route's
template and never the raw path (no route: a placeholder), a client's string quoted so it cannot forge
fields or lines, and no line at all with ``log.access`` off."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from aiohttp import web

from xkslab_shared import logs, serve

RAW_ID = "3f0c9a54-secret-looking-id"


async def item(request: web.Request) -> web.Response:
    logs.access(request).update(operation="GetItem", kmsRequestId='two words\nand "a line"')
    return web.json_response({"id": request.match_info["item_id"]})


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/items/{item_id}", item)
    return app


@contextlib.asynccontextmanager
async def server(*, access_log: bool) -> AsyncIterator[str]:
    listener = serve.Listener("test", make_app(), "127.0.0.1", 0, service="svc", access_log=access_log)
    async with contextlib.AsyncExitStack() as stack:
        (url,) = await serve.start(stack, listener, lambda _: None)
        yield url


def lines(caplog: pytest.LogCaptureFixture, fmt: logs.Format) -> list[str]:
    formatter = logs.LineFormatter(fmt, "default")
    return [formatter.format(r) for r in caplog.records if r.name == logs.ACCESS_LOGGER.name]


async def test_one_line_per_request_with_the_template_in_either_format(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=logs.ACCESS_LOGGER.name)
    async with server(access_log=True) as url, aiohttp.ClientSession() as http:
        async with http.get(f"{url}/items/{RAW_ID}") as response:
            assert response.status == 200
        async with http.get(f"{url}/nothing/{RAW_ID}") as response:
            assert response.status == 404
    found = [json.loads(line) for line in lines(caplog, "json")]
    assert [(f["method"], f["route"], f["status"]) for f in found[:2]] == [
        ("GET", "/items/{item_id}", 200),
        ("GET", logs.NO_ROUTE, 404),
    ]
    assert found[0]["service"] == "svc" and found[0]["operation"] == "GetItem" and found[0]["ms"] >= 0
    assert found[0]["kmsRequestId"] == 'two words\nand "a line"'
    assert len(found) == 2
    text = lines(caplog, "text")
    assert all("\n" not in line for line in text)
    assert " svc: GET /items/{item_id} 200 " in text[0]
    assert 'operation=GetItem kmsRequestId="two words\\nand \\"a line\\""' in text[0]
    assert all(RAW_ID not in line for line in text)


async def test_no_access_line_when_log_access_is_off(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=logs.ACCESS_LOGGER.name)
    async with server(access_log=False) as url, aiohttp.ClientSession() as http:
        async with http.get(f"{url}/items/{RAW_ID}") as response:
            assert response.status == 200
    assert lines(caplog, "json") == []


def test_a_plain_record_names_its_service_and_keeps_its_traceback_on_one_json_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError as exc:
        record = logging.LogRecord(
            "x.y", logging.ERROR, __file__, 1, "failed %s", ("here",), (ValueError, exc, None)
        )
    record.service = "dsm"
    line = json.loads(logs.LineFormatter("json", "default").format(record))
    assert (line["service"], line["level"], line["logger"], line["message"]) == (
        "dsm",
        "error",
        "x.y",
        "failed here",
    )
    assert "ValueError: boom" in line["traceback"]
    text = logs.LineFormatter("text", "default").format(record)
    assert text.split("\n")[0].endswith(" ERROR dsm: failed here")


def test_the_time_of_each_line_is_its_own_across_seconds() -> None:
    """The formatter keeps the formatted second between lines: a line in the next second, or back in an
    earlier one, still shows its own time, to the millisecond."""
    formatter = logs.LineFormatter("text", "svc")

    def at(created: float) -> str:
        record = logging.LogRecord("x", logging.INFO, "", 0, "m", None, None)
        record.created, record.msecs = created, (created - int(created)) * 1000
        return formatter.format(record).split(" ", 1)[0]

    assert at(1_800_000_000.25) == "2027-01-15T08:00:00.250Z"
    assert at(1_800_000_000.75) == "2027-01-15T08:00:00.750Z"
    assert at(1_800_000_001.0625) == "2027-01-15T08:00:01.062Z"
    assert at(1_799_999_999.5) == "2027-01-15T07:59:59.500Z"


def refusing_listener(request_id: Callable[[], str | None]) -> serve.Listener:
    """The test app plus ``POST /refused``, answered 401 AuthenticationFailedException with a
    ``kmsRequestId`` read (lazily, as the services do) from ``request_id``."""

    async def refused(request: web.Request) -> web.Response:
        logs.access(request).update(
            error="AuthenticationFailedException", kmsRequestId=logs.Later(request_id)
        )
        return web.json_response({"errorName": "AuthenticationFailedException"}, status=401)

    app = make_app()
    app.router.add_post("/refused", refused)
    return serve.Listener("test", app, "127.0.0.1", 0, service="svc", access_log=True)


async def test_refusals_at_authentication_past_the_first_of_a_window_are_one_counted_line(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flood of requests refused at authentication costs a counter each, not a line each: the first
    of a window are written (with their lazily read fields), the rest counted on one line when the
    window ends; other answers are all written."""
    import asyncio

    refusals = logs.RefusalLines(per_window=3, window_s=0.3)
    monkeypatch.setattr(logs, "REFUSAL_LINES", refusals)
    reads: list[str] = []

    def request_id() -> str:
        reads.append("read")
        return "req-1"

    caplog.set_level(logging.INFO, logger=logs.ACCESS_LOGGER.name)
    listener = refusing_listener(request_id)
    async with contextlib.AsyncExitStack() as stack, aiohttp.ClientSession() as http:
        (url,) = await serve.start(stack, listener, lambda _: None)
        for _ in range(8):
            async with http.post(f"{url}/refused") as response:
                assert response.status == 401
        async with http.get(f"{url}/items/x") as response:
            assert response.status == 200
        for _ in range(200):  # the window's timer writes the count (no wall-clock budget: up to 20 s)
            if any("further" in r.getMessage() for r in caplog.records):
                break
            await asyncio.sleep(0.1)
    records = [r for r in caplog.records if r.name == logs.ACCESS_LOGGER.name]
    written = [r.access for r in records if getattr(r, "access", {}).get("status") == 401]  # type: ignore[attr-defined]
    assert [line["kmsRequestId"] for line in written] == ["req-1"] * 3
    assert len(reads) == 3  # the five counted ones never read their id
    assert [r.access["status"] for r in records if hasattr(r, "access")].count(200) == 1  # type: ignore[attr-defined]
    (summary,) = [r.getMessage() for r in records if not hasattr(r, "access")]
    assert summary == (
        "5 further requests POST /refused answered 401 AuthenticationFailedException within 0.3 s, "
        "not logged one by one"
    )
    assert json.loads(logs.LineFormatter("json", "x").format(records[-1]))["service"] == "svc"
    assert refusals.flush() == 0  # nothing left to count


async def test_the_count_of_an_open_window_is_written_when_the_listener_stops(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A service stopped in the middle of a window still says how many refusals it did not log."""
    refusals = logs.RefusalLines(per_window=2, window_s=3600)
    monkeypatch.setattr(logs, "REFUSAL_LINES", refusals)

    caplog.set_level(logging.INFO, logger=logs.ACCESS_LOGGER.name)
    listener = refusing_listener(lambda: None)
    async with contextlib.AsyncExitStack() as stack, aiohttp.ClientSession() as http:
        (url,) = await serve.start(stack, listener, lambda _: None)
        for _ in range(6):
            async with http.post(f"{url}/refused") as response:
                assert response.status == 401
        assert not any("further" in r.getMessage() for r in caplog.records)  # the window is open
    summaries = [r.getMessage() for r in caplog.records if "further" in r.getMessage()]
    assert summaries == [
        "4 further requests POST /refused answered 401 AuthenticationFailedException within 3600 s, "
        "not logged one by one"
    ]


def test_refusals_are_counted_per_route() -> None:
    refusals = logs.RefusalLines(per_window=1, window_s=60, clock=lambda: 0.0)
    assert refusals.admit("s", "LINK", "/r", 200, "AuthFailed")
    assert not refusals.admit("s", "LINK", "/r", 200, "AuthFailed")
    assert refusals.admit("s", "LINK", "/other", 200, "AuthFailed")  # counted per route
    assert refusals.flush() == 1


async def test_the_line_of_a_refusal_leaves_out_a_later_none(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=logs.ACCESS_LOGGER.name)
    logs.access_line(
        "dsm", "LINK", "/r", 200, 0.001, {"error": "AuthFailed", "kmsRequestId": logs.Later(lambda: None)}
    )
    (record,) = [r for r in caplog.records if r.name == logs.ACCESS_LOGGER.name]
    assert record.access == {"method": "LINK", "route": "/r", "status": 200, "ms": 1.0, "error": "AuthFailed"}  # type: ignore[attr-defined]
