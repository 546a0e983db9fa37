"""``xkslab up``: the three services in one process on embedded defaults, bootstrapped on first start,
like ``vault server -dev``; and what it prints and writes for users and scripts (``up.json``).

First start on an empty data directory: ``init`` (SQLite, software sealing), a local CA and server
certificates, then, through the services' own APIs: an XKS app (awsxks credential) and a client app (API
key) in the default group, a root KEK, an external key store in the KMS pointing at the proxy over HTTPS,
connected, and one XKS-backed KMS key with an alias. Later starts find ``up.json`` and reuse all of it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import secrets
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp

from xkslab.config import CONFIG_FILE_NAME, Settings, render_toml

UP_FILE = "up.json"
ADMIN_EMAIL = "admin@xkslab.local"
XKS_APP = "xkslab-kms-xks"
CLIENT_APP = "xkslab-client"
ROOT_KEK = "xkslab-root-kek-1"
KEY_STORE = "xkslab-external-key-store"
ALIAS = "alias/xkslab-demo"
# The KMS emulator does not check its callers' signatures; any well-formed pair works.
AWS_ACCESS_KEY_ID = "AKIAXKSLABEXAMPLE000"
AWS_SECRET_ACCESS_KEY = "xkslab-local-secret-not-checked"


def up_file(settings: Settings) -> Path:
    return settings.data_dir / UP_FILE


def write_config_if_missing(data_dir: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o700)
    config_file = data_dir / CONFIG_FILE_NAME
    if not config_file.exists():
        config_file.write_text(
            "# xkslab settings; XKSLAB_* variables and flags override these.\n"
            + render_toml({"seal.backend": "software"})
        )


def ensure_certificates(settings: Settings) -> Path:
    """The local CA and the DSM and proxy server certificates (kept when present)."""
    from xkslab.certs import make_local_ca, make_server_cert

    tls_dir = settings.data_dir / "tls"
    ca_crt, ca_key = make_local_ca(tls_dir)
    for name in ("dsm", "xks"):
        if not (tls_dir / f"{name}.crt").exists():
            make_server_cert(tls_dir, ca_crt, ca_key, name, ["localhost"])
    return ca_crt


class LabError(RuntimeError):
    """A start-up step failed; the message says which (the CLI prints it without a traceback)."""


class KmsCaller:
    """AWS JSON 1.1 over aiohttp: enough of a KMS client for bootstrapping and health checks."""

    def __init__(self, session: aiohttp.ClientSession, endpoint: str, region: str) -> None:
        self._session = session
        self._endpoint = endpoint
        self._region = region

    async def __call__(self, operation: str, **params: Any) -> dict[str, Any]:
        headers = {
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": f"TrentService.{operation}",
            "Authorization": (
                f"AWS4-HMAC-SHA256 Credential={AWS_ACCESS_KEY_ID}/20260101/{self._region}/kms/aws4_request, "
                "SignedHeaders=host, Signature=0"
            ),
        }
        async with self._session.post(
            self._endpoint + "/", data=json.dumps(params), headers=headers
        ) as response:
            data = await response.json(content_type=None)
            if response.status != 200:
                raise LabError(f"KMS {operation}: {data.get('__type')}: {data.get('message')}")
            return dict(data)


async def bootstrap(
    settings: Settings, dsm_core: Any, kms_url: str, xks_https: str, ca_file: str
) -> dict[str, Any]:
    """Create what a first start needs; every name is fixed, so a half-finished bootstrap is resumed."""
    from sqlalchemy import select

    from dsm_emulator.authz import system_principal
    from dsm_emulator.keys import KeySpec
    from dsm_emulator.models import Account
    from dsm_emulator.xks import canonical_prefix

    async with dsm_core.sessions() as session:
        account = await session.scalar(select(Account).limit(1))
    system = system_principal(account.acct_id)
    group_id = (await dsm_core.admin.list_groups(system))[0].group_id
    apps = {app.name: app for app in await dsm_core.admin.list_apps(system)}
    if XKS_APP not in apps:
        apps[XKS_APP], _ = await dsm_core.admin.create_app(
            system, XKS_APP, groups={group_id: frozenset({"ENCRYPT", "DECRYPT"})}, credential_kind="awsxks"
        )
    if CLIENT_APP not in apps:
        apps[CLIENT_APP], _ = await dsm_core.admin.create_app(system, CLIENT_APP, groups=[group_id])
    xks_app, client_app = apps[XKS_APP], apps[CLIENT_APP]
    xks_cred = (await dsm_core.admin.get_credential(system, xks_app.app_id))["awsxks"]
    client_secret = (await dsm_core.admin.get_credential(system, client_app.app_id))["secret"]
    try:
        kek = await dsm_core.keys.get(system, name=ROOT_KEK)
    except Exception:
        kek = await dsm_core.keys.create(
            system,
            KeySpec(
                name=ROOT_KEK,
                obj_type="AES",
                key_size=256,
                group_id=group_id,
                key_ops=["ENCRYPT", "DECRYPT", "WRAPKEY", "UNWRAPKEY", "APPMANAGEABLE"],
                description="Root KEK of xkslab's external key store",
            ),
        )
    uri_path = f"{canonical_prefix(xks_app.app_id)}/kms/xks/v1"
    async with aiohttp.ClientSession() as session:
        kms = KmsCaller(session, kms_url, settings.kms.region)
        all_stores = (await kms("DescribeCustomKeyStores")).get("CustomKeyStores", [])
        stores = [store for store in all_stores if store["CustomKeyStoreName"] == KEY_STORE]
        if stores:
            store_id = stores[0]["CustomKeyStoreId"]
        else:
            store_id = (
                await kms(
                    "CreateCustomKeyStore",
                    CustomKeyStoreName=KEY_STORE,
                    CustomKeyStoreType="EXTERNAL_KEY_STORE",
                    XksProxyUriEndpoint=xks_https,
                    XksProxyUriPath=uri_path,
                    XksProxyConnectivity="PUBLIC_ENDPOINT",
                    XksProxyAuthenticationCredential={
                        "AccessKeyId": xks_cred["access_key_id"],
                        "RawSecretAccessKey": xks_cred["secret_key"],
                    },
                )
            )["CustomKeyStoreId"]
        if stores and stores[0]["ConnectionState"] == "FAILED":  # e.g. the proxy was down last time
            await kms("DisconnectCustomKeyStore", CustomKeyStoreId=store_id)
        await kms("ConnectCustomKeyStore", CustomKeyStoreId=store_id)
        described = await kms("DescribeCustomKeyStores", CustomKeyStoreId=store_id)
        store_state = described["CustomKeyStores"][0]["ConnectionState"]
        if store_state != "CONNECTED":
            code = described["CustomKeyStores"][0].get("ConnectionErrorCode")
            raise LabError(f"the external key store did not connect: {store_state} ({code})")
        aliases = {a["AliasName"]: a for a in (await kms("ListAliases")).get("Aliases", [])}
        if ALIAS in aliases:
            key_id = aliases[ALIAS]["TargetKeyId"]
        else:
            key_id = (
                await kms(
                    "CreateKey",
                    Origin="EXTERNAL_KEY_STORE",
                    CustomKeyStoreId=store_id,
                    XksKeyId=kek.kid,
                    Description="xkslab demo key (double envelope through the XKS proxy)",
                )
            )["KeyMetadata"]["KeyId"]
            await kms("CreateAlias", AliasName=ALIAS, TargetKeyId=key_id)
        key_arn = (await kms("DescribeKey", KeyId=key_id))["KeyMetadata"]["Arn"]
    api_key = _api_key(client_app.app_id, client_secret)
    return {
        "acct_id": account.acct_id,
        "group_id": group_id,
        "xks_app_id": xks_app.app_id,
        "xks_uri_path": uri_path,
        "xks_access_key_id": xks_cred["access_key_id"],
        "xks_secret_access_key": xks_cred["secret_key"],
        "root_kek_id": kek.kid,
        "client_app_id": client_app.app_id,
        "dsm_api_key": api_key,
        "custom_key_store_id": store_id,
        "kms_key_id": key_id,
        "kms_key_arn": key_arn,
        "kms_alias": ALIAS,
        "ca_file": ca_file,
    }


def _api_key(app_id: str, secret: str) -> str:
    import base64

    return base64.b64encode(f"{app_id}:{secret}".encode()).decode()


def lab_settings(
    settings: Settings, urls: dict[str, list[str]], facts: dict[str, Any], admin_password: str | None
) -> dict[str, Any]:
    region = settings.kms.region
    kms_url = urls["kms"][0]
    return {
        "dsm": {
            "url": urls["dsm"][0],
            "https_url": next((u for u in urls["dsm"] if u.startswith("https")), None),
            "admin_email": ADMIN_EMAIL,
            "admin_password": admin_password,
            "api_key": facts["dsm_api_key"],
            "group_id": facts["group_id"],
            "root_kek_id": facts["root_kek_id"],
        },
        "xks": {
            "url": urls["xks"][0],
            "https_url": next((u for u in urls["xks"] if u.startswith("https")), None),
            "uri_path": facts["xks_uri_path"],
            "app_id": facts["xks_app_id"],
            "access_key_id": facts["xks_access_key_id"],
            "secret_access_key": facts["xks_secret_access_key"],
        },
        "kms": {
            "endpoint_url": kms_url,
            "region": region,
            "custom_key_store_id": facts["custom_key_store_id"],
            "key_id": facts["kms_key_id"],
            "key_arn": facts["kms_key_arn"],
            "alias": facts["kms_alias"],
        },
        "ca_file": facts["ca_file"],
        "aws_env": {
            "AWS_ENDPOINT_URL_KMS": kms_url,
            "AWS_ACCESS_KEY_ID": AWS_ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": AWS_SECRET_ACCESS_KEY,
            "AWS_DEFAULT_REGION": region,
        },
    }


def write_up_file(path: Path, data: dict[str, Any]) -> None:
    """0600: it holds the admin password, an API key and the SigV4 secret of the lab."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())  # on first start it holds the only copy of the admin password
    tmp.replace(path)


