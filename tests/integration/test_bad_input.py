"""Malformed bodies against the three real servers on loopback, on SQLite and PostgreSQL (issue 11 #8).

Each API answers its own 4xx in its own error shape: the Fortanix ``{"message"}``, the XKS
``{"errorName", "errorMessage"}``, the KMS ``{"__type", "message"}``; never a 500, and nothing stored
changes (every table but the audit log is compared row by row before and after).
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import MetaData, select

from tests.kms_harness import KmsEnv, start_kms, stop_kms
from tests.xks_harness import XksEnv, close_env, make_env, metadata

DEEP = 100_000
LONG_INT = "9" * 5000

# Values that each break one rule, spliced into a JSON text where a string or a number goes.
BAD_STRINGS = {
    "lone-surrogate-escape": b'"\\ud800x"',
    "lone-low-surrogate": b'"x\\udc00"',
    "lone-surrogate-raw-bytes": b'"\xed\xa0\x80x"',
    "nul": b'"a\\u0000b"',
}
BAD_VALUES = {
    **BAD_STRINGS,
    "deep-nesting": b"[" * DEEP + b"]" * DEEP,
    "long-integer": LONG_INT.encode(),
    "integer-past-64-bits": b"18446744073709551616",
    "not-finite": b"1e400",
    "nan": b"NaN",
}


@pytest.fixture
async def lab(empty_db_url: str, tmp_path: Path) -> AsyncIterator[XksEnv]:
    """The DSM and the XKS proxy on real ports, on a database made by the real ``xkslab init``."""
    source = tmp_path / "template"
    args = [sys.executable, "-m", "xkslab", "--data-dir", str(source), "init", "--admin-password", "pw"]
    if not empty_db_url.startswith("sqlite"):
        args += ["--database-url", empty_db_url]
    out = await asyncio.to_thread(
        subprocess.run, [*args, "--json"], check=True, capture_output=True, text=True
    )
    env = await make_env((source, json.loads(out.stdout)), tmp_path / "lab")
    try:
        yield env
    finally:
        await close_env(env)


async def snapshot(env: XksEnv) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table except the audit log, which records refusals by design, and the node
    registry's heartbeats, which a running node renews whatever it is asked."""
    async with env.core.engine.connect() as conn:
        meta = MetaData()
        await conn.run_sync(meta.reflect)
        tables = {}
        for name, table in sorted(meta.tables.items()):
            if name in ("audit_log", "alembic_version"):
                continue
            columns = [
                column for column in table.columns if (name, column.name) != ("fleet_nodes", "heartbeat")
            ]
            rows = (await conn.execute(select(*columns))).all()
            tables[name] = sorted((tuple(row) for row in rows), key=repr)
        return tables


def splice(template: bytes, value: bytes) -> bytes:
    return template.replace(b"@", value)


# ------------------------------------------------------------------------------------------ DSM REST


DSM_TEMPLATES = {
    "create-name": ("POST", "/crypto/v1/keys", b'{"name":@,"obj_type":"AES","key_size":256}'),
    "create-description": (
        "POST",
        "/crypto/v1/keys",
        b'{"name":"k2","description":@,"obj_type":"AES","key_size":256}',
    ),
    "create-key-size": ("POST", "/crypto/v1/keys", b'{"name":"k3","obj_type":"AES","key_size":@}'),
    "update-description": ("PATCH", "/crypto/v1/keys/{kid}", b'{"description":@}'),
    "update-metadata": ("PATCH", "/crypto/v1/keys/{kid}", b'{"custom_metadata":{"a":@}}'),
    "create-group": ("POST", "/sys/v1/groups", b'{"name":@}'),
}


async def test_the_dsm_answers_bad_bodies_with_a_fortanix_400(lab: XksEnv) -> None:
    app, secret = await lab.core.admin.create_app(
        lab.system, "bad-input", groups={lab.group_id: frozenset({"MANAGE", "ENCRYPT"})}
    )
    api_key = base64.b64encode(f"{app.app_id}:{secret}".encode()).decode()
    headers = {"Authorization": f"Basic {api_key}", "Content-Type": "application/json"}
    before = await snapshot(lab)
    async with aiohttp.ClientSession() as http:
        for case, (method, path, template) in DSM_TEMPLATES.items():
            for label, value in BAD_VALUES.items():
                url = lab.dsm_url + path.format(kid=lab.kek_id)
                async with http.request(method, url, data=splice(template, value), headers=headers) as r:
                    text = await r.text()
                    assert r.status == 400, (case, label, r.status, text)
                    body = json.loads(text)
                    assert set(body) == {"message"} and "request body" in body["message"], (case, label)
        # The same requests with good values do change what is stored: the cases reach the database.
        url = f"{lab.dsm_url}/crypto/v1/keys/{lab.kek_id}"
        async with http.patch(url, json={"description": "fine"}, headers=headers) as r:
            assert r.status == 200, await r.text()
    assert before != await snapshot(lab)


