"""Issue 19 #8: a request body's Content-Encoding, per service and per encoding, through the real runner
(xkslab_shared/serve.py). gzip and deflate on an uncompressed body were a 500 in all three services, br
and zstd a 400 calling the request malformed. Now the DSM decompresses gzip and deflate (within its body
limit, counted after decompression) and refuses other encodings with a 415; the XKS proxy and KMS take
no compressed body and refuse every encoding in their own shapes."""

from __future__ import annotations

import base64
import gzip
import json
import zlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from dsm_emulator.api.app import listener as dsm_listener
from kms_emulator.app import listener as kms_listener
from tests.xks_harness import XksEnv, close_env, make_env, metadata, sign, xks_template
from xks_frontend.app import listener as xks_listener
from xkslab_shared.config import load_settings
from xkslab_shared.serve import start

__all__ = ["xks_template"]  # fixtures used by name

# Encodings aiohttp decodes (gzip, deflate), ones it cannot here (br, zstd) and ones it does not know.
UNDECODABLE = ("gzip", "deflate", "GZIP")
REFUSED_AT_PARSE = ("br", "zstd")
UNKNOWN = ("x-gzip", "compress", "gzip, gzip", "identity, gzip")


@dataclass
class Served:
    env: XksEnv
    dsm: str
    xks: str
    kms: str
    http: aiohttp.ClientSession


@pytest.fixture
async def served(xks_template: tuple[Path, dict[str, Any]], tmp_path: Path) -> AsyncIterator[Served]:
    env = await make_env(xks_template, tmp_path)
    settings = load_settings(
        env.data_dir,
        overrides={
            "dsm.port": 0,
            "dsm.https_port": 0,
            "xks.port": 0,
            "xks.https_port": 0,
            "kms.port": 0,
            "dsm.link": "",  # the env's own DSM serves the data directory's link
            "xks.dsm_urls": env.dsm_url,
            "xks.prefix_cache_s": 0.0,
            "xks.dsm_timeout_ms": 5000,  # generous: shared machines stall
        },
        environ={},
    )
    try:
        async with AsyncExitStack() as stack, aiohttp.ClientSession() as http:
            [dsm, *_] = await start(stack, dsm_listener(settings), lambda _: None)
            [xks, *_] = await start(stack, xks_listener(settings), lambda _: None)
            [kms] = await start(stack, kms_listener(settings), lambda _: None)
            yield Served(env, dsm, xks, kms, http)
    finally:
        await close_env(env)


async def post(served: Served, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    async with served.http.post(url, data=body, headers=headers) as response:
        text = await response.text()
        return response.status, json.loads(text)


def dsm_app_headers(env: XksEnv, app_id: str, secret: str) -> dict[str, str]:
    api_key = base64.b64encode(f"{app_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {api_key}", "Content-Type": "application/json"}


async def test_the_dsm_decompresses_gzip_and_deflate_and_refuses_other_encodings(served: Served) -> None:
    env = served.env
    app, secret = await env.core.admin.create_app(
        env.system, "encodings", groups={env.group_id: frozenset({"MANAGE", "ENCRYPT"})}
    )
    headers = dsm_app_headers(env, app.app_id, secret)
    url = f"{served.dsm}/crypto/v1/keys"

    def key(name: str) -> bytes:
        return json.dumps({"name": name, "obj_type": "AES", "key_size": 256}).encode()

    for encoding, compress in (("gzip", gzip.compress), ("deflate", zlib.compress)):
        status, body = await post(
            served, url, compress(key(encoding)), {**headers, "Content-Encoding": encoding}
        )
        assert status == 201 and body["name"] == encoding, (encoding, status, body)
    for encoding in UNDECODABLE:
        status, body = await post(served, url, key("plain"), {**headers, "Content-Encoding": encoding})
        assert (status, body) == (400, {"message": f"the request body is not valid {encoding.lower()} data"})
    for encoding in (*REFUSED_AT_PARSE, *UNKNOWN):
        status, body = await post(served, url, key("plain"), {**headers, "Content-Encoding": encoding})
        assert status == 415, (encoding, status, body)
        assert set(body) == {"message"} and body["message"].endswith("one of deflate, gzip"), (encoding, body)
    # The body limit counts decompressed bytes: 2 MiB of spaces is 2 KiB of gzip.
    bomb = gzip.compress(b"{" + b" " * (2 << 20) + b"}")
    assert len(bomb) < 10_000
    status, body = await post(served, url, bomb, {**headers, "Content-Encoding": "gzip"})
    assert (status, body) == (413, {"message": "request body is too large"})
    # No key was made by a refused request.
    async with served.http.get(url, headers=headers) as r:
        assert sorted(k["name"] for k in await r.json() if k["name"] != "root-kek-1") == ["deflate", "gzip"]


async def test_the_xks_proxy_refuses_every_encoding_with_a_validation_exception(served: Served) -> None:
    env = served.env
    url = served.xks + env.url("health").removeprefix(env.proxy_url)
    raw = json.dumps({"requestMetadata": metadata("KmsHealthCheck")}).encode()
    signed = sign(url, raw, env.akid, env.secret)
    status, _ = await post(served, url, raw, signed)
    assert status == 200
    cases = [(e, raw) for e in (*UNDECODABLE, *REFUSED_AT_PARSE, *UNKNOWN)] + [("gzip", gzip.compress(raw))]
    for encoding, body in cases:
        for headers in (signed, {"Content-Type": "application/json"}):  # with and without credentials
            status, answer = await post(served, url, body, {**headers, "Content-Encoding": encoding})
            assert status == 400, (encoding, status, answer)
            assert answer == {
                "errorName": "ValidationException",
                "errorMessage": "the request body must not be compressed: send it without a Content-Encoding",
            }, (encoding, answer)


async def test_kms_refuses_every_encoding_with_a_serialization_exception(served: Served) -> None:
    raw = b'{"NumberOfBytes": 8}'
    headers = {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "TrentService.GenerateRandom"}
    status, _ = await post(served, served.kms + "/", raw, headers)
    assert status == 200
    cases = [(e, raw) for e in (*UNDECODABLE, *REFUSED_AT_PARSE, *UNKNOWN)] + [("gzip", gzip.compress(raw))]
    for encoding, body in cases:
        status, answer = await post(served, served.kms + "/", body, {**headers, "Content-Encoding": encoding})
        assert status == 400, (encoding, status, answer)
        assert answer == {
            "__type": "SerializationException",
            "message": "The request body must not be compressed: send it without a Content-Encoding.",
        }, (encoding, answer)
