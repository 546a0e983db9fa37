"""What a first ``xkslab up`` creates through the services' own APIs: an XKS app (awsxks credential) and a
client app (API key) in the default group, a root KEK, an external key store in the KMS pointing at the
proxy over HTTPS, connected, and one XKS-backed KMS key with an alias. Every name is fixed, so a start
that stopped half-way is resumed, and later starts find and reuse all of it."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from sqlalchemy import select

from dsm_emulator.authz import system_principal
from dsm_emulator.core import DsmCore
from dsm_emulator.errors import DsmError
from dsm_emulator.keys import KeySpec
from dsm_emulator.models import Account
from dsm_emulator.xks import canonical_prefix
from xkslab.lab.files import LabError
from xkslab_shared.config import Settings

XKS_APP = "xkslab-kms-xks"
CLIENT_APP = "xkslab-client"
ROOT_KEK = "xkslab-root-kek-1"
KEY_STORE = "xkslab-external-key-store"
ALIAS = "alias/xkslab-demo"
# With kms.verify_sigv4 off (the default) the KMS emulator does not check its callers' signatures; any
# well-formed pair works, and the lab uses this one. With it on, the lab makes an access key of its own
# (xkslab.lab.credentials).
AWS_ACCESS_KEY_ID = "AKIAXKSLABEXAMPLE000"
AWS_SECRET_ACCESS_KEY = "xkslab-local-secret-not-checked"
# What KMS answers when the proxy was slow or not there yet, and the pauses before each new try.
_UNREACHABLE = "XksProxyUriUnreachableException"
_SLOW_PROXY_CODES = frozenset({"XKS_PROXY_TIMED_OUT", "XKS_PROXY_NOT_REACHABLE"})
_UNREACHABLE_RETRY_S = (0.2, 0.5, 1.0)

log = logging.getLogger("xkslab.lab")


@dataclass(frozen=True)
class AwsCredentials:
    """The pair the lab calls the KMS with and puts in ``aws_env``; ``signed``: a real access key of the
    KMS (kms.verify_sigv4 on), so the bootstrap's requests carry a real SigV4 signature."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    signed: bool = False


FIXED_CREDENTIALS = AwsCredentials(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)