async def test_the_repro_of_the_issue_is_a_400_and_stores_nothing(lab: XksEnv) -> None:
    app, secret = await lab.core.admin.create_app(
        lab.system, "repro", groups={lab.group_id: frozenset({"MANAGE"})}
    )
    api_key = base64.b64encode(f"{app.app_id}:{secret}".encode()).decode()
    before = await snapshot(lab)
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{lab.dsm_url}/crypto/v1/keys",
            data=b'{"name":"\\ud800x","obj_type":"AES","key_size":256}',
            headers={"Authorization": f"Basic {api_key}"},
        ) as r:
            assert r.status == 400
            message = (await r.json())["message"]
            assert "lone surrogate" in message and message.endswith(" at name"), message
    assert await snapshot(lab) == before


# ------------------------------------------------------------------------------------------ XKS proxy


def xks_templates(env: XksEnv) -> dict[str, tuple[str, bytes]]:
    meta = json.dumps(metadata("Encrypt")).encode()
    b64 = base64.b64encode(b"x" * 16).decode().encode()
    return {
        "encrypt-request-id": (
            env.url("encrypt"),
            b'{"requestMetadata":{"kmsRequestId":@,"kmsOperation":"Encrypt","awsPrincipalArn":"a",'
            b'"kmsKeyArn":"k"},"plaintext":"' + b64 + b'","encryptionAlgorithm":"AES_GCM"}',
        ),
        "encrypt-principal": (
            env.url("encrypt"),
            b'{"requestMetadata":{"kmsRequestId":"r","kmsOperation":"Encrypt","awsPrincipalArn":@,'
            b'"kmsKeyArn":"k"},"plaintext":"' + b64 + b'","encryptionAlgorithm":"AES_GCM"}',
        ),
        "encrypt-extra-field": (
            env.url("encrypt"),
            b'{"requestMetadata":' + meta + b',"plaintext":"' + b64 + b'","encryptionAlgorithm":"AES_GCM",'
            b'"future":@}',
        ),
        "metadata-operation": (
            env.url("metadata"),
            b'{"requestMetadata":{"kmsRequestId":"r","kmsOperation":@,"awsPrincipalArn":"a"}}',
        ),
        "health-request-id": (
            env.url("health"),
            b'{"requestMetadata":{"kmsRequestId":@,"kmsOperation":"KmsHealthCheck"}}',
        ),
    }


async def test_the_xks_proxy_answers_bad_bodies_with_a_validation_exception(lab: XksEnv) -> None:
    # Deep enough to be refused, small enough to stay under the proxy's body size limit.
    values = {**BAD_VALUES, "deep-nesting": b"[" * 20_000 + b"]" * 20_000}
    before = await snapshot(lab)
    for case, (url, template) in xks_templates(lab).items():
        for label, value in values.items():
            status, body = await lab.post(url, splice(template, value))
            assert status == 400, (case, label, status, body)
            assert set(body) == {"errorName", "errorMessage"}, (case, label, body)
            assert body["errorName"] == "ValidationException", (case, label, body)
    assert await snapshot(lab) == before


async def test_a_signed_header_that_is_not_utf8_is_refused_by_the_proxy(lab: XksEnv) -> None:
    """aiohttp hands bytes that are not UTF-8 on as lone surrogates; the proxy must not forward them to
    the DSM (which refuses such JSON) and turn that refusal into a 500."""
    from tests.xks_harness import sign

    url = lab.url("health")
    body = json.dumps({"requestMetadata": metadata("KmsHealthCheck")}).encode()
    headers = sign(url, body, lab.akid, lab.secret)
    host, port = lab.proxy_url.removeprefix("http://").split(":")
    lines = [f"POST {url.removeprefix(lab.proxy_url)} HTTP/1.1", f"Host: {host}:{port}"]
    lines += [f"{k}: {v}\xff" if k.lower() == "content-type" else f"{k}: {v}" for k, v in headers.items()]
    lines += [f"Content-Length: {len(body)}", "Connection: close"]
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body)
        answer = await reader.read()
    finally:
        writer.close()
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401 "), answer
    assert json.loads(payload)["errorName"] == "AuthenticationFailedException"


# ------------------------------------------------------------------------------------------ KMS


@pytest.fixture
async def kms(lab: XksEnv) -> AsyncIterator[KmsEnv]:
    env = await start_kms(lab.data_dir)
    try:
        yield env
    finally:
        await stop_kms(env)


