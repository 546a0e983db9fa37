"""A real KMS emulator on a loopback port, on a data directory made by ``xkslab init``, driven by real
boto3 (in a thread: its calls block, and the server runs in the test's event loop) and by raw HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import pytest
from aiohttp import web
from botocore.exceptions import ClientError

from kms_emulator.app import create_app
from tests import deadlines
from tests.cli_runner import run_cli
from tests.xks_harness import start_runner
from xkslab_shared.config import load_settings

REGION = "us-east-1"
ACCOUNT_ID = "111122223333"
CALLER_ACCESS_KEY = "AKIAEXAMPLE"
CALLER_ARN = f"arn:aws:iam::{ACCOUNT_ID}:user/{CALLER_ACCESS_KEY}"


def init_data_dir(data_dir: Path) -> None:
    """A data directory made by the real ``xkslab init``, run in this process (tests/cli_runner.py)."""
    run_cli(["--data-dir", str(data_dir), "init", "--admin-password", "pw"], check=True)


@pytest.fixture(scope="module")
def kms_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("kms") / "data"
    init_data_dir(data_dir)
    return data_dir


@dataclass
class KmsEnv:
    data_dir: Path
    url: str
    kms: Any  # a boto3 KMS client
    http: aiohttp.ClientSession
    runner: web.AppRunner

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        return await asyncio.to_thread(getattr(self.kms, method), **params)

    async def error(self, method: str, **params: Any) -> ClientError:
        """The ClientError the call raises (botocore's modelled subclass when the name is modelled)."""
        with pytest.raises(ClientError) as info:
            await self.call(method, **params)
        return info.value

    async def raw(
        self, target: str | None, body: bytes, headers: Mapping[str, str] | None = None, method: str = "POST"
    ) -> tuple[int, dict[str, Any], Mapping[str, str]]:
        sent = {"Content-Type": "application/x-amz-json-1.1", **(headers or {})}
        if target is not None:
            sent["X-Amz-Target"] = target
        async with self.http.request(method, self.url + "/", data=body, headers=sent) as response:
            return response.status, json.loads(await response.read()), response.headers


def code(error: ClientError) -> str:
    return str(error.response["Error"]["Code"])


def boto_client(url: str) -> Any:
    return boto3.client(
        "kms",
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id=CALLER_ACCESS_KEY,
        aws_secret_access_key="x",
    )


async def start_kms(data_dir: Path, overrides: Mapping[str, Any] | None = None) -> KmsEnv:
    """A KMS on ``data_dir`` with the tests' generous deadline to XKS proxies (tests/deadlines.py) unless
    ``overrides`` sets another (the tests about KMS's timeout)."""
    settings = load_settings(data_dir, overrides={**deadlines.GENEROUS, **(overrides or {})}, environ={})
    runner, port = await start_runner(create_app(settings))
    url = f"http://127.0.0.1:{port}"
    return KmsEnv(data_dir, url, boto_client(url), aiohttp.ClientSession(), runner)


async def stop_kms(env: KmsEnv) -> None:
    env.kms.close()
    await env.http.close()
    await env.runner.cleanup()


@pytest.fixture
async def kms_env(kms_template: Path, tmp_path: Path) -> AsyncIterator[KmsEnv]:
    data_dir = tmp_path / "data"
    shutil.copytree(kms_template, data_dir)
    env = await start_kms(data_dir)
    try:
        yield env
    finally:
        await stop_kms(env)


async def run_aws(
    kms: KmsEnv, tmp_path: Path, *args: str, credentials: tuple[str, str] = (CALLER_ACCESS_KEY, "x")
) -> tuple[int, str, str]:
    """``aws kms ...`` (CLI v1) against this KMS with ``credentials``: (exit status, stdout, stderr). CLI v1
    fetches any parameter value that starts with http:// or https:// as a URL (``--xks-proxy-uri-endpoint``
    included) unless the config says ``cli_follow_urlparam = false``."""
    config = tmp_path / "aws-config"
    config.write_text("[default]\ncli_follow_urlparam = false\n")
    process = await asyncio.create_subprocess_exec(
        "aws",
        "kms",
        *args,
        "--endpoint-url",
        kms.url,
        "--output",
        "json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={
            "PATH": os.environ["PATH"],
            "HOME": str(tmp_path),
            "AWS_ACCESS_KEY_ID": credentials[0],
            "AWS_SECRET_ACCESS_KEY": credentials[1],
            "AWS_DEFAULT_REGION": REGION,
            "AWS_CONFIG_FILE": str(config),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
        },
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def aws(
    kms: KmsEnv, tmp_path: Path, *args: str, credentials: tuple[str, str] = (CALLER_ACCESS_KEY, "x")
) -> Any:
    """``aws kms ...`` that must succeed; its JSON output."""
    status, out, err = await run_aws(kms, tmp_path, *args, credentials=credentials)
    assert status == 0, err
    return json.loads(out) if out.strip() else None


@pytest.fixture
async def kms_db_env(kms_template: Path, tmp_path: Path, db_url: str) -> AsyncIterator[KmsEnv]:
    """``kms_env`` on SQLite or PostgreSQL (the ``db_backend`` matrix): the KMS tables live in ``db_url``,
    migrated to head."""
    data_dir = tmp_path / "data"
    shutil.copytree(kms_template, data_dir)
    env = await start_kms(data_dir, {"database.url": db_url})
    try:
        yield env
    finally:
        await stop_kms(env)
