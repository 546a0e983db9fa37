"""What the services write to their logs, and how: one line per request per service (the access line),
a named line when a service starts and stops, and whatever else they log, as text or JSON lines on
stderr at the level asked for (``log.level``, ``log.format``, ``log.access``; ``--log-level`` and
``--log-format`` on ``up`` and every ``serve``).

The access line is aiohttp's own access-log hook (``AccessLine``): aiohttp calls it once per answered
request, and reads the clock for it only while the access logger is enabled, so a lab that does not log
requests pays nothing for them. It holds the route's path template, never the raw path (a key id, an
app id or a prefix stays out of it), and no header or body value: what a handler wants added
(operation, kmsRequestId, the error's name) it puts in ``request[ACCESS]``.

Requests refused at authentication (an XKS call whose SigV4 signature failed: the proxy's
``AuthenticationFailedException``, the key manager's ``AuthFailed``) are written one by one only for the
first ``REFUSAL_LINES_PER_WINDOW`` of a route in each ``REFUSAL_WINDOW_S``; the rest of the window are
counted and written as one line when it ends (``RefusalLines``), so that a flood of bad signatures
costs each process a counter, not a log line (and a megabyte of log a few seconds), per request. The
metrics still count every request, and the audit log every refusal (dsm_emulator/xks/refusals.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any, cast

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError

from xkslab_shared.config import LOG_FORMATS, LOG_LEVELS, LogFormat

# A request's item that handlers fill with what the access line adds: "operation", "kmsRequestId",
# "error", and "route" where the aiohttp route is a catch-all (the XKS proxy's).
ACCESS: web.RequestKey[dict[str, Any]] = web.RequestKey("xkslab_access", dict)
ACCESS_LOGGER = logging.getLogger("xkslab.access")
SERVICE_LOGGER = logging.getLogger("xkslab.service")
LEVELS = LOG_LEVELS
FORMATS = LOG_FORMATS
Format = LogFormat
NO_ROUTE = "(no route)"


def access(request: web.BaseRequest) -> dict[str, Any]:
    """The request's access-line extras, made on first use."""
    found = request.get(ACCESS)
    if found is None:
        found = request[ACCESS] = {}
    return found


def access_enabled() -> bool:
    """Whether access lines are written, so that a handler does work for its line only then."""
    return ACCESS_LOGGER.isEnabledFor(logging.INFO)


# The access lines' errors that are refusals at authentication (see the module's docstring).
SUMMARIZED_ERRORS = frozenset({"AuthenticationFailedException", "AuthFailed"})
REFUSAL_LINES_PER_WINDOW = 20
REFUSAL_WINDOW_S = 10.0