def render(data: dict[str, Any], path: Path) -> str:
    env = "\n".join(f"export {k}={v}" for k, v in data["aws_env"].items())
    dsm, xks, kms = data["dsm"], data["xks"], data["kms"]
    admin = f"{dsm['admin_email']} / {dsm['admin_password']}" if dsm["admin_password"] else dsm["admin_email"]
    return f"""
xkslab is up. Settings (also in {path}):

  DSM REST API      {dsm["url"]}   {dsm["https_url"] or ""}
    admin           {admin}
    API key         {dsm["api_key"]}
    root KEK        {dsm["root_kek_id"]}
  XKS proxy         {xks["url"]}   {xks["https_url"] or ""}
    URI path        {xks["uri_path"]}
    SigV4 key id    {xks["access_key_id"]}
    SigV4 secret    {xks["secret_access_key"]}
  KMS endpoint      {kms["endpoint_url"]}   (region {kms["region"]})
    key store       {kms["custom_key_store_id"]} (CONNECTED)
    KMS key         {kms["key_id"]}  ({kms["alias"]})
  local CA          {data["ca_file"]}

{env}

python -c 'import boto3
kms = boto3.client("kms")
print(kms.encrypt(KeyId="{kms["alias"]}", Plaintext=b"hello")["CiphertextBlob"])'

Ctrl-C stops all three services.
"""


