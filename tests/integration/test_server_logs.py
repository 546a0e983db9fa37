"""A request aiohttp cannot parse is logged without its header lines (issue 11 #9): an Authorization
header with one stray byte used to put the API key in the server log, whole, at ERROR level.

The three services are started as ``xkslab up`` starts them, through xkslab_shared.serve, and each one
still serves the next request."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from dsm_emulator.api.app import create_app as create_dsm_app
from dsm_emulator.api.context import CORE_KEY
from dsm_emulator.authz import system_principal
from kms_emulator.app import create_app as create_kms_app
from tests.xks_harness import xks_template
from xks_frontend.app import create_app as create_xks_app
from xkslab_shared import logs, serve
from xkslab_shared.config import Settings, load_settings
from xkslab_shared.proxy_link import read_token

__all__ = ["xks_template"]  # a fixture, used by name

# (service, its app, a request that must still succeed afterwards: method, path, headers, expected status)
SERVICES: dict[str, tuple[Callable[[Settings], web.Application], str, str, dict[str, str], int]] = {
    "dsm": (create_dsm_app, "GET", "/sys/v1/health", {}, 204),
    "xks": (create_xks_app, "GET", "/ping", {}, 200),
    "kms": (create_kms_app, "POST", "/", {"X-Amz-Target": "TrentService.ListKeys"}, 200),
}
SECRET = "S3cr3tApiKeyThatMustNotBeLogged"


MALFORMED = {
    "dsm": {"message": serve.MALFORMED_MESSAGE},
    "xks": {"errorName": "ValidationException", "errorMessage": serve.MALFORMED_MESSAGE},
    "kms": {"__type": "ValidationException", "message": serve.MALFORMED_MESSAGE},
}


def malformed_lines(api_key: str) -> dict[str, bytes]:
    credential = f"Authorization: Basic {api_key}".encode()
    return {
        "control-character": credential + b"\x01",
        "nul": credential + b"\x00tail",
        "overlong": credential + b"A" * 9000,  # past aiohttp's 8190-byte line limit
        "bad-name": b"Auth\x7forization: Basic " + api_key.encode(),
    }


async def send_raw(port: int, header_line: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + header_line + b"\r\nConnection: close\r\n\r\n"
        )
        await writer.drain()
        return await reader.read()
    finally:
        writer.close()


@pytest.mark.parametrize("service", list(SERVICES))
async def test_a_malformed_header_line_is_not_logged(
    service: str,
    xks_template: tuple[Path, dict[str, Any]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    source, _info = xks_template
    data_dir = tmp_path / "data"
    shutil.copytree(source, data_dir)
    make_app, method, path, headers, status = SERVICES[service]
    settings = load_settings(data_dir, environ={})
    # The DSM writes the token the proxy reads; here the proxy may start first.
    read_token(settings.path(settings.xks.dsm_token_file), create=True)
    app = make_app(settings)
    caplog.set_level(logging.DEBUG, logger="aiohttp")
    async with contextlib.AsyncExitStack() as stack:
        (url,) = await serve.start(stack, serve.Listener(service, app, "127.0.0.1", 0), lambda _: None)
        port = int(url.rsplit(":", 1)[1])
        api_key = base64.b64encode(f"app:{SECRET}".encode()).decode()
        if service == "dsm":
            # A real API key, so that what must not leak is a credential that works.
            core = app[CORE_KEY]
            acct_id = _info["acct_id"]
            made, secret = await core.admin.create_app(
                system_principal(acct_id), "logged", groups={_info["default_group_id"]: frozenset({"MANAGE"})}
            )
            api_key = base64.b64encode(f"{made.app_id}:{secret}".encode()).decode()
        for label, line in malformed_lines(api_key).items():
            caplog.clear()
            answer = await send_raw(port, line)
            assert answer.startswith(b"HTTP/1.") and b" 400 " in answer.split(b"\r\n", 1)[0], (label, answer)
            # In the service's own error shape, not aiohttp's plain text, and quoting nothing it was sent.
            head, _, body = answer.partition(b"\r\n\r\n")
            assert json.loads(body) == MALFORMED[service], (label, answer)
            assert b"Content-Type: application/" in head, (label, head)
            assert api_key.encode() not in answer and SECRET.encode() not in answer
            logged = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
            assert caplog.records, f"{label}: aiohttp logged nothing: was the request refused by the parser?"
            for needle in (api_key, api_key[:12], SECRET):
                assert needle not in logged, (label, logged)
        async with aiohttp.ClientSession() as http, http.request(method, url + path, headers=headers) as r:
            assert r.status == status, await r.text()
        if service == "dsm":
            async with (
                aiohttp.ClientSession() as http,
                http.get(url + "/crypto/v1/keys", headers={"Authorization": f"Basic {api_key}"}) as r,
            ):
                assert r.status == 200, await r.text()


def test_the_filter_keeps_other_records_whole() -> None:
    record = logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1, "boom %s", ("x",), None)
    try:
        raise ValueError("kept")
    except ValueError as exc:
        record.exc_info = (type(exc), exc, exc.__traceback__)
    assert logs.HideMalformedRequests().filter(record)
    assert record.exc_info is not None and record.getMessage() == "boom x"
