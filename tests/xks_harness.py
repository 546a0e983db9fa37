"""A real DSM and a real XKS proxy on loopback ports, on a data directory made by ``xkslab init``, with
an awsxks app and root KEKs, and requests signed by botocore's SigV4Auth, as KMS signs them."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from dsm_emulator.api.app import create_app as create_dsm_app
from dsm_emulator.api.context import CORE_KEY
from dsm_emulator.api.link import serve_link
from dsm_emulator.authz import Principal, system_principal
from dsm_emulator.core import DsmCore
from dsm_emulator.keys import KeySpec
from tests.api_harness import init_data_dir
from xks_frontend.app import create_app as create_xks_app
from xkslab_shared.config import load_settings

REGION = "us-east-1"
PRINCIPAL_ARN = "arn:aws:iam::123456789012:user/Alice"
KEY_ARN = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
ALL_OPS = ["ENCRYPT", "DECRYPT", "WRAPKEY", "UNWRAPKEY", "APPMANAGEABLE"]


@pytest.fixture(scope="module")
def xks_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    return init_data_dir(tmp_path_factory.mktemp("xks") / "data")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def metadata(operation: str = "Encrypt", **extra: str) -> dict[str, str]:
    return {
        "awsPrincipalArn": PRINCIPAL_ARN,
        "kmsKeyArn": KEY_ARN,
        "kmsOperation": operation,
        "kmsRequestId": extra.pop("kmsRequestId", "4112f4d6-db54-4af4-ae30-c55a22a8dfae"),
        **extra,
    }


def sign(url: str, body: bytes, akid: str, secret: str, *, service: str = "kms-xks-proxy") -> dict[str, str]:
    request = AWSRequest(method="POST", url=url, data=body, headers={"Content-Type": "application/json"})
    SigV4Auth(Credentials(akid, secret), service, REGION).add_auth(request)
    return dict(request.headers.items())


@dataclass
class XksEnv:
    data_dir: Path
    core: DsmCore
    system: Principal
    acct_id: str
    group_id: str
    dsm_url: str
    link_url: str  # the DSM's framed link, which the proxy uses unless make_env was told transport="http"
    proxy_url: str
    app_id: str
    akid: str
    secret: str
    kek_id: str
    http: aiohttp.ClientSession
    runners: list[web.AppRunner] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        return f"/crypto/v1/apps/{self.app_id}/aws"

    def url(self, op: str, key_id: str | None = None, *, prefix: str | None = None) -> str:
        base = f"{self.proxy_url}{self.prefix if prefix is None else prefix}/kms/xks/v1"
        return f"{base}/health" if op == "health" else f"{base}/keys/{key_id or self.kek_id}/{op}"

    async def post(
        self,
        url: str,
        body: Mapping[str, Any] | bytes,
        *,
        akid: str | None = None,
        secret: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, Any]:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        signed = sign(url, raw, akid or self.akid, secret or self.secret)
        signed.update(headers or {})
        async with self.http.post(url, data=raw, headers=signed) as response:
            text = await response.text()
            return response.status, json.loads(text) if text else None

    async def encrypt(self, plaintext: bytes, key_id: str | None = None, **fields: Any) -> tuple[int, Any]:
        body = {
            "requestMetadata": metadata("Encrypt"),
            "plaintext": b64(plaintext),
            "encryptionAlgorithm": "AES_GCM",
        }
        body.update(fields)
        return await self.post(self.url("encrypt", key_id), body)

    async def decrypt(
        self, encrypted: Mapping[str, Any], key_id: str | None = None, **fields: Any
    ) -> tuple[int, Any]:
        body = {
            "requestMetadata": metadata("Decrypt"),
            "encryptionAlgorithm": "AES_GCM",
            "ciphertext": encrypted["ciphertext"],
            "initializationVector": encrypted["initializationVector"],
            "authenticationTag": encrypted["authenticationTag"],
        }
        if "ciphertextMetadata" in encrypted:
            body["ciphertextMetadata"] = encrypted["ciphertextMetadata"]
        body.update(fields)
        return await self.post(self.url("decrypt", key_id), body)

    async def create_key(
        self, name: str, *, size: int = 256, key_ops: list[str] | None = None, **kw: Any
    ) -> str:
        spec = KeySpec(
            name=name, obj_type="AES", key_size=size, group_id=self.group_id, key_ops=key_ops or ALL_OPS, **kw
        )
        return (await self.core.keys.create(self.system, spec)).kid

    async def audit_rows(self, operation_prefix: str = "xks.") -> list[dict[str, Any]]:
        from sqlalchemy import select

        from dsm_emulator.audit import row_to_dict
        from dsm_emulator.models import AuditRow

        async with self.core.sessions() as session:
            rows = (await session.scalars(select(AuditRow).order_by(AuditRow.seq))).all()
        return [row_to_dict(r) for r in rows if r.operation.startswith(operation_prefix)]


async def start_runner(app: web.Application, ssl_context: Any = None) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, port


async def make_env(
    template: tuple[Path, dict[str, Any]],
    tmp_path: Path,
    overrides: Mapping[str, Any] | None = None,
    dsm_overrides: Mapping[str, Any] | None = None,
    *,
    transport: str = "link",
) -> XksEnv:
    source, info = template
    data_dir = tmp_path / "data"
    shutil.copytree(source, data_dir)
    dsm_settings = load_settings(data_dir, overrides=dsm_overrides, environ={})
    dsm_app = create_dsm_app(dsm_settings)
    dsm_runner, dsm_port = await start_runner(dsm_app)
    # The proxy reaches the key manager as `up` wires it: over the framed link (stopped with the runner).
    link_url = await serve_link(dsm_app, dsm_settings)
    assert link_url is not None
    core = dsm_app[CORE_KEY]
    system = system_principal(info["acct_id"])
    group_id = info["default_group_id"]
    app, _ = await core.admin.create_app(
        system, "xks-app", groups={group_id: frozenset({"ENCRYPT", "DECRYPT"})}, credential_kind="awsxks"
    )
    credential = (await core.admin.get_credential(system, app.app_id))["awsxks"]
    kek = await core.keys.create(
        system, KeySpec(name="root-kek-1", obj_type="AES", key_size=256, group_id=group_id, key_ops=ALL_OPS)
    )
    settings = load_settings(
        data_dir,
        overrides={
            "xks.dsm_urls": link_url if transport == "link" else f"http://127.0.0.1:{dsm_port}",
            "xks.prefix_cache_s": 0.0,
            # Generous: shared CI machines stall; the timeout tests set their own.
            "xks.dsm_timeout_ms": 5000,
            **(overrides or {}),
        },
        environ={},
    )
    xks_runner, xks_port = await start_runner(create_xks_app(settings))
    return XksEnv(
        data_dir=data_dir,
        core=core,
        system=system,
        acct_id=info["acct_id"],
        group_id=group_id,
        dsm_url=f"http://127.0.0.1:{dsm_port}",
        link_url=link_url,
        proxy_url=f"http://127.0.0.1:{xks_port}",
        app_id=app.app_id,
        akid=credential["access_key_id"],
        secret=credential["secret_key"],
        kek_id=kek.kid,
        http=aiohttp.ClientSession(),
        runners=[xks_runner, dsm_runner],
    )


async def make_db_env(
    empty_db_url: str,
    tmp_path: Path,
    overrides: Mapping[str, Any] | None = None,
    dsm_overrides: Mapping[str, Any] | None = None,
) -> XksEnv:
    """An env on the database of ``empty_db_url`` (the ``db_backend`` matrix). A data directory that
    names a PostgreSQL database cannot be shared by a module as a template: each copy would use the same
    database. So this one is made by ``xkslab init`` for the test alone."""
    template = await asyncio.to_thread(init_data_dir, tmp_path / "template", empty_db_url)
    return await make_env(template, tmp_path / "lab", overrides, dsm_overrides)


async def close_env(env: XksEnv) -> None:
    await env.http.close()
    for runner in env.runners:
        await runner.cleanup()


@pytest.fixture
async def xks_env(xks_template: tuple[Path, dict[str, Any]], tmp_path: Path) -> AsyncIterator[XksEnv]:
    env = await make_env(xks_template, tmp_path)
    try:
        yield env
    finally:
        await close_env(env)


@pytest.fixture
async def db_env(empty_db_url: str, tmp_path: Path) -> AsyncIterator[XksEnv]:
    """``xks_env`` on SQLite or PostgreSQL (``db_backend``)."""
    env = await make_db_env(empty_db_url, tmp_path)
    try:
        yield env
    finally:
        await close_env(env)