def prepare(settings: Settings) -> tuple[dict[str, Any] | None, str]:
    """The blocking part of a start: config file, certificates, the previous up.json if any."""
    write_config_if_missing(settings.data_dir)
    ca_file = str(ensure_certificates(settings).absolute())
    path = up_file(settings)
    previous = json.loads(path.read_text()) if path.exists() else None
    return previous, ca_file


async def run_up(settings: Settings, admin_password: str | None, echo: Callable[[str], None]) -> None:
    from dsm_emulator.api.app import create_app as create_dsm_app
    from dsm_emulator.api.context import CORE_KEY
    from kms_emulator.app import create_app as create_kms_app
    from xks_frontend.app import create_app as create_xks_app
    from xkslab.cli import _init, dsm_listener
    from xkslab.cli_kms import kms_listener
    from xkslab.cli_xks import xks_listener
    from xkslab.serve import start, wait_for_signal

    # The proxy talks to the DSM this command starts, on whatever port it was given.
    dsm_url = f"http://{settings.dsm.host}:{settings.dsm.port}"
    settings = dataclasses.replace(settings, xks=dataclasses.replace(settings.xks, dsm_urls=dsm_url))
    previous, ca_file = await asyncio.to_thread(prepare, settings)
    known = (previous or {}).get("dsm", {}).get("admin_password")
    password = admin_password or known or secrets.token_urlsafe(18)
    init = await _init(settings, "xkslab", ADMIN_EMAIL, password)
    if init["created"]:  # kept at once: a start that fails later must not lose the password
        await asyncio.to_thread(write_up_file, up_file(settings), {"dsm": {"admin_password": password}})
    if not init["created"] and not known and admin_password is None:
        password = None  # initialised by `xkslab init`: its password was printed then, not known here
    async with AsyncExitStack() as stack:
        dsm_app = create_dsm_app(settings)
        urls = {"dsm": await start(stack, dsm_listener(settings, dsm_app), echo)}
        urls["xks"] = await start(stack, xks_listener(settings, create_xks_app(settings)), echo)
        urls["kms"] = await start(stack, kms_listener(settings, create_kms_app(settings)), echo)
        xks_https = next(u for u in urls["xks"] if u.startswith("https")).replace("127.0.0.1", "localhost")
        facts = await bootstrap(settings, dsm_app[CORE_KEY], urls["kms"][0], xks_https, ca_file)
        data = lab_settings(settings, urls, facts, password)
        path = up_file(settings)
        await asyncio.to_thread(write_up_file, path, data)
        echo(render(data, path))
        await wait_for_signal()
        echo("stopping")
