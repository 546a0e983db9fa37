"""The access line written straight to the service's handler (logs._emit_access) is the line logging
would have written, byte for byte, text and JSON; and anything else set up gets the record through
logging as before (a capture, a second handler, a filter, a level, logging.disable)."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

from xkslab_shared import logs

FIELDS: list[dict[str, Any]] = [
    {"operation": "encrypt", "kmsRequestId": "a1b2c3d4-1111-2222-3333-444455556666"},
    {"operation": "decrypt", "kmsRequestId": "with space\nand a newline", "error": "ValidationException"},
    {"kmsRequestId": "é ünï \u2028", "policy": {"rule": "r1", "allowed": False}},
    {},
]


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """The root logger as `configure` leaves it, writing to a StringIO; restored afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    out = io.StringIO()
    root.handlers = []
    yield out
    root.handlers, _ = saved
    root.setLevel(saved[1])


def _configure(out: io.StringIO, fmt: logs.Format, monkeypatch: pytest.MonkeyPatch) -> logging.Handler:
    monkeypatch.setattr("sys.stderr", out)
    logs.configure("info", fmt, "dsm")
    root = logging.getLogger()
    # pytest's own capture handlers, which it puts on the root logger for the test, are taken off it.
    root.handlers = [h for h in root.handlers if isinstance(h.formatter, logs.LineFormatter)]
    (handler,) = root.handlers
    return handler


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_direct_line_is_logging_s_line(
    fmt: logs.Format, stream: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = _configure(stream, fmt, monkeypatch)
    assert logs._only_handler() is handler
    for now in (1_765_000_000.123456, 1_765_000_000.9999, 1_765_000_001.0005):
        monkeypatch.setattr(time, "time", lambda now=now: now)
        for fields in FIELDS:
            for extra in (fields, {"route": "/x", **fields}):
                logs.access_line("dsm", "LINK", "/xks/v1/call", 200, 0.0012345, extra)
                direct = stream.getvalue()
                stream.seek(0)
                stream.truncate()
                line = {"method": "LINK", "route": "/xks/v1/call", "status": 200, "ms": 1.234}
                line.update((k, v) for k, v in extra.items() if v is not None)
                logs.ACCESS_LOGGER.info("request", extra={"access": line, "service": "dsm"})
                through_logging = stream.getvalue()
                stream.seek(0)
                stream.truncate()
                assert direct == through_logging
                assert direct.count("\n") == 1
                assert f".{int((now - int(now)) * 1000):03d}Z" in direct


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_anything_else_set_up_gets_the_record(stream: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> None:
    handler = _configure(stream, "text", monkeypatch)
    assert logs._only_handler() is handler
    root = logging.getLogger()

    def line() -> None:
        logs.access_line("dsm", "LINK", "/xks/v1/call", 200, 0.001, {"operation": "encrypt"})

    second = Collect()  # a second handler (a test's capture, a file): the record goes through logging
    for where in (root, logs.ACCESS_LOGGER):
        where.addHandler(second)
        try:
            assert logs._only_handler() is None
            line()
            assert len(second.records) == 1 and second.records[0].access["operation"] == "encrypt"  # type: ignore[attr-defined]
            assert "LINK /xks/v1/call 200" in stream.getvalue()
        finally:
            where.removeHandler(second)
            second.records.clear()
            stream.truncate(0)
            stream.seek(0)
    assert logs._only_handler() is handler
    refuse = logging.Filter("nothing")  # a filter on the access logger refuses its records
    logs.ACCESS_LOGGER.addFilter(refuse)
    try:
        assert logs._only_handler() is None
        line()
        assert stream.getvalue() == ""
    finally:
        logs.ACCESS_LOGGER.removeFilter(refuse)
    handler.setLevel(logging.WARNING)
    try:
        assert logs._only_handler() is None
        line()
        assert stream.getvalue() == ""
    finally:
        handler.setLevel(logging.NOTSET)
    logging.disable(logging.INFO)
    try:
        assert logs._only_handler() is None
        line()
        assert stream.getvalue() == ""
    finally:
        logging.disable(logging.NOTSET)
    assert logs._only_handler() is handler
    line()
    assert stream.getvalue().count("\n") == 1
