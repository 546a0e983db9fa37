"""xkslab_shared.json_body: what every service accepts as a JSON body, and the one exception for the rest."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xkslab_shared import json_body
from xkslab_shared.json_body import MAX_DEPTH, JsonBodyError, JsonValueError

REFUSED = [
    pytest.param(b"[" * 100_000 + b"]" * 100_000, "nests deeper", id="deep-100000"),
    pytest.param(b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), "nests deeper", id="deep-limit+1"),
    pytest.param(
        b'{"a":' * (MAX_DEPTH + 1) + b"1" + b"}" * (MAX_DEPTH + 1), "nests deeper", id="deep-objects"
    ),
    pytest.param(b"9" * 5000, "64-bit", id="5000-digits"),
    pytest.param(b"-" + b"9" * 5000, "64-bit", id="5000-digits-negative"),
    pytest.param(str(2**63).encode(), "64-bit", id="2**63"),
    pytest.param(str(-(2**63) - 1).encode(), "64-bit", id="-2**63-1"),
    pytest.param(b"1e400", "too large", id="float-overflow"),
    pytest.param(b"NaN", "NaN", id="nan"),
    pytest.param(b"-Infinity", "Infinity", id="infinity"),
    pytest.param(b'"\\ud800x"', "lone surrogate", id="escaped-high-surrogate"),
    pytest.param(b'"\\udc00"', "lone surrogate", id="escaped-low-surrogate"),
    pytest.param(b'{"a": ["\\ud800\\ud800"]}', "(a lone surrogate) at a[0]", id="two-high-surrogates"),
    pytest.param(b'"\xed\xa0\x80"', "not UTF-8", id="encoded-surrogate"),
    pytest.param(b"\xff", "not UTF-8", id="not-utf8"),
    pytest.param('{"a": 1}'.encode("utf-16"), "not UTF-8", id="utf-16"),
    pytest.param(b'{"a": 1', "not valid JSON", id="truncated"),
    pytest.param(b"", "not valid JSON", id="empty"),
]


@pytest.mark.parametrize(("raw", "reason"), REFUSED)
def test_refused_bodies_name_the_rule(raw: bytes, reason: str) -> None:
    with pytest.raises(JsonBodyError) as caught:
        json_body.loads(raw)
    assert reason in caught.value.message
    assert type(caught.value) is JsonBodyError


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        (b'"a\\u0000b"', None),
        (b'{"name": "a\\u0000b"}', "name"),
        (b'{"tags": [{"k": "\xc3\xa9\\u0000"}]}', "tags[0].k"),
        (b'{"a\\u0000": 1}', "?"),
    ],
)
def test_nul_is_a_value_error_with_its_place(raw: bytes, where: str | None) -> None:
    with pytest.raises(JsonValueError) as caught:
        json_body.loads(raw)
    assert "NUL" in caught.value.message
    assert caught.value.message.endswith(f" at {where}") if where else " at " not in caught.value.message


@pytest.mark.parametrize(
    "value",
    [
        {"name": "k", "key_size": 256, "enabled": True, "x": None, "f": 1.5},
        ["\U0001f600 a surrogate pair, escaped or not", "é"],
        2**63 - 1,
        -(2**63),
        json.loads("[" * MAX_DEPTH + "]" * MAX_DEPTH),
    ],
)
def test_accepted_bodies_round_trip(value: Any) -> None:
    for ensure_ascii in (True, False):
        assert json_body.loads(json.dumps(value, ensure_ascii=ensure_ascii).encode()) == value


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_parse_or_raise_json_body_error(raw: bytes) -> None:
    try:
        json_body.loads(raw)
    except JsonBodyError:
        pass


_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        _SCALARS, lambda inner: st.lists(inner) | st.dictionaries(st.text(max_size=8), inner), max_leaves=30
    )
)
def test_any_json_value_round_trips_or_is_refused_for_a_rule(value: Any) -> None:
    """Whatever Python's json writes (NaN, huge integers and lone surrogates included), the result is
    the same value back or a JsonBodyError: never another exception."""
    raw = json.dumps(value).encode()
    try:
        parsed = json_body.loads(raw)
    except JsonBodyError as exc:
        assert exc.message.startswith("the request body ")
        return
    assert json.dumps(parsed) == json.dumps(value)


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        _SCALARS, lambda inner: st.lists(inner) | st.dictionaries(st.text(max_size=8), inner), max_leaves=30
    ),
    st.booleans(),
)
def test_the_fast_path_accepts_nothing_the_full_check_refuses(value: Any, ascii_only: bool) -> None:
    """loads() skips its walk over the parsed value when the text cannot hold what the walk refuses; the
    walk, run anyway on whatever loads() accepted, must agree."""
    raw = json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    try:
        parsed = json_body.loads(raw)
    except JsonBodyError:
        return
    json_body._check(parsed, 1)  # raises _BadString (or JsonBodyError) if the fast path let one through


def _standard(raw: bytes) -> tuple[str, Any]:
    """What loads() gives without its orjson path: ("value", parsed) or ("refused", message)."""
    original = json_body._fast
    json_body._fast = lambda raw: json_body._SLOW  # type: ignore[assignment]
    try:
        return "value", json_body.loads(raw)
    except JsonBodyError as exc:
        return "refused", exc.message
    finally:
        json_body._fast = original  # type: ignore[assignment]


def _both(raw: bytes) -> None:
    try:
        got: tuple[str, Any] = "value", json_body.loads(raw)
    except JsonBodyError as exc:
        got = "refused", exc.message
    expected = _standard(raw)
    assert got[0] == expected[0]
    if got[0] == "value":  # the same value, of the same types and key order (repr tells 1 from 1.0)
        assert repr(got[1]) == repr(expected[1])
    else:
        assert got[1] == expected[1]


_ORJSON_EDGES = [
    b'{"a": 1, "a": 2, "b": 3, "a": 4}',
    b"  {}  ",
    b"\xef\xbb\xbf{}",
    b'{"a": "x\ty"}',
    b"{}\x00",
    b'{"a": -0}',
    b"[1,]",
    b'{"a": 1e400}',
    b'{"a": 1.0, "b": 1E2, "c": -0.0}',
    b'{"a": 18446744073709551615}',
    b'{"a": 9223372036854775808}',
    b'{"a": -9223372036854775809}',
    b'{"a": 123456789012345678901234567890}',
    b'{"a": "\\n\\t\\"\\\\\\/\\b\\f\\r"}',
    b'{"a": "\xc3\xa9\xf0\x9f\x98\x80"}',
    b'{"a": "\xed\xa0\x80"}',
    b'{"a": true, "b": false, "c": null, "d": [[], {}]}',
    b"[" * MAX_DEPTH + b"]" * MAX_DEPTH,
    b'{"requestMetadata": {"kmsRequestId": "r", "kmsOperation": "Encrypt"}, "plaintext": "AA=="}',
]


@pytest.mark.parametrize("raw", _ORJSON_EDGES)
def test_the_orjson_path_gives_what_the_standard_parser_gives(raw: bytes) -> None:
    _both(raw)


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        _SCALARS, lambda inner: st.lists(inner) | st.dictionaries(st.text(max_size=8), inner), max_leaves=30
    ),
    st.booleans(),
)
def test_the_orjson_path_agrees_on_any_json_value(value: Any, ascii_only: bool) -> None:
    _both(json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass"))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_the_orjson_path_agrees_on_any_bytes(raw: bytes) -> None:
    _both(raw)
