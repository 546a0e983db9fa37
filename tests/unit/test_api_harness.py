"""The handler tests' app (tests/api_harness.py) maps errors with the DSM's own middleware, so what those
tests see is what a client of the real service gets: a 429 with Retry-After, the 413 of a body past
dsm.max_body_bytes, and an unexpected exception as a bare 500 whose detail only the log has."""

from __future__ import annotations

import io
import logging
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web

from dsm_emulator.api import crypto
from dsm_emulator.errors import TooManyAttempts
from tests import api_harness

template = api_harness.template
env = api_harness.env

probes = web.RouteTableDef()


@probes.post("/test/too-many")
async def too_many(request: web.Request) -> web.Response:
    raise TooManyAttempts("too many failed logins", retry_after_s=17)


@probes.post("/test/crash")
async def crash(request: web.Request) -> web.Response:
    raise RuntimeError("detail only for the log: secret-ish 5f3a")


async def test_the_harness_answers_as_the_service_does(
    env: SimpleNamespace, aiohttp_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    client = await api_harness.route_client(env, aiohttp_client, probes, crypto.routes)

    resp = await client.post("/test/too-many")
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "17"
    assert await resp.json() == {"message": "too many failed logins"}

    limit = env.core.settings.dsm.max_body_bytes
    resp = await client.post("/crypto/v1/encrypt", data=io.BytesIO(b"{" + b" " * limit + b"}"))
    assert resp.status == 413
    assert await resp.json() == {"message": "request body is too large"}

    with caplog.at_level(logging.ERROR, logger="dsm_emulator.api"):
        resp = await client.post("/test/crash")
        text = await resp.text()
    assert resp.status == 500
    assert resp.content_type == "application/json"
    assert await resp.json() == {"message": "internal error"}
    assert "5f3a" not in text and "RuntimeError" not in text
    assert any(r.exc_info and "5f3a" in str(r.exc_info[1]) for r in caplog.records)