class KmsCaller:
    """AWS JSON 1.1 over aiohttp: enough of a KMS client for bootstrapping and health checks."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        endpoint: str,
        region: str,
        credentials: AwsCredentials = FIXED_CREDENTIALS,
    ) -> None:
        self._session = session
        self._endpoint = endpoint
        self._region = region
        self._credentials = credentials

    def _headers(self, operation: str, body: bytes) -> dict[str, str]:
        headers = {
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": f"TrentService.{operation}",
        }
        creds = self._credentials
        if not creds.signed:  # a well-formed header the unchecking KMS reads the access key id from
            scope = f"{creds.access_key_id}/20260101/{self._region}/kms/aws4_request"
            headers["Authorization"] = f"AWS4-HMAC-SHA256 Credential={scope}, SignedHeaders=host, Signature=0"
            return headers
        request = AWSRequest(method="POST", url=self._endpoint + "/", data=body, headers=headers)
        pair = Credentials(creds.access_key_id, creds.secret_access_key)
        SigV4Auth(pair, "kms", self._region).add_auth(request)
        return dict(request.headers.items())

    async def __call__(self, operation: str, **params: Any) -> dict[str, Any]:
        body = json.dumps(params).encode()
        # A call that reaches the proxy (CreateCustomKeyStore, CreateKey) gets KMS's 250 ms, and the lab's
        # first start on a busy machine can stall past it: the proxy is up, only slow, so try again.
        for delay_s in (*_UNREACHABLE_RETRY_S, None):
            headers = self._headers(operation, body)
            async with self._session.post(self._endpoint + "/", data=body, headers=headers) as response:
                data = await response.json(content_type=None)
                if response.status == 200:
                    return dict(data)
            if data.get("__type") != _UNREACHABLE or delay_s is None:
                raise LabError(f"KMS {operation}: {data.get('__type')}: {data.get('message')}")
            log.info("KMS %s: the XKS proxy did not answer in time; trying again", operation)
            await asyncio.sleep(delay_s)
        raise AssertionError("unreachable")  # the loop's last round returns or raises


async def set_admin_password(settings: Settings, password: str) -> bool:
    """Make ``password`` the account administrator's (audited as the local operator); False when it
    already was. For ``up --admin-password`` on a data directory that exists: the user asked for it."""
    async with await DsmCore.open(settings) as dsm_core:
        async with dsm_core.sessions() as session:
            account = await session.scalar(select(Account).limit(1))
        if account is None:
            raise LabError("the data directory has no account: run xkslab init")
        _email, changed = await dsm_core.admin.set_user_password(system_principal(account.acct_id), password)
    return changed


async def bootstrap_dsm(settings: Settings) -> dict[str, Any]:
    """The key manager's half, through its own core before its server starts (so no other writer is
    running): the XKS app and its awsxks credential, the client app and its API key, the root KEK."""
    async with await DsmCore.open(settings) as dsm_core:
        async with dsm_core.sessions() as session:
            account = await session.scalar(select(Account).limit(1))
        if account is None:
            raise LabError("the data directory has no account: run xkslab init")
        system = system_principal(account.acct_id)
        group_id = (await dsm_core.admin.list_groups(system))[0].group_id
        apps = {app.name: app for app in await dsm_core.admin.list_apps(system)}
        if XKS_APP not in apps:
            apps[XKS_APP], _ = await dsm_core.admin.create_app(
                system,
                XKS_APP,
                groups={group_id: frozenset({"ENCRYPT", "DECRYPT"})},
                credential_kind="awsxks",
            )
        if CLIENT_APP not in apps:
            apps[CLIENT_APP], _ = await dsm_core.admin.create_app(system, CLIENT_APP, groups=[group_id])
        xks_app, client_app = apps[XKS_APP], apps[CLIENT_APP]
        xks_cred = (await dsm_core.admin.get_credential(system, xks_app.app_id))["awsxks"]
        client_secret = (await dsm_core.admin.get_credential(system, client_app.app_id))["secret"]
        try:
            kek = await dsm_core.keys.get(system, name=ROOT_KEK)
        except DsmError:
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
    return {
        "acct_id": account.acct_id,
        "group_id": group_id,
        "xks_app_id": xks_app.app_id,
        "xks_uri_path": f"{canonical_prefix(xks_app.app_id)}/kms/xks/v1",
        "xks_access_key_id": xks_cred["access_key_id"],
        "xks_secret_access_key": xks_cred["secret_key"],
        "root_kek_id": kek.kid,
        "client_app_id": client_app.app_id,
        "dsm_api_key": _api_key(client_app.app_id, client_secret),
    }


async def bootstrap_kms(
    settings: Settings, dsm: dict[str, Any], kms_url: str, xks_https: str
) -> dict[str, Any]:
    """The KMS half, through the running KMS emulator's API: the external key store pointing at the proxy
    (its endpoint brought up to date when the proxy's port changed since the last start), connected, and
    the XKS-backed KMS key with its alias. Called with ``dsm["aws_credentials"]`` (what ``initialize``
    found or made), the fixed pair when absent."""
    async with aiohttp.ClientSession() as session:
        credentials = dsm.get("aws_credentials", FIXED_CREDENTIALS)
        kms = KmsCaller(session, kms_url, settings.kms.region, credentials)
        all_stores = (await kms("DescribeCustomKeyStores")).get("CustomKeyStores", [])
        stores = [store for store in all_stores if store["CustomKeyStoreName"] == KEY_STORE]
        if stores:
            store = stores[0]
            store_id = store["CustomKeyStoreId"]
            moved = store.get("XksProxyConfiguration", {}).get("UriEndpoint") != xks_https
            if store["ConnectionState"] == "FAILED" or (moved and store["ConnectionState"] != "DISCONNECTED"):
                await kms("DisconnectCustomKeyStore", CustomKeyStoreId=store_id)
            if moved:
                await kms("UpdateCustomKeyStore", CustomKeyStoreId=store_id, XksProxyUriEndpoint=xks_https)
        else:
            store_id = (
                await kms(
                    "CreateCustomKeyStore",
                    CustomKeyStoreName=KEY_STORE,
                    CustomKeyStoreType="EXTERNAL_KEY_STORE",
                    XksProxyUriEndpoint=xks_https,
                    XksProxyUriPath=dsm["xks_uri_path"],
                    XksProxyConnectivity="PUBLIC_ENDPOINT",
                    XksProxyAuthenticationCredential={
                        "AccessKeyId": dsm["xks_access_key_id"],
                        "RawSecretAccessKey": dsm["xks_secret_access_key"],
                    },
                )
            )["CustomKeyStoreId"]
        for delay_s in (*_UNREACHABLE_RETRY_S, None):
            await kms("ConnectCustomKeyStore", CustomKeyStoreId=store_id)
            found = await kms("DescribeCustomKeyStores", CustomKeyStoreId=store_id)
            described = found["CustomKeyStores"][0]
            store_state, code = described["ConnectionState"], described.get("ConnectionErrorCode")
            if store_state == "CONNECTED":
                break
            if code not in _SLOW_PROXY_CODES or delay_s is None:
                raise LabError(f"the external key store did not connect: {store_state} ({code})")
            log.info("the external key store did not connect (%s); trying again", code)
            await kms("DisconnectCustomKeyStore", CustomKeyStoreId=store_id)
            await asyncio.sleep(delay_s)
        aliases = {a["AliasName"]: a for a in (await kms("ListAliases")).get("Aliases", [])}
        if ALIAS in aliases:
            key_id = aliases[ALIAS]["TargetKeyId"]
        else:
            key_id = (
                await kms(
                    "CreateKey",
                    Origin="EXTERNAL_KEY_STORE",
                    CustomKeyStoreId=store_id,
                    XksKeyId=dsm["root_kek_id"],
                    Description="xkslab demo key (double envelope through the XKS proxy)",
                )
            )["KeyMetadata"]["KeyId"]
            await kms("CreateAlias", AliasName=ALIAS, TargetKeyId=key_id)
        key_arn = (await kms("DescribeKey", KeyId=key_id))["KeyMetadata"]["Arn"]
    return {
        "custom_key_store_id": store_id,
        "kms_key_id": key_id,
        "kms_key_arn": key_arn,
        "kms_alias": ALIAS,
    }


def _api_key(app_id: str, secret: str) -> str:
    return base64.b64encode(f"{app_id}:{secret}".encode()).decode()