class RefusalLines:
    """Which refused requests get an access line of their own: the first ``per_window`` of each
    (service, method, route, status, error) in a window of ``window_s``; past them, a count, written as
    one line when the window ends (a timer on the running event loop; ``flush`` writes it at once)."""

    def __init__(
        self,
        per_window: int = REFUSAL_LINES_PER_WINDOW,
        window_s: float = REFUSAL_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_window = per_window
        self.window_s = window_s
        self._clock = clock
        self._started = float("-inf")
        self._seen: dict[tuple[str, str, str, int, str], int] = {}
        self._timer: asyncio.TimerHandle | None = None

    def admit(self, service: str, method: str, route: str, status: int, error: str) -> bool:
        """Whether this refusal gets its own line (else it is counted for the window's summary)."""
        now = self._clock()
        if now - self._started >= self.window_s:
            self.flush()
            self._started = now
        key = (service, method, route, status, error)
        seen = self._seen[key] = self._seen.get(key, 0) + 1
        if seen <= self.per_window:
            return True
        if self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return False  # no loop to end the window: the next refusal after it writes the count
            self._timer = loop.call_later(max(0.0, self._started + self.window_s - now), self.flush)
        return False

    def flush(self) -> int:
        """Write the window's counts of refusals not written one by one, and start a new window; returns
        how many summary lines were written."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        seen, self._seen = self._seen, {}
        self._started = float("-inf")
        written = 0
        for (service, method, route, status, error), n in seen.items():
            if n > self.per_window:
                ACCESS_LOGGER.info(
                    "%d further requests %s %s answered %d %s within %g s, not logged one by one",
                    n - self.per_window,
                    method,
                    route,
                    status,
                    error,
                    self.window_s,
                    extra={"service": service},
                )
                written += 1
        return written


REFUSAL_LINES = RefusalLines()  # this process's, shared by its access lines


class Later:
    """An access-line value worked out only if the line is written (the kmsRequestId read from a body:
    a refused request whose line is only counted need not parse it). A None it gives leaves it out."""

    __slots__ = ("make",)

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make


def _write(service: str, fields: dict[str, Any]) -> None:
    error = fields.get("error")
    if error in SUMMARIZED_ERRORS and not REFUSAL_LINES.admit(
        service, fields["method"], fields["route"], fields["status"], error
    ):
        return
    for name in [k for k, v in fields.items() if isinstance(v, Later)]:
        value = fields[name].make()
        if value is None:
            del fields[name]
        else:
            fields[name] = value
    _emit_access(fields, service)


class AccessLine(AbstractAccessLogger):
    """aiohttp's access logger for one service: ``log_format`` carries the service's name."""

    __slots__ = ()

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        extra = request.get(ACCESS) or {}
        fields = {
            "method": request.method,
            "route": extra.get("route") or _template(request),
            "status": response.status,
            "ms": round(time * 1000, 3),
        }
        fields.update((k, v) for k, v in extra.items() if k != "route" and v is not None)
        _write(self.log_format, fields)


def access_line(
    service: str, method: str, route: str, status: int, seconds: float, extra: dict[str, Any]
) -> None:
    """An access line for a request that did not come over HTTP (the key manager's framed link to the
    proxy: method ``LINK``), in the same shape as AccessLine's."""
    fields = {"method": method, "route": route, "status": status, "ms": round(seconds * 1000, 3)}
    fields.update((k, v) for k, v in extra.items() if v is not None)
    _write(service, fields)


def _emit_access(fields: dict[str, Any], service: str) -> None:
    """``ACCESS_LOGGER.info("request", extra={"access": fields, "service": service})``, the same line, written
    straight to the one handler it would reach when that handler is this module's own (``configure``: a
    StreamHandler with a LineFormatter, no filter, and no other handler on the way). A line per request in
    every service: logging's record, its walk up the loggers and its handler's calls were half of a line's
    cost (about 15 of 30 us, measured). Anything else set up (a test's capture, another handler, a filter,
    ``logging.disable``) gets the record through logging, as before."""
    handler = _only_handler()
    if handler is None:
        ACCESS_LOGGER.info("request", extra={"access": fields, "service": service})
        return
    formatter = cast(LineFormatter, handler.formatter)
    line = formatter.access(time.time(), service, fields)
    with handler.lock:  # type: ignore[union-attr]  # a Handler's lock, made by its __init__
        try:
            handler.stream.write(line + handler.terminator)
            handler.stream.flush()
        except RecursionError:
            raise
        except Exception:
            record = ACCESS_LOGGER.makeRecord(ACCESS_LOGGER.name, logging.INFO, "", 0, "request", (), None)
            handler.handleError(record)


def _only_handler() -> logging.StreamHandler[Any] | None:
    """The handler an access record would reach, when it is the only one and this module's (see above)."""
    logger: logging.Logger | None = ACCESS_LOGGER
    if ACCESS_LOGGER.disabled or ACCESS_LOGGER.filters or not ACCESS_LOGGER.isEnabledFor(logging.INFO):
        return None
    found: logging.StreamHandler[Any] | None = None
    while logger is not None:
        for handler in logger.handlers:
            if (
                found is not None
                or type(handler) is not logging.StreamHandler
                or type(handler.formatter) is not LineFormatter
                or handler.filters
                or handler.level > logging.INFO
            ):
                return None
            found = handler
        logger = logger.parent if logger.propagate else None
    return found


def _template(request: web.BaseRequest) -> str:
    match_info = getattr(request, "match_info", None)  # a request the parser refused has none
    route = getattr(match_info, "route", None)
    resource = getattr(route, "resource", None)
    return resource.canonical if resource is not None else NO_ROUTE


class LineFormatter(logging.Formatter):
    """One line per record: ``<time> <LEVEL> <service>: <message>``, or a JSON object with ``time``,
    ``level``, ``service`` and either the access line's fields (``event: "request"``) or ``logger`` and
    ``message``. A traceback is one escaped string in JSON, so every line parses."""

    def __init__(self, fmt: Format, service: str) -> None:
        super().__init__()
        self._json = fmt == "json"
        self._service = service
        self._second: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return self._when(record.created, int(record.msecs))

    def _when(self, created: float, msecs: int) -> str:
        second, seconds = self._second
        if int(created) != second:  # one strftime a second, not one a line (one per request)
            second = int(created)
            seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second, seconds  # one tuple: a formatter shared by threads sees a pair
        return f"{seconds}.{msecs:03d}Z"

    def access(self, created: float, service: str, fields: dict[str, Any]) -> str:
        """What ``format`` gives for an access record made at ``created`` (time.time()), without one."""
        when = self._when(created, int((created - int(created)) * 1000))  # LogRecord's msecs
        level = logging.getLevelName(logging.INFO)
        if self._json:
            line: dict[str, Any] = {"time": when, "level": level.lower(), "service": service}
            line.update(event="request", **fields)
            return json.dumps(line, default=str)
        return f"{when} {level} {service}: {_access_message(fields)}"

    def format(self, record: logging.LogRecord) -> str:
        when = self.formatTime(record)
        service = getattr(record, "service", self._service)
        fields: dict[str, Any] | None = getattr(record, "access", None)
        failure = self.formatException(record.exc_info) if record.exc_info else None
        if self._json:
            line: dict[str, Any] = {"time": when, "level": record.levelname.lower(), "service": service}
            if fields is not None:
                line.update(event="request", **fields)
            else:
                line.update(logger=record.name, message=record.getMessage())
            if failure:
                line["traceback"] = failure
            return json.dumps(line, default=str)
        if fields is not None:
            message = _access_message(fields)
        else:
            message = record.getMessage()
        text = f"{when} {record.levelname} {service}: {message}"
        return f"{text}\n{failure}" if failure else text


_TEXT_HEAD = frozenset({"method", "route", "status", "ms"})


def _access_message(fields: dict[str, Any]) -> str:
    rest = "".join(f" {k}={_word(v)}" for k, v in fields.items() if k not in _TEXT_HEAD)
    return f"{fields['method']} {fields['route']} {fields['status']} {fields['ms']}ms{rest}"


def _word(value: Any) -> str:
    """A value as one word of a text line: a client's string (a kmsRequestId is one) with a space or a
    control character is quoted, so that it cannot pass for more fields or another line."""
    text = str(value)
    return text if text.isprintable() and " " not in text and text else json.dumps(text)


def configure(level: str, fmt: Format, service: str) -> None:
    """Send this process's log records to stderr, one line each, from ``level`` up. Replaces what an
    earlier call set, so each serve command may call it once its settings are known."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h.formatter, LineFormatter)]:
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LineFormatter(fmt, service))
    root.addHandler(handler)
    root.setLevel(level.upper())
    # What a record gathers that no line here shows: the caller's file and line (a walk up the stack), the
    # thread's and the process's names. A tenth to a third of an access line's cost, paid by every request
    # (a flood of refused ones included: scripts/login_flood.py); the logging HOWTO's "Optimization".
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    # Alembic tells every schema check at info ("Context impl SQLiteImpl."): below the service's lines.
    logging.getLogger("alembic").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
    hide_malformed_requests()


def announcer(service: str) -> Callable[[str], None]:
    """What a service says as it starts and stops (``dsm: listening on ...``, ``dsm: stopped``)."""

    def announce(message: str) -> None:
        SERVICE_LOGGER.info("%s", message, extra={"service": service})

    return announce


class HideMalformedRequests(logging.Filter):
    """aiohttp logs a request it cannot parse with the parser's exception, whose message quotes the
    offending line (a header line whole, an overlong one by its first 100 bytes): an Authorization
    header with one stray byte put its API key in the log. Such records keep their message and the
    exception's class name, never its text or traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg = f"{record.msg} ({type(exc).__name__}: the request line and headers are not logged)"
            record.exc_info = None
            record.exc_text = None
        return True


def hide_malformed_requests() -> None:
    """Install HideMalformedRequests on aiohttp's server logger, once per process."""
    logger = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, HideMalformedRequests) for f in logger.filters):
        logger.addFilter(HideMalformedRequests())
