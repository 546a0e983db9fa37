"""What a first ``xkslab up`` creates through the services' own APIs: an XKS app (awsxks credential) and a
client app (API key) in the default group, a root KEK, an external key store in the KMS pointing at the
proxy over HTTPS, connected, and one XKS-backed KMS key with an alias. Every name is fixed, so a start
that stopped half-way is resumed, and later starts find and reuse all of it."""

from __future__ import annotations

import base64
import json
from typing import Any

import aiohttp
from sqlalchemy import select

from dsm_emulator.authz import system_principal
from dsm_emulator.core import DsmCore
from dsm_emulator.keys import KeySpec
from dsm_emulator.models import Account
from dsm_emulator.xks import canonical_prefix
from xkslab_shared.config import Settings

XKS_APP = "xkslab-kms-xks"
CLIENT_APP = "xkslab-client"
ROOT_KEK = "xkslab-root-kek-1"
KEY_STORE = "xkslab-external-key-store"
ALIAS = "alias/xkslab-demo"
# The KMS emulator does not check its callers' signatures; any well-formed pair works.
AWS_ACCESS_KEY_ID = "AKIAXKSLABEXAMPLE000"
AWS_SECRET_ACCESS_KEY = "xkslab-local-secret-not-checked"


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
    settings: Settings, dsm_core: DsmCore, kms_url: str, xks_https: str, ca_file: str
) -> dict[str, Any]:
    """Create what a first start needs; every name is fixed, so a half-finished bootstrap is resumed."""
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
    return base64.b64encode(f"{app_id}:{secret}".encode()).decode()