KMS_TEMPLATES = {
    "create-description": ("CreateKey", b'{"Description":@}'),
    "create-tag": ("CreateKey", b'{"Tags":[{"TagKey":"t","TagValue":@}]}'),
    "update-description": ("UpdateKeyDescription", b'{"KeyId":"{kid}","Description":@}'),
    "tag": ("TagResource", b'{"KeyId":"{kid}","Tags":[{"TagKey":@,"TagValue":"v"}]}'),
    "alias": ("CreateAlias", b'{"AliasName":@,"TargetKeyId":"{kid}"}'),
    "random": ("GenerateRandom", b'{"NumberOfBytes":@}'),
}


async def test_kms_answers_bad_bodies_with_its_own_400(lab: XksEnv, kms: KmsEnv) -> None:
    kid = (await kms.call("create_key", Description="before"))["KeyMetadata"]["KeyId"]
    before = await snapshot(lab)
    for case, (operation, template) in KMS_TEMPLATES.items():
        for label, value in BAD_VALUES.items():
            raw = splice(template.replace(b"{kid}", kid.encode()), value)
            status, body, _ = await kms.raw(f"TrentService.{operation}", raw)
            assert status == 400, (case, label, status, body)
            assert set(body) == {"__type", "message"}, (case, label, body)
            expected = "ValidationException" if label == "nul" else "SerializationException"
            assert body["__type"] == expected, (case, label, body)
    assert await snapshot(lab) == before
    described = await kms.call("describe_key", KeyId=kid)
    assert described["KeyMetadata"]["Description"] == "before"


async def test_a_nul_in_a_basic_user_name_is_a_401(lab: XksEnv) -> None:
    """Not a body, but the same fault: PostgreSQL refused the NUL in the user lookup with a 500."""
    async with aiohttp.ClientSession() as http:
        for user in ("admin\x00@xkslab.local", f"{lab.app_id[:-1]}\x00"):
            token = base64.b64encode(f"{user}:pw".encode()).decode()
            url = f"{lab.dsm_url}/sys/v1/session/auth"
            async with http.post(url, headers={"Authorization": f"Basic {token}"}) as r:
                assert r.status == 401, (user, await r.text())
                assert set(await r.json()) == {"message"}


async def test_a_nul_in_a_query_parameter_is_a_400(lab: XksEnv) -> None:
    """Also not a body: GET /crypto/v1/keys?name=a%00b was a 500 on PostgreSQL."""
    app, secret = await lab.core.admin.create_app(
        lab.system, "q", groups={lab.group_id: frozenset({"MANAGE"})}
    )
    api_key = base64.b64encode(f"{app.app_id}:{secret}".encode()).decode()
    async with aiohttp.ClientSession() as http:
        for query in ("name=a%00b", "group_id=%00", "a%00=1"):
            url = f"{lab.dsm_url}/crypto/v1/keys?{query}"
            async with http.get(url, headers={"Authorization": f"Basic {api_key}"}) as r:
                assert r.status == 400, (query, await r.text())
                assert "NUL" in (await r.json())["message"]


async def test_an_integer_query_parameter_past_64_bits_is_a_400_naming_it(lab: XksEnv) -> None:
    """Every integer query parameter (the XKS and KMS APIs have none: theirs are in JSON bodies) was a
    500 past 2^63-1 on both databases, from the driver."""
    app, secret = await lab.core.admin.create_app(
        lab.system, "ints", groups={lab.group_id: frozenset({"MANAGE", "AUDIT"})}
    )
    api_key = base64.b64encode(f"{app.app_id}:{secret}".encode()).decode()
    headers = {"Authorization": f"Basic {api_key}"}
    cases = [
        ("/crypto/v1/keys", "offset"),
        ("/crypto/v1/keys", "limit"),
        ("/sys/v1/logs", "from"),
        ("/sys/v1/logs", "size"),
    ]
    values = [str(2**63), str(2**64), "-" + str(2**63 + 1), "9" * 5000, "1e3", "0x10", "--1"]
    async with aiohttp.ClientSession() as http:
        for path, name in cases:
            for value in values:
                async with http.get(f"{lab.dsm_url}{path}?{name}={value}", headers=headers) as r:
                    text = await r.text()
                    assert r.status == 400, (path, name, value[:20], r.status, text[:200])
                    body = json.loads(text)
                    assert set(body) == {"message"}, body
                    assert f"query parameter {name} must be" in body["message"], body
            # The largest value a BIGINT holds is an offset past every row, not an error.
            if name in ("offset", "from"):
                async with http.get(f"{lab.dsm_url}{path}?{name}={2**63 - 1}", headers=headers) as r:
                    assert r.status == 200, (path, await r.text())
                    answer = await r.json()
                    assert (answer if path == "/crypto/v1/keys" else answer["hits"]) == [], answer
