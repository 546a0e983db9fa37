"""Parsing a request body as JSON, for every service: one place that decides what JSON is acceptable.

Python's json module accepts what the rest of the stack cannot take, and each failure surfaced as a 500
far from the parser: nesting deep enough to exhaust the stack (RecursionError), integers past the
int-string conversion limit (ValueError) or past what a database column holds, lone surrogates (UTF-8
cannot encode them, so the database driver fails) and NUL (PostgreSQL text cannot hold it). Refusing
them here, with a message that names the rule, lets each service answer its own 4xx.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

# Far above anything the three APIs define (their deepest bodies nest three or four levels), far below
# the interpreter's recursion limit.
MAX_DEPTH = 32
# A signed 64-bit integer: what a BIGINT column holds, and more than any field of the three APIs needs.
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
_INT_MAX_CHARS = len(str(INT_MIN))
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# Field names quoted in messages; any other key (it may be the offending string itself) is shown as "?".
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


class JsonBodyError(ValueError):
    """The body is not JSON this service accepts; ``message`` names the rule and never quotes the body."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class JsonValueError(JsonBodyError):
    """Well-formed JSON with a string value no service may store (NUL): a validation error rather than a
    serialization error, for the APIs that tell the two apart."""


def loads(raw: bytes) -> Any:
    """The parsed body, or JsonBodyError. Strict UTF-8 (not json.loads(bytes), which also accepts UTF-16
    and UTF-32 and lets encoded surrogates through), no NaN or Infinity, integers within 64 bits, finite
    numbers, at most MAX_DEPTH levels, and no string (key or value) with a lone surrogate or NUL."""
    fast = _fast(raw)
    if fast is not _SLOW:
        return fast
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise JsonBodyError("the request body is not UTF-8") from None
    try:
        data = json.loads(text, parse_int=_int, parse_float=_float, parse_constant=_constant)
    except RecursionError:
        # The C scanner stops at the recursion limit: anything that deep is far past MAX_DEPTH.
        raise _too_deep() from None
    except JsonBodyError:
        raise
    except ValueError as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "malformed"
        raise JsonBodyError(f"the request body is not valid JSON ({reason})") from None
    if "\\u" not in text and text.count("{") + text.count("[") <= MAX_DEPTH:
        # Nothing for the walk to find, and it was a tenth of the key manager's time per XKS call: a NUL or
        # a lone surrogate reaches a parsed string only through a \u escape (strict UTF-8 refused raw
        # surrogates, and the parser refuses raw control characters in strings), and a body with at most
        # MAX_DEPTH brackets cannot nest deeper.
        return data
    try:
        _check(data, 1)
    except _BadString as exc:
        raise exc.error() from None
    return data


_SLOW = object()


def _fast(raw: bytes) -> Any:
    """orjson's parse when it is provably the value the standard parser gives and loads() accepts it,
    else _SLOW (then the standard parser decides, with its messages): an XKS body in 4.3 us instead of
    6.6-7.4, and every service parses one per request. Both refuse invalid UTF-8, a BOM, raw control
    characters in strings, NaN, trailing data, and give duplicate keys the last value. Only a \\u
    escape can bring in a NUL or a lone surrogate (so a body with one goes the slow way), the bracket
    count bounds the depth, and a number is accepted here only as an integer within 64 bits (floats and
    larger integers, whose parses or limits could differ, go the slow way)."""
    if b"\\u" in raw or raw.count(b"{") + raw.count(b"[") > MAX_DEPTH:
        return _SLOW
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _SLOW
    return data if _plain(data) else _SLOW


def _plain(value: Any) -> bool:
    # A loop over a stack, not recursion: this walk is most of the fast path's time. orjson gives exactly
    # dict, list, str, int, float, bool and None.
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is str or item is None or kind is bool:
            continue
        if kind is dict:
            stack.extend(item.values())
        elif kind is list:
            stack.extend(item)
        elif kind is not int or not INT_MIN <= item <= INT_MAX:
            return False
    return True


def loads_object(raw: bytes) -> dict[str, Any]:
    """A JSON object from a peer that authenticated itself (the proxy on the framed link), held to the same
    rules as loads() at orjson's speed: orjson refuses invalid UTF-8 and raw control characters itself,
    so only a \\u escape can bring in a NUL or a lone surrogate, and only then is the value walked."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise JsonBodyError("the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise JsonBodyError("the request body is not a JSON object")
    if b"\\u" in raw:
        try:
            _check(data, 1)
        except _BadString as exc:
            raise exc.error() from None
    return data


def dumps(data: Any) -> bytes:
    """Compact JSON (one line, as the XKS spec asks) for every service's responses and the proxy's link
    to the key manager. orjson: the standard encoder was 3-5 % of each service's time per request."""
    return orjson.dumps(data)


def parse_trusted(raw: bytes) -> Any:
    """JSON from a party this process trusts to send well-formed, bounded JSON (the key manager's answers
    to the proxy); ValueError if it is not JSON. Untrusted bodies go through loads()."""
    return orjson.loads(raw)


def _int(text: str) -> int:
    # Checked on the digits, before int() converts them: a 5,000-digit literal never becomes a number.
    if len(text) > _INT_MAX_CHARS or not INT_MIN <= (value := int(text)) <= INT_MAX:
        raise JsonBodyError("the request body has an integer outside the signed 64-bit range")
    return value


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JsonBodyError("the request body has a number too large to represent")
    return value


def _constant(name: str) -> Any:
    raise JsonBodyError(f"the request body is not valid JSON ({name} is not a JSON value)")


def _too_deep() -> JsonBodyError:
    return JsonBodyError(f"the request body nests deeper than {MAX_DEPTH} levels")


def _check(value: Any, depth: int) -> None:
    if isinstance(value, str):
        _check_string(value)
    elif isinstance(value, dict):
        if depth > MAX_DEPTH:
            raise _too_deep()
        for key, item in value.items():
            try:
                _check_string(key)
                _check(item, depth + 1)
            except _BadString as exc:
                exc.where.insert(0, key)
                raise
    elif isinstance(value, list):
        if depth > MAX_DEPTH:
            raise _too_deep()
        for index, item in enumerate(value):
            try:
                _check(item, depth + 1)
            except _BadString as exc:
                exc.where.insert(0, index)
                raise


class _BadString(Exception):
    """Raised at the string and given its place on the way out, so the happy path builds no paths."""

    def __init__(self, problem: str, value_error: bool) -> None:
        self.problem = problem
        self.value_error = value_error
        self.where: list[str | int] = []

    def error(self) -> JsonBodyError:
        place = "".join(
            f"[{part}]" if isinstance(part, int) else f".{part}" if _NAME.fullmatch(part) else ".?"
            for part in self.where
        ).lstrip(".")
        message = f"the request body has {self.problem}" + (f" at {place}" if place else "")
        return JsonValueError(message) if self.value_error else JsonBodyError(message)


def _check_string(text: str) -> None:
    if text.isascii():
        if "\x00" in text:
            raise _BadString("a string with a NUL character", value_error=True)
        return
    found = _UNSTORABLE.search(text)
    if found is None:
        return
    if found.group() == "\x00":
        raise _BadString("a string with a NUL character", value_error=True)
    raise _BadString("a string that is not Unicode text (a lone surrogate)", value_error=False)
